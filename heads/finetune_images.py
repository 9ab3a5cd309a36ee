"""The cache's images as fine-tuning reads them: the rows of each split, checked against
the hashes the cache recorded, decoded and resized as extraction did, streamed in batches
(shuffled, class-balanced, augmented for training), and the metrics of a model over them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.progress import progress_bar
from ..errors import DatasetError
from ..extractor.decode import decode_and_resize, decode_or_reason
from ..extractor.sources import Dataset, item_from_path
from .data import CachedSplits
from .images import Classifier
from .options import DEFAULT_PREDICT_BATCH_SIZE, FineTuneOptions
from .report import metrics
from .train import TrainedHead


@dataclass
class Rows:
    paths: list[str]
    columns: np.ndarray
    """Output column of each row's label (-1 when the head never saw that class)."""
    labels: np.ndarray
    sha256: list[str]


def split_rows(splits: CachedSplits, classes: np.ndarray) -> dict[str, Rows]:
    """Train, val and test rows as the head saw them (labelled rows only, val carved from
    train the same way when the cache has none)."""
    column = {int(c): i for i, c in enumerate(classes)}
    sha = splits.reader.sha256
    rows = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        rows[name] = Rows(
            [splits.paths[i] for i in split.rows],
            np.array([column.get(int(label), -1) for label in split.labels], np.int64),
            split.labels.astype(np.int64),
            [sha[i] for i in split.rows],
        )
    return rows


def usable_rows(
    rows: Rows, source: Dataset, skipped: dict[str, str], done: Callable[[int], Any] | None = None
) -> Rows:
    """The rows whose file (or array row) is still there with the content the cache hashed;
    ``done(1)`` after each."""
    keep = []
    for i, path in enumerate(rows.paths):
        if done is not None:
            done(1)
        try:
            _, sha = source.read(item_from_path(path))
        except (OSError, IndexError) as exc:
            skipped[path] = f"missing or unreadable: {getattr(exc, 'strerror', None) or exc}"
            continue
        if sha != rows.sha256[i]:
            skipped[path] = "changed since the cache was made"
            continue
        keep.append(i)
    return Rows(
        [rows.paths[i] for i in keep],
        rows.columns[keep],
        rows.labels[keep],
        [rows.sha256[i] for i in keep],
    )


def known_rows(rows: Rows) -> Rows:
    """The rows of classes the head knows."""
    keep = rows.columns >= 0
    return Rows(
        [p for p, k in zip(rows.paths, keep) if k],
        rows.columns[keep],
        rows.labels[keep],
        [s for s, k in zip(rows.sha256, keep) if k],
    )


def read_images(
    rows: Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    shuffle_seed: int | None = None,
    balanced: bool = False,
) -> Iterator[tuple[np.ndarray, int]]:
    """Decoded, resized float32 images of (usable) ``rows``, shuffled when a seed is given;
    ``resize`` is the cache's (resize mode, decode mode); ``balanced`` (with a seed): as many
    rows drawn with replacement, every class equally likely. Never rounded: extraction and
    ``predict`` feed the resized pixels as they are (rounding them to uint8 moved pixels by up
    to 0.5 and flipped near-tie predictions, so the report disagreed with ``predict``)."""
    order = np.arange(len(rows.paths))
    if shuffle_seed is not None and balanced:
        order = np.random.default_rng(shuffle_seed).choice(
            len(order), len(order), p=balanced_draw(rows.columns)
        )
    elif shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    for i in order:
        path = rows.paths[i]
        try:
            content, sha = source.read(item_from_path(path))
        except (OSError, IndexError) as exc:
            raise DatasetError(f"{path} became unusable during fine-tuning: {exc}") from None
        if sha != rows.sha256[i]:
            raise DatasetError(f"{path} changed during fine-tuning")
        pixels, reason = decode_or_reason(
            lambda c: decode_and_resize(c, size, resize[0], decode=resize[1]), content
        )
        if pixels is None:
            raise DatasetError(f"{path} became unusable during fine-tuning: {reason}")
        yield np.asarray(pixels, np.float32), int(rows.columns[i])


def balanced_draw(columns: np.ndarray) -> np.ndarray:
    """Each row's chance in a class-balanced draw: ``1 / (classes * count of its class)``
    (rows of classes the head never saw: none)."""
    known = columns >= 0
    counts = np.bincount(columns[known]) if known.any() else np.zeros(1, np.int64)
    chance = np.zeros(len(columns), np.float64)
    chance[known] = 1.0 / counts[columns[known]]
    return chance / chance.sum()


def image_dataset(make: Any, rows: int, size: tuple[int, int], batch_size: int) -> Any:
    """Batches streamed from disk by ``make()`` (re-run every epoch); memory stays bounded."""
    import tensorflow as tf

    spec = (
        tf.TensorSpec((size[0], size[1], 3), tf.float32),
        tf.TensorSpec((), tf.int64),
    )
    dataset = tf.data.Dataset.from_generator(make, output_signature=spec).batch(batch_size)
    batches = -(-rows // batch_size)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(2)


def train_dataset(
    rows: Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    chosen: FineTuneOptions,
    balanced: bool = False,
) -> Any:
    """Shuffled (a new order each epoch; ``balanced``: a class-balanced draw), augmented
    (heads/augment.py) training batches."""
    import tensorflow as tf

    from .augment import augment_function

    counter = iter(range(1_000_000))

    def keyed() -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
        epoch = next(counter)
        for row, (pixels, column) in enumerate(
            read_images(rows, source, size, resize, chosen.seed + epoch, balanced)
        ):
            yield pixels, column, np.array([epoch, row], np.int64)

    spec = (
        tf.TensorSpec((size[0], size[1], 3), tf.float32),
        tf.TensorSpec((), tf.int64),
        tf.TensorSpec((2,), tf.int64),
    )
    augment = augment_function(str(chosen.augment), chosen.seed, size)

    def prepare(pixels: Any, column: Any, key: Any) -> tuple[Any, Any]:
        image = tf.cast(pixels, tf.float32)
        return (augment(image, key) if chosen.augment else image), column

    batches = -(-len(rows.paths) // chosen.batch_size)
    return (
        tf.data.Dataset.from_generator(keyed, output_signature=spec)
        .map(prepare)
        .batch(chosen.batch_size)
        .apply(tf.data.experimental.assert_cardinality(batches))
        .prefetch(2)
    )


def images_bar(progress: bool | None, rows: Rows, desc: str) -> Any:
    """A bar over the images of ``rows``, opened when called (its clock starts then)."""
    return progress_bar(len(rows.paths), progress, desc)


def evaluate_images(
    model: Any,
    rows: Rows,
    source: Dataset,
    size: tuple[int, int],
    resize: tuple[str, str],
    trained: TrainedHead,
    batch_size: int,
    bar: Any = None,
) -> dict[str, Any]:
    """Metrics over the usable rows of a split (as ``train-head`` reports them); ``bar``
    (a progress bar, closed at the end) counts the images."""
    if not rows.paths:
        raise DatasetError("no images of this split are left to evaluate on")

    def predict(batch: np.ndarray) -> list[int]:
        proba = np.asarray(model(batch, training=False))
        return trained.classes[np.argmax(proba, axis=1)].tolist()

    pixels = (image for image, _ in read_images(rows, source, size, resize))
    predicted = _predicted(pixels, batch_size, predict, bar)
    return metrics(rows.labels, predicted, trained.class_names)


def evaluate_exported(
    exported: Classifier, rows: Rows, source: Dataset, trained: TrainedHead, bar: Any = None
) -> dict[str, Any]:
    """Metrics of the exported model over the usable rows of a split, computed as
    ``predict`` computes them: the same decode and resize (:meth:`Classifier.prepare`), the
    same batches of ``predict``'s default size, the same model file loaded back."""
    predicted = predict_exported(exported, rows, source, trained, bar)
    return metrics(rows.labels, predicted, trained.class_names)


def predict_exported(
    exported: Classifier, rows: Rows, source: Dataset, trained: TrainedHead, bar: Any = None
) -> np.ndarray:
    """The label :func:`evaluate_exported` scores for each row (``predict``'s path)."""
    if not rows.paths:
        raise DatasetError("no images of this split are left to evaluate on")
    column = [trained.class_names.index(name) for name in exported.names]

    def prepared() -> Iterator[np.ndarray]:
        for i, path in enumerate(rows.paths):
            content, sha = source.read(item_from_path(path))
            if sha != rows.sha256[i]:
                raise DatasetError(f"{path} changed during fine-tuning")
            yield exported.prepare(content)

    def predict(batch: np.ndarray) -> list[int]:
        return [column[int(j)] for j in np.argmax(exported.predict(batch), axis=1)]

    return _predicted(prepared(), DEFAULT_PREDICT_BATCH_SIZE, predict, bar)


def _predicted(
    images: Iterator[np.ndarray],
    batch_size: int,
    predict: Callable[[np.ndarray], list[int]],
    bar: Any = None,
) -> np.ndarray:
    """``predict`` over ``images`` in batches of ``batch_size``; ``bar`` (closed at the end)
    counts the images."""
    predicted: list[int] = []
    batch: list[np.ndarray] = []
    try:
        for image in images:
            batch.append(image)
            if len(batch) >= batch_size:
                predicted.extend(predict(np.stack(batch)))
                if bar is not None:
                    bar.update(len(batch))
                batch.clear()
        if batch:
            predicted.extend(predict(np.stack(batch)))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return np.asarray(predicted, np.int64)
