"""``train_head``: fit one head on a cache's features and write its run folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import check_run_folder
from ..core.progress import Status
from ..core.settings import FeatureSettings
from ..errors import CacheError, DatasetError
from .baselines import fit_baseline, make_baseline, probabilities
from .data import CachedSplits, Caches, JointCache, Split, cache_paths, load_splits, should_stream
from .dense import DenseHead
from .fit_progress import Tracker, tracking
from .options import DEFAULT_FEATURE_BATCH_SIZE, ZERO_SHOT, HeadOptions, merge_options
from .report import metrics, write_confusion, write_history
from .runs import HEAD_FORMAT, head_settings, read_head_meta
from .view_training import check_view_training, fit_views, uses_views

DEFAULT_RUNS_DIR = Path("runs")
_VAL_BATCH = 1024
"""Rows per validation batch when the dense head streams its features."""


@dataclass
class TrainedHead:
    """A fitted head with what is needed to use it on new features."""

    kind: str
    estimator: Any
    class_names: list[str]
    meta: dict[str, Any]

    @property
    def settings(self) -> FeatureSettings:
        """The feature settings of the cache the head was trained on (a head trained on
        several caches' features has none: CacheError)."""
        return head_settings(self.meta)

    @property
    def classes(self) -> np.ndarray:
        """Label index of each probability column."""
        return np.asarray(self.estimator.classes_)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities, one column per entry of :attr:`classes`."""
        return probabilities(self.estimator, np.asarray(features, dtype=np.float32))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted label indices."""
        return self.classes[np.argmax(self.predict_proba(features), axis=1)]


@dataclass
class TrainResult:
    """What ``train_head`` produced."""

    run_dir: Path
    head: TrainedHead
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _fit(
    kind: str, params: dict[str, Any], splits: CachedSplits, stream: bool
) -> tuple[Any, dict[str, list[float]] | None]:
    if kind != "dense":
        model = make_baseline(kind, **params)
        fit_baseline(kind, model, splits.features(splits.train), splits.train.labels)
        return model, None
    head = DenseHead(**params)
    early = splits.seen(splits.val)  # classes absent from train cannot steer early stopping
    if len(early) == 0:
        raise DatasetError(f"{splits.path}: no val row belongs to a class seen in train")
    if not stream:
        head.fit(
            splits.features(splits.train),
            splits.train.labels,
            validation_data=(splits.features(early), early.labels),
        )
        return head, head.history_
    batch, seed = int(params["batch_size"]), int(params["seed"])
    stats = _streamed_stats(splits, splits.train) if params.get("standardize") else None

    def train(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return splits.batches(splits.train, batch, shuffle=True, seed=seed + epoch)

    def val() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return splits.batches(early, _VAL_BATCH, shuffle=False, seed=0)

    classes = np.unique(splits.train.labels)
    val_batches = max(1, -(-len(early) // _VAL_BATCH))
    head.fit_batches(
        train, val, splits.feature_dim, classes, splits.train.labels, stats, val_batches
    )
    return head, head.history_


def _streamed_stats(splits: CachedSplits, split: Split) -> tuple[np.ndarray, np.ndarray]:
    total = np.zeros(splits.feature_dim)
    squares = np.zeros(splits.feature_dim)
    for x, _ in splits.batches(split, DEFAULT_FEATURE_BATCH_SIZE, shuffle=False, seed=0):
        total += x.sum(axis=0)
        squares += (x.astype(np.float64) ** 2).sum(axis=0)
    mean = total / max(1, len(split))
    return mean, np.maximum(squares / max(1, len(split)) - mean**2, 0.0)


def predict_split(
    head: TrainedHead, splits: CachedSplits, split: Split, stream: bool
) -> np.ndarray:
    """Probabilities for every row of a split (read in batches when streaming)."""
    if not stream:
        return head.predict_proba(splits.features(split))
    parts = [
        head.predict_proba(x)
        for x, _ in splits.batches(split, DEFAULT_FEATURE_BATCH_SIZE, False, 0)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, len(head.classes)))


def new_run_dir(cache: Path, kind: str, root: Path = DEFAULT_RUNS_DIR) -> Path:
    """``runs/<cache-stem>-<head>-<timestamp>``, unique."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{cache.stem}-{kind}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def train_head(
    cache: Caches,
    head: str | None = None,
    output: str | os.PathLike[str] | None = None,
    *,
    options: HeadOptions | None = None,
    plot: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    **values: Any,
) -> TrainResult:
    """Fit a head on the cache's train split, select on val, report val and test.

    ``options`` (:class:`~featcache.heads.options.HeadOptions`), or keyword arguments of
    the same names, which override it: the head's parameters (``hidden``, ``dropout``,
    ``lr``, ``epochs``, ``C``, ``k``, ...), ``val_fraction``, ``seed`` and ``stream``
    (None streams the dense head's features from disk only when they would not fit
    comfortably in memory). ``head`` (default ``dense``) overrides ``options.head``.

    Several caches (``cache`` a sequence) train on their features concatenated, over the
    images present in every cache with the same class (matched by content hash; the notes
    say how many rows were dropped). Such a head records every cache (``head.json``
    ``caches``); predicting, exporting and fine-tuning need a head of one cache.

    ``plot`` (auto, pca, tsne or umap) also writes ``map.png``, a 2-D map of the cache's
    features coloured by label (:func:`featcache.audit.plot.plot_cache`), into the run
    folder and records it in ``report.json`` under ``map``.

    ``progress`` (None: on a terminal) shows the training on stderr: the dense head's bar
    over its epochs' steps with the epoch and val accuracy, a status line with the time
    elapsed for a scikit-learn head.

    An ``output`` folder that already holds files is refused before training unless
    ``overwrite``.

    Examples
    --------
    >>> result = train_head("cache/mobilenet.h5", head="logreg", C=1.0)  # doctest: +SKIP
    >>> result.report["test"]["accuracy"]  # doctest: +SKIP
    """
    chosen = merge_options(HeadOptions, options, head=head, **values)
    check_run_folder(output, overwrite)
    if plot is not None:  # refused before training, not after
        from ..audit.plot import check_method

        check_method(plot, "plot")
    paths = cache_paths(cache)
    kind = chosen.head
    params = chosen.head_params()
    splits = load_splits(
        paths if len(paths) > 1 else paths[0],
        val_fraction=chosen.val_fraction,
        seed=chosen.seed,
        tap=chosen.tap,
    )
    cache = splits.path
    streaming = kind == "dense" and should_stream(splits, chosen.stream)
    names = splits.class_names
    views = uses_views(chosen)
    if views:  # cached views or feature augmentation (heads/view_training.py)
        check_view_training(splits, chosen)
    started = time.monotonic()
    streamed = streaming  # fit_views may stream the train views on its own
    own = _tracker(kind, progress)
    with tracking(own), _fitting(kind, own):
        if views:
            estimator, history, streamed = fit_views(kind, params, splits, streaming, chosen)
        else:
            estimator, history = _fit(kind, params, splits, streaming)
    fit_seconds = time.monotonic() - started
    trained = TrainedHead(kind, estimator, names, _meta(kind, params, splits))
    if views:  # what the head trained on: head.json records it, as report.json does
        trained.meta.update(views=chosen.views, feature_augment=chosen.feature_augment)
    if chosen.tap:
        trained.meta["tap"] = chosen.tap
    evaluated = {}
    for split_name in ("val", "test"):
        split = getattr(splits, split_name)
        proba = predict_split(trained, splits, split, streaming)
        predicted = trained.classes[np.argmax(proba, axis=1)]
        evaluated[split_name] = metrics(split.labels, predicted, names)
    report = {
        "head": kind,
        "params": _jsonable(params),
        "cache": str(cache),
        **({"caches": [str(p) for p in paths]} if len(paths) > 1 else {}),
        "fingerprint": splits.reader.fingerprint,
        "backbone": splits.settings.backbone,
        "rows": {s: len(getattr(splits, s)) for s in ("train", "val", "test")},
        "class_names": names,
        "streamed": streamed,
        "stream_option": chosen.stream,
        "val_fraction": chosen.val_fraction,
        **({"views": chosen.views, "feature_augment": chosen.feature_augment} if views else {}),
        **({"tap": chosen.tap, "layer": splits.settings.layer} if chosen.tap else {}),
        "notes": splits.notes,
        "fit_seconds": round(fit_seconds, 3),
        "val": evaluated["val"],
        "test": evaluated["test"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if history is not None:
        report["epochs_run"] = getattr(estimator, "n_epochs_", len(history.get("loss", [])))
        report["best_epoch"] = getattr(estimator, "best_epoch_", None)
    run_dir = Path(output) if output is not None else new_run_dir(cache, kind)
    save_run(run_dir, trained, report, history)
    if plot is not None:  # after the head is saved: a failed map never loses it
        add_run_map(run_dir, splits, report, plot, chosen.seed, progress)
    return TrainResult(run_dir, trained, report, report["notes"])


def _tracker(kind: str, progress: bool | None) -> Tracker | None:
    """``train-head``'s bar: the dense head's steps (Keras drives it); None when asked for
    no progress (inside ``compare``, whose bar stays the current one)."""
    if progress is False:
        return None
    return Tracker(f"train-head: {kind} head", progress, keras_drives=kind == "dense")


@contextmanager
def _fitting(kind: str, tracker: Tracker | None) -> Iterator[None]:
    """A status line with the time elapsed while a scikit-learn head fits (no steps to
    count), shown only under ``train_head``'s own tracker."""
    shown = None
    if kind != "dense" and tracker is not None and tracker.enabled:
        shown = Status(f"train-head: fitting the {kind} head…", True)
    try:
        yield
    finally:
        if shown is not None:
            shown.close()


def add_run_map(
    run_dir: Path,
    splits: CachedSplits,
    report: dict[str, Any],
    method: str,
    seed: int,
    progress: bool | None = None,
) -> None:
    """Write ``map.png`` into a saved run and record it in ``report.json`` under ``map``.

    The rows marked val are those the head was selected on (carved from train by
    ``val_fraction`` when the cache has none). An error or Ctrl-C while mapping is
    recorded as ``{"error": ...}`` with a note; the head and its report stay saved.
    """
    from ..audit.plot import write_run_map

    split = np.asarray(splits.reader.split, dtype=np.int64).copy()
    for index, name in enumerate(("train", "val", "test")):
        split[getattr(splits, name).rows] = index
    try:
        report["map"] = write_run_map(splits.reader, run_dir, method, seed, split, progress)
    except KeyboardInterrupt:
        report["map"] = {"error": "interrupted"}
    except Exception as exc:  # noqa: BLE001 - the map is optional; the head is saved
        report["map"] = {"error": _first_line(exc)}
    if "error" in report["map"]:
        note = (
            f"map not written ({report['map']['error']}); the head is saved; "
            f"featcache plot {report['cache']} maps the cache"
        )
        report["notes"] = [*report["notes"], note]
    text = json.dumps(report, indent=2)
    temporary = run_dir / "report.json.tmp"
    temporary.write_text(text)
    os.replace(temporary, run_dir / "report.json")


def _meta(kind: str, params: dict[str, Any], splits: CachedSplits) -> dict[str, Any]:
    """``head.json``: its ``cache_settings`` are the cache's settings
    (:meth:`FeatureSettings.from_mapping` reads them back) with the fingerprint."""
    settings = {
        **splits.settings.to_dict(),
        "feature_dim": splits.feature_dim,
        "fingerprint": splits.reader.fingerprint,
    }
    meta = {
        "featcache_head": HEAD_FORMAT,
        "kind": kind,
        "params": _jsonable(params),
        "class_names": splits.class_names,
        "feature_dim": splits.feature_dim,
        "cache": str(splits.path),
        "cache_settings": _jsonable(settings),
    }
    if isinstance(splits.reader, JointCache):
        meta["caches"] = [str(r.path) for r in splits.reader.readers]
        meta["cache_fingerprints"] = [r.fingerprint for r in splits.reader.readers]
    return meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_run(
    run_dir: Path, head: TrainedHead, report: dict[str, Any], history: dict[str, list[float]] | None
) -> None:
    """Write the head, ``head.json``, ``report.json`` and the plots into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {**head.meta, "classes": head.classes.tolist()}
    if head.kind == "dense":
        head.estimator.model_.save(run_dir / "head.keras")
        meta["file"] = "head.keras"
    else:  # skops: loading it back instantiates only the types load_head allows
        import skops.io

        skops.io.dump(head.estimator, run_dir / "head.skops")
        meta["file"] = "head.skops"
    (run_dir / "head.json").write_text(json.dumps(meta, indent=2))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    if history:
        write_history(history, run_dir)
    write_confusion(
        report["test"]["confusion_matrix"],
        head.class_names,
        run_dir / "confusion.png",
        f"{head.kind} head, test split (rows normalised)",
    )


_TRUST_PICKLE: ContextVar[bool] = ContextVar("featcache_trust_pickle", default=False)
_HEAD_FILES = {
    "dense": (".keras",),
    "baseline": (".skops", ".joblib"),
    ZERO_SHOT: (".npz",),  # arrays only: loading runs no code
}
"""The file types a head run may name, by kind of head."""


@contextmanager
def trusted_pickles(trust: bool = True) -> Iterator[None]:
    """Within the block, :func:`load_head` (called by ``predict_cache`` and the rest) loads
    ``head.joblib`` pickles as with ``trust_pickle=True``; ``featcache predict
    --trust-pickle`` uses this."""
    token = _TRUST_PICKLE.set(trust)
    try:
        yield
    finally:
        _TRUST_PICKLE.reset(token)


def skops_trusted_types() -> list[str]:
    """The types, beyond those skops trusts by itself, that featcache's scikit-learn heads
    are made of (``svm``'s calibration, ``knn``'s trees and metrics, the forest's trees).

    Computed from the classes themselves, so that it follows scikit-learn's module names.
    """
    from sklearn.calibration import _CalibratedClassifier, _SigmoidCalibration
    from sklearn.metrics import DistanceMetric
    from sklearn.neighbors import BallTree, KDTree
    from sklearn.tree._tree import Tree

    kinds: list[type] = [_CalibratedClassifier, _SigmoidCalibration, BallTree, KDTree, Tree]
    for dtype in (np.float64, np.float32):
        kinds.append(type(DistanceMetric.get_metric("euclidean", dtype=dtype)))
    return sorted({f"{kind.__module__}.{kind.__qualname__}" for kind in kinds})


def _head_file(run_dir: Path, meta: dict[str, Any]) -> Path:
    """``meta["file"]``, refused unless it names a file inside the run folder (no
    absolute path, no ``..``, no symbolic link out of it) of a type the head's kind uses."""
    name = meta.get("file")
    kind = str(meta.get("kind")) if meta.get("kind") in ("dense", ZERO_SHOT) else "baseline"
    if not isinstance(name, str) or not name:
        raise CacheError(f"{run_dir}/head.json names no head file")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or relative.suffix not in _HEAD_FILES[kind]:
        raise CacheError(
            f"{run_dir}/head.json: head file {name!r} refused: expected a "
            f"{' or '.join(_HEAD_FILES[kind])} file inside the run folder"
        )
    path = run_dir / relative
    real, folder = path.resolve(), run_dir.resolve()
    if not real.is_relative_to(folder):
        raise CacheError(f"{path}: refused: it leads outside the run folder (to {real})")
    if not real.is_file():
        raise CacheError(f"{path}: no such head file")
    return real


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_skops(path: Path) -> Any:
    import skops.io

    try:
        found = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # noqa: BLE001 - a damaged archive raises many kinds
        raise CacheError(f"could not read {path}: {_first_line(exc)}") from None
    allowed = set(skops_trusted_types())
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise CacheError(
            f"{path}: refused: it holds types featcache's heads are not made of "
            f"({', '.join(unknown)}); loading them could run code"
        )
    try:
        return skops.io.load(path, trusted=sorted(set(found)))
    except Exception as exc:  # noqa: BLE001 - skops raises many kinds here
        raise CacheError(f"could not load {path}: {_first_line(exc)}") from None


def load_head(run: str | os.PathLike[str], trust_pickle: bool | None = None) -> TrainedHead:
    """Load a head saved by ``train_head`` (a run folder).

    The head file must lie inside the run folder. A dense head's ``head.keras`` loads with
    Keras' ``safe_mode``; a scikit-learn head's ``head.skops`` loads only the types
    featcache's heads are made of (:func:`skops_trusted_types`). A ``head.joblib`` (runs
    saved before ``head.skops``) is a pickle, which can run any code when loaded: it is
    refused unless ``trust_pickle`` (None: inside :func:`trusted_pickles`).
    """
    run_dir = Path(run)
    meta = read_head_meta(run_dir)
    kind = meta["kind"]
    path = _head_file(run_dir, meta)
    if kind == ZERO_SHOT:
        from ..backbones.zero_shot import ZeroShotClassifier

        try:
            estimator: Any = ZeroShotClassifier.load(path, meta["family"], meta["class_names"])
        except (OSError, KeyError, ValueError) as exc:
            raise CacheError(f"could not load {path}: {_first_line(exc)}") from None
    elif kind == "dense":
        from ..backbones.backbone import ensure_tensorflow_backend

        ensure_tensorflow_backend()
        import keras

        params = dict(meta["params"])
        params["hidden"] = tuple(params.get("hidden", ()))
        estimator = DenseHead(**params)
        try:
            estimator.model_ = keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - Keras raises many kinds here
            raise CacheError(f"could not load {path}: {_first_line(exc)}") from None
        estimator.classes_ = np.asarray(meta["classes"])
        estimator.n_features_in_ = int(meta["feature_dim"])
    elif path.suffix == ".skops":
        estimator = _load_skops(path)
    else:
        trusted = _TRUST_PICKLE.get() if trust_pickle is None else trust_pickle
        if not trusted:
            raise CacheError(
                f"{path} is a pickle, and loading a pickle runs whatever code it holds; "
                "load it only from a run folder you trust, with trust_pickle=True "
                "(--trust-pickle), or train the head again (heads are now saved as head.skops)"
            )
        import joblib

        estimator = joblib.load(path)
    return TrainedHead(kind, estimator, list(meta["class_names"]), meta)
