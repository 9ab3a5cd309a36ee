"""Which index answers a cache's searches: exact below a row count, else the faiss IVF
index that fits a memory budget (numpy only; faiss is imported where an index is built).

| kind | bytes per row (D = feature width) | chosen when |
| --- | --- | --- |
| ``exact`` | 4 D (memory-mapped, not held) | rows < ``exact_below`` |
| ``ivf-flat`` | 4 D | 4 D x rows fits the budget |
| ``ivf-sq8`` | D; re-ranks from CACHE.search.npy when its codes fall short | D x rows fits |
| ``ivf-pq`` | M/2 (4-bit PQ, M = D/4 to D/32); re-ranks from CACHE.search.npy on disk | otherwise |
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..core.schema import Range, check_fields, option
from ..errors import InvalidOptionError

DEFAULT_EXACT_BELOW = 100_000
"""Rows from which an approximate index answers (``search --exact`` still scans): at
100k x 1,024 an exact query took 440 ms against 0.3 ms for ``ivf-sq8`` (recall@10
0.97), whose build took 37 s against 14 s (benchmarks/bench_index.py, busy 2 cores)."""
DEFAULT_INDEX_MEMORY = 2 << 30
"""Bytes an approximate index may hold in memory: 2 GiB."""
KINDS = ("exact", "ivf-flat", "ivf-sq8", "ivf-pq")
IDS_BYTES = 8
"""faiss keeps one int64 id per row beside its code."""

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str | int, parameter: str = "index_memory") -> int:
    """Bytes from ``2GB``, ``512M``, ``1.5g``, ``4096`` (binary units)."""
    if isinstance(text, int):
        value = text
    else:
        found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
        if not found:
            raise InvalidOptionError(
                f"{parameter} {text!r}: expected a size such as 2GB or 512MB", parameter
            )
        value = int(float(found.group(1)) * _UNITS[found.group(2)])
    if value < 1 << 20:
        raise InvalidOptionError(f"{parameter} {text!r}: expected at least 1MB", parameter)
    return value


@dataclass
class IndexChoice:
    """Which index answers a cache's searches, declared once for ``search`` and ``serve``
    (the ``Search`` RPC): exact under ``exact_below`` rows, else the approximate index
    that fits ``index_memory``."""

    index_memory: str = option(
        "2GB",
        kind=str,
        metavar="SIZE",
        parse=parse_memory,
        help="Memory the approximate index may take (2GB, 512MB): the most accurate of "
        "ivf-flat, ivf-sq8, ivf-pq whose rows fit.",
    )
    exact_below: int = option(
        DEFAULT_EXACT_BELOW,
        range=Range(0, wording="must be 0 or more", integer=True),
        help="Rows under which a search is exact; from there a faiss index answers.",
    )

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def memory(self) -> int:
        """:attr:`index_memory` in bytes."""
        return parse_memory(self.index_memory)


@dataclass(frozen=True)
class IndexPlan:
    """An index's kind and faiss parameters."""

    kind: str
    nlist: int = 0
    """IVF lists (k-means centroids)."""
    pq_m: int = 0
    """PQ sub-quantizers of ``ivf-pq`` (4 bits each)."""

    @property
    def factory(self) -> str:
        """The faiss ``index_factory`` string."""
        code = {"ivf-flat": "Flat", "ivf-sq8": "SQ8", "ivf-pq": f"PQ{self.pq_m}x4fs"}[self.kind]
        return f"IVF{self.nlist},{code}"


def bytes_per_row(kind: str, dim: int, pq_m: int = 0) -> int:
    """Memory one row takes in an index of ``kind`` (the ids included)."""
    code = {"exact": 0, "ivf-flat": 4 * dim, "ivf-sq8": dim, "ivf-pq": pq_m // 2}[kind]
    return code + (IDS_BYTES if kind != "exact" else 0)


def plan_index(
    rows: int,
    dim: int,
    memory: int = DEFAULT_INDEX_MEMORY,
    exact_below: int = DEFAULT_EXACT_BELOW,
    exact: bool = False,
    kind: str = "auto",
) -> IndexPlan:
    """The index for ``rows`` x ``dim`` features: the most accurate kind whose rows fit
    ``memory`` bytes (room for a quarter more rows, as a cache grows), exact when asked or
    below ``exact_below`` rows; ``kind`` (one of :data:`KINDS`) instead of ``auto``
    forces one (``ivf-pq`` still fitted to ``memory``)."""
    if kind not in ("auto", *KINDS):
        raise InvalidOptionError(
            f"index kind {kind!r}: expected auto or one of {', '.join(KINDS)}", "kind"
        )
    if exact or kind == "exact" or (kind == "auto" and rows < exact_below):
        return IndexPlan("exact")
    room = rows + rows // 4
    nlist = nlist_for(rows)
    centroids = nlist * dim * 4
    if kind in ("ivf-flat", "ivf-sq8"):
        return IndexPlan(kind, nlist)
    for choice in ("ivf-flat", "ivf-sq8") if kind == "auto" else ():
        if room * bytes_per_row(choice, dim) + centroids <= memory:
            return IndexPlan(choice, nlist)
    fits = [
        m for m in pq_choices(dim) if room * bytes_per_row("ivf-pq", dim, m) + centroids <= memory
    ]
    if not fits:
        least = room * bytes_per_row("ivf-pq", dim, pq_choices(dim)[-1]) + centroids
        raise InvalidOptionError(
            f"index_memory {memory}: too small for {rows} rows of width {dim} "
            f"(at least {least} bytes)",
            "index_memory",
        )
    return IndexPlan("ivf-pq", nlist, fits[0])


def pq_choices(dim: int) -> list[int]:
    """PQ sub-quantizer counts for ``dim``, most accurate first: even divisors of ``dim``
    from dim/4 (4 dimensions each) down to dim/32 (at least 2)."""
    found = [dim // s for s in (4, 8, 16, 32) if dim % s == 0 and (dim // s) % 2 == 0]
    return found or [2 if dim % 2 == 0 else 1]


def nlist_for(rows: int) -> int:
    """IVF lists for ``rows``: about sqrt(rows), a power of two, at most 4,096 (k-means on
    two cores stays within a minute at 1M x 1,024) and 39 training rows per list."""
    return int(max(1, min(4096, 2 ** round(math.log2(max(1, math.sqrt(rows)))), rows // 39)))
