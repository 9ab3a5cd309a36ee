"""What featcache loads from a head run folder: the head file stays inside the folder,
scikit-learn heads are skops files of known types, a pickle loads only when trusted, and
Keras files load in safe mode."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache import extract, read_cache
from featcache.cli import main
from featcache.errors import CacheError
from featcache.heads.baselines import BASELINES, fit_baseline, make_baseline
from featcache.heads.train import load_head, skops_trusted_types, train_head, trusted_pickles
from helpers import TINY


class _Payload:
    """A pickle that makes a folder when it is loaded (what a hostile head.joblib does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    rng = np.random.default_rng(0)
    for name, rgb in {"red": (200, 40, 40), "blue": (40, 60, 200)}.items():
        (root / "data" / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.asarray(rgb) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "data" / name / f"{i}.png")
    out = root / "c.h5"
    extract(root / "data", output=out, split="0.6,0.2,0.2", **TINY)
    return out


@pytest.fixture(scope="module")
def logreg_run(cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "logreg"
    train_head(cache, "logreg", run)
    return run


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _set_file(run: Path, name: str) -> None:
    meta = json.loads((run / "head.json").read_text())
    meta["file"] = name
    (run / "head.json").write_text(json.dumps(meta))


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# -- scikit-learn heads are skops files ---------------------------------------------------


def test_a_scikit_learn_head_is_saved_as_skops_and_loads_untrusted(cache, logreg_run):
    assert (logreg_run / "head.skops").is_file()
    assert not (logreg_run / "head.joblib").exists()
    assert json.loads((logreg_run / "head.json").read_text())["file"] == "head.skops"
    head = load_head(logreg_run)
    features = read_cache(cache).features
    assert head.predict_proba(features).shape == (len(features), 2)


@pytest.mark.parametrize("width", [4, 64])  # trees for narrow features, brute force for wide
@pytest.mark.parametrize("kind", BASELINES)
def test_every_baseline_loads_with_the_computed_trusted_types(tmp_path, logreg_run, kind, width):
    """Fit each kind (with and without the scaler), save it as train_head does, load it:
    the computed trusted types cover every type the heads are made of."""
    import skops.io

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, width)).astype(np.float32)
    y = np.arange(60) % 3
    for standardize in (True, False):
        model = fit_baseline(kind, make_baseline(kind, standardize=standardize), x, y)
        run = _copy_run(logreg_run, tmp_path / f"{kind}-{standardize}")
        skops.io.dump(model, run / "head.skops")
        assert set(skops.io.get_untrusted_types(file=run / "head.skops")) <= set(
            skops_trusted_types()
        )
        loaded = load_head(run).estimator
        np.testing.assert_allclose(loaded.predict(x), model.predict(x))


def test_a_skops_file_with_other_types_is_refused(tmp_path, logreg_run):
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    run = _copy_run(logreg_run, tmp_path / "run")
    hostile = Pipeline([("f", FunctionTransformer(os.system)), ("head", LogisticRegression())])
    skops.io.dump(hostile, run / "head.skops")
    with pytest.raises(CacheError, match=r"refused: .*posix\.system|refused: .*nt\.system"):
        load_head(run)


# -- pickles load only when trusted --------------------------------------------------------


def _old_joblib_run(logreg_run: Path, to: Path) -> Path:
    """A run folder as featcache wrote them before head.skops."""
    import joblib

    run = _copy_run(logreg_run, to)
    joblib.dump(load_head(logreg_run).estimator, run / "head.joblib")
    (run / "head.skops").unlink()
    _set_file(run, "head.joblib")
    return run


def test_an_old_joblib_run_loads_only_with_trust(tmp_path, cache, logreg_run):
    run = _old_joblib_run(logreg_run, tmp_path / "old")
    with pytest.raises(CacheError, match=r"pickle.*trust_pickle=True \(--trust-pickle\)"):
        load_head(run)
    features = read_cache(cache).features
    expected = load_head(logreg_run).predict_proba(features)
    np.testing.assert_allclose(load_head(run, trust_pickle=True).predict_proba(features), expected)
    with trusted_pickles():
        np.testing.assert_allclose(load_head(run).predict_proba(features), expected)
    with trusted_pickles(), pytest.raises(CacheError, match="pickle"):
        load_head(run, trust_pickle=False)  # the argument wins over the context
    with pytest.raises(CacheError, match="pickle"):
        load_head(run)  # the context ended


def test_predict_needs_trust_pickle_for_an_old_joblib_run(tmp_path, cache, logreg_run):
    run = _old_joblib_run(logreg_run, tmp_path / "old")
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(run), str(cache), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "--trust-pickle" in _one_error_line(result) and not out.exists()
    args = ["predict", str(run), str(cache), "-o", str(out), "--trust-pickle"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1 + len(read_cache(cache).paths)


def test_a_hostile_pickle_never_runs_without_trust(tmp_path, cache, logreg_run):
    import joblib

    run = _copy_run(logreg_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    joblib.dump(_Payload(marker), run / "head.joblib")
    _set_file(run, "head.joblib")
    with pytest.raises(CacheError, match="pickle"):
        load_head(run)
    result = CliRunner().invoke(main, ["predict", str(run), str(cache), "-o", str(tmp_path / "p")])
    assert result.exit_code == 2 and "--trust-pickle" in _one_error_line(result)
    assert not marker.exists()


# -- the head file stays inside the run folder ---------------------------------------------


def _outside(tmp_path: Path) -> tuple[Path, Path]:
    import joblib

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.joblib"
    joblib.dump(_Payload(marker), evil)
    return evil, marker


@pytest.mark.parametrize("how", ["dotdot", "nested-dotdot", "absolute", "symlink", "dir-symlink"])
def test_the_head_file_must_stay_inside_the_run_folder(tmp_path, logreg_run, how):
    evil, marker = _outside(tmp_path)
    run = _copy_run(logreg_run, tmp_path / "run")
    if how == "dotdot":
        _set_file(run, "../evil.joblib")
    elif how == "nested-dotdot":
        (run / "sub").mkdir()
        _set_file(run, "sub/../../evil.joblib")
    elif how == "absolute":
        _set_file(run, str(evil))
    elif how == "symlink":
        (run / "head.joblib").symlink_to(evil)
        _set_file(run, "head.joblib")
    else:
        (run / "sub").symlink_to(tmp_path)
        _set_file(run, "sub/evil.joblib")
    with pytest.raises(CacheError, match="refused"):
        load_head(run, trust_pickle=True)  # trusting pickles does not trust other folders
    assert not marker.exists()


@pytest.mark.parametrize("name", ["", None, 3, "head.py", "head.h5", "head.pkl"])
def test_the_head_file_must_be_of_a_known_type(tmp_path, logreg_run, name):
    run = _copy_run(logreg_run, tmp_path / "run")
    _set_file(run, name)
    with pytest.raises(CacheError):
        load_head(run, trust_pickle=True)


def test_a_dense_head_file_must_be_a_keras_file_inside_the_run(tmp_path, cache):
    run = tmp_path / "dense"
    train_head(cache, "dense", run, epochs=2)
    shutil.copyfile(run / "head.keras", tmp_path / "other.keras")
    _set_file(run, "../other.keras")
    with pytest.raises(CacheError, match="refused"):
        load_head(run)
    _set_file(run, "head.keras")
    assert load_head(run).kind == "dense"


# -- Keras files load in safe mode -----------------------------------------------------------


def _lambda_model(path: Path, inputs: int, outputs: int) -> None:
    import keras

    x = keras.Input((inputs,))
    y = keras.layers.Lambda(lambda t: t * 2.0)(x)  # code in the file: refused by safe_mode
    keras.Model(x, keras.layers.Dense(outputs)(y)).save(path)


def test_a_keras_head_with_code_in_it_is_refused(tmp_path, cache):
    run = tmp_path / "dense"
    train_head(cache, "dense", run, epochs=2)
    meta = json.loads((run / "head.json").read_text())
    _lambda_model(run / "head.keras", meta["feature_dim"], 1)
    with pytest.raises(CacheError, match=r"could not load .*head\.keras"):
        load_head(run)


def test_an_exported_model_with_code_in_it_is_refused(tmp_path):
    from featcache.heads.endtoend import load_model

    _lambda_model(tmp_path / "model.keras", 4, 2)
    with pytest.raises(CacheError, match=r"could not load .*model\.keras"):
        load_model(tmp_path / "model.keras")
