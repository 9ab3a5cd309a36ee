"""Honest progress for scikit-learn's t-SNE, which has no callback.

Running it in chunks (``max_iter`` a slice at a time, each from the last one's embedding)
would not give the same map: the optimizer's momentum and gains, and the switch from early
exaggeration at iteration 250, live inside one ``fit``. A spinner with an estimate would only
guess. Instead :func:`tsne_progress` runs the one ``fit`` with ``verbose=2`` and reads what
scikit-learn prints: the neighbour search, the affinities (per 1,000 points), then the
iteration count every 50 iterations, which drives a bar of ``max_iter`` iterations (an early
stop ends the bar where the optimisation did). ``verbose`` changes what is printed, not what
is computed, so the map is the one a quiet run makes. Its printing goes to a parser, never to
stdout; while it runs, ``sys.stdout`` of the whole process points at the parser, so this is
for the command line's single thread of work (the library's default shows no progress).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from typing import Any

from ..core.progress import progress_bar

_ITERATION = re.compile(r"\[t-SNE\] Iteration (\d+):")
_AFFINITIES = re.compile(r"conditional probabilities for sample (\d+) / (\d+)")
_NEIGHBOURS = re.compile(r"Computing (\d+) nearest neighbors")


class _Log(io.TextIOBase):
    """Where t-SNE's verbose lines go: each one moves the bar."""

    def __init__(self, bar: Any, title: str) -> None:
        self.bar, self.title = bar, title
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._read(line)
        return len(text)

    def _read(self, line: str) -> None:
        if found := _ITERATION.search(line):
            done = min(int(found.group(1)), self.bar.total)
            self.bar.set_description_str(f"{self.title}: optimising", refresh=False)
            self.bar.update(done - self.bar.n)
        elif found := _AFFINITIES.search(line):
            shown = f"{self.title}: affinities {found.group(1)}/{found.group(2)}"
            self.bar.set_description_str(shown)
        elif found := _NEIGHBOURS.search(line):
            self.bar.set_description_str(f"{self.title}: {found.group(1)} nearest neighbours")


@contextlib.contextmanager
def tsne_progress(tsne: Any, enabled: bool | None, title: str = "plot: t-SNE") -> Iterator[None]:
    """Within the block, ``tsne.fit_transform`` drives a bar over its iterations (on a
    terminal, or when ``enabled``); otherwise nothing changes."""
    bar = progress_bar(int(tsne.max_iter or 1000), enabled, title, unit="it")
    if bar.disable:
        bar.close()
        yield
        return
    bar.mininterval = 0  # a frame per logged step (every 50 iterations), however fast they come
    tsne.set_params(verbose=2)
    log = _Log(bar, title)
    try:
        with contextlib.redirect_stdout(log):
            yield
        ran = getattr(tsne, "n_iter_", None)  # an early stop ends the bar where it stopped
        if ran is not None:
            bar.total = min(bar.total, int(ran) + 1)
            bar.update(bar.total - bar.n)
        bar.set_description_str(title)
    finally:
        tsne.set_params(verbose=0)
        bar.close()
