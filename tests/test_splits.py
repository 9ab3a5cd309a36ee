import hashlib

import pytest

from featcache.core.options import parse_split
from featcache.core.splits import assign_split
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
