"""plot: 2-D maps (PCA, t-SNE; UMAP refused without umap-learn) of small real caches made
with the extract API, the PNG, the self-contained HTML with thumbnails, points.csv, the CLI,
and train-head's map."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_audit import clustered, write_cache

from featcache import extract
from featcache.audit.plot import (
    LEGEND_MAX,
    UNLABELLED,
    MapPoints,
    legend_entries,
    load_umap,
    plot_cache,
    resolve_method,
    write_png,
)
from featcache.audit.plot_html import DRAWING_AREA
from featcache.audit.plot_options import AUTO_TSNE_MAX_POINTS, PlotOptions
from featcache.cli import main
from featcache.errors import DatasetError, InvalidOptionError
from featcache.store import CacheReader
from featcache.store.search_index import normalize
from helpers import TINY, make_class_folder

NO_UMAP = pytest.mark.skipif(load_umap() is not None, reason="umap-learn is installed here")
WITH_UMAP = pytest.mark.skipif(load_umap() is None, reason="umap-learn is not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """18 real images of 3 classes, embedded by a random VGG16 at 32 px."""
    root = tmp_path_factory.mktemp("plot")
    data = make_class_folder(root / "data", classes=3, per_class=6)
    out = root / "c.h5"
    extract(data, output=out, split="0.6,0.2,0.2", **TINY)
    return out


def page_data(html_path):
    text = html_path.read_text()
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert found, "no data block in the page"
    return text, json.loads(found.group(1))


def test_pca_map_files(cache, tmp_path):
    result = plot_cache(cache, tmp_path / "out", method="pca", progress=False)
    reader = CacheReader(cache)
    assert (result.method, result.rows, result.points) == ("pca", 18, 18)
    # the coordinates are the features' first two principal components (up to sign)
    x = normalize(reader.features())
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    want = centred @ vt[:2].T
    for k in range(2):
        got = result.coords[:, k]
        sign = np.sign(got @ want[:, k])
        np.testing.assert_allclose(sign * got, want[:, k], atol=1e-4)
    with Image.open(result.files["png"]) as png:
        assert png.format == "PNG" and png.size == (900, 700)
    with open(result.files["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["row"]) for r in rows] == list(range(18))
    assert [r["path"] for r in rows] == reader.paths
    assert [r["class"] for r in rows] == reader.label_names(np.arange(18))
    np.testing.assert_allclose([float(r["x"]) for r in rows], result.coords[:, 0], rtol=1e-5)
    assert any("explain" in n for n in result.notes)


def test_html_is_self_contained_with_thumbnails(cache, tmp_path):
    result = plot_cache(cache, tmp_path / "out", method="pca", color="split", progress=False)
    text, data = page_data(tmp_path / "out" / "map.html")
    assert "http://" not in text and "https://" not in text and "<script src" not in text
    assert [g["name"] for g in data["groups"]] == ["train", "val", "test"]
    reader = CacheReader(cache)
    assert data["p"] == reader.paths and data["g"] == reader.split.tolist()
    # one scale for both axes: the map's distances, in pixels, centred in the drawing area
    width, height = DRAWING_AREA
    spans = np.ptp(result.coords, axis=0)
    pixels = np.array([np.ptp(data["x"]) * width, np.ptp(data["y"]) * height])
    np.testing.assert_allclose(pixels / spans, (pixels / spans)[0], rtol=2e-3)
    assert max(np.ptp(data["x"]), np.ptp(data["y"])) == 1.0
    for axis in ("x", "y"):
        assert min(data[axis]) + max(data[axis]) == pytest.approx(1.0, abs=2e-4)
    assert result.thumbnails == 18 and result.missing_thumbnails == 0 and data["m"] == []
    for url in data["t"].values():
        assert url.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 64


def test_tsne_is_seeded_and_samples_above_max_points(cache, tmp_path):
    options = PlotOptions(method="tsne", max_points=12, thumbnails=5, progress=False)
    first = plot_cache(cache, tmp_path / "a", options)
    again = plot_cache(cache, tmp_path / "b", options)
    other = plot_cache(cache, tmp_path / "c", options, seed=1)
    assert first.method == "tsne" and first.points == 12
    assert any("12 of 18 rows plotted" in n for n in first.notes)
    assert list(first.plotted_rows) == sorted(set(first.plotted_rows.tolist()))
    np.testing.assert_array_equal(first.plotted_rows, again.plotted_rows)
    np.testing.assert_allclose(first.coords, again.coords)
    assert not np.array_equal(first.plotted_rows, other.plotted_rows)
    _, data = page_data(tmp_path / "a" / "map.html")
    assert len(data["x"]) == 12 and len(data["t"]) == 5 == first.thumbnails


def test_missing_image_files_are_marked(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    extract(data, output=tmp_path / "c.h5", split="0.6,0.2,0.2", **TINY)
    gone = sorted(data.rglob("*.png"))[0]
    gone.unlink()
    result = plot_cache(tmp_path / "c.h5", tmp_path / "out", method="pca", progress=False)
    _, page = page_data(tmp_path / "out" / "map.html")
    assert result.missing_thumbnails == 1 and result.thumbnails == 5
    (missing,) = page["m"]
    assert page["p"][missing].endswith(gone.name) and str(missing) not in page["t"]


def test_auto_method_resolves(cache, tmp_path):
    """auto: UMAP when umap-learn is installed, else t-SNE up to the limit and PCA above;
    the map of the tiny cache is made by that method."""
    if load_umap() is None:
        assert resolve_method("auto", AUTO_TSNE_MAX_POINTS) == "tsne"
        assert resolve_method("auto", AUTO_TSNE_MAX_POINTS + 1) == "pca"
        want = "tsne"
    else:
        assert resolve_method("auto", AUTO_TSNE_MAX_POINTS + 1) == "umap"
        want = "umap"
    result = plot_cache(cache, tmp_path / "out", html=False, progress=False)
    assert result.method == want and result.coords.shape == (18, 2)


@NO_UMAP
def test_umap_without_umap_learn_is_one_clear_error(cache, tmp_path):
    with pytest.raises(InvalidOptionError, match="pip install umap-learn"):
        plot_cache(cache, tmp_path / "out", method="umap")
    assert not (tmp_path / "out").exists()
    args = ["plot", str(cache), "-o", str(tmp_path / "o"), "--method", "umap"]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 2
    (line,) = run.output.strip().splitlines()
    assert line.startswith("error: --method 'umap': umap-learn is not installed")


@WITH_UMAP
def test_umap_map_is_seeded(cache, tmp_path):
    first = plot_cache(cache, tmp_path / "a", method="umap", html=False, progress=False)
    again = plot_cache(cache, tmp_path / "b", method="umap", html=False, progress=False)
    assert first.method == "umap" and first.coords.shape == (18, 2)
    assert np.isfinite(first.coords).all()
    np.testing.assert_allclose(first.coords, again.coords)


def test_bad_input(tmp_path):
    rows, x = clustered(per_class=1)
    few = write_cache(tmp_path / "few.h5", rows[:2], x[:2])
    with pytest.raises(DatasetError, match="at least 3"):
        plot_cache(few, tmp_path / "out", method="pca")
    with pytest.raises(InvalidOptionError, match="max_points"):
        PlotOptions(max_points=2)
    with pytest.raises(InvalidOptionError, match="thumbnails"):
        PlotOptions(thumbnails=-1)
    # a row whose features are not finite is left out, with a note
    rows, x = clustered(per_class=3)
    x[4] = np.nan
    cache = write_cache(tmp_path / "nan.h5", rows, x)
    result = plot_cache(cache, tmp_path / "n", method="pca", html=False, progress=False)
    assert result.points == 11 and 4 not in result.plotted_rows.tolist()
    assert any("non-finite" in n for n in result.notes) and "html" not in result.files


def test_hostile_paths_stay_data(tmp_path):
    rows, x = clustered(per_class=2)
    evil = "a/</script><script>alert(1)</script><!--.png"
    rows[0] = (evil, *rows[0][1:])
    cache = write_cache(tmp_path / "c.h5", rows, x)
    plot_cache(cache, tmp_path / "out", method="pca", progress=False)
    text, data = page_data(tmp_path / "out" / "map.html")
    assert text.count("</script>") == 2 and "<!--" not in text
    assert data["p"][0] == evil and data["m"] == list(range(8))  # no file: all "missing"


def test_output_that_is_a_file_is_refused(cache, tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(InvalidOptionError, match="not a folder"):
        plot_cache(cache, tmp_path / "f", method="pca")
    assert (tmp_path / "f").read_text() == "keep"


def test_unwritable_output_is_refused_before_reading(tmp_path):
    """-o under a file: one line, exit 2, before any feature is read (the 2-row cache
    would otherwise fail on its rows)."""
    rows, x = clustered(per_class=1)
    few = write_cache(tmp_path / "few.h5", rows[:2], x[:2])
    (tmp_path / "file").write_text("keep")
    with pytest.raises(InvalidOptionError, match="cannot write there"):
        plot_cache(few, tmp_path / "file" / "sub", method="pca")
    run = CliRunner().invoke(main, ["plot", str(few), "-o", str(tmp_path / "file" / "sub")])
    assert run.exit_code == 2
    (line,) = run.output.strip().splitlines()
    assert line.startswith(f"error: --output {str(tmp_path / 'file' / 'sub')!r}: cannot write")
    assert (tmp_path / "file").read_text() == "keep"


def test_folder_of_other_files_is_refused(cache, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / "map.html").write_text("someone's page")
    with pytest.raises(InvalidOptionError, match=r"holds other files \(notes.txt\)"):
        plot_cache(cache, out, method="pca")
    assert sorted(p.name for p in out.iterdir()) == ["map.html", "notes.txt"]
    assert (out / "map.html").read_text() == "someone's page"


def test_rerun_replaces_its_outputs_and_removes_stale_ones(cache, tmp_path):
    out = tmp_path / "out"
    plot_cache(cache, out, method="pca", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["map.html", "map.png", "points.csv"]
    (out / ".part-map.html").write_text("left by a killed run")
    result = plot_cache(cache, out, method="pca", html=False, color="split", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["map.png", "points.csv"]
    assert sorted(result.files) == ["csv", "png"]


def test_non_cache_errors_fit_the_plot_command(tmp_path):
    (tmp_path / "notes.h5").write_text("not a cache")
    run = CliRunner().invoke(main, ["plot", str(tmp_path / "notes.h5")])
    assert run.exit_code == 2
    (line,) = run.output.strip().splitlines()
    assert "featcache extract --overwrite rebuilds it" in line and "(--overwrite)" not in line
    assert not (tmp_path / "notes.plot").exists()


def test_unlabelled_rows_are_a_grey_group(tmp_path):
    rows, x = clustered(per_class=3)
    for i in (0, 5):
        rows[i] = (rows[i][0], None, *rows[i][2:])
    cache = write_cache(tmp_path / "c.h5", rows, x)
    result = plot_cache(cache, tmp_path / "out", method="pca", progress=False)
    _, data = page_data(tmp_path / "out" / "map.html")
    unlabelled = data["groups"][-1]
    assert unlabelled == {"name": UNLABELLED, "color": "#999999", "count": 2}
    assert [data["g"][i] for i in (0, 5)] == [len(data["groups"]) - 1] * 2
    with open(result.files["csv"], newline="") as handle:
        classes = [r["class"] for r in csv.DictReader(handle)]
    assert classes[0] == classes[5] == "" and all(classes[i] for i in (1, 2, 3, 4))
    with Image.open(result.files["png"]) as png:  # its legend marker is drawn in grey
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert (pixels == [153, 153, 153]).all(axis=1).any()


def test_png_coloured_by_split(cache, tmp_path):
    result = plot_cache(cache, tmp_path / "out", method="pca", color="split", html=False)
    split = CacheReader(cache).split
    counts = [int((split == s).sum()) for s in range(3)]
    points = MapPoints(
        result.plotted_rows,
        result.coords,
        "pca",
        ["train", "val", "test"],
        split.astype(np.int64),
        split.astype(np.int64),
    )
    labels = [label for label, _, _ in legend_entries(points, "split")]
    assert labels == [f"{n} ({c})" for n, c in zip(["train", "val", "test"], counts)]
    with Image.open(result.files["png"]) as png:
        colours = {tuple(p) for p in np.asarray(png.convert("RGB")).reshape(-1, 3).tolist()}
    assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours  # tab10's first 3


def test_png_legend_is_cut_with_a_count_of_the_rest(tmp_path):
    n_groups = LEGEND_MAX + 5
    group = np.arange(2 * n_groups) % n_groups
    coords = np.random.default_rng(0).normal(size=(len(group), 2))
    names = [f"class {i}" for i in range(n_groups)]
    points = MapPoints(np.arange(len(group)), coords, "pca", names, group, group % 3)
    entries = legend_entries(points, "label")
    labels = [label for label, _, _ in entries]
    assert labels[:LEGEND_MAX] == [f"class {i} (2)" for i in range(LEGEND_MAX)]
    assert labels[LEGEND_MAX:] == ["+5 more (10 points)", "train", "val", "test"]
    path = write_png(points, tmp_path / "map.png", "many classes")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (900, 700)


def test_cli_plot(cache, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["plot", str(cache), "-o", str(out), "--method", "pca", "--json", "--no-html"]
    run = runner.invoke(main, args)
    assert run.exit_code == 0, run.output
    shown = json.loads(run.output)
    assert shown["method"] == "pca" and shown["points"] == 18
    assert sorted(shown["files"]) == ["csv", "png"] and (out / "map.png").is_file()
    for bad, word in (
        (["--max-points", "1"], "--max-points 1"),
        (["--thumbnails", "-3"], "--thumbnails -3"),
    ):
        run = runner.invoke(main, ["plot", str(cache), "-o", str(tmp_path / "x"), *bad])
        assert run.exit_code == 2 and run.output.strip().startswith(f"error: {word}")
    run = runner.invoke(main, ["plot", str(tmp_path / "nope.h5")])
    assert run.exit_code == 2 and len(run.output.strip().splitlines()) == 1


def test_train_head_writes_the_map(cache, tmp_path):
    from featcache.heads.train import train_head

    result = train_head(cache, head="logreg", output=tmp_path / "run", plot="pca")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["map"]["png"] == "map.png" and report["map"]["method"] == "pca"
    assert report["map"]["points"] == 18 and result.report["map"] == report["map"]
    with Image.open(tmp_path / "run" / "map.png") as png:
        assert png.format == "PNG"
    run = CliRunner().invoke(
        main,
        ["train-head", str(cache), "--head", "logreg", "-o", str(tmp_path / "r2"), "--plot", "pca"],
    )
    assert run.exit_code == 0, run.output
    assert (tmp_path / "r2" / "map.png").is_file()


def test_train_head_map_of_two_caches(tmp_path):
    from featcache.heads.train import train_head

    data = make_class_folder(tmp_path / "data", classes=2, per_class=5)
    for name, size in (("a.h5", 32), ("b.h5", 48)):
        extract(data, output=tmp_path / name, split="0.6,0.2,0.2", **{**TINY, "image_size": size})
    caches = [tmp_path / "a.h5", tmp_path / "b.h5"]
    result = train_head(caches, head="logreg", output=tmp_path / "run", plot="pca")
    assert result.report["map"]["points"] == 10
    assert (result.run_dir / "map.png").is_file()


def test_train_head_keeps_the_head_when_the_map_fails(cache, tmp_path):
    """map.png cannot be written (a folder stands in its place): the head and its report
    are saved all the same, and the report says why the map is missing."""
    from featcache.heads.train import load_head, train_head

    run_dir = tmp_path / "run"
    (run_dir / "map.png").mkdir(parents=True)
    result = train_head(cache, head="logreg", output=run_dir, plot="pca", overwrite=True)
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["map"]) == {"error"} and "map.png" in report["map"]["error"]
    assert report == json.loads(json.dumps(result.report))
    assert any(n.startswith("map not written (") for n in report["notes"])
    assert result.notes == report["notes"]
    head = load_head(run_dir)
    features = CacheReader(cache).features()
    np.testing.assert_array_equal(head.predict(features), result.head.predict(features))
    run = CliRunner().invoke(
        main,
        [
            "train-head",
            str(cache),
            "--head",
            "logreg",
            "-o",
            str(run_dir),
            "--plot",
            "pca",
            "--overwrite",
        ],
    )
    assert run.exit_code == 0, run.output
    assert "  map: not written (" in run.output and (run_dir / "head.skops").is_file()


def test_train_head_map_marks_carved_val_rows(tmp_path):
    """A cache without val: the rows train-head carves into val are marked val in the map."""
    from featcache.heads.train import train_head

    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    extract(data, output=tmp_path / "c.h5", split="0.8,0,0.2", **TINY)
    assert not (CacheReader(tmp_path / "c.h5").split == 1).any()
    result = train_head(tmp_path / "c.h5", head="logreg", output=tmp_path / "run", plot="pca")
    rows = result.report["rows"]
    assert rows["val"] > 0 and result.report["map"]["points"] == 12
    assert result.report["map"]["splits"] == rows


@NO_UMAP
def test_train_head_refuses_umap_before_training(cache, tmp_path):
    from featcache.heads.train import train_head

    with pytest.raises(InvalidOptionError, match="umap-learn"):
        train_head(cache, head="logreg", output=tmp_path / "run", plot="umap")
    assert not (tmp_path / "run").exists()


HARNESS = r"""
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const data = html.match(/<script type="application\/json" id="data">([\s\S]*?)<\/script>/)[1];
const script = html.match(/<script>([\s\S]*?)<\/script>/)[1];
const D = JSON.parse(data);
let fills = 0;
const ctx = {scale() {}, clearRect() { fills = 0; }, beginPath() {}, rect() {}, moveTo() {},
  lineTo() {}, closePath() {}, arc() {}, fill() { fills++; }, stroke() {}};
function el(tag) {
  return {tag, children: [], style: {}, listeners: {}, className: "", textContent: "",
    appendChild(c) { this.children.push(c); }, append(...c) { this.children.push(...c); },
    replaceChildren() { this.children = []; },
    addEventListener(type, f) { this.listeners[type] = f; },
    getBoundingClientRect() { return {left: 0, top: 0, width: 800, height: 640}; },
    getContext() { return ctx; }};
}
const els = {data: {textContent: data}, map: el("canvas"), tip: el("div"), groups: el("div"),
  splitbox: el("div"), all: el("button"), none: el("button")};
global.document = {getElementById: id => els[id], createElement: el,
  createTextNode: t => ({text: t})};
global.window = {devicePixelRatio: 1};
(0, eval)(script);
const out = {drawn: fills};
const i = Number(Object.keys(D.t)[0]);
els.map.listeners.mousemove({clientX: 14 + D.x[i] * 772, clientY: 14 + (1 - D.y[i]) * 612});
const tip = els.tip.children;
out.display = els.tip.style.display;
out.first = tip[0].tag === "img" ? {img: tip[0].src} : {text: tip[0].textContent};
out.lines = tip.slice(1).map(c => c.textContent);
const first = els.groups.children[0].children[0];
first.checked = false;
first.listeners.change();
out.without_first = fills;
els.none.onclick();
out.none = fills;
els.all.onclick();
out.all = fills;
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_runs(cache, tmp_path):
    """The page's script in node with a minimal DOM: it draws every point, hovering a point
    shows its thumbnail and lines, and the legend hides and shows groups."""
    plot_cache(cache, tmp_path / "out", method="pca", progress=False)
    (tmp_path / "harness.js").write_text(HARNESS)
    run = subprocess.run(
        ["node", str(tmp_path / "harness.js"), str(tmp_path / "out" / "map.html")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    _, data = page_data(tmp_path / "out" / "map.html")
    assert out["drawn"] == 18 and out["display"] == "block"
    row_line, class_line = out["lines"]
    j = data["p"].index(row_line.split(" ", 1)[1])  # the point the tooltip describes
    assert row_line == f"#{data['r'][j]} {data['p'][j]}"
    assert class_line == f"class: {data['l'][j]}, split: {data['splits'][data['s'][j]]}"
    assert out["first"] == {"img": data["t"][str(j)]}
    assert out["without_first"] == 18 - data["groups"][0]["count"]
    assert (out["none"], out["all"]) == (0, 18)
