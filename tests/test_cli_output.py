"""The CLI's renderers (``featcache.commands._output``), called with plain data: the exact
text the commands print, without CliRunner, a cache or a model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from featcache.audit.search import SearchResult
from featcache.commands._output import (
    render_accuracy,
    render_audit_summary,
    render_cache_info,
    render_compare,
    render_extract_summary,
    render_json,
    render_search,
    render_train_report,
)
from featcache.extractor.runner import ExtractSummary


def test_extract_summary_with_load_time_classes_and_a_bad_file():
    summary = ExtractSummary(
        output="cache/vgg16.h5",
        backbone="vgg16",
        rows=12,
        feature_dim=512,
        new=12,
        reused=0,
        removed=0,
        bad=1,
        ignored=2,
        seconds=6.5,
        images_per_second=1.84,
        load_seconds=4.0,
        classes=["class_0", "class_1", "class_2"],
        bad_files=[("class_1/x.jpg", "truncated file")],
    )
    assert render_extract_summary(summary) == (
        "cache/vgg16.h5: 12 rows x 512 (vgg16)\n"
        "  new 12, reused 0, removed 0, bad 1, ignored 2 non-image files\n"
        "  6.5 s, 1.8 new images/s (4.0 s loading TensorFlow and the model, then 4.8 images/s)\n"
        "  3 classes: class_0, class_1, class_2\n"
        "  bad: class_1/x.jpg: truncated file"
    )


def test_extract_summary_shortens_classes_and_bad_files():
    summary = ExtractSummary(
        output="c.h5",
        backbone="resnet50",
        rows=40,
        feature_dim=2048,
        new=0,
        reused=40,
        removed=0,
        bad=13,
        ignored=0,
        seconds=0.25,
        images_per_second=0.0,
        classes=[f"c{i:02d}" for i in range(14)],
        bad_files=[(f"b{i}.png", "not an image") for i in range(13)],
        views=4,
    )
    lines = render_extract_summary(summary).splitlines()
    assert lines[:4] == [
        "c.h5: 40 rows x 2048 x 4 views (resnet50)",
        "  new 0, reused 40, removed 0, bad 13, ignored 0 non-image files",
        "  0.2 s, 0.0 new images/s",
        "  14 classes: c00, c01, c02, c03, c04, c05, c06, c07, c08, c09, c10, c11 ...",
    ]
    assert lines[4:14] == [f"  bad: b{i}.png: not an image" for i in range(10)]
    assert lines[14:] == ["  ... 3 more bad files (featcache inspect lists them)"]


def test_inspect_table():
    settings = {
        "dtype": "float16",
        "backbone": "vgg16",
        "weights": "none",
        "image_size": "32,32",
        "resize": "stretch",
        "pooling": "avg",
        "layer": None,
        "preprocessing": "auto",
        "split_source": "hash",
        "split_ratios": "0.8,0.1,0.1",
        "seed": 0,
        "dataset_root": "/d",
        "fingerprint": "ab12",
        "created": "t0",
        "updated": "t1",
    }
    info = {
        "path": "c.h5",
        "rows": 12,
        "feature_dim": 512,
        "settings": settings,
        "splits": {"train": 9, "val": 2, "test": 1},
        "classes": [
            {
                "class": "a_very_long_class_name_over_24",
                "train": 5,
                "val": 1,
                "test": 0,
                "total": 6,
            },
            {"class": "b", "train": 4, "val": 1, "test": 1, "total": 6},
        ],
        "bad": [{"path": "x.jpg", "reason": "truncated"}],
    }
    assert render_cache_info(info) == (
        "c.h5: 12 rows x 512 float16\n"
        "  backbone       vgg16\n"
        "  weights        none\n"
        "  image_size     32,32\n"
        "  resize         stretch\n"
        "  decode         exact\n"
        "  pooling        avg\n"
        "  layer          None\n"
        "  preprocessing  auto\n"
        "  precision      float32\n"  # older caches: no precision setting
        "  views          1\n"
        "  split_source   hash\n"
        "  split_method   hash\n"  # older caches: no split method, the hash rule
        "  split_ratios   0.8,0.1,0.1\n"
        "  seed           0\n"
        "  dataset_root   /d\n"
        "  fingerprint    ab12\n"
        "  created        t0\n"
        "  updated        t1\n"
        "  class                      train     val    test   total\n"
        "  a_very_long_class_name_o       5       1       0       6\n"
        "  b                              4       1       1       6\n"
        "  all                            9       2       1      12\n"
        "  bad files: 1\n"
        "    x.jpg: truncated"
    )


def test_compare_leaderboard_of_several_caches():
    rows = [
        {
            "source": "a.h5",
            "head": "logreg",
            "selection_accuracy": 0.9,
            "test_accuracy": 0.875,
            "test_accuracy_low": 0.75,
            "test_accuracy_high": 0.9688,
            "test_rows": 32,
            "test_macro_f1": 0.8712,
            "fit_seconds": 0.42,
            "params": "C=1.0",
        },
        {
            "source": "a.h5+b.h5",
            "head": "dense",
            "selection_accuracy": 0.95,
            "test_accuracy": 0.9,  # a row without an interval shows the value alone
            "test_macro_f1": 0.9,
            "fit_seconds": 3.1,
            "params": "hidden=512",
        },
    ]
    board = SimpleNamespace(
        rows=rows,
        folder=Path("runs/a-compare"),
        best=SimpleNamespace(run_dir=Path("runs/a-compare/dense")),
        skipped=["svm: needs two classes"],
        notes=["2 images only in a.h5: left out"],
    )
    assert render_compare(board, probed=False, several=True, cv=None, plot=None) == (
        "note: 2 images only in a.h5: left out\n"
        "source    head           val accuracy  test acc (95% CI)    test F1   fit s  params\n"
        "a.h5      logreg                0.900  0.875 (0.750-0.969)    0.871    0.42  C=1.0\n"
        "a.h5+b.h5 dense                 0.950  0.900                  0.900    3.10  hidden=512\n"
        "test acc: 95% bootstrap interval over n=32 test rows\n"
        "skipped: svm: needs two classes\n"
        "leaderboard: runs/a-compare/leaderboard.csv; best run: runs/a-compare/dense"
    )
    # One cache, quick protocol: no notes, and the selection column says cv with --cv.
    one = render_compare(board, probed=False, several=False, cv=3, plot="bars.png")
    assert one.splitlines()[0].startswith("source    head            cv accuracy")
    assert one.splitlines()[-1] == "plot: bars.png"


def test_search_hits_and_audit_summary():
    result = SearchResult(
        query="row 3",
        hits=[
            {"rank": 1, "similarity": 1.0, "row": 3, "split": "train", "class": "cat", "path": "a"},
            {
                "rank": 2,
                "similarity": 0.87654,
                "row": 10,
                "split": "test",
                "class": None,
                "path": "x",
            },
        ],
        index_built=False,
        index="ivf-sq8",
        index_status="updated",
    )
    assert render_search(result) == (
        "query: row 3  (index: ivf-sq8, updated)\n"
        "   1 1.0000 #3       train cat              a\n"
        "   2 0.8765 #10      test  -                x"
    )
    summary = {
        "rows": 12,
        "exact_duplicate_groups": 1,
        "near_pairs_by_threshold": {0.95: 3, 0.99: 1},
        "report": "c.audit",
    }
    assert render_audit_summary(summary) == (
        "rows                     12\n"
        "exact_duplicate_groups   1\n"
        "report                   c.audit\n"
        "near-duplicate pairs by threshold: >=0.95: 3, >=0.99: 1"
    )


def test_json_is_indented_and_shows_paths_as_text():
    text = render_json({"run_dir": Path("runs/x"), "rows": [1, 2]})
    assert text == '{\n  "run_dir": "runs/x",\n  "rows": [\n    1,\n    2\n  ]\n}'
    assert json.loads(text) == {"run_dir": "runs/x", "rows": [1, 2]}


def test_accuracies_print_with_their_interval_and_rows():
    assert render_accuracy(0.8731, 0.83, 0.9123, 30) == "0.873 (95% CI 0.830-0.912, n=30)"
    assert render_accuracy(0.8731, None, None, 30) == "0.873 (n=30)"  # reports from before
    split = {"accuracy": 0.75, "accuracy_low": 0.5, "accuracy_high": 1.0, "rows": 8}
    report = {
        "rows": {"train": 40, "val": 8, "test": 8},
        "class_names": ["a", "b"],
        "notes": [],
        "val": {**split, "balanced_accuracy": 0.75, "macro_f1": 0.7333},
        "test": {"accuracy": 1.0, "rows": 8, "balanced_accuracy": 1.0, "macro_f1": 1.0},
        "fit_seconds": 0.5,
    }
    assert render_train_report("logreg", "c.h5", report, Path("runs/x")).splitlines() == [
        "logreg head on c.h5: 40 train, 8 val, 8 test rows, 2 classes",
        "  val  accuracy 0.750 (95% CI 0.500-1.000, n=8), balanced 0.750, macro-F1 0.733",
        "  test accuracy 1.000 (n=8), balanced 1.000, macro-F1 1.000",
        "  fit 0.50 s; run folder runs/x",
    ]


def test_audit_summary_says_how_many_labels_to_look_at():
    summary = {
        "rows": 300,
        "label_issues": 12,
        "label_threshold": 0.05,
        "labels_checked": 300,
        "label_errors_estimated": 11.4,
        "label_issues_precision": 0.875,
        "label_issues_recall": 0.812,
        "near_pairs_by_threshold": {0.95: 0},
    }
    assert render_audit_summary(summary).splitlines()[-1] == (
        "label issues: 12 of 300 labels get under 0.05 probability from a classifier trained "
        "without their row (label_issues.csv, lowest first); about 11 labels in all look wrong; "
        "expect about 88% of the flagged to be wrong; the threshold catches about 81% of "
        "wrong labels (estimates that take wrong labels as random)"
    )
    more = {**summary, "label_issues": 3, "label_issues_recall": 0.342}
    assert (
        render_audit_summary(more)
        .splitlines()[-1]
        .endswith(
            "catches about 34% of wrong labels (estimates that take wrong labels as random); "
            "a higher --label-threshold lists more of them"
        )
    )
    few = {**summary, "label_errors_estimated": None, "label_issues_precision": None}
    assert (
        render_audit_summary(few)
        .splitlines()[-1]
        .endswith("; too few rows to estimate how many are wrong")
    )
