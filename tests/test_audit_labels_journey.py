"""Journey: extract the Fashion-MNIST sample with the real MobileNet -> audit flags almost
none of its (clean) labels -> 15 images are moved into the wrong class folders (5% of the
labels wrong, as a user's mislabelled files) -> extract again -> audit flags mostly those,
ranks them first in label_issues.csv and says about how many labels look wrong."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from featcache.cli import main

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist"


def _audit(runner: CliRunner, cache: Path, out: Path) -> tuple[dict, list[dict], str]:
    result = runner.invoke(main, ["audit", str(cache), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "report.json").read_text())["summary"]
    with open(out / "label_issues.csv", newline="") as handle:
        return summary, list(csv.DictReader(handle)), result.output


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="examples/fashion-mnist is missing")
def test_audit_flags_planted_label_errors_and_says_how_many_to_look_at(tmp_path, mobilenet_weights):
    data, cache = tmp_path / "data", tmp_path / "c.h5"
    shutil.copytree(SAMPLE, data, ignore=shutil.ignore_patterns("*.txt", "*.md"))
    runner = CliRunner()
    extract = ["extract", str(data), "-o", str(cache), "-w", str(mobilenet_weights), "-q"]
    assert runner.invoke(main, extract).exit_code == 0
    clean, flagged, _ = _audit(runner, cache, tmp_path / "clean")
    assert clean["labels_checked"] == 300
    assert clean["label_issues"] <= 3  # confident learning flagged 34 (11%) of these
    assert clean["label_errors_estimated"] <= 6

    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    moved = set()
    for k in range(15):  # the k-th image of class k % 10 into the next-but-k class
        source = classes[k % 10]
        image = sorted((data / source).glob("*.png"))[k // 10 + 3]
        target = classes[(k % 10 + 1 + k % 7) % 10]
        shutil.move(image, data / target / image.name)
        moved.add(f"{target}/{image.name}")
    assert runner.invoke(main, extract).exit_code == 0
    noisy, flagged, text = _audit(runner, cache, tmp_path / "noisy")
    hits = sum(1 for row in flagged if row["path"] in moved)
    assert noisy["label_issues"] >= 3 and hits >= 0.8 * noisy["label_issues"]
    assert all(row["path"] in moved for row in flagged[:3])  # the most likely come first
    assert noisy["label_errors_estimated"] > clean["label_errors_estimated"]
    assert 0 < noisy["label_issues_recall"] < 1
    assert "labels in all look wrong" in text
