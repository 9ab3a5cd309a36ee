"""Classification heads trained on cached features: a Keras dense head and baselines.

Import from the modules (``featcache.heads.train``, ...) or from ``featcache``; this package
imports nothing heavy itself (the names it exported before load on first use).
"""

from ..core.lazy import lazy_attributes

_MOVED = {
    "BASELINES": ".options",
    "HEAD_KINDS": ".options",
    "DenseHead": ".dense",
    "Leaderboard": ".compare",
    "compare": ".compare",
    "TrainResult": ".train",
    "TrainedHead": ".train",
    "load_head": ".train",
    "train_head": ".train",
    "make_baseline": ".baselines",
    "predict_cache": ".predict",
    "ProbeSettings": ".probe",
}


__getattr__ = lazy_attributes(__name__, _MOVED, globals())
