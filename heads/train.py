"""``train_head``: fit one head on a cache's features and write its run folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError, DatasetError
from ..extractor.settings import FeatureSettings
from .baselines import fit_baseline, make_baseline, probabilities
from .data import CachedSplits, Split, load_splits, should_stream
from .dense import DenseHead
from .options import DEFAULT_FEATURE_BATCH_SIZE, HeadOptions, merge_options
from .report import metrics, write_confusion, write_history

HEAD_FORMAT = 1
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
        """The feature settings of the cache the head was trained on."""
        recorded = self.meta["cache_settings"]
        if not recorded.get("feature_dim"):  # the width is known from the head itself
            recorded = {**recorded, "feature_dim": self.meta.get("feature_dim", 0)}
        return FeatureSettings.from_mapping(recorded)

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
    cache: str | os.PathLike[str],
    head: str | None = None,
    output: str | os.PathLike[str] | None = None,
    *,
    options: HeadOptions | None = None,
    **values: Any,
) -> TrainResult:
    """Fit a head on the cache's train split, select on val, report val and test.

    ``options`` (:class:`~featcache.heads.options.HeadOptions`), or keyword arguments of
    the same names, which override it: the head's parameters (``hidden``, ``dropout``,
    ``lr``, ``epochs``, ``C``, ``k``, ...), ``val_fraction``, ``seed`` and ``stream``
    (None streams the dense head's features from disk only when they would not fit
    comfortably in memory). ``head`` (default ``dense``) overrides ``options.head``.

    Examples
    --------
    >>> result = train_head("cache/mobilenet.h5", head="logreg", C=1.0)  # doctest: +SKIP
    >>> result.report["test"]["accuracy"]  # doctest: +SKIP
    """
    chosen = merge_options(HeadOptions, options, head=head, **values)
    cache = Path(cache)
    kind = chosen.head
    params = chosen.head_params()
    splits = load_splits(cache, val_fraction=chosen.val_fraction, seed=chosen.seed)
    streaming = kind == "dense" and should_stream(splits, chosen.stream)
    names = splits.class_names
    started = time.monotonic()
    estimator, history = _fit(kind, params, splits, streaming)
    fit_seconds = time.monotonic() - started
    trained = TrainedHead(kind, estimator, names, _meta(kind, params, splits))
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
        "fingerprint": splits.reader.fingerprint,
        "backbone": splits.settings.backbone,
        "rows": {s: len(getattr(splits, s)) for s in ("train", "val", "test")},
        "class_names": names,
        "streamed": streaming,
        "stream_option": chosen.stream,
        "val_fraction": chosen.val_fraction,
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
    return TrainResult(run_dir, trained, report, splits.notes)


def _meta(kind: str, params: dict[str, Any], splits: CachedSplits) -> dict[str, Any]:
    """``head.json``: its ``cache_settings`` are the cache's settings
    (:meth:`FeatureSettings.from_mapping` reads them back) with the fingerprint."""
    settings = {
        **splits.settings.to_dict(),
        "feature_dim": splits.feature_dim,
        "fingerprint": splits.reader.fingerprint,
    }
    return {
        "featcache_head": HEAD_FORMAT,
        "kind": kind,
        "params": _jsonable(params),
        "class_names": splits.class_names,
        "feature_dim": splits.feature_dim,
        "cache": str(splits.path),
        "cache_settings": _jsonable(settings),
    }


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
    else:
        import joblib

        joblib.dump(head.estimator, run_dir / "head.joblib")
        meta["file"] = "head.joblib"
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


def load_head(run: str | os.PathLike[str]) -> TrainedHead:
    """Load a head saved by ``train_head`` (a run folder)."""
    run_dir = Path(run)
    meta_path = run_dir / "head.json"
    if not meta_path.is_file():
        raise CacheError(f"{run_dir}: not a head run folder (no head.json)")
    meta = json.loads(meta_path.read_text())
    if int(meta.get("featcache_head", 0)) > HEAD_FORMAT:
        raise CacheError(
            f"{run_dir}: head format {meta['featcache_head']} is newer than "
            "this featcache reads; upgrade featcache"
        )
    kind = meta["kind"]
    if kind == "dense":
        from ..extractor.backbone import ensure_tensorflow_backend

        ensure_tensorflow_backend()
        import keras

        params = dict(meta["params"])
        params["hidden"] = tuple(params.get("hidden", ()))
        estimator = DenseHead(**params)
        estimator.model_ = keras.models.load_model(run_dir / meta["file"], compile=False)
        estimator.classes_ = np.asarray(meta["classes"])
        estimator.n_features_in_ = int(meta["feature_dim"])
    else:
        import joblib

        estimator = joblib.load(run_dir / meta["file"])
    return TrainedHead(kind, estimator, list(meta["class_names"]), meta)
