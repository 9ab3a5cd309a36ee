"""Metrics, history and confusion-matrix files of a trained head."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from .options import DEFAULT_BOOTSTRAP, DEFAULT_SEED

MAX_CONFUSION_INCHES = 40.0
"""Largest side of ``confusion.png`` (at 100 dpi): 1,000 classes at 0.6 inch each made a
3.6-gigapixel canvas that ran out of memory."""
MAX_CONFUSION_LABELS = 100
"""Classes from which the confusion matrix has no tick labels (they would overlap)."""
INTERVAL_LEVEL = 0.95
"""Level of the accuracy intervals every report carries (``accuracy_low``/``_high``)."""


def metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class P/R/F1 and the confusion matrix."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = [i for i in labels if support[i] > 0]
    low, high = accuracy_interval(y_true, y_pred)
    return {
        "rows": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "accuracy_low": low,
        "accuracy_high": high,
        "balanced_accuracy": quiet_balanced_accuracy(y_true, y_pred),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "per_class": [
            {
                "class": class_names[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in labels
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def accuracy_interval(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    level: float = INTERVAL_LEVEL,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the accuracy (the rows resampled with replacement
    ``resamples`` times, seeded, as :func:`~.metrics.bootstrap_metrics` draws them);
    ``(None, None)`` without rows."""
    correct = np.asarray(y_true) == np.asarray(y_pred)
    rows = len(correct)
    if rows == 0 or resamples == 0:
        return None, None
    rng = np.random.default_rng(seed)
    draws = []
    chunk = max(1, min(resamples, (1 << 22) // rows))  # at most 4M indices at once
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, rows, size=(min(chunk, resamples - start), rows))
        draws.append(correct[picks].mean(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(draws), [tail, 100 - tail])
    return float(low), float(high)


def quiet_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's balanced accuracy (mean recall over the classes of ``y_true``), without
    its warning for a class predicted but absent from ``y_true``."""
    with warnings.catch_warnings():  # a class predicted but absent from y_true is fine here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def write_history(history: dict[str, list[float]], folder: Path) -> None:
    """``history.csv`` and ``history.png`` (accuracy and loss, train vs val, per epoch)."""
    keys = list(history)
    epochs = len(history[keys[0]]) if keys else 0
    with open(folder / "history.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch in range(epochs):
            writer.writerow([epoch + 1, *(f"{history[k][epoch]:.6g}" for k in keys)])
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                axis.plot(
                    range(1, epochs + 1),
                    history[prefix + metric],
                    style,
                    label=("validation" if prefix else "training"),
                )
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(f"training and validation {metric}")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(folder / "history.png", dpi=100)
    plt.close(figure)


def write_confusion(
    matrix: list[list[int]], class_names: list[str], path: Path, title: str
) -> None:
    """Labelled confusion matrix, rows normalised to recall, counts in each cell."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    plt = _pyplot()
    side = min(max(4.0, 0.6 * len(class_names) + 2), MAX_CONFUSION_INCHES)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    ticks = range(len(class_names))
    if len(class_names) <= MAX_CONFUSION_LABELS:
        axis.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
        axis.set_yticks(ticks, labels=class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if len(class_names) <= 30:
        for i in ticks:
            for j in ticks:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                axis.text(
                    j,
                    i,
                    f"{normalised[i, j]:.2f}\n({int(counts[i, j])})",
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=7,
                )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
