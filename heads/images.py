"""``predict MODEL IMAGES``: classify image files with an end-to-end model.

MODEL is a ``model.keras`` from ``export`` or ``fine-tune``, or a head run of any kind (its
backbone is rebuilt from the settings the head was trained on): a dense or linear head runs
as the model ``export`` makes, the others (svm, knn, random-forest) as the backbone's
features through the scikit-learn head.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import check_new_output, written_file
from ..core.progress import Status, progress_bar
from ..core.ranking import top_k as rank
from ..errors import DatasetError
from ..extractor.decode import IMAGE_EXTENSIONS, decode_and_resize, decode_or_reason
from ..extractor.reader import ordered_map
from .options import (
    DEFAULT_PREDICT_BATCH_SIZE,
    DEFAULT_TOP_K,
    LINEAR_HEADS,
    SCORE_HEADS,
    ZERO_SHOT,
    check_options,
)


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


@dataclass
class Classifier:
    """What ``predict_images`` runs: images -> one value per class."""

    predict: Callable[[np.ndarray], np.ndarray]
    """A batch of 0-255 images ``(N, H, W, 3)`` of ``size`` -> ``(N, classes)``."""
    names: list[str]
    """The class of each output column."""
    size: tuple[int, int]
    """(height, width) the images are resized to before ``predict``."""
    resize: str
    """How (``stretch``, ``pad``, ``crop``)."""
    decode: str
    """How large images are decoded (``exact``, ``fast``, ``antialias``): the cache's mode."""
    measure: str = "probability"
    """``probability``, or ``score`` for heads without probabilities (linear-svm, ridge:
    a softmax of their decision scores)."""

    def prepare(self, content: bytes | np.ndarray) -> np.ndarray:
        """A file's bytes (or an array image) as ``predict`` takes it: decoded and resized
        to float32 0-255 pixels, never rounded (``predict`` and ``fine-tune``'s report both
        go through here, so their figures cannot differ)."""
        return decode_and_resize(content, self.size, self.resize, decode=self.decode)


def load_classifier(model: str | os.PathLike[str]) -> Classifier:
    """A ``.keras`` file from ``export`` or ``fine-tune``, or a head run of any kind.

    A dense or linear head (logreg, linear-svm, ridge) becomes one Keras model, as
    ``export`` makes it; an svm, knn or random-forest head runs on the features of the
    run's backbone (rebuilt from its settings). A run's head is loaded, and a pickle
    refused unless trusted (:func:`featcache.heads.train.trusted_pickles`), before
    TensorFlow loads.
    """
    path = Path(model)
    if path.is_dir() and (path / "head.json").is_file():
        from .endtoend import build, feature_model
        from .runs import check_head
        from .train import load_head

        meta = check_head(path, "predict")
        if meta["kind"] in ("dense", ZERO_SHOT, *LINEAR_HEADS):
            built = build(path)
            names = [built.head.class_names[int(c)] for c in built.head.classes]
            measure = "score" if built.head.kind in SCORE_HEADS else "probability"
            return _keras_classifier(built.model, names, measure)
        head = load_head(path)
        features = feature_model(head)
        resize = features.get_layer("resize")

        def run(images: np.ndarray) -> np.ndarray:
            return head.predict_proba(np.asarray(features(images, training=False)))

        names = [head.class_names[int(c)] for c in head.classes]
        size = (resize.height, resize.width)
        return Classifier(run, names, size, resize.mode, _decode_of(resize))
    from .endtoend import load_model

    loaded, names, _ = load_model(path)
    last = loaded.get_layer("class_probabilities")
    return _keras_classifier(loaded, names, "probability" if last.probabilities else "score")


def _keras_classifier(model: Any, names: list[str], measure: str) -> Classifier:
    from .endtoend import predictor

    resize = model.get_layer("resize")
    run = predictor(model)

    size = (resize.height, resize.width)
    return Classifier(run, names, size, resize.mode, _decode_of(resize), measure)


def _decode_of(resize: Any) -> str:
    """The decode mode of a model's ``resize`` layer (models from before it: ``exact``)."""
    return str(getattr(resize, "decode", "exact"))


def predict_images(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str] | list[str],
    output: str | os.PathLike[str] | None = "predictions.csv",
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_PREDICT_BATCH_SIZE,
    progress: bool | None = None,
    overwrite: bool = False,
) -> list[Prediction]:
    """Classify images; writes ``output`` (default ``predictions.csv``; None: no file) with
    path, class, probability, top_k and error per image.

    An existing ``output`` is refused before any model loads, unless ``overwrite``; the file
    is written under a temporary name and renamed into place, so a failed run leaves what
    was there."""
    check_options({"top_k": top_k, "batch_size": batch_size})
    out = None if output is None else check_new_output(output, overwrite)
    files = list_images(images)
    with Status(f"predict: loading {Path(model).name} (TensorFlow)…", progress):
        classifier = load_classifier(model)
    names = classifier.names

    def prepare(path: Path) -> tuple[np.ndarray | None, str | None]:
        return decode_or_reason(lambda p: classifier.prepare(p.read_bytes()), path)

    bar = progress_bar(len(files), progress, "predict")  # its clock starts with the model in
    results: list[Prediction] = []
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        proba = classifier.predict(np.stack([p for _, p in pending]))
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
    if out is not None:
        write_predictions(results, out, classifier.measure, overwrite)
    return results


def write_predictions(
    results: list[Prediction], out: Path, measure: str = "probability", overwrite: bool = False
) -> None:
    """``predictions.csv``: path, class, probability, top_k (``class:p|...``), error; an
    existing ``out`` is replaced only with ``overwrite``. ``measure`` names the third
    column: ``score`` for heads without probabilities."""
    with written_file(out, overwrite) as file:
        writer = csv.writer(file)
        writer.writerow(["path", "class", measure, "top_k", "error"])
        for r in results:
            best = r.top[0] if r.top else ("", 0.0)
            top = "|".join(f"{name}:{p:.4f}" for name, p in r.top)
            writer.writerow([r.path, best[0], f"{best[1]:.6f}" if r.top else "", top, r.error])
