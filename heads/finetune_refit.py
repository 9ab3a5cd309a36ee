"""The ``auto`` recipe's head re-fit before any layer thaws: the head trained to convergence
on the frozen backbone's features of the train images, at the size and under the class
balance the thawing phases train with (linear probing then fine-tuning, LP-FT: Kumar et al.
2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution").

Used when fine-tuning trains at another size than the cache's (the recipe's own resolution
or ``image_size``): the head came from ``train-head`` on the cache's features. One
epoch of it alone on augmented images at 10x the rate (what the recipe did before) lowered
val accuracy in every one of 12 balanced runs (issue 29), so the thaw started from the
unbalanced head again. Here the features are computed once (no augmentation), the head
trains on them for up to :data:`REFIT_EPOCHS` epochs at :data:`REFIT_LR` under balanced class
weights, and the epoch with the best val score (the head as it came included) is kept: the
phases that thaw start from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.progress import progress_bar
from .compiling import compile_for_training
from .options import DEFAULT_LR
from .train_input import train_input

REFIT_EPOCHS = 100
"""Most epochs of the head on the frozen features (small: 1-2 s for 300 rows x 1024)."""
REFIT_LR = DEFAULT_LR
"""Adam's rate for the re-fit: ``train-head``'s default, whatever rate the head was trained
at (a head trained at a tiny rate would otherwise never move)."""
REFIT_PATIENCE = 10
"""Epochs without a better val score before the re-fit stops (once it has taken
:data:`REFIT_MIN_STEPS` steps)."""
REFIT_MIN_STEPS = 300
"""Steps the re-fit takes before patience may stop it: a small train split gets more epochs
(10 epochs of 20 rows are 30 steps, too few for the head to move)."""


@dataclass
class Refit:
    """What the re-fit did: val figures of the head as it came (epoch 0) and of each epoch."""

    lr: float
    class_weight: dict[int, float] | None
    val_accuracy: list[float] = field(default_factory=list)
    val_balanced_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    """0: the head as it came stayed best."""
    rows: int = 0

    def record(self) -> dict[str, Any]:
        weights = {str(k): round(v, 6) for k, v in (self.class_weight or {}).items()}
        return {
            "name": "head",
            "layers": 0,
            "epochs": REFIT_EPOCHS,
            "epochs_run": len(self.val_accuracy) - 1,
            "peak_lr": self.lr,
            "measured_on": (
                "frozen features of the train images (no augmentation), "
                + ("balanced class weights" if self.class_weight else "no class weights")
                + "; val_accuracy[0] is the head as it came, at the training size"
            ),
            "val_accuracy": [round(v, 6) for v in self.val_accuracy],
            "best_val_accuracy": max(self.val_accuracy, default=None),
            "val_balanced_accuracy": [round(v, 6) for v in self.val_balanced_accuracy],
            "best_epoch": self.best_epoch,
            "class_weight": None if self.class_weight is None else weights,
        }


def balanced_weights(columns: np.ndarray, classes: int) -> dict[int, float]:
    """``n / (classes present * count)`` per class (scikit-learn's ``balanced``; 1 for a
    class absent from ``columns``): in expectation the loss of a class-balanced draw,
    without its noise."""
    from sklearn.utils.class_weight import compute_class_weight

    known = columns[columns >= 0]
    present = np.unique(known)
    values = compute_class_weight("balanced", classes=present, y=known) if known.size else []
    found = {int(c): float(w) for c, w in zip(present, values, strict=True)}
    return {i: found.get(i, 1.0) for i in range(classes)}


def scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy: the mean recall over the classes present)."""
    from .report import quiet_balanced_accuracy

    predicted = np.argmax(probabilities, axis=1)
    if not len(labels):
        return 0.0, 0.0
    return float(np.mean(predicted == labels)), quiet_balanced_accuracy(labels, predicted)


def feature_model(model: Any, backbone: Any) -> Any:
    """Images -> the features the head reads, from ``model``'s own layers (shared weights):
    resizing, preprocessing, the backbone in inference mode, the float16 rounding if any."""
    import keras

    inputs = keras.Input((None, None, 3), dtype="float32", name="image")
    x = model.get_layer("resize")(inputs)
    x = model.get_layer("preprocess")(x)
    x = backbone(x, training=False)
    names = {layer.name for layer in model.layers}
    if "float16_storage" in names:
        x = model.get_layer("float16_storage")(x)
    return keras.Model(inputs, x, name="featcache_refit_features")


def head_model(model: Any, head: Any) -> Any:
    """Features -> class probabilities through ``model``'s head layers (shared weights)."""
    import keras

    inputs = keras.Input((int(head.model_.input_shape[-1]),), dtype="float32", name="features")
    outputs = model.get_layer("class_probabilities")(head.model_(inputs))
    return keras.Model(inputs, outputs, name="featcache_refit_head")


def embed(
    features: Any, dataset: Any, advance: Callable[[int], Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every batch of ``dataset`` (images, label columns)."""
    parts, labels = [], []
    for images, columns in dataset:
        parts.append(np.asarray(features(images, training=False), np.float32))
        labels.append(np.asarray(columns, np.int64))
        advance(len(labels[-1]))
    return np.concatenate(parts), np.concatenate(labels)


def refit_head(
    model: Any,
    backbone: Any,
    head: Any,
    train: Any,
    val: Any,
    rows: int,
    *,
    classes: int,
    balancing: str,
    select: str,
    seed: int,
    progress: bool | None = False,
    title: str = "fine-tune: head re-fit on frozen features",
) -> Refit:
    """Re-fit the dense ``head`` (a :class:`~featcache.heads.dense.DenseHead` inside
    ``model``) on the features ``backbone`` computes for ``train`` and ``val`` (datasets of
    plain images and label columns; ``rows`` images in all, for the progress bar), under
    balanced class weights unless ``balancing`` is ``none``. Keeps the epoch with the best
    val ``select`` (``accuracy`` or ``balanced_accuracy``; ties keep the earlier, so the head
    as it came unless an epoch beats it) in ``model``."""
    import keras

    features = feature_model(model, backbone)
    with progress_bar(rows, progress, title) as bar:
        train_x, train_y = embed(features, train, bar.update)
        val_x, val_y = embed(features, val, bar.update)
    del features
    weights = None if balancing == "none" else balanced_weights(train_y, classes)
    done = Refit(REFIT_LR, weights, rows=len(train_y))
    trainer = head_model(model, head)
    layers = [layer for layer in trainer.layers if layer.weights]
    pick = 1 if select == "balanced_accuracy" else 0

    def score() -> float:
        accuracy, balanced = scores(np.asarray(trainer(val_x, training=False)), val_y)
        done.val_accuracy.append(accuracy)
        done.val_balanced_accuracy.append(balanced)
        return (accuracy, balanced)[pick]

    kept: dict[str, Any] = {"score": score(), "weights": [layer.get_weights() for layer in layers]}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            value = score()
            if value > kept["score"] + 1e-9:
                kept["score"], done.best_epoch = value, epoch + 1
                kept["weights"] = [layer.get_weights() for layer in layers]
            elif epoch + 1 - done.best_epoch >= REFIT_PATIENCE and epoch + 1 >= least:
                self.model.stop_training = True

    batch = int(getattr(head, "batch_size", 32) or 32)
    least = -(-REFIT_MIN_STEPS // -(-len(train_y) // batch))
    keras.utils.set_random_seed(seed)
    data = train_input(train_x, train_y, batch, seed)
    compile_for_training(
        trainer,
        optimizer=keras.optimizers.Adam(REFIT_LR),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        steps_per_execution=data.steps_per_execution,
    )
    trainer.fit(
        data.dataset, steps_per_epoch=data.steps_per_epoch,
        epochs=REFIT_EPOCHS, class_weight=weights, shuffle=False, verbose=0,
        callbacks=[KeepBest()],
    )  # fmt: skip
    for layer, values in zip(layers, kept["weights"]):
        layer.set_weights(values)
    return done
