import hashlib

import pytest

from featcache.core.options import parse_split
from featcache.core.splits import SplitAssigner, assign_split
from featcache.errors import InvalidOptionError


def test_parse_split_accepts_two_or_three_ratios():
    assert parse_split("0.7,0.2,0.1") == (0.7, 0.2, 0.1)
    assert parse_split("0.8,0.2") == (0.8, 0.2, 0.0)


@pytest.mark.parametrize("text", ["0.5,0.2", "a,b", "1", "-0.1,0.6,0.5", "0.2,0.2,0.2,0.4"])
def test_parse_split_rejects_bad_ratios(text):
    with pytest.raises(InvalidOptionError):
        parse_split(text)


def test_assignment_follows_ratios_and_seed():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    codes = [assign_split(h, (0.7, 0.2, 0.1), 20) for h in hashes]
    share = [codes.count(c) / len(codes) for c in range(3)]
    assert share == pytest.approx([0.7, 0.2, 0.1], abs=0.03)
    other = [assign_split(h, (0.7, 0.2, 0.1), 21) for h in hashes]
    assert other != codes
    # deterministic, independent of what else is in the dataset
    assert [assign_split(h, (0.7, 0.2, 0.1), 20) for h in hashes[:50]] == codes[:50]


def test_zero_ratios_are_never_assigned():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(500)]
    assert {assign_split(h, (0.8, 0.2, 0.0), 1) for h in hashes} == {0, 1}
    assert {assign_split(h, (1.0, 0.0, 0.0), 1) for h in hashes} == {0}


def _hashes(n: int, start: int = 0) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]


def _counts(split: list[int], classes: list[str], name: str) -> list[int]:
    return [sum(1 for s, c in zip(split, classes) if c == name and s == k) for k in range(3)]


def test_stratified_splits_give_every_class_its_share():
    hashes = _hashes(300)
    classes = [f"c{i % 10}" for i in range(300)]
    split = SplitAssigner((0.7, 0.2, 0.1), 20, "stratified").assign(
        [f"p{i}" for i in range(300)], hashes, classes, [None] * 300
    )
    for name in set(classes):
        assert _counts(split, classes, name) == [21, 6, 3]
    hashed = [assign_split(h, (0.7, 0.2, 0.1), 20) for h in hashes]
    spread = {tuple(_counts(hashed, classes, name)) for name in set(classes)}
    assert len(spread) > 1  # the hash rule alone is not stratified


def test_stratified_splits_never_move_cached_rows_and_keep_classes_balanced():
    first = SplitAssigner((0.7, 0.2, 0.1), 20, "stratified")
    hashes, classes = _hashes(40), ["a"] * 20 + ["b"] * 20
    paths = [f"p{i}" for i in range(40)]
    old = first.assign(paths, hashes, classes, [None] * 40)
    # a later run: the cached rows are counted, not assigned again
    rows = list(zip(paths, hashes, classes, old))
    later = SplitAssigner((0.7, 0.2, 0.1), 20, "stratified", rows)
    new_hashes = _hashes(20, 1000)
    new = later.assign([f"n{i}" for i in range(20)], new_hashes, ["a"] * 20, [None] * 20)
    assert later.counts("a") == (28, 8, 4) and later.counts("b") == (14, 4, 2)
    assert _counts(new, ["a"] * 20, "a") == [14, 4, 2]
    # identical content takes the cached row's split; folders and unlabelled rows as before
    fresh = _hashes(1, 5000)[0]
    again = later.assign(["copy", "u", "f"], [hashes[5], fresh, "ff"], ["b", None, "a"],
                         [None, None, 2])  # fmt: skip
    assert again == [old[5], assign_split(fresh, (0.7, 0.2, 0.1), 20), 2]


def test_stratified_assignment_is_deterministic_and_leaves_zero_ratios_empty():
    hashes, classes = _hashes(50), [f"c{i % 3}" for i in range(50)]
    paths = [f"p{i}" for i in range(50)]

    def run(seed: int, ratios: tuple[float, float, float]) -> list[int]:
        return SplitAssigner(ratios, seed, "stratified").assign(paths, hashes, classes, [None] * 50)

    assert run(20, (0.7, 0.2, 0.1)) == run(20, (0.7, 0.2, 0.1))
    assert run(20, (0.7, 0.2, 0.1)) != run(21, (0.7, 0.2, 0.1))
    assert set(run(1, (0.8, 0.2, 0.0))) == {0, 1}
    # the hash method keeps the hash rule exactly
    hashed = SplitAssigner((0.7, 0.2, 0.1), 20, "hash").assign(paths, hashes, classes, [None] * 50)
    assert hashed == [assign_split(h, (0.7, 0.2, 0.1), 20) for h in hashes]


def test_classes_too_small_for_a_test_row_still_fill_the_test_split_together():
    hashes, classes = _hashes(50), [f"c{i // 5}" for i in range(50)]  # 10 classes of 5
    split = SplitAssigner((0.7, 0.2, 0.1), 20, "stratified").assign(
        [f"p{i}" for i in range(50)], hashes, classes, [None] * 50
    )
    assert [split.count(s) for s in range(3)] == [35, 10, 5]
    for name in set(classes):  # every class within one row of its share
        counts = _counts(split, classes, name)
        assert all(abs(counts[s] - r * 5) < 1 for s, r in enumerate((0.7, 0.2, 0.1)))
