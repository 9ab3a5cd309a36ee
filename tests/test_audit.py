"""audit: duplicates, near-duplicates, leakage, outliers, label issues, the report files
and --fix-splits, on small real HDF5 caches written through CacheWriter."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from featcache.audit.audit import audit_cache, fix_splits, fixed_splits
from featcache.audit.labels import check_labels, find_label_issues, out_of_fold_probabilities
from featcache.audit.neighbors import brute_force, normalize, top_k_neighbors
from featcache.audit.options import AuditOptions
from featcache.audit.output import write_audit_report
from featcache.cli import main
from featcache.errors import CacheError, InvalidOptionError
from featcache.store import CacheReader, CacheSettings, CacheWriter
from helpers import write_image

CLASSES = ["a", "b", "c", "d"]
SPLITS = {"train": 0, "val": 1, "test": 2}


def _settings(root: str) -> CacheSettings:
    return CacheSettings(
        "vgg16", "", "none", "", (32, 32), "stretch", "avg", "", "none", 0,
        dtype="float32", split_ratios=(0.6, 0.2, 0.2), split_source="hash", dataset_root=root,
    )  # fmt: skip


def write_cache(path, rows, features, root=None):
    """``rows``: (path, class, split, content key); rows with the same key share a SHA-256."""
    order = {name: i for i, (name, *_) in enumerate(rows)}
    writer = CacheWriter(path, _settings(str(root or path.parent)), CLASSES, order)
    writer.add(
        [r[0] for r in rows],
        [hashlib.sha256(r[3].encode()).hexdigest() for r in rows],
        [r[1] for r in rows],
        [SPLITS[r[2]] for r in rows],
        np.asarray(features, np.float32),
    )
    writer.commit(final=True)
    return path


def clustered(per_class=30, dim=16, noise=0.3, seed=0):
    """Rows of 4 separable classes; splits cycle train, train, train, val, test."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(CLASSES), dim))
    rows, x = [], []
    cycle = ["train", "train", "train", "val", "test"]
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            rows.append((f"{name}/{i}.png", name, cycle[i % 5], f"{name}-{i}"))
            x.append(centres[label] + rng.normal(0, noise, dim))
    return rows, np.asarray(x)


@pytest.mark.parametrize("n,k,block", [(50, 5, 1 << 16), (37, 36, 1 << 16), (200, 7, 4096 * 4)])
def test_blocked_neighbours_equal_brute_force(n, k, block):
    x = normalize(np.random.default_rng(n).normal(size=(n, 8)))
    sims, index = top_k_neighbors(x, k, block_bytes=block)
    want_s, want_i = brute_force(x, k)
    np.testing.assert_allclose(sims, want_s, atol=1e-6)
    assert (index == want_i).all()
    assert not (index == np.arange(n)[:, None]).any()


def test_exact_and_near_duplicates_and_leakage(tmp_path):
    rows, x = clustered()
    # exact: row 5 (val) has the content of row 0 (train); near: row 8 ~ row 1
    rows[5] = (rows[5][0], rows[5][1], "test", rows[0][3])
    x[5] = x[0]
    x[8] = x[1] + 1e-3
    cache = write_cache(tmp_path / "c.h5", rows, x)
    report = audit_cache(cache, AuditOptions(threshold=0.9999, label_issues=False, progress=False))
    assert report.duplicate_groups == [[0, 5]]
    near = {(p.a, p.b) for p in report.near_pairs}
    assert (1, 8) in near and (0, 5) not in near  # an exact pair is not also a near one
    assert {(p.a, p.b, p.kind) for p in report.leakage} == {(0, 5, "exact"), (1, 8, "near")}
    table = report.threshold_table
    counts = [table[t] for t in sorted(table, key=float)]
    assert counts == sorted(counts, reverse=True)  # lower thresholds give more pairs
    loose = audit_cache(cache, AuditOptions(threshold=0.5, label_issues=False, progress=False))
    assert len(loose.near_pairs) > len(report.near_pairs)


def test_outliers_are_the_far_rows(tmp_path):
    rows, x = clustered()
    x[17] = -x[17] * 5 + 40  # far from everything
    x[70] = np.random.default_rng(1).normal(0, 50, x.shape[1])
    cache = write_cache(tmp_path / "c.h5", rows, x)
    options = AuditOptions(outlier_fraction=0.02, label_issues=False, progress=False)
    report = audit_cache(cache, options)
    assert {r for r, _ in report.outliers[:2]} == {17, 70}
    assert len(report.outliers) == 3  # ceil(0.02 * 120)


def test_confident_learning_finds_flipped_labels():
    rng = np.random.default_rng(0)
    rows, x = clustered(per_class=40)
    labels = np.asarray([CLASSES.index(r[1]) for r in rows])
    flipped = rng.choice(len(labels), 8, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1 + rng.integers(0, 3, 8)) % 4
    p = out_of_fold_probabilities(normalize(x), given, 4)
    found = find_label_issues(given, p)
    assert set(found.rows.tolist()) == set(flipped.tolist())
    assert (found.suggested == labels[found.rows]).all()
    # a fifth class of one row is left unchecked and does not stop the others' check
    lone = np.vstack([normalize(x), normalize(x[:1]) * -1])
    p5 = out_of_fold_probabilities(lone, np.append(given, 4), 5)
    assert p5[-1].tolist() == [0, 0, 0, 0, 1]
    assert set(find_label_issues(np.append(given, 4), p5).rows.tolist()) == set(flipped.tolist())


def test_label_check_flags_the_flips_and_estimates_how_many_there_are():
    rng = np.random.default_rng(1)
    rows, x = clustered(per_class=50, noise=0.6)
    labels = np.asarray([CLASSES.index(r[1]) for r in rows])
    clean = check_labels(labels, out_of_fold_probabilities(normalize(x), labels, 4))
    assert len(clean.rows) == 0 and clean.checked == 200
    assert clean.estimated_errors == 0 and clean.expected_precision is None
    flipped = rng.choice(len(labels), 10, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1 + rng.integers(0, 3, 10)) % 4
    p = out_of_fold_probabilities(normalize(x), given, 4)
    found = check_labels(given, p, threshold=0.05)
    assert set(found.rows.tolist()) <= set(flipped.tolist()) and len(found.rows) >= 6
    assert (found.suggested == labels[found.rows]).all()
    assert list(found.self_confidence) == sorted(found.self_confidence)  # lowest first
    confidence = p[np.arange(len(given)), given]
    assert set(np.argsort(confidence)[:10].tolist()) == set(flipped.tolist())  # ranked first
    assert 5 <= found.estimated_errors <= 20  # 10 flipped
    assert found.expected_precision > 0.5 and 0.5 < found.expected_recall < 1
    # a stricter threshold flags fewer and expects to catch fewer
    strict = check_labels(given, p, threshold=0.02)
    assert len(strict.rows) < len(found.rows) and strict.expected_recall < found.expected_recall


def test_report_files_thumbnails_and_missing(tmp_path):
    rows, x = clustered(per_class=6)
    data = tmp_path / "data"
    for i, (name, *_) in enumerate(rows):
        write_image(data / name, i)
    rows[3] = (rows[3][0], rows[3][1], "test", rows[2][3])
    x[3] = x[2]
    cache = write_cache(tmp_path / "c.h5", rows, x, root=data)
    (data / rows[3][0]).unlink()
    report = audit_cache(cache, AuditOptions(progress=False))
    written = write_audit_report(report, tmp_path / "out")
    assert {p.name for p in written} == {
        "report.json", "report.html", "duplicates.csv", "near_duplicates.csv",
        "leakage.csv", "outliers.csv", "label_issues.csv",
    }  # fmt: skip
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and ">missing<" in page
    with open(tmp_path / "out" / "duplicates.csv") as handle:
        assert [int(r["row"]) for r in csv.DictReader(handle)] == [2, 3]
    summary = json.loads((tmp_path / "out" / "report.json").read_text())["summary"]
    assert summary["exact_duplicate_groups"] == 1 and summary["leakage_pairs"] >= 1


def test_array_rows_render_from_the_array(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (6, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    rows = [(f"x.npy#{i}", None, "train", f"k{i}") for i in range(6)]
    x = np.random.default_rng(1).normal(size=(6, 4))
    cache = write_cache(tmp_path / "c.h5", rows, x, root=tmp_path / "x.npy")
    report = audit_cache(cache, AuditOptions(outlier_fraction=0.5, progress=False))
    write_audit_report(report, tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and ">missing<" not in page


def test_fix_splits_removes_leakage_and_keeps_every_row(tmp_path):
    rows, x = clustered()
    rows[5] = (rows[5][0], rows[5][1], "test", rows[0][3])
    x[5] = x[0]
    x[8] = x[1] + 1e-3
    cache = write_cache(tmp_path / "c.h5", rows, x)
    before = CacheReader(cache)
    features = before.features()
    options = AuditOptions(threshold=0.9999, label_issues=False, progress=False)
    report = audit_cache(cache, options)
    moves = fix_splits(report)
    assert sorted(moves) == [(5, 2, 0), (8, 1, 0)]  # test -> train, val -> train
    after = CacheReader(cache)
    assert after.paths == before.paths and after.sha256 == before.sha256
    assert (after.labels == before.labels).all()
    np.testing.assert_array_equal(after.features(), features)
    assert after.split[5] == after.split[0] and after.split[8] == after.split[1]
    changed = np.flatnonzero(after.split != before.split)
    assert changed.tolist() == [5, 8]
    history = json.loads(after.attrs["splits_fixed"])
    assert history[0]["moved"] == {"test->train": 1, "val->train": 1}
    assert audit_cache(cache, options).leakage == []
    assert fix_splits(audit_cache(cache, options)) == []  # nothing left to move: nothing written
    assert fixed_splits(report)[0].tolist() == after.split.tolist()


def test_cli_writes_the_report_and_prints_json(tmp_path):
    rows, x = clustered(per_class=10)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    result = CliRunner().invoke(main, ["audit", str(cache), "-o", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == 40 and (tmp_path / "r" / "report.html").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.h5"], "no such cache file"),
        (["CACHE", "--threshold", "1.5"], "--threshold 1.5: expected a cosine in (0, 1]"),
        (["CACHE", "--neighbors", "0"], "--neighbors 0"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, message):
    rows, x = clustered(per_class=5)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    args = [str(cache) if a == "CACHE" else str(tmp_path / a) if a.endswith(".h5") else a
            for a in args]  # fmt: skip
    result = CliRunner().invoke(main, ["audit", *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_options_name_the_parameter():
    with pytest.raises(InvalidOptionError) as info:
        AuditOptions(outlier_fraction=0.9)
    assert info.value.parameter == "outlier_fraction"


def test_real_extract_finds_a_copied_test_image_leaking_from_train(tmp_path):
    import shutil

    from featcache import extract
    from helpers import TINY, make_class_folder

    data = tmp_path / "data"
    make_class_folder(data / "train", classes=2, per_class=4)
    make_class_folder(data / "test", classes=2, per_class=2, seed=7)
    shutil.copy(data / "train" / "class_0" / "img_0.png", data / "test" / "class_0" / "copy.png")
    cache = tmp_path / "c.h5"
    extract(data, output=cache, **TINY)
    report = audit_cache(cache, AuditOptions(progress=False))
    reader = CacheReader(cache)
    leaked = {(reader.paths[p.a], reader.paths[p.b]) for p in report.leakage if p.kind == "exact"}
    assert leaked == {("test/class_0/copy.png", "train/class_0/img_0.png")}


def test_fix_splits_refuses_a_cache_changed_since_the_audit(tmp_path):
    rows, x = clustered(per_class=10)
    rows[5] = (rows[5][0], rows[5][1], "test", rows[0][3])
    x[5] = x[0]
    cache = write_cache(tmp_path / "c.h5", rows, x)
    report = audit_cache(cache, AuditOptions(label_issues=False, progress=False))
    cache.unlink()
    rows[7] = ("a/other.png", "a", rows[7][2], "other")
    write_cache(cache, rows, x)
    with pytest.raises(CacheError, match="changed since it was audited"):
        fix_splits(report)
    assert CacheReader(cache).split[5] == 2  # unchanged


def test_cli_fix_splits(tmp_path):
    rows, x = clustered(per_class=10)
    rows[5] = (rows[5][0], rows[5][1], "test", rows[0][3])
    x[5] = x[0]
    cache = write_cache(tmp_path / "c.h5", rows, x)
    args = ["audit", str(cache), "-o", str(tmp_path / "r"), "--json", "--fix-splits"]
    args += ["--threshold", "0.9999"]
    first = json.loads(CliRunner().invoke(main, [*args, "--no-label-issues"]).output)
    assert first["leakage_pairs"] == 1 and first["moved_rows"] == 1
    again = json.loads(CliRunner().invoke(main, [*args, "--no-label-issues"]).output)
    assert again["leakage_pairs"] == 0 and again["moved_rows"] == 0


def test_audit_output_is_a_new_folder_or_an_earlier_reports_written_whole(tmp_path, monkeypatch):
    """Issue 25 item 4: audit -o refuses a folder with other files (nothing touched, before
    the audit runs), never writes through a link, replaces an earlier report, and on a full
    disk exits 2 leaving the folder as it was."""
    import errno

    from featcache.audit import output

    rows, x = clustered(per_class=10)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    runner = CliRunner()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    (theirs / "report.json").write_text("not an audit")
    refused = runner.invoke(main, ["audit", str(cache), "-o", str(theirs), "-q"])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert "holds other files (notes.txt)" in refused.output
    assert (theirs / "report.json").read_text() == "not an audit"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "report.html").symlink_to(victim)
    refused = runner.invoke(main, ["audit", str(cache), "-o", str(linked), "-q"])
    assert refused.exit_code == 2 and "holds other files (report.html)" in refused.output
    assert victim.read_text() == "keep"
    report = tmp_path / "report"
    assert runner.invoke(main, ["audit", str(cache), "-o", str(report), "-q"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    assert sorted(before) == sorted(output.REPORT_FILES)
    calls = {"n": 0}
    real_open = open

    def full_disk(path, *args, **kwargs):  # the third file finds the disk full
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(output, "open", full_disk, raising=False)
    failed = runner.invoke(
        main, ["audit", str(cache), "-o", str(report), "-q", "--threshold", "0.5"]
    )
    assert failed.exit_code == 2, failed.output
    assert "No space left on device" in failed.output and "earlier files are kept" in failed.output
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before  # nothing half-written
    monkeypatch.undo()
    again = runner.invoke(
        main, ["audit", str(cache), "-o", str(report), "-q", "--threshold", "0.5"]
    )
    assert again.exit_code == 0
    assert sorted(p.name for p in report.iterdir()) == sorted(output.REPORT_FILES)
