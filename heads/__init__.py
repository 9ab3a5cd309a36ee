"""Classification heads trained on cached features: a Keras dense head and baselines.

Import from the modules (``featcache.heads.train``, ...) or from ``featcache``; this package
imports nothing heavy itself (the names it exported before load on first use).
"""

from importlib import import_module
from typing import Any

_MOVED = {
    "BASELINES": "options",
    "HEAD_KINDS": "options",
    "DenseHead": "dense",
    "Leaderboard": "compare",
    "compare": "compare",
    "TrainResult": "train",
    "TrainedHead": "train",
    "load_head": "train",
    "train_head": "train",
    "make_baseline": "baselines",
    "predict_cache": "predict",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        value = getattr(import_module(f"{__name__}.{_MOVED[name]}"), name)
        globals()[name] = value  # over a submodule of the same name, as before
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
