"""Classification heads trained on cached features: a Keras dense head and baselines."""

from .baselines import BASELINES, HEAD_KINDS, make_baseline
from .compare import Leaderboard, compare
from .dense import DenseHead
from .predict import predict_cache
from .train import TrainedHead, TrainResult, load_head, train_head

__all__ = [
    "BASELINES",
    "HEAD_KINDS",
    "DenseHead",
    "Leaderboard",
    "TrainResult",
    "TrainedHead",
    "compare",
    "load_head",
    "make_baseline",
    "predict_cache",
    "train_head",
]
