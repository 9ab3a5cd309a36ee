"""Progress bars: rate and ETA on a terminal, quiet in pipes."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, enabled: bool | None, desc: str) -> Any:
    """A tqdm bar (rate and ETA) on a terminal; silent in pipes unless ``enabled``."""
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, smoothing=0.1)
