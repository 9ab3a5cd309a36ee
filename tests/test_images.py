"""Every head on images: linear scikit-learn heads export as one Dense layer, the others
predict through the backbone, and what cannot be done is refused before TensorFlow loads.

Real files: a few Fashion-MNIST images, a random-weights MobileNet at 32 px, real caches,
runs and ``.keras`` files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featcache import read_cache
from featcache.cli import main
from featcache.extractor.decode import decode_image
from featcache.heads.linear import linear_form
from featcache.heads.train import load_head, train_head

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist"
CLASSES = ("bag", "sandal", "trouser")
PER_CLASS = 8
"""Images per class in the cache; the next 2 of each class are new images to predict."""


def _copy(classes: tuple[str, ...], start: int, count: int, to: Path) -> Path:
    for name in classes:
        (to / name).mkdir(parents=True, exist_ok=True)
        for file in sorted((SAMPLE / name).iterdir())[start : start + count]:
            shutil.copy(file, to / name / file.name)
    return to


def _extract(data: Path, cache: Path) -> None:
    args = ["extract", str(data), "-o", str(cache), "--backbone", "mobilenet", "--weights",
            "none", "--image-size", "32", "--split", "0.6,0.2,0.2", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(root, data, cache, new images): 24 cached images of 3 classes, 6 new ones."""
    root = tmp_path_factory.mktemp("images")
    data = _copy(CLASSES, 0, PER_CLASS, root / "data")
    new = _copy(CLASSES, PER_CLASS, 2, root / "new")
    _extract(data, root / "c.h5")
    return root, data, root / "c.h5", new


def _cached_images(data: Path, cache: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    cached = read_cache(cache)
    images = [decode_image((data / p).read_bytes()).astype(np.float32) for p in cached.paths]
    return cached.features, images


def _agree(expected: np.ndarray, got: np.ndarray, atol: float) -> None:
    """Same top class wherever the head's top two are further apart than ``atol``."""
    np.testing.assert_allclose(got, expected, atol=atol)
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * atol
    assert clear.mean() > 0.8
    assert (got.argmax(1)[clear] == expected.argmax(1)[clear]).all()


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_compare_predict_export_predict_journey(sample, tmp_path, monkeypatch):
    """extract -> compare -> predict the best run on new images -> export -> predict with
    the exported model: the same classes and probabilities."""
    _, _, cache, new = sample
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    compared = runner.invoke(
        main, ["compare", str(cache), "-o", "cmp", "--heads", "logreg,ridge", "--json"]
    )
    assert compared.exit_code == 0, compared.output
    best = Path(json.loads(compared.output)["best_run"])
    kind = json.loads((best / "head.json").read_text())["kind"]
    assert kind in ("logreg", "ridge")
    measure = "probability" if kind == "logreg" else "score"
    on_run = runner.invoke(main, ["predict", str(best), str(new), "-o", "run.csv", "--quiet"])
    assert on_run.exit_code == 0, on_run.output
    exported = runner.invoke(main, ["export", str(best), "-o", "best.keras"])
    assert exported.exit_code == 0, exported.output
    on_model = runner.invoke(main, ["predict", "best.keras", str(new), "-o", "m.csv", "--quiet"])
    assert on_model.exit_code == 0, on_model.output
    first, second = _csv(tmp_path / "run.csv"), _csv(tmp_path / "m.csv")
    assert len(first) == 6 and set(first[0]) == {"path", "class", measure, "top_k", "error"}
    assert [r["class"] for r in first] == [r["class"] for r in second]
    for a, b in zip(first, second):
        assert abs(float(a[measure]) - float(b[measure])) < 1e-5
    # the exported model on the cached images = the scikit-learn head on their features
    from featcache.heads.endtoend import load_model

    features, images = _cached_images(sample[1], cache)
    model, names, _ = load_model(tmp_path / "best.keras")
    got = np.concatenate([np.asarray(model(image[None])) for image in images])
    head = load_head(best)
    _agree(head.predict_proba(features), got, 1e-5)
    assert names == [head.class_names[c] for c in head.classes] == list(CLASSES)


@pytest.mark.parametrize("kind", ["logreg", "linear-svm", "ridge"])
def test_a_linear_head_exports_as_one_dense_layer_equal_to_scikit_learn(sample, tmp_path, kind):
    import keras

    from featcache.heads.endtoend import export, load_model
    from featcache.heads.images import predict_images
    from featcache.heads.predict import predict_cache

    _, data, cache, _ = sample
    run = train_head(cache, kind, tmp_path / "run").run_dir
    model, _, _ = load_model(export(run, tmp_path / "m.keras"))
    head = load_head(run)
    features, images = _cached_images(data, cache)
    # the head alone: one Dense layer (the scaler folded in), then the class probabilities
    dense = model.get_layer("linear_head")
    assert isinstance(dense, keras.layers.Dense)
    assert not any("normal" in layer.name or "scale" in layer.name for layer in model.layers)
    top = keras.Model(dense.input, model.get_layer("class_probabilities").output)
    alone = np.asarray(top(features))
    np.testing.assert_allclose(alone, head.predict_proba(features), atol=1e-6)
    assert (head.classes[alone.argmax(1)] == head.estimator.predict(features)).all()
    if kind == "logreg":
        np.testing.assert_allclose(alone, head.estimator.predict_proba(features), atol=1e-6)
    # end to end, from the image files
    got = np.concatenate([np.asarray(model(image[None])) for image in images])
    _agree(head.predict_proba(features), got, 1e-5)
    assert model.get_layer("class_probabilities").probabilities == (kind == "logreg")
    # predict names what it reports: a probability, or a score for linear-svm and ridge
    measure = "probability" if kind == "logreg" else "score"
    files = [str(data / p) for p in read_cache(cache).paths[:4]]
    on_images = predict_images(run, files, tmp_path / "p.csv")
    assert set(_csv(tmp_path / "p.csv")[0]) == {"path", "class", measure, "top_k", "error"}
    assert [r.top[0][0] for r in on_images] == [
        head.class_names[c] for c in head.predict(features[:4])
    ]
    assert measure in _csv(predict_cache(run, cache, tmp_path / "cache.csv"))[0]


@pytest.mark.parametrize("kind", ["logreg", "ridge", "linear-svm"])
def test_a_binary_linear_head_gives_two_columns(kind):
    """Two classes: scikit-learn keeps one score; the Dense layer gives both classes."""
    from featcache.heads.baselines import fit_baseline, make_baseline, probabilities

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, rng.uniform(0.01, 5.0, 40), (60, 40)).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 1, 60) > 3.0).astype(int) * 4  # labels 0 and 4
    model = fit_baseline(kind, make_baseline(kind), x, y)
    form = linear_form(kind, model)
    assert form.weights.shape == (40, 2)
    assert form.output == ("logits" if kind == "logreg" else "scores")
    mine = form.probabilities(x)
    np.testing.assert_allclose(mine, probabilities(model, x), atol=1e-6)
    assert (model.classes_[mine.argmax(1)] == model.predict(x)).all()


@pytest.mark.parametrize("kind", ["knn", "random-forest", "svm"])
def test_other_heads_predict_on_images_through_the_backbone(sample, tmp_path, kind):
    from featcache.heads.images import predict_images

    _, data, cache, _ = sample
    params = {"knn": {"k": 3}, "random-forest": {"n_estimators": 20}, "svm": {}}[kind]
    run = train_head(cache, kind, tmp_path / "run", **params).run_dir
    cached = read_cache(cache)
    files = [str(data / p) for p in cached.paths]
    results = predict_images(run, files, tmp_path / "p.csv", top_k=3)
    head = load_head(run)
    expected = head.predict_proba(cached.features)
    got = np.array([[dict(r.top)[head.class_names[c]] for c in head.classes] for r in results])
    _agree(expected, got, 1e-5)
    assert set(_csv(tmp_path / "p.csv")[0]) == {"path", "class", "probability", "top_k", "error"}


_NO_TENSORFLOW = """
import sys
from featcache.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TensorFlow loaded"
sys.exit(code)
"""


def _cli_without_tensorflow(*args: str) -> subprocess.CompletedProcess[str]:
    """``featcache ARGS`` in a fresh interpreter that fails if TensorFlow was imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-c", _NO_TENSORFLOW, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_refusals_come_before_tensorflow_loads(sample, tmp_path):
    """export of a knn head, and predict on images with an untrusted pickle head: one line,
    exit 2, decided from head.json before TensorFlow is imported."""
    import joblib

    _, data, cache, _ = sample
    run = train_head(cache, "knn", tmp_path / "knn", k=3).run_dir
    refused = _cli_without_tensorflow("export", str(run), "-o", str(tmp_path / "knn.keras"))
    assert refused.returncode == 2, refused.stderr
    lines = (refused.stdout + refused.stderr).strip().splitlines()
    assert len(lines) == 1 and "knn head cannot be one Keras model" in lines[0]
    assert f"featcache predict {run} IMAGES" in lines[0] and "logreg" in lines[0]
    assert not (tmp_path / "knn.keras").exists()
    old = tmp_path / "old"  # a run saved before head.skops: a pickle
    shutil.copytree(run, old)
    joblib.dump(load_head(run).estimator, old / "head.joblib")
    (old / "head.skops").unlink()
    meta = json.loads((old / "head.json").read_text())
    (old / "head.json").write_text(json.dumps({**meta, "file": "head.joblib"}))
    image = next((data / CLASSES[0]).iterdir())
    out = tmp_path / "p.csv"
    refused = _cli_without_tensorflow("predict", str(old), str(image), "-o", str(out))
    assert refused.returncode == 2, refused.stderr
    assert "--trust-pickle" in refused.stdout + refused.stderr and not out.exists()
    trusted = CliRunner().invoke(
        main, ["predict", str(old), str(image), "-o", str(out), "--trust-pickle", "--quiet"]
    )
    assert trusted.exit_code == 0, trusted.output
    assert _csv(out)[0]["class"] in CLASSES
