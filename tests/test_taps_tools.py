"""Journey: extract the Fashion-MNIST sample with --taps auto (the real MobileNet at 64 px)
-> audit --tap finds near-duplicates and outliers in that tap's space -> search --tap by row
ranks by the tap's cosines, with an index of the tap's own that the features' index never
replaces -> search --tap by a new image embeds it up to the tap -> plot --tap maps the tap.
Then the refusals: a text or the zero-shot opinion in a tap's space and a tap the cache has
not, each in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_taps import _ok, tapped_cache

from featcache.cli import main

pytestmark = pytest.mark.slow

TAP = "conv_pw_5_relu"


@pytest.fixture(scope="module")
def tapped(tmp_path_factory):
    return tapped_cache(tmp_path_factory, "taptools", 8)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _refused(runner: CliRunner, *args: object) -> str:
    result = runner.invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


def test_audit_search_and_plot_in_a_taps_space(tapped):
    root, data, cache = tapped
    runner = CliRunner()
    with h5py.File(cache, "r") as handle:
        tap = _unit(handle[f"taps/{TAP}"][:])
        features = _unit(handle["features"][:])
    n = len(tap)
    cos = tap @ tap.T
    pairs = sorted(((cos[a, b], a, b) for a in range(n) for b in range(a + 1, n)), reverse=True)
    threshold = float((pairs[14][0] + pairs[15][0]) / 2)  # the 15 closest pairs of the tap

    # audit: near-duplicates are the tap's, with the tap's cosines
    audit = ["--threshold", threshold, "--neighbors", n - 1, "--json", "-q"]
    out = json.loads(_ok(runner, "audit", cache, "--tap", TAP, *audit))
    assert out["tap"] == TAP and out["near_duplicate_pairs"] == 15
    assert Path(out["report"]) == root / f"c@{TAP}.audit"  # not the features' c.audit/
    report = json.loads((root / f"c@{TAP}.audit" / "report.json").read_text())
    found = {(p["a"], p["b"]): p["similarity"] for p in report["near_duplicates"]}
    assert set(found) == {(a, b) for _, a, b in pairs[:15]}
    for (a, b), similarity in found.items():
        assert similarity == pytest.approx(cos[a, b], abs=1e-5)
    outlier = report["outliers"][0]  # mean cosine distance to its n - 1 neighbours
    assert outlier["score"] == pytest.approx(
        1 - (cos[outlier["row"]].sum() - 1) / (n - 1), abs=1e-5
    )
    assert report["options"]["tap"] == TAP
    assert f"(tap {TAP})" in (root / f"c@{TAP}.audit" / "report.html").read_text()
    assert not (root / "c.audit").exists()

    # search by row: the tap's cosines, in an index of its own
    hits = json.loads(_ok(runner, "search", cache, "--row", 0, "--tap", TAP, "-k", 5, "--json"))
    assert hits["tap"] == TAP and hits["index_status"] == "built"
    expected = [r for r in np.argsort(-cos[0], kind="stable") if r != 0][:5]
    assert [h["row"] for h in hits["hits"]] == [int(r) for r in expected]
    for hit in hits["hits"]:
        assert hit["similarity"] == pytest.approx(cos[0, hit["row"]], abs=1e-5)
    assert (root / f"c.h5.search@{TAP}.npy").is_file() and not (root / "c.h5.search.npy").exists()
    plain = json.loads(_ok(runner, "search", cache, "--row", 0, "-k", 5, "--json"))
    assert plain["tap"] == "main"
    for hit in plain["hits"]:
        assert hit["similarity"] == pytest.approx(features[0] @ features[hit["row"]], abs=1e-5)
    again = json.loads(_ok(runner, "search", cache, "--row", 0, "--tap", TAP, "-k", 5, "--json"))
    assert again["index_status"] == "loaded" and again["hits"] == hits["hits"]

    # search by a new image: embedded up to the tap, its closest row is the one it was made of
    source = sorted((data / "bag").glob("*.png"))[3]
    changed = root / "changed.png"
    pixels = np.asarray(Image.open(source).convert("L")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # other bytes, nearly the same picture
    Image.fromarray(pixels).save(changed)
    found = json.loads(_ok(runner, "search", cache, changed, "--tap", TAP, "-k", 3, "--json"))
    top = found["hits"][0]
    assert found["tap"] == TAP and top["path"] == f"bag/{source.name}"
    assert top["similarity"] > 0.99 and "same content" not in found["query"]

    # plot: the tap's rows, projected
    result = json.loads(
        _ok(runner, "plot", cache, "--tap", TAP, "--method", "pca", "--thumbnails", 0, "--json")
    )
    assert result["tap"] == TAP and Path(result["files"]["csv"]).parent == root / f"c@{TAP}.plot"
    assert (
        f"<title>c.h5 (tap {TAP}): PCA of {n} rows</title>"
        in Path(result["files"]["html"]).read_text()
    )
    from sklearn.decomposition import PCA

    want = PCA(n_components=2, svd_solver="covariance_eigh").fit_transform(tap)
    with open(result["files"]["csv"]) as handle:
        got = {int(r["row"]): (float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)}
    coords = np.array([got[r] for r in range(n)])
    np.testing.assert_allclose(np.abs(coords), np.abs(want), atol=1e-4)


def test_a_taps_space_refuses_texts_zero_shot_and_unknown_taps_in_one_line(tapped, tmp_path):
    root, _, cache = tapped
    runner = CliRunner()
    said = _refused(runner, "search", cache, "--tap", TAP, "--text", "a bag")
    assert f"--tap '{TAP}'" in said and "image-text space" in said
    said = _refused(runner, "audit", cache, "--tap", TAP, "--zero-shot", "-o", tmp_path / "a")
    assert f"--tap '{TAP}'" in said and "zero-shot" in said
    known = f"no tap 'nope'; the cache has main, conv_pw_1_relu, conv_pw_3_relu, {TAP}"
    assert known in _refused(runner, "search", cache, "--row", 0, "--tap", "nope")
    assert known in _refused(runner, "audit", cache, "--tap", "nope", "-o", tmp_path / "a")
    assert known in _refused(runner, "plot", cache, "--tap", "nope", "-o", tmp_path / "p")
    assert not (tmp_path / "a").exists() and not (tmp_path / "p").exists()
    assert not list(root.glob("c.h5.search@nope*"))
    # main is the features: the same answers, from the same index, as no --tap (the first
    # search builds the features' index unless a test before this one did)
    theirs = json.loads(_ok(runner, "search", cache, "--row", 1, "--json"))
    ours = json.loads(_ok(runner, "search", cache, "--row", 1, "--tap", "main", "--json"))
    assert ours["index_status"] == "loaded" and not ours["index_built"]
    assert ours == {**theirs, "index_status": "loaded", "index_built": False}
    # two taps side by side, by row: the cosine of the rows side by side
    both = json.loads(_ok(runner, "search", cache, "--row", 1, "--tap", f"main+{TAP}", "--json"))
    with h5py.File(cache, "r") as handle:
        joined = _unit(np.hstack([handle["features"][:], handle[f"taps/{TAP}"][:]]))
    assert both["tap"] == f"main+{TAP}" and (root / f"c@main+{TAP}.search.npy").is_file()
    for hit in both["hits"]:
        assert hit["similarity"] == pytest.approx(joined[1] @ joined[hit["row"]], abs=1e-5)


def test_a_taps_faiss_index_is_its_own(tapped):
    pytest.importorskip("faiss", reason="faiss (the ann extra)")
    root, _, cache = tapped
    runner = CliRunner()
    faiss_args = ["--row", 2, "-k", 5, "--exact-below", 0, "--json"]
    exact = json.loads(_ok(runner, "search", cache, "--tap", TAP, "--row", 2, "-k", 5, "--json"))
    ann = json.loads(_ok(runner, "search", cache, "--tap", TAP, *faiss_args))
    assert ann["index"] != "exact" and (root / f"c.h5.search@{TAP}.faiss").is_file()
    assert [h["row"] for h in ann["hits"]] == [h["row"] for h in exact["hits"]]
    plain = json.loads(_ok(runner, "search", cache, *faiss_args))  # the features' own index
    assert plain["index_status"] == "built" and (root / "c.h5.search.faiss").is_file()
    assert [h["similarity"] for h in plain["hits"]] != [h["similarity"] for h in ann["hits"]]
    again = json.loads(_ok(runner, "search", cache, "--tap", TAP, *faiss_args))
    assert again["index_status"] == "loaded" and again["hits"] == ann["hits"]
