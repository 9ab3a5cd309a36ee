"""``predict MODEL IMAGES``: classify image files with an end-to-end model.

MODEL is a ``model.keras`` from ``export`` or ``fine-tune``, or a dense head run (its
backbone is rebuilt from the settings the head was trained on).
"""

from __future__ import annotations

import csv
import glob
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.ranking import top_k as rank
from ..errors import DatasetError
from ..extractor.decode import IMAGE_EXTENSIONS, decode_and_resize, decode_or_reason
from ..extractor.reader import ordered_map
from .options import DEFAULT_PREDICT_BATCH_SIZE, DEFAULT_TOP_K, check_options


@dataclass
class Prediction:
    """One image's result: the top classes, or why it could not be used."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""


def list_images(images: str | os.PathLike[str] | list[str]) -> list[Path]:
    """A file, a folder (searched recursively), a glob pattern, or a list of those."""
    if isinstance(images, list):
        return [p for entry in images for p in list_images(entry)]
    text = str(images)
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [
            Path(root) / name
            for root, _, files in os.walk(path)
            for name in files
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        ]
        if not found:
            raise DatasetError(f"{text}: no image files found")
        return sorted(found)
    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise DatasetError(f"{text}: no such file, folder or matching files")
    return files


def load_classifier(model: str | os.PathLike[str]) -> tuple[Any, list[str]]:
    """(Keras model, class names per output column) from a ``.keras`` file or a head run."""
    path = Path(model)
    if path.is_dir() and (path / "head.json").is_file():
        from .endtoend import build

        built = build(path)
        names = [built.head.class_names[int(c)] for c in built.head.classes]
        return built.model, names
    from .endtoend import load_model

    loaded, names, _ = load_model(path)
    return loaded, names


def predict_images(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str] | list[str],
    output: str | os.PathLike[str] | None = "predictions.csv",
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_PREDICT_BATCH_SIZE,
    progress: bool | None = None,
) -> list[Prediction]:
    """Classify images; writes ``predictions.csv`` (path, class, probability, top_k, error)."""
    check_options({"top_k": top_k, "batch_size": batch_size})
    files = list_images(images)
    classifier, names = load_classifier(model)
    resize = classifier.get_layer("resize")
    size, mode = (resize.height, resize.width), resize.mode
    decode = getattr(resize, "decode", "exact")  # the cache's decode mode

    def prepare(path: Path) -> tuple[np.ndarray | None, str | None]:
        return decode_or_reason(
            lambda p: decode_and_resize(p.read_bytes(), size, mode, decode=decode), path
        )

    from tqdm import tqdm

    bar = tqdm(
        total=len(files),
        unit="img",
        desc="predict",
        disable=not (sys.stderr.isatty() if progress is None else progress),
    )
    results: list[Prediction] = []
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        proba = np.asarray(classifier(np.stack([p for _, p in pending]), training=False))
        order = rank(proba, top_k)
        for (path, _), row, best in zip(pending, proba, order):
            results.append(Prediction(str(path), [(names[j], float(row[j])) for j in best]))
        bar.update(len(pending))
        pending.clear()

    with ThreadPoolExecutor(min(4, (os.cpu_count() or 1) + 1)) as pool:
        for path, (pixels, error) in zip(files, ordered_map(pool, prepare, files, 64)):
            if pixels is None:
                flush()
                results.append(Prediction(str(path), error=error or ""))
                bar.update(1)
                continue
            pending.append((path, pixels))
            if len(pending) >= batch_size:
                flush()
        flush()
    bar.close()
    if output is not None:
        write_predictions(results, Path(output))
    return results


def write_predictions(results: list[Prediction], out: Path) -> None:
    """``predictions.csv``: path, class, probability, top_k (``class:p|...``), error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "class", "probability", "top_k", "error"])
        for r in results:
            best = r.top[0] if r.top else ("", 0.0)
            top = "|".join(f"{name}:{p:.4f}" for name, p in r.top)
            writer.writerow([r.path, best[0], f"{best[1]:.6f}" if r.top else "", top, r.error])
