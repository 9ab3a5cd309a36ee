"""Journey: extract the Fashion-MNIST sample with the (default) stratified split -> inspect
shows every class spread over train/val/test by the ratios -> more images are added and
extracted again: the cached rows keep their splits and the classes stay balanced ->
train-head prints its accuracies with a 95% interval."""

import json
import shutil
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from featcache.cli import main
from featcache.core.splits import assign_split

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist"
ARGS = ["-b", "mobilenet", "-w", "none", "--image-size", "32", "-q"]


def _copy(source: Path, target: Path, first: int, last: int) -> None:
    """Images ``first`` to ``last - 1`` (sorted by name) of every class of ``source``."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.glob("*.png"))[first:last]:
            shutil.copy2(image, target / folder.name / image.name)


def _classes(runner: CliRunner, cache: Path) -> dict[str, list[int]]:
    result = runner.invoke(main, ["inspect", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    return {c["class"]: [c["train"], c["val"], c["test"]] for c in info["classes"]}


def _splits(cache: Path) -> dict[str, int]:
    with h5py.File(cache, "r") as handle:
        paths = [p.decode() for p in handle["paths"][:]]
        return dict(zip(paths, handle["split"][:].tolist()))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="examples/fashion-mnist is missing")
def test_stratified_split_stays_balanced_as_images_are_added(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "c.h5"
    runner = CliRunner()
    _copy(SAMPLE, data, 0, 20)  # 20 of each of the 10 classes
    result = runner.invoke(main, ["extract", str(data), "-o", str(cache), *ARGS])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(main, ["inspect", str(cache)]).output
    assert "split_method   stratified" in shown
    first = _classes(runner, cache)
    assert len(first) == 10 and all(counts == [14, 4, 2] for counts in first.values())
    # the hash rule alone would not have balanced them: some class gets another test count
    with h5py.File(cache, "r") as handle:
        hashes = [s.decode() for s in handle["sha256"][:]]
        labels = handle["labels"][:].tolist()
    hashed = [assign_split(h, (0.7, 0.2, 0.1), 20) for h in hashes]
    tests = {sum(1 for s, y in zip(hashed, labels) if y == c and s == 2) for c in range(10)}
    assert len(tests) > 1

    before = _splits(cache)
    _copy(SAMPLE, data, 20, 30)  # 10 more of each class
    result = runner.invoke(main, ["extract", str(data), "-o", str(cache), "--json", *ARGS[:-1]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["new"], summary["reused"]) == (100, 200)
    after = _splits(cache)
    assert {path: after[path] for path in before} == before  # no cached row moved
    assert all(counts == [21, 6, 3] for counts in _classes(runner, cache).values())

    result = runner.invoke(
        main, ["train-head", str(cache), "--head", "logreg", "-o", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "accuracy" in line]
    assert lines[0].startswith("  val  accuracy ") and "(95% CI " in lines[0]
    assert lines[1].startswith("  test accuracy ") and ", n=30)" in lines[1]


def test_a_cache_from_before_split_methods_resumes_with_the_hash_rule(tmp_path):
    """A cache without the split_method attribute reads as hash: a rerun without
    --split-method adds rows by the hash rule, moves none, and asking for stratified on it
    is refused as other settings."""
    from featcache import extract, read_cache
    from featcache.core.options import DEFAULT_SEED
    from helpers import TINY, make_class_folder

    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    cache = tmp_path / "c.h5"
    extract(data, output=cache, split_method="hash", **TINY)
    with h5py.File(cache, "a") as handle:  # as featcache wrote caches before the setting
        del handle.attrs["split_method"]
    before = _splits(cache)
    make_class_folder(tmp_path / "more", classes=2, per_class=9, seed=5)
    for image in (tmp_path / "more").rglob("img_*"):
        target = data / image.parent.name / f"more_{image.name}"
        shutil.copy2(image, target)
    summary = extract(data, output=cache, **TINY)
    assert (summary.new, summary.reused) == (18, 12)
    after = read_cache(cache)
    assert after.settings.split_method == "hash"
    assert {p: s for p, s in _splits(cache).items() if p in before} == before
    expected = [assign_split(sha, (0.7, 0.2, 0.1), DEFAULT_SEED) for sha in after.sha256]
    assert after.split.tolist() == expected
    runner = CliRunner()
    refused = runner.invoke(
        main, ["extract", str(data), "-o", str(cache), "--split-method", "stratified", *ARGS]
    )
    assert (
        refused.exit_code == 2 and "split_method 'hash' (cache) vs 'stratified'" in refused.output
    )
