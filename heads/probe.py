"""The papers' evaluation protocols on cached features: a linear probe and a weighted kNN.

- **linear-probe** (Kornblith et al. 2019; DINOv2 ``eval/log_regression.py``; CLIP A.3):
  L-BFGS multinomial logistic regression in float64 over a log grid of C, warm-started from
  the smallest C upwards; C chosen by val acc@1 (the first best: the strongest
  regularisation among ties), then refitted on train+val and scored once on test.
- **knn** (DINOv2 ``eval/knn.py``): cosine similarity to the bank, the k nearest vote with
  weights ``exp(similarity / T)`` (T = 0.07), class votes summed; k chosen on val, then the
  bank is train+val for test.
- **dense**: the dense head grid of ``compare`` (fit on train, early-stopped and chosen on
  val; no refit, since early stopping needs val).

The feature transform (``l2``, ``standardize`` or ``none``; :data:`PROTOCOL_NORMALIZE` by
default) is fitted on the training rows and applied to val, test and the refit's rows.

Everything here works on arrays; :func:`run_protocols` takes :class:`ProbeData` and returns
one :class:`ProbeRow` per protocol, with the metrics and bootstrap intervals of
:mod:`featcache.heads.metrics`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..core.options import invalid
from .fit_progress import advance, detail, step
from .metrics import Scored, bootstrap_metrics
from .options import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_C_GRID,
    DEFAULT_EPOCHS,
    DEFAULT_FEW_SHOT_SEEDS,
    DEFAULT_SEED,
    KNN_KS,
    KNN_TEMPERATURE,
    PROBE_MAX_ITER,
    PROBE_TOL,
    check_options,
    parse_c_grid,
    parse_ks,
    parse_shots,
)

PROTOCOL_NORMALIZE = {"linear-probe": "standardize", "knn": "l2", "dense": "none"}
"""The feature transform of each protocol unless one is asked for."""
_QUERY_CHUNK = 1024
"""kNN query rows per similarity block."""


@dataclass
class ProbeData:
    """Features and labels of train, val and test (labels are class indices)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    selection: str = "val"
    """``val``, or ``carved val`` when val was carved from train."""

    def shots(self, shots: int, seed: int) -> ProbeData:
        """The same data with ``shots`` training rows per class (:func:`sample_shots`)."""
        picked = sample_shots(self.y_train, shots, seed, self.class_names)
        return replace(self, x_train=self.x_train[picked], y_train=self.y_train[picked])


def sample_shots(
    labels: np.ndarray, shots: int, seed: int, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Indices of exactly ``shots`` rows of every class in ``labels``, drawn without
    replacement (seeded), in increasing order. A class with fewer rows is refused."""
    check_options({"shots": shots, "seed": seed})
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            name = class_names[label] if class_names is not None else str(label)
            raise invalid("shots", shots, f"class {name!r} has only {len(members)} train rows")
        picked.append(rng.choice(members, size=shots, replace=False))
    return np.sort(np.concatenate(picked))


class Transform:
    """A feature transform fitted on training rows: ``l2`` (unit rows), ``standardize``
    (zero mean, unit variance per feature; constant features left centred) or ``none``."""

    def __init__(self, how: str) -> None:
        check_options({"normalize": how})
        self.how = how
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> Transform:
        if self.how == "standardize":
            x = np.asarray(x, dtype=np.float64)
            self.mean = x.mean(axis=0)
            std = x.std(axis=0)
            self.scale = np.where(std > 0, std, 1.0)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.how == "l2":
            return l2_normalize(x)
        if self.how == "standardize":
            assert self.mean is not None and self.scale is not None, "fit first"
            return (x - self.mean) / self.scale
        return x


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norms > 0, norms, 1.0))


# -- linear probe ----------------------------------------------------------------------


@dataclass
class LinearProbe:
    """A fitted linear probe: the sweep, the C chosen and the model refitted with it."""

    sweep: list[tuple[float, float]]
    """(C, val acc@1) for every C of the grid, in increasing C."""
    C: float
    val_accuracy: float
    model: Any
    """The ``LogisticRegression`` refitted on train+val (on train only when ``refit`` was
    off)."""


def _logistic(C: float, max_iter: int, tol: float, warm: bool) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, tol=tol, warm_start=warm)


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    c_grid: str | Sequence[float] = DEFAULT_C_GRID,
    *,
    refit: bool = True,
    max_iter: int = PROBE_MAX_ITER,
    tol: float = PROBE_TOL,
) -> LinearProbe:
    """Sweep C over ``c_grid`` (``"1e-6:1e5:45"``, ``"0.1,1,10"`` or values), each fit
    warm-started from the previous C's solution, in float64; choose the C with the best val
    acc@1 (the smallest among ties) and refit on train+val with it (``refit``), cold."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    grid = parse_c_grid(c_grid) if isinstance(c_grid, str) else parse_c_grid(list(c_grid))
    x_train = np.asarray(x_train, dtype=np.float64)
    x_val = np.asarray(x_val, dtype=np.float64)
    model = _logistic(grid[0], max_iter, tol, warm=True)
    sweep = []
    # one BLAS thread: L-BFGS's many small products ran 80x slower with OpenBLAS's
    # threads on a busy 2-core machine (198 x 1,024 features: 25 s against 0.3 s)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, C in enumerate(grid):
            detail(f"C {i + 1}/{len(grid)}")
            model.set_params(C=C)
            model.fit(x_train, y_train)
            sweep.append((C, float(np.mean(model.predict(x_val) == y_val))))
        best = int(np.argmax([score for _, score in sweep]))
        C, score = sweep[best]
        final = _logistic(C, max_iter, tol, warm=False)
        if refit:
            final.fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]))
        else:
            final.fit(x_train, y_train)
    return LinearProbe(sweep, C, score, final)


# -- kNN -------------------------------------------------------------------------------


def knn_votes(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    temperature: float = KNN_TEMPERATURE,
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """Class votes (queries x classes) of the ``k`` most cosine-similar bank rows, each
    weighing ``exp(similarity / temperature)`` (DINOv2 ``eval/knn.py``).

    ``classes`` are the vote columns (default: the bank's labels, sorted).
    """
    check_options({"k": k, "temperature": temperature})
    classes = np.unique(bank_labels) if classes is None else np.asarray(classes)
    column = {int(c): i for i, c in enumerate(classes.tolist())}
    targets = np.asarray([column[int(v)] for v in bank_labels.tolist()], dtype=np.int64)
    bank = l2_normalize(np.asarray(bank, dtype=np.float64))
    queries = l2_normalize(np.asarray(queries, dtype=np.float64))
    k = min(k, len(bank))
    votes = np.zeros((len(queries), len(classes)))
    for start in range(0, len(queries), _QUERY_CHUNK):
        sims = queries[start : start + _QUERY_CHUNK] @ bank.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, nearest, axis=1)
        weights = np.exp(top / temperature)
        block = votes[start : start + len(sims)]
        np.add.at(block, (np.arange(len(sims))[:, None], targets[nearest]), weights)
    return votes


@dataclass
class KnnProbe:
    """The k chosen on val and the sweep."""

    sweep: list[tuple[int, float]]
    """(k, val acc@1) for every k tried."""
    k: int
    val_accuracy: float
    temperature: float
    skipped: list[int] = field(default_factory=list)
    """ks above the training rows (not tried)."""


def knn_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    ks: str | Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
) -> KnnProbe:
    """Choose k on val (the smallest among ties); ks above the training rows are skipped
    (the smallest k is always tried)."""
    chosen = parse_ks(ks if isinstance(ks, str) else list(ks))
    usable = [k for k in chosen if k <= len(y_train)] or [chosen[0]]
    classes = np.unique(y_train)
    sweep = []
    for k in usable:
        votes = knn_votes(x_train, y_train, x_val, k, temperature, classes)
        sweep.append((k, float(np.mean(classes[np.argmax(votes, axis=1)] == y_val))))
    best = int(np.argmax([score for _, score in sweep]))
    k, score = sweep[best]
    skipped = [k for k in chosen if k not in usable]
    return KnnProbe(sweep, k, score, temperature, skipped)


# -- running the protocols -------------------------------------------------------------


@dataclass
class ProbeRow:
    """One protocol's result on one feature source (a leaderboard row)."""

    protocol: str
    params: dict[str, Any]
    """What was chosen (C, k, dense parameters), with the normalisation."""
    selection: str
    selection_accuracy: float
    """Val acc@1 of the chosen parameters (mean over few-shot seeds)."""
    test: dict[str, dict[str, Any]]
    """Metric -> value, std (over seeds), low, high (bootstrap 95%)."""
    fit_seconds: float
    rows: dict[str, int]
    sweep: list[list[Any]] = field(default_factory=list)
    """(parameter, val acc@1) of each point tried (the first seed's with few-shot)."""
    seeds: list[dict[str, Any]] = field(default_factory=list)
    """Few-shot: each seed's chosen parameters and test acc@1."""


@dataclass(frozen=True)
class ProbeSettings:
    """What :func:`run_protocols` is asked; checked when made."""

    c_grid: str | tuple[float, ...] = DEFAULT_C_GRID
    knn_ks: str | tuple[int, ...] = KNN_KS
    temperature: float = KNN_TEMPERATURE
    normalize: str | None = None
    """``l2``, ``standardize`` or ``none``; None: :data:`PROTOCOL_NORMALIZE`."""
    shots: int | tuple[int, ...] | None = None
    """Few-shot: this many training rows per class, drawn ``seeds`` times (``compare``
    also takes several, ``(1, 5, 10)``: a curve, each run on its own)."""
    seeds: int | None = None
    """Few-shot draws (only with ``shots``); None: :data:`DEFAULT_FEW_SHOT_SEEDS` with
    ``shots``, else 1."""
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = DEFAULT_SEED
    epochs: int = DEFAULT_EPOCHS
    """Of the dense head grid."""
    max_iter: int = PROBE_MAX_ITER
    tol: float = PROBE_TOL
    zero_shot: bool = False
    """Also the ``zero-shot`` row and the ``text-probe`` (a CLIP or SigLIP cache with its
    preset's text tower; :mod:`~.text_probe`)."""

    def __post_init__(self) -> None:
        check_options(
            {
                "c_grid": self.c_grid,
                "knn_ks": self.knn_ks,
                "temperature": self.temperature,
                "normalize": self.normalize,
                "shots": self.shots,
                "seeds": self.seeds,
                "bootstrap": self.bootstrap,
                "seed": self.seed,
                "epochs": self.epochs,
            }
        )
        if self.shots is not None:  # "5" or (5,): 5; several stay a tuple (a curve)
            counts = parse_shots(self.shots)
            object.__setattr__(self, "shots", counts[0] if len(counts) == 1 else counts)
        if self.shots is None and self.seeds not in (None, 1):
            raise invalid("seeds", self.seeds, "only with shots (few-shot draws)")
        if self.seeds is None:
            object.__setattr__(self, "seeds", DEFAULT_FEW_SHOT_SEEDS if self.shots else 1)


@dataclass
class _Fitted:
    params: dict[str, Any]
    selection_accuracy: float
    scored: Scored
    sweep: list[list[Any]]


def _fit_linear(data: ProbeData, settings: ProbeSettings, how: str, refit: bool) -> _Fitted:
    transform = Transform(how).fit(data.x_train)
    probe = linear_probe(
        transform(data.x_train),
        data.y_train,
        transform(data.x_val),
        data.y_val,
        settings.c_grid,
        refit=refit,
        max_iter=settings.max_iter,
        tol=settings.tol,
    )
    scores = probe.model.predict_proba(transform(data.x_test))
    return _Fitted(
        {"C": probe.C, "normalize": how},
        probe.val_accuracy,
        Scored.of(data.y_test, scores, probe.model.classes_),
        [[c, s] for c, s in probe.sweep],
    )


def _fit_knn(data: ProbeData, settings: ProbeSettings, how: str, refit: bool) -> _Fitted:
    transform = Transform(how).fit(data.x_train)
    x_train = transform(data.x_train)
    probe = knn_probe(
        x_train,
        data.y_train,
        transform(data.x_val),
        data.y_val,
        settings.knn_ks,
        settings.temperature,
    )
    bank, bank_labels = x_train, data.y_train
    if refit:
        bank = np.concatenate([x_train, transform(data.x_val)])
        bank_labels = np.concatenate([data.y_train, data.y_val])
    classes = np.unique(bank_labels)
    votes = knn_votes(
        bank, bank_labels, transform(data.x_test), probe.k, probe.temperature, classes
    )
    return _Fitted(
        {"k": probe.k, "temperature": probe.temperature, "normalize": how},
        probe.val_accuracy,
        Scored.of(data.y_test, votes, classes),
        [[k, s] for k, s in probe.sweep],
    )


def _fit_dense(data: ProbeData, settings: ProbeSettings, how: str, refit: bool) -> _Fitted:
    del refit  # early stopping needs val: the dense grid never refits on it
    from .baselines import GRIDS
    from .dense import DenseHead

    transform = Transform(how).fit(data.x_train)
    x_train, x_val = transform(data.x_train), transform(data.x_val)
    seen = np.isin(data.y_val, np.unique(data.y_train))
    best: tuple[float, dict[str, Any], Any] | None = None
    sweep = []
    for params in GRIDS["dense"]:
        head = DenseHead(**params, epochs=settings.epochs, seed=settings.seed)
        head.fit(
            x_train.astype(np.float32),
            data.y_train,
            validation_data=(x_val[seen].astype(np.float32), data.y_val[seen]),
        )
        score = float(np.mean(head.predict(x_val.astype(np.float32)) == data.y_val))
        shown = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
        sweep.append([shown, score])
        if best is None or score > best[0]:
            best = (score, shown, head)
    assert best is not None
    score, shown, head = best
    scores = head.predict_proba(transform(data.x_test).astype(np.float32))
    return _Fitted(
        {**shown, "epochs": settings.epochs, "normalize": how},
        score,
        Scored.of(data.y_test, scores, head.classes_),
        sweep,
    )


_FITTERS = {"linear-probe": _fit_linear, "knn": _fit_knn, "dense": _fit_dense}
PROBE_KINDS = tuple(_FITTERS)
"""The rows a probe protocol can produce."""
PROTOCOL_KINDS = {
    "linear-probe": ("linear-probe",),
    "knn": ("knn",),
    "full": ("linear-probe", "knn", "dense"),
}
"""The rows of each ``compare`` protocol but ``quick``."""
ZERO_LABEL_KINDS = ("zero-shot",)
"""Rows that learn nothing from labelled images (one fit, 0 training rows, few-shot or not)."""


def run_protocols(
    data: ProbeData,
    kinds: Sequence[str],
    settings: ProbeSettings | None = None,
    fitters: Mapping[str, Callable[..., _Fitted]] | None = None,
) -> list[ProbeRow]:
    """One :class:`ProbeRow` per kind (``linear-probe``, ``knn``, ``dense``): parameters
    chosen on val, test metrics with bootstrap intervals. With ``settings.shots``, every
    kind runs on ``seeds`` draws of that many training rows per class (the same draws for
    every kind); the metrics are the mean over the draws, ``std`` their spread, and the
    interval resamples the test rows for all draws at once. Few-shot runs choose on the
    full val split and do not refit on val (it would add more than the shots).
    ``fitters`` adds kinds (``compare --zero-shot``'s, :mod:`~.text_probe`)."""
    settings = settings or ProbeSettings()
    if isinstance(settings.shots, tuple):
        raise invalid("shots", settings.shots, "one K per run (compare runs a few-shot curve)")
    known = {**_FITTERS, **(fitters or {})}
    out = []
    for kind in kinds:
        fit = known[kind]
        how = settings.normalize or PROTOCOL_NORMALIZE.get(kind, "none")
        zero = kind in ZERO_LABEL_KINDS
        draws: Sequence[int | None] = (
            range(settings.seeds or 1) if settings.shots and not zero else [None]
        )
        fitted, seeds = [], []
        began = time.monotonic()
        for draw in draws:
            part = data
            if settings.shots is not None and draw is not None:
                part = data.shots(settings.shots, settings.seed + draw)
            shot = f" ({settings.shots}-shot, draw {draw + 1})" if draw is not None else ""
            step(f"compare: {kind}{shot}")
            result = fit(part, settings, how, settings.shots is None)
            advance()
            fitted.append(result)
            if draw is not None:
                correct = result.scored.y_pred == result.scored.y_true
                seeds.append(
                    {
                        "seed": settings.seed + draw,
                        "params": result.params,
                        "acc1": float(np.mean(correct)),
                    }
                )
        seconds = time.monotonic() - began
        rows = {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)}
        if settings.shots is not None:
            rows["train"] = settings.shots * len(np.unique(data.y_train))
        if zero:
            rows["train"] = 0
        params = dict(fitted[0].params)
        if settings.shots is not None and not zero:
            params = {"shots": settings.shots, "seeds": settings.seeds, **params}
            for name in ("C", "k", "hidden", "dropout", "lambda"):
                if name in params:
                    params[name] = [f.params[name] for f in fitted]
        out.append(
            ProbeRow(
                protocol=kind,
                params=params,
                selection=data.selection,
                selection_accuracy=float(np.mean([f.selection_accuracy for f in fitted])),
                test=bootstrap_metrics(
                    [f.scored for f in fitted], settings.bootstrap, settings.seed
                ),
                fit_seconds=seconds,
                rows=rows,
                sweep=fitted[0].sweep,
                seeds=seeds,
            )
        )
    return out
