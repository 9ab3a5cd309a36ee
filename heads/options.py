"""Every heads default and option check, in one place (no heavy imports).

``train-head``, ``compare``, ``predict``, ``fine-tune`` and ``export`` take their defaults
from here. Each option set is a dataclass whose fields declare the options
(:func:`featcache.core.schema.option`): checks, CLI flags and help come from there, and
:func:`check_options` checks loose values by the same declarations. Errors name the
Python parameter (``epochs 0: must be at least 1``); the CLI shows its flag instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from ..core.options import check_seed
from ..core.ranking import DEFAULT_TOP_K as RANKING_TOP_K
from ..core.schema import (
    Option,
    Range,
    check_fields,
    check_value,
    invalid,
    option,
    options_of,
)

BASELINES = ("logreg", "linear-svm", "svm", "knn", "random-forest", "ridge")
"""The scikit-learn heads."""
HEAD_KINDS = ("dense", *BASELINES)
"""Every head ``train_head`` accepts."""
LINEAR_HEADS = ("logreg", "linear-svm", "ridge")
"""scikit-learn heads that ``export`` turns into one Keras ``Dense`` layer (with their
scaler folded in); the other baselines predict on images through the backbone and the
scikit-learn model (``predict RUN IMAGES``) and cannot be exported."""
SCORE_HEADS = ("linear-svm", "ridge")
"""Heads without probabilities: ``predict`` reports a softmax of their decision scores,
named ``score`` (it ranks the classes as the head does; it is not calibrated)."""
OPTIMIZERS = ("adam", "sgd", "rmsprop")
MONITORS = ("val_accuracy", "val_loss")
CLASS_WEIGHTS = ("balanced",)
LAYER_AUGMENTATIONS = ("flip", "rotate", "zoom", "contrast", "translate")
"""Augmentations of ``fine_tune(schedule="fixed")`` (Keras layers inside the model)."""
AUGMENTATIONS = (*LAYER_AUGMENTATIONS, "vflip", "rotate90", "crop", "brightness")
"""Augmentations of ``fine_tune(schedule="auto")`` (in the input pipeline, heads/augment.py)."""
SCHEDULES = ("auto", "fixed")
"""``fine_tune`` schedules: ``auto`` (phases of gradual unfreezing, warm-up + cosine and
discriminative learning rates, the best checkpoint by val, never below the head) and
``fixed`` (one run with the options given, as before)."""
BALANCES = ("auto", "weights", "sample", "none")
"""``fine_tune`` class balancing: ``weights`` (balanced class weights in the loss), ``sample``
(each epoch draws train images with every class equally likely), ``none``, ``auto``
(balancing when the train classes are imbalanced, see :data:`BALANCE_RATIO`)."""
TEST_VIEWS = ("auto", "none", "mirror", "turns", "all")
"""``fine_tune``'s test-time views: the exported model averages its probabilities over each
image mirrored (``mirror``: 2 views), turned by quarter turns (``turns``: 4) or both (``all``:
8), and ``predict`` pays the backbone once per view; ``auto``: the symmetries the training
augmentation assumed (``flip``: mirror, ``rotate90``: turns), kept only when val scores no
worse with them than without."""
VIEW_GROUPS = {"mirror": (1, True), "turns": (4, False), "all": (4, True)}
"""Test-time view groups: (quarter turns, each also mirrored)."""


def view_count(group: str) -> int:
    """How many views of each image ``group`` (a key of :data:`VIEW_GROUPS`) makes."""
    turns, mirror = VIEW_GROUPS[group]
    return turns * (2 if mirror else 1)


EXPORT_TEST_VIEWS = ("none", *VIEW_GROUPS)
"""``export --test-views``: one view, or a group of :data:`VIEW_GROUPS` (no ``auto``: export
has no training augmentation or val to decide from)."""
EXPORT_FORMATS = ("keras", "savedmodel")
ZERO_SHOT = "zero-shot"
"""The kind of a ``zero-shot`` run: a classifier from class names, no labelled image."""
TEMPLATE_SETS = ("photo", "plain", "clip")
"""Built-in prompt template sets (:data:`featcache.backbones.zero_shot.TEMPLATES`)."""
PROTOCOLS = ("quick", "linear-probe", "knn", "full")
"""``compare`` protocols: ``quick`` (the small grids of every head kind), ``linear-probe``
(L-BFGS logistic regression over a C sweep), ``knn`` (cosine-weighted kNN), ``full``
(both, plus the dense head grid)."""
NORMALIZATIONS = ("l2", "standardize", "none")
"""Feature transforms of the probe protocols (fitted on the training rows)."""
STANDARDIZE_BY_DEFAULT = frozenset({"logreg", "linear-svm", "svm", "knn", "ridge"})
"""Heads whose features are standardised unless ``standardize=False``."""

# -- train_head / compare / predict ----------------------------------------------------
DEFAULT_HEAD = "dense"
DEFAULT_VAL_FRACTION = 0.2
"""Share of train carved into val when the cache has no val split."""
DEFAULT_SEED = 0
DEFAULT_TOP_K = RANKING_TOP_K
DEFAULT_PREDICT_BATCH_SIZE = 32
"""Images per batch of ``predict_images``."""
DEFAULT_FEATURE_BATCH_SIZE = 4096
"""Feature rows per batch of ``predict_cache`` and of streamed evaluation."""
VIEW_MODES = ("plain", "one", "all", "mean")
"""What a head trains on from a cache with augmented views (``extract --views``):
``plain`` view 0 only; ``one`` one random view per row and epoch (the dense head);
``all`` every view as a row of its own; ``mean`` the mean embedding of the views. Val and
test are always scored on view 0 (the plain image)."""
DEFAULT_VIEWS = "plain"
DEFAULT_FEATURE_AUGMENT = 0.1
"""Strength of ``--feature-augment`` given without a value."""
DEFAULT_MEMORY_FRACTION = 0.25
"""Stream from disk when the features would take more than this share of free memory."""
DEFAULT_EXPORT_FORMAT = "keras"
COMPARE_CV_VALIDATION_FRACTION = 0.15
"""Share of each CV fold's train part the dense head early-stops on in ``compare``."""

# -- compare's probe protocols (heads/probe.py) ----------------------------------------
DEFAULT_PROTOCOL = "quick"
DEFAULT_C_GRID = "1e-6:1e5:45"
"""Kornblith et al. 2019 / DINOv2 ``eval/log_regression.py``: 45 log-spaced C in
[1e-6, 1e5], warm-started from the smallest (the sweep and the refit: 2.6 s for 1,800 x
1,024 features, 10 classes, on one core of a busy 2-core machine)."""
PROBE_VAL_FRACTION = 0.1
"""Share of train held out for selection when the cache has no val split (DINOv2: 10%)."""
PROBE_MAX_ITER = 1000
PROBE_TOL = 1e-4
"""L-BFGS stopping tolerance of each C (scikit-learn's default)."""
KNN_KS: tuple[int, ...] = (10, 20, 100, 200)
"""Neighbour counts of the knn protocol (DINOv2 ``eval/knn.py``), chosen on val."""
KNN_TEMPERATURE = 0.07
"""Votes weigh ``exp(cosine / T)`` (DINOv2 ``eval/knn.py``)."""
DEFAULT_BOOTSTRAP = 1000
"""Resamples of the test rows for the 95% intervals."""
DEFAULT_FEW_SHOT_SEEDS = 5
MAX_C_GRID = 1000
_INF = math.inf
"""Most C values a sweep accepts."""

# the dense head (DenseHead's own defaults)
DEFAULT_HIDDEN: tuple[int, ...] = (256,)
DEFAULT_DROPOUT = 0.5
DEFAULT_ACTIVATION = "relu"
DEFAULT_OPTIMIZER = "adam"
DEFAULT_LR = 1e-3
DEFAULT_MOMENTUM = 0.0
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 32
DEFAULT_PATIENCE = 5
DEFAULT_MONITOR = "val_accuracy"

# the scikit-learn baselines
DEFAULT_C = 1.0
DEFAULT_K = 5
DEFAULT_N_ESTIMATORS = 200
DEFAULT_MAX_DEPTH: int | None = None
DEFAULT_ALPHA = 1.0

# -- fine_tune -------------------------------------------------------------------------
FINE_TUNE_SCHEDULE = "auto"
# schedule "fixed" (the defaults from before the auto schedule)
FINE_TUNE_UNFREEZE = 20
"""Top backbone layers made trainable."""
FINE_TUNE_LR = 1e-5
FINE_TUNE_OPTIMIZER = "adam"
FINE_TUNE_EPOCHS = 10
FINE_TUNE_BATCH_SIZE = 32
FINE_TUNE_PATIENCE = 3
FINE_TUNE_AUGMENT = ""
# schedule "auto"
FINE_TUNE_AUTO_UNFREEZE = "all"
"""The deepest phase may train every backbone layer (BatchNormalization stays frozen)."""
FINE_TUNE_AUTO_LR = 1e-4
"""Peak learning rate of the head and the top layer group (the head-only phase: 10x)."""
FINE_TUNE_AUTO_EPOCHS = 10
"""Epochs of all phases together (fixed's default too). Measured on long-tailed MNIST at
96 px (1,500 train images, pretrained MobileNet): with 6 the deeper phase's val accuracy was
still rising when it ended, below the head's; with 10 it passed the head (val 0.956 vs
0.943, test 0.940 vs 0.912)."""
FINE_TUNE_AUTO_PATIENCE = 0
"""Epochs without a better val accuracy before a phase stops; 0: every phase runs all its
epochs (measured: a phase's val accuracy often dips before the cosine decay brings it back
up, so stopping early throws away the phase's best epochs)."""
FINE_TUNE_AUTO_AUGMENT = "crop,contrast"
"""Safe for every kind of data (no flips or turns: digits and text have an orientation): what
the recipe falls back to when the train images are too few to measure (heads/orientation.py)."""
FINE_TUNE_TEST_VIEWS = "auto"
"""The views the training augmentation assumed, vetoed by val (heads/test_views.py).
Measured (benchmarks/RESULTS.md section 32): on the texture photographs, which the recipe
finds orientation-free, the 8 views lifted the fine-tuned model's test accuracy in each of
three seeds (0.966 -> 0.979, 0.951 -> 0.959, 0.959 -> 0.966) and the head's (0.926 ->
0.946)."""
FINE_TUNE_WARMUP = 0.1
"""Share of each phase's steps warming the learning rate up from 0."""
FINE_TUNE_LR_DECAY = 1 / 2.6
"""Learning-rate factor between successive backbone layer groups (1: the same rate)."""
FINE_TUNE_BALANCE = "auto"
"""Balance an imbalanced train split by sampling, choosing by val balanced accuracy, never
below the head on either val figure. Measured (issue 29: a 4-class Fashion-MNIST set at
58/11/4/27 %, 400 train / 200 val / 200 test, MobileNet at 48 px, 6 epochs, seeds 0 and 1):
class weights without a head re-fit collapsed val accuracy to 0.29 in the first deeper
epoch (swings up to 0.35); with the re-fit, weights swung up to 0.185 / 0.10 and sampling
0.095 / 0.13; test balanced accuracy 0.376 for the head, weights 0.596 / 0.542, sampling
0.641 / 0.606, test accuracy 0.68 head, 0.725 / 0.70 weights, 0.685 / 0.79 sampling.
(Earlier, on long-tailed MNIST, class weights without the re-fit held val below the head.)"""
BALANCE_RATIO = 1.5
"""``balance="auto"`` weighs classes when the largest train class has at least this many
times the rows of the smallest."""


def parse_hidden(value: str | int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Hidden layer widths from ``"512,128"`` (``""``/``none``/``0``: none) or a sequence."""
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "0"):
            return ()
        try:
            widths = tuple(int(v) for v in value.split(","))
        except ValueError:
            raise invalid("hidden", value, "expected widths like 256 or 512,128") from None
    elif isinstance(value, int):
        widths = (value,)
    else:
        try:
            widths = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise invalid("hidden", value, "expected widths like 256 or 512,128") from None
    if any(width < 1 for width in widths):
        raise invalid("hidden", value, "widths must be at least 1")
    return widths


def parse_heads(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Head kinds from ``"dense,logreg"`` or a sequence; at least one, each known."""
    chosen = tuple(h.strip() for h in (value.split(",") if isinstance(value, str) else value))
    chosen = tuple(h for h in chosen if h)
    if not chosen or any(h not in HEAD_KINDS for h in chosen):
        shown = value if isinstance(value, str) else ",".join(value)
        raise invalid("heads", shown, f"expected some of {', '.join(HEAD_KINDS)}")
    return chosen


def parse_c_grid(value: str | float | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """C values from ``"1e-6:1e5:45"`` (``LOW:HIGH:N``, N log-spaced values), a comma list
    ``"0.1,1,10"`` or a sequence; sorted ascending (the sweep warm-starts upwards), each
    positive and finite."""
    wording = "expected LOW:HIGH:N (log-spaced) or a comma list of positive numbers"
    try:
        if isinstance(value, str) and ":" in value:
            parts = value.split(":")
            if len(parts) != 3:
                raise ValueError
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
            if not (0 < low <= high < _INF) or not 1 <= count <= MAX_C_GRID:
                raise ValueError
            if count > 1 and low == high:
                raise ValueError
            grid = tuple(float(c) for c in _logspace(low, high, count))
        elif isinstance(value, str):
            grid = tuple(float(v) for v in value.split(",") if v.strip())
        elif isinstance(value, list | tuple):
            grid = tuple(float(v) for v in value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            grid = (float(value),)
        else:
            raise ValueError
    except (TypeError, ValueError):
        raise invalid("c_grid", _shown(value), wording) from None
    if not grid or len(grid) > MAX_C_GRID or any(not 0 < c < _INF for c in grid):
        raise invalid("c_grid", _shown(value), wording)
    return tuple(sorted(set(grid)))


def _logspace(low: float, high: float, count: int) -> list[float]:
    if count == 1:
        return [low]
    a, b = math.log10(low), math.log10(high)
    return [10 ** (a + (b - a) * i / (count - 1)) for i in range(count)]


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def parse_shots(value: str | int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Few-shot counts from ``5``, ``"1,5,10"`` or a sequence, each at least 1, sorted
    (several: a few-shot curve)."""
    try:
        if isinstance(value, str):
            shots = tuple(int(v) for v in value.split(",") if v.strip())
        elif isinstance(value, list | tuple):
            shots = tuple(int(v) for v in value)
        elif isinstance(value, int) and not isinstance(value, bool):
            shots = (value,)
        else:
            raise ValueError
    except (TypeError, ValueError):
        raise invalid("shots", _shown(value), "expected K or K,K,... like 1,5,10") from None
    if not shots or any(k < 1 for k in shots):
        raise invalid("shots", _shown(value), "must be at least 1")
    return tuple(sorted(set(shots)))


def parse_ks(value: str | int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Neighbour counts from ``"10,20,100,200"`` or a sequence, each at least 1, sorted."""
    try:
        if isinstance(value, str):
            ks = tuple(int(v) for v in value.split(",") if v.strip())
        elif isinstance(value, list | tuple):
            ks = tuple(int(v) for v in value)
        elif isinstance(value, int) and not isinstance(value, bool):
            ks = (value,)
        else:
            raise ValueError
    except (TypeError, ValueError):
        raise invalid("knn_ks", _shown(value), "expected counts like 10,20,100,200") from None
    if not ks or any(k < 1 for k in ks):
        raise invalid("knn_ks", _shown(value), "expected counts of at least 1, like 10,20")
    return tuple(sorted(set(ks)))


def parse_augment(value: str) -> tuple[str, ...]:
    """Augmentations from ``"flip,zoom"`` (each once, in the order given)."""
    chosen = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in AUGMENTATIONS]
    if unknown:
        raise invalid("augment", ",".join(unknown), f"expected some of {','.join(AUGMENTATIONS)}")
    return tuple(dict.fromkeys(chosen))


def parse_unfreeze(value: str | int) -> int | None:
    """A number of top layers to unfreeze, or None for ``all``."""
    if str(value).strip().lower() == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        raise invalid("unfreeze", value, "expected a number or all") from None
    if count < 0:
        raise invalid("unfreeze", count, "must be 0 or more")
    return count


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``300``, ``90s``, ``5m``, ``1.5h`` (above 0)."""
    text = str(value).strip().lower()
    unit = text[-1:] if text[-1:] in ("s", "m", "h") else ""
    try:
        seconds = float(text[: len(text) - len(unit)]) * _DURATION_UNITS[unit]
    except ValueError:
        raise invalid("time_budget", value, "expected seconds or a number with s, m or h") from None
    if not seconds > 0 or seconds == float("inf"):
        raise invalid("time_budget", value, "must be above 0")
    return seconds


def check_activation(name: str) -> None:
    """Refuse what Keras does not know as an activation (loads Keras unless ``relu``)."""
    if name == DEFAULT_ACTIVATION:
        return
    from ..backbones.backbone import ensure_tensorflow_backend

    ensure_tensorflow_backend()
    import keras

    try:
        keras.activations.get(name)
    except (ValueError, TypeError):
        raise invalid("activation", name, "not a Keras activation") from None


def _parse(function: Any) -> Any:
    """A ``parse(value)`` as an option parser ``parse(value, name)``."""
    return lambda value, name: function(value)


AT_LEAST_1 = Range(1, wording="must be at least 1")
AT_LEAST_0 = Range(0, wording="must be 0 or more")
POSITIVE = Range(0, wording="must be positive", low_open=True)
SHARE = Range(0, 1, "must be between 0 and 1", low_open=True, high_open=True)


@dataclass(frozen=True)
class HeadOptions:
    """Everything ``train_head`` can be asked (``compare`` uses ``epochs``, ``seed`` and
    ``val_fraction``), checked when made. Each head kind uses its own subset
    (:meth:`head_params`)."""

    head: str = option(
        DEFAULT_HEAD, choices=HEAD_KINDS, help="Keras dense head or a scikit-learn baseline."
    )
    """One of :data:`HEAD_KINDS`."""
    # the dense head
    hidden: tuple[int, ...] = option(
        DEFAULT_HIDDEN,
        parse=_parse(parse_hidden),
        normalise=True,
        kind=str,
        help="Hidden layer widths, e.g. 512,128 (none: a linear softmax).",
    )
    """Hidden layer widths (empty: a linear softmax); ``"512,128"`` is accepted too."""
    dropout: float = option(
        DEFAULT_DROPOUT,
        range=Range(0, 1, "must be at least 0 and below 1", high_open=True),
        help="Dropout after each hidden Dense.",
    )
    batchnorm: bool = option(False, help="BatchNormalization after each hidden Dense.")
    activation: str = option(
        DEFAULT_ACTIVATION, parse=_parse(check_activation), help="A Keras activation."
    )
    optimizer: str = option(DEFAULT_OPTIMIZER, choices=OPTIMIZERS)
    lr: float = option(DEFAULT_LR, range=POSITIVE, help="Learning rate.")
    momentum: float = option(
        DEFAULT_MOMENTUM, range=Range(0, 1, "must be between 0 and 1"), help="sgd: momentum."
    )
    epochs: int = option(DEFAULT_EPOCHS, range=AT_LEAST_1)
    batch_size: int = option(DEFAULT_BATCH_SIZE, range=AT_LEAST_1)
    patience: int = option(
        DEFAULT_PATIENCE,
        range=AT_LEAST_0,
        help="EarlyStopping patience (best weights restored); 0 disables it.",
    )
    """EarlyStopping patience (best weights restored); 0 disables it."""
    monitor: str = option(DEFAULT_MONITOR, choices=MONITORS)
    from_logits: bool = option(False, help="Linear output and a from_logits loss.")
    # the baselines
    C: float = option(
        DEFAULT_C,
        range=POSITIVE,
        flag="--C",
        help="Inverse regularisation of logreg, linear-svm and svm.",
    )
    """Inverse regularisation of logreg, linear-svm and svm."""
    k: int = option(DEFAULT_K, range=AT_LEAST_1, help="Neighbours of knn.")
    """Neighbours of knn."""
    n_estimators: int = option(
        DEFAULT_N_ESTIMATORS, range=AT_LEAST_1, help="Trees of random-forest."
    )
    max_depth: int | None = option(
        DEFAULT_MAX_DEPTH, range=AT_LEAST_1, kind=int, help="Tree depth of random-forest."
    )
    alpha: float = option(DEFAULT_ALPHA, range=AT_LEAST_0, help="Ridge penalty.")
    """Ridge penalty."""
    # every head
    class_weight: str | None = option(None, choices=CLASS_WEIGHTS, kind=str)
    """None or ``balanced``."""
    standardize: bool | None = option(
        None,
        negatable=True,
        kind=bool,
        help="Standardise features. [default: on for logreg, svm, knn, ridge]",
    )
    """Standardise features; None: on for :data:`STANDARDIZE_BY_DEFAULT`, off for dense."""
    seed: int = option(DEFAULT_SEED, parse=check_seed)
    val_fraction: float = option(
        DEFAULT_VAL_FRACTION,
        range=SHARE,
        help="Share of train carved into val when the cache has no val split.",
    )
    """Share of train carved into val when the cache has no val split."""
    stream: bool | None = option(
        None,
        negatable=True,
        kind=bool,
        help="Stream the dense head's features from disk. [default: when large]",
    )
    """Stream the dense head's features from disk; None: only when they are large."""
    views: str = option(
        DEFAULT_VIEWS,
        choices=VIEW_MODES,
        help="Cached views (extract --views) to train on: plain (view 0), one (a random view "
        "per row and epoch, dense), all (every view a row), mean (their mean). Val and test "
        "use view 0.",
    )
    """Which cached views train the head (one of :data:`VIEW_MODES`)."""
    feature_augment: float = option(
        0.0,
        range=Range(0, 1, "expected 0 (off) to 1"),
        metavar="[STRENGTH]",
        help="Dense head: FroFA-style feature augmentation, per-channel scale and shift "
        f"redrawn every epoch. [alone: {DEFAULT_FEATURE_AUGMENT}]",
    )
    """The dense head: FroFA-style feature augmentation of the training rows, redrawn every
    epoch (:mod:`.view_training`): each channel scaled by ``1 +- feature_augment`` and
    shifted by ``+- feature_augment`` of its standard deviation; 0: off."""
    tap: str | None = option(
        None,
        kind=str,
        metavar="NAME",
        help="Train on a tap's features (extract --taps): its layer name, main (the "
        "features), or a+b side by side. The head exports a model ending at those layers.",
    )
    """A tap of the cache (``extract --taps``) to train on: its layer name, ``main``, or
    ``a+b`` (side by side, in that order; the exported model pools each layer and joins
    them). None: the features."""

    def __post_init__(self) -> None:
        check_fields(self)

    def head_params(self) -> dict[str, Any]:
        """The parameters of this kind of head (as ``head.json`` and the report record)."""
        names: tuple[str, ...]
        if self.head == "dense":
            names = _DENSE_PARAMS
        else:
            names = (*_BASELINE_PARAMS[self.head], "standardize", "class_weight", "seed")
        params = {name: getattr(self, name) for name in names}
        if self.head == "dense":
            params["standardize"] = bool(self.standardize)
        return params


_DENSE_PARAMS = (
    "hidden",
    "dropout",
    "batchnorm",
    "activation",
    "optimizer",
    "lr",
    "momentum",
    "epochs",
    "batch_size",
    "patience",
    "monitor",
    "class_weight",
    "from_logits",
    "standardize",
    "seed",
)
_BASELINE_PARAMS: dict[str, tuple[str, ...]] = {
    "logreg": ("C",),
    "linear-svm": ("C",),
    "svm": ("C",),
    "knn": ("k",),
    "random-forest": ("n_estimators", "max_depth"),
    "ridge": ("alpha",),
}


@dataclass(frozen=True)
class FineTuneOptions:
    """Everything ``fine_tune`` can be asked, checked when made. Options left None
    (``unfreeze``, ``lr``, ``epochs``, ``patience``, ``augment``) take the schedule's
    default: they read None here until :meth:`resolved` puts the defaults in (what a run
    uses, and its report's ``params``)."""

    schedule: str = option(
        FINE_TUNE_SCHEDULE,
        choices=SCHEDULES,
        help="auto: from the head, the top layers, then more, warm-up + cosine and "
        "layer-wise learning rates, the best epoch by val (never below the head); fixed: "
        "one run with the options given (as before).",
    )
    """One of :data:`SCHEDULES`."""
    unfreeze: str | int | None = option(
        None,
        parse=_parse(parse_unfreeze),
        kind=str,
        help="Number of top backbone layers to train, or all (auto: the deepest phase's). "
        f"[default: auto {FINE_TUNE_AUTO_UNFREEZE}, fixed {FINE_TUNE_UNFREEZE}]",
    )
    """Number of top backbone layers to train, or ``all`` (auto: the deepest phase's;
    fixed: 20, auto: all)."""
    unfreeze_from: str | None = option(None, kind=str, help="Train from this backbone layer up.")
    """Train from this backbone layer up (instead of ``unfreeze``)."""
    lr: float | None = option(
        None,
        range=POSITIVE,
        kind=float,
        help="Learning rate (auto: the peak of the head and the top layers). "
        f"[default: auto a range test around {FINE_TUNE_AUTO_LR:g}, fixed {FINE_TUNE_LR:g}]",
    )
    """fixed: the learning rate (1e-5); auto: the peak rate of the head and the top layer
    group (unset: a learning-rate range test picks it, within 10x of 1e-4)."""
    optimizer: str = option(FINE_TUNE_OPTIMIZER, choices=OPTIMIZERS)
    epochs: int | None = option(
        None,
        range=AT_LEAST_1,
        kind=int,
        help=f"Epochs (auto: of all phases; unset: {FINE_TUNE_AUTO_EPOCHS}, up to half more "
        f"while val still improves). [default: {FINE_TUNE_EPOCHS}]",
    )
    """10 (auto: of all phases together; unset: up to half more while the last epoch is still
    the best)."""
    batch_size: int = option(FINE_TUNE_BATCH_SIZE, range=AT_LEAST_1)
    patience: int | None = option(
        None,
        range=AT_LEAST_0,
        kind=int,
        help="auto: epochs of a phase without a better val accuracy; fixed: EarlyStopping "
        f"on val loss. [default: auto {FINE_TUNE_AUTO_PATIENCE}, fixed {FINE_TUNE_PATIENCE}]",
    )
    """fixed: EarlyStopping patience on val loss (3); auto: epochs of a phase without a
    better val accuracy before it stops (0: never)."""
    augment: str | None = option(
        None,
        parse=_parse(parse_augment),
        kind=str,
        help=f"Some of {','.join(AUGMENTATIONS)} (training only; fixed: the first five). "
        "[default: auto measured on the train images (flips and quarter turns when they have "
        "no orientation, crop unless it changes their class), fixed none]",
    )
    """Some of :data:`AUGMENTATIONS`, comma-separated (training only; fixed: those of
    :data:`LAYER_AUGMENTATIONS`, none by default; auto: measured on the train images,
    :mod:`.orientation`, ``crop,contrast`` when too few to measure)."""
    image_size: int | None = option(
        None,
        range=AT_LEAST_1,
        kind=int,
        help="auto: train at this side instead of the cache's (BatchNorm stays frozen; needs "
        "a global pooling). [default: the images' own when larger and the time allows, up to "
        "2x the cache's and 320; else the cache's]",
    )
    """Train at this side (square) instead of the cache's size (auto only; needs a backbone
    whose feature width does not depend on the size)."""
    balance: str = option(
        FINE_TUNE_BALANCE,
        choices=BALANCES,
        help="auto schedule: weights: balanced class weights in the loss; sample: every "
        "class equally likely in each epoch's draw of train images; auto: sample when the "
        f"largest train class has {BALANCE_RATIO:g}x the rows of the smallest. Balancing "
        "re-fits the head first and chooses by val balanced accuracy.",
    )
    """One of :data:`BALANCES` (auto only)."""
    allow_trade: bool = option(
        False,
        help="auto: let the kept epoch lose val accuracy (or balanced accuracy) against the "
        "head for a better chosen score; by default neither may drop.",
    )
    """auto: the kept epoch may be worse than the head on val accuracy or balanced accuracy
    when it is better on the score chosen by (by default it may not)."""
    warmup: float = option(
        FINE_TUNE_WARMUP,
        range=Range(0, 1, "must be at least 0 and below 1", high_open=True),
        help="auto: share of each phase's steps warming the learning rate up.",
    )
    """Share of each phase's steps warming up (auto only; 0: none)."""
    lr_decay: float = option(
        FINE_TUNE_LR_DECAY,
        range=Range(0, 1, "must be above 0 and at most 1", low_open=True),
        default_text="1/2.6",
        help="auto: learning-rate factor between successive backbone layer groups (1: none).",
    )
    """Rate factor between successive backbone layer groups (auto only; 1: none)."""
    time_budget: str | float | None = option(
        None,
        parse=_parse(parse_duration),
        normalise=True,
        kind=str,
        metavar="SECONDS|5m|1h",
        help="auto: fit the epochs of each phase to this much time (measured: a few training "
        "steps of each phase are timed first); the run stops at an epoch's end when out of "
        "time. [default: none]",
    )
    """auto: seconds the whole run may take (``300``, ``5m``, ``1h``): the epochs are cut to
    fit the estimate made from timed steps, and training stops once out of time."""
    test_views: str = option(
        FINE_TUNE_TEST_VIEWS,
        choices=TEST_VIEWS,
        help="model.keras averages over each image mirrored (2 views), quarter-turned (4) or "
        "both (8); predict runs the backbone once per view. auto: the symmetries the "
        "augmentation assumed (flip, rotate90), kept when val is no worse with them.",
    )
    """One of :data:`TEST_VIEWS`."""
    seed: int = option(DEFAULT_SEED, parse=check_seed)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.schedule == "fixed" and self.augment:
            unknown = [a for a in parse_augment(self.augment) if a not in LAYER_AUGMENTATIONS]
            if unknown:
                raise invalid(
                    "augment", ",".join(unknown), "only with schedule auto (fixed: "
                    f"some of {','.join(LAYER_AUGMENTATIONS)})"
                )  # fmt: skip
        if self.schedule == "fixed":
            for name, default in (
                ("image_size", None),
                ("balance", FINE_TUNE_BALANCE),
                ("allow_trade", False),
                ("time_budget", None),
                ("warmup", FINE_TUNE_WARMUP),
                ("lr_decay", FINE_TUNE_LR_DECAY),
            ):
                if getattr(self, name) != default:
                    raise invalid(name, getattr(self, name), "only with schedule auto")

    def resolved(self) -> FineTuneOptions:
        """These options with the schedule's default for every option left None."""
        auto = self.schedule == "auto"
        defaults: dict[str, Any] = {
            "unfreeze": FINE_TUNE_AUTO_UNFREEZE if auto else FINE_TUNE_UNFREEZE,
            "lr": FINE_TUNE_AUTO_LR if auto else FINE_TUNE_LR,
            "epochs": FINE_TUNE_AUTO_EPOCHS if auto else FINE_TUNE_EPOCHS,
            "patience": FINE_TUNE_AUTO_PATIENCE if auto else FINE_TUNE_PATIENCE,
            "augment": FINE_TUNE_AUTO_AUGMENT if auto else FINE_TUNE_AUGMENT,
        }
        missing = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **missing) if missing else self


@dataclass(frozen=True)
class CompareOptions:
    """What ``compare`` is asked besides :class:`HeadOptions`' ``epochs``, ``seed`` and
    ``val_fraction`` (the probe protocols' settings: :class:`~.probe.ProbeSettings`)."""

    protocol: str = option(
        DEFAULT_PROTOCOL,
        choices=PROTOCOLS,
        help="quick: every head kind's small grid; linear-probe: L-BFGS logistic regression "
        "over a C sweep; knn: cosine-weighted kNN; full: both and the dense head grid.",
    )
    heads: str | tuple[str, ...] = option(",".join(HEAD_KINDS), parse=_parse(parse_heads))
    cv: int | None = option(
        None,
        range=Range(2, wording="must be at least 2"),
        kind=int,
        help="Select by K-fold CV on train+val.",
    )
    c_grid: str | tuple[float, ...] | None = option(
        None,
        parse=_parse(parse_c_grid),
        kind=str,
        help="linear-probe: C values, LOW:HIGH:N log-spaced or a comma list. "
        f"[default: {DEFAULT_C_GRID}]",
    )
    knn_ks: str | tuple[int, ...] | None = option(
        None,
        parse=_parse(parse_ks),
        kind=str,
        help="knn: neighbour counts chosen from on val. "
        f"[default: {','.join(str(k) for k in KNN_KS)}]",
    )
    temperature: float | None = option(
        None,
        range=POSITIVE,
        kind=float,
        help=f"knn: votes weigh exp(cosine/T). [default: {KNN_TEMPERATURE}]",
    )
    normalize: str | None = option(
        None,
        choices=NORMALIZATIONS,
        kind=str,
        help="Feature transform fitted on train. [default: standardize for linear-probe, "
        "l2 for knn, none for dense]",
    )
    shots: str | int | tuple[int, ...] | None = option(
        None,
        parse=_parse(parse_shots),
        kind=str,
        metavar="K[,K...]",
        help="Few-shot: K training images per class; several (1,5,10): a few-shot curve, "
        "rows for each K.",
    )
    seeds: int | None = option(
        None,
        range=Range(1, 1000, "expected 1 to 1000"),
        kind=int,
        help=f"Few-shot draws. [default: {DEFAULT_FEW_SHOT_SEEDS}]",
    )
    bootstrap: int | None = option(
        None,
        range=Range(0, 1_000_000, "expected 0 (no intervals) to 1000000"),
        kind=int,
        help=f"Test resamples of the 95% intervals (0: none). [default: {DEFAULT_BOOTSTRAP}]",
    )
    taps: str | None = option(
        None,
        kind=str,
        metavar="all|LIST",
        help="Rank the taps of one cache (extract --taps): all (main and every tap) or "
        "names; each tap and their concatenation is a row source.",
    )
    """Taps of one cache to rank (``all`` or a comma list; ``main``: the features): each
    is a source of rows, and so is their concatenation. None: the features only."""
    zero_shot: bool = option(
        False,
        help="Also learn from text (a CLIP or SigLIP cache, extract --projection): a zero-shot "
        "row (0 labelled images) and text-probe, a linear probe started from the zero-shot "
        "classifier and regularised toward it.",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PredictOptions:
    """What ``predict`` and ``export`` are asked."""

    top_k: int = option(DEFAULT_TOP_K, range=AT_LEAST_1)
    batch_size: int = option(DEFAULT_PREDICT_BATCH_SIZE, range=AT_LEAST_1)
    format: str = option(
        DEFAULT_EXPORT_FORMAT,
        choices=EXPORT_FORMATS,
        help="savedmodel: a TensorFlow SavedModel folder for TF Serving.",
    )
    """``export``'s file format."""
    test_views: str = option(
        "none",
        choices=EXPORT_TEST_VIEWS,
        help="Average over each image mirrored (2 views), quarter-turned (4) or both (8), for "
        "images with no up; the backbone runs once per view.",
    )
    """``export``'s test-time views (:data:`VIEW_GROUPS`)."""

    def __post_init__(self) -> None:
        check_fields(self)


def parse_classes(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Class texts from a file (one a line), a comma list or a sequence."""
    from pathlib import Path

    if isinstance(value, str):
        path = Path(value).expanduser()
        if "," not in value and path.is_file():
            lines = path.read_text().splitlines()
        else:
            lines = value.split(",")
    else:
        lines = [str(v) for v in value]
    chosen = tuple(t.strip() for t in lines if t.strip())
    if isinstance(value, str) and value.strip() and not chosen:
        raise invalid("classes", value, "expected a comma list or a file of class texts")
    return chosen


def _check_templates(value: str, name: str) -> None:
    from pathlib import Path

    if value not in TEMPLATE_SETS and not Path(value).expanduser().is_file():
        raise invalid(name, value, f"expected {', '.join(TEMPLATE_SETS)} or a file of templates")


@dataclass(frozen=True)
class ZeroShotOptions:
    """What ``zero-shot`` is asked: the class texts and the prompt templates."""

    classes: str | tuple[str, ...] = option(
        (),
        parse=_parse(parse_classes),
        normalise=True,
        metavar="A,B,..|FILE",
        default_text="the cache's class names",
        help="The text of each class, one per class of the cache in its order (or the "
        "classes of an unlabelled cache): a comma list or a file, one a line.",
    )
    templates: str = option(
        "photo",
        parse=_check_templates,
        metavar="NAME|FILE",
        help="Prompt templates, {} for the class: photo ('a photo of a {}.'), plain, clip "
        "(CLIP's 7-template ensemble) or a file, one a line; several are averaged.",
    )
    seed: int = option(DEFAULT_SEED, parse=check_seed)

    def __post_init__(self) -> None:
        check_fields(self)


OPTION_SETS = (HeadOptions, FineTuneOptions, CompareOptions, PredictOptions, ZeroShotOptions)
"""Every heads option set; :func:`check_options` knows each of their options."""
_SPECS: dict[str, Option] = {}
for _set in OPTION_SETS:
    for _field, _spec in options_of(_set):
        _SPECS.setdefault(_field.name, _spec)


def check_options(values: Mapping[str, Any]) -> None:
    """Refuse any bad value among ``values`` (option name -> value; None is not set), as
    the option of that name is declared in :data:`OPTION_SETS`; other names pass."""
    for name, value in values.items():
        if name in _SPECS:
            check_value(name, _SPECS[name], value)


Options = TypeVar("Options", HeadOptions, FineTuneOptions, ZeroShotOptions)


def merge_options(kind: type[Options], options: Options | None, **values: Any) -> Options:
    """``options`` (or the defaults) with ``values`` put in; values of None are not set."""
    given = {name: value for name, value in values.items() if value is not None}
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    if options is None:
        return kind(**given)
    return replace(options, **given) if given else options
