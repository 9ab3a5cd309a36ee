"""Journey: extract a folder holding copied images -> audit through the approximate index
(switched on for this small cache by --approximate-from) -> the report names the index
and lists the copies as duplicates -> train-head still trains on the audited cache."""

import csv
import json
import shutil

from click.testing import CliRunner

from featcache.cli import main
from helpers import make_class_folder

ARGS = ["-b", "vgg16", "-w", "none", "--image-size", "32", "-q"]


def test_approximate_audit_lists_copied_images_and_the_cache_still_trains(tmp_path):
    data, cache, out = tmp_path / "data", tmp_path / "c.h5", tmp_path / "audit"
    make_class_folder(data, classes=3, per_class=6)
    shutil.copy(data / "class_0" / "img_0.png", data / "class_0" / "copy_a.png")
    shutil.copy(data / "class_0" / "img_0.png", data / "class_1" / "copy_b.png")
    shutil.copy(data / "class_2" / "img_3.jpg", data / "class_2" / "copy_c.jpg")
    runner = CliRunner()
    result = runner.invoke(main, ["extract", str(data), "-o", str(cache), *ARGS])
    assert result.exit_code == 0, result.output

    audit = ["audit", str(cache), "-o", str(out), "--approximate-from", "10", "--probes", "2"]
    result = runner.invoke(main, [*audit, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["neighbors_method"].startswith("approximate (inverted file: ")
    report = json.loads((out / "report.json").read_text())
    assert report["neighbors_index"]["method"] == "ivf"
    assert report["neighbors_index"]["probes"] == 2
    with open(out / "duplicates.csv", newline="") as handle:
        groups: dict[str, set[str]] = {}
        for row in csv.DictReader(handle):
            groups.setdefault(row["group"], set()).add(row["path"])
    assert sorted(groups.values(), key=len) == [
        {"class_2/copy_c.jpg", "class_2/img_3.jpg"},
        {"class_0/copy_a.png", "class_0/img_0.png", "class_1/copy_b.png"},
    ]

    result = runner.invoke(
        main, ["train-head", str(cache), "--head", "logreg", "-o", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
