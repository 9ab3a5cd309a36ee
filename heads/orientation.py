"""Which geometric augmentations suit the training images, measured on them: the ``auto``
fine-tuning recipe's augmentation test.

A sample of train images is embedded through the frozen backbone as it is, turned by quarter
turns, mirrored, and centre-cropped as ``crop`` crops at its strongest. Small logistic
probes (held out by image) then answer three questions:

- **quarter turns**: can a probe tell which quarter turn an image was given (rotation
  prediction, the classic self-supervised signal)? At chance (within a one-sided binomial
  bound) the images have no canonical orientation: ``vflip`` and ``rotate90`` are safe.
- **mirror**: can a probe tell a mirrored image from the original? At chance: ``flip``.
- **crop**: does a class probe trained on the images keep its predictions on their crops
  (a paired test on the images it gets right either way)? When the crop costs it
  significantly (textures, where the scale is the class), no ``crop``.

``contrast`` is always kept. Deterministic under the seed; a few seconds on ~100 images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .augment import CROP_AREA

SAMPLE = 96
"""Train images embedded (each 6 times: as it is, 3 quarter turns, mirrored, cropped)."""
Z = 2.326
"""One-sided 99% normal quantile: a probe above chance by more than ``Z`` standard errors
(of a binomial at chance over the held-out predictions) sees an orientation."""
CROP_MAX_LOSS = 0.5
"""The crop is dropped when it costs the class probe, significantly (``Z``, paired), more
than this share of its accuracy above chance: the scale is the class (textures). Measured
at 64 px with MobileNet, 96 images: stripes whose class is their frequency lost 0.66 (0.89
-> 0.47), Fashion-MNIST 0.27 (0.59 -> 0.46: the crop cuts garments' outlines), Fashion-MNIST
turned at random 0.25 (0.38 -> 0.31)."""
CROP_TEST_AREA = CROP_AREA[0]
"""The crop tested: the centre of the smallest area ``crop`` keeps."""
MIN_IMAGES = 12
"""Fewer train images: no test, the recipe's default augmentation."""
FOLDS = 4
RIDGE_ALPHA = 100.0
"""The probes' ridge penalty (on standardised features)."""


@dataclass
class ProbeResult:
    """One probe's held-out accuracy against chance."""

    accuracy: float
    chance: float
    bound: float
    """Accuracy up to which the probe counts as at chance (one-sided binomial bound)."""
    trials: int

    @property
    def at_chance(self) -> bool:
        return self.accuracy <= self.bound

    def record(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 4),
            "chance": round(self.chance, 4),
            "bound": round(self.bound, 4),
            "held_out": self.trials,
            "at_chance": self.at_chance,
        }


@dataclass
class AugmentTest:
    """What the test measured and the augmentation it picks."""

    augment: str
    images: int
    seconds: float = 0.0
    turns: ProbeResult | None = None
    mirror: ProbeResult | None = None
    crop: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def summary(self) -> str:
        if self.turns is None or self.mirror is None:
            return f"{self.augment} ({self.reason})"
        parts = [
            f"quarter-turn probe {self.turns.accuracy:.2f} vs chance bound "
            f"{self.turns.bound:.2f}: "
            + ("no canonical orientation" if self.turns.at_chance else "oriented"),
            f"mirror probe {self.mirror.accuracy:.2f} vs {self.mirror.bound:.2f}: "
            + ("mirror-free" if self.mirror.at_chance else "handed"),
            f"crop: class probe {self.crop['accuracy']:.2f} -> {self.crop['cropped_accuracy']:.2f}"
            + ("" if self.crop["keeps_classes"] else ": changes classes"),
        ]
        return f"{self.augment} ({'; '.join(parts)}; {self.images} images, {self.seconds:.1f} s)"

    def record(self) -> dict[str, Any]:
        return {
            "chosen": self.augment,
            "by": "measured" if self.turns is not None else "default",
            "summary": self.summary,
            "images": self.images,
            "seconds": round(self.seconds, 2),
            "quarter_turns": None if self.turns is None else self.turns.record(),
            "mirror": None if self.mirror is None else self.mirror.record(),
            "crop": self.crop or None,
            **({"reason": self.reason} if self.reason else {}),
        }


def chance_bound(chance: float, trials: int, z: float = Z) -> float:
    """The accuracy a probe at ``chance`` stays below with one-sided confidence ``z``."""
    return chance + z * math.sqrt(chance * (1 - chance) / max(1, trials))


def choose_augment(
    features_of: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    default: str = "crop,contrast",
) -> AugmentTest:
    """Measure which augmentations keep ``images`` (float32 ``(N, H, W, 3)`` 0-255 train
    images at the training size, with their class ``labels``) what they are, through
    ``features_of`` (a batch of images -> backbone features); see the module's docstring.
    Fewer than :data:`MIN_IMAGES` images or one class: ``default``, with the reason."""
    started = time.monotonic()
    count = len(images)
    if count < MIN_IMAGES or len(np.unique(labels)) < 2:
        return AugmentTest(
            default, count, reason=f"too few train images to measure ({count}); the default"
        )
    square = images.shape[1] == images.shape[2]
    turns = (0, 1, 2, 3) if square else (0, 2)  # a quarter turn changes a non-square shape
    versions = [np.rot90(images, k, axes=(1, 2)) for k in turns]
    versions += [images[:, :, ::-1], centre_crop(images, CROP_TEST_AREA)]
    features = [np.asarray(features_of(np.ascontiguousarray(v)), np.float64) for v in versions]
    groups = np.arange(count)
    turned = _probe(
        np.concatenate(features[: len(turns)]),
        np.repeat(np.arange(len(turns)), count),
        np.tile(groups, len(turns)),
        seed,
    )
    mirrored = _probe(
        np.concatenate([features[0], features[len(turns)]]),
        np.repeat([0, 1], count),
        np.tile(groups, 2),
        seed,
    )
    crop = _crop_test(features[0], features[-1], labels, seed)
    chosen = []
    if mirrored.at_chance:
        chosen.append("flip")
    if turned.at_chance:
        chosen += ["vflip", "rotate90"]
    if crop["keeps_classes"]:
        chosen.append("crop")
    chosen.append("contrast")
    return AugmentTest(",".join(chosen), count, time.monotonic() - started, turned, mirrored, crop)


def centre_crop(images: np.ndarray, area: float) -> np.ndarray:
    """The centre ``area`` share of each image, resized back (bilinear), as ``crop`` makes
    its smallest crops."""
    import tensorflow as tf

    height, width = images.shape[1:3]
    side = math.sqrt(area)
    top, left = (1 - side) / 2, (1 - side) / 2
    boxes = np.tile([[top, left, top + side, left + side]], (len(images), 1)).astype(np.float32)
    cropped = tf.image.crop_and_resize(
        images.astype(np.float32), boxes, np.arange(len(images), dtype=np.int32), (height, width)
    )
    return np.asarray(cropped, np.float32)


def _probe(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, seed: int) -> ProbeResult:
    """Held-out accuracy (grouped by image) of a logistic probe predicting ``targets``."""
    from sklearn.model_selection import GroupKFold

    predicted = np.empty_like(targets)
    for train, test in GroupKFold(FOLDS).split(features, targets, groups):
        predicted[test] = _fit(features[train], targets[train], seed).predict(features[test])
    chance = 1.0 / len(np.unique(targets))
    trials = len(targets)
    return ProbeResult(
        float(np.mean(predicted == targets)), chance, chance_bound(chance, trials), trials
    )


def _crop_test(
    plain: np.ndarray, cropped: np.ndarray, labels: np.ndarray, seed: int
) -> dict[str, Any]:
    """A class probe fitted on the plain images of the other folds, scored on each held-out
    image as it is and cropped: does the crop cost it significantly (paired)?"""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    folds = min(FOLDS, int(counts.min()))
    splitter: Any = (
        StratifiedKFold(folds, shuffle=True, random_state=seed)
        if folds >= 2
        else KFold(FOLDS, shuffle=True, random_state=seed)
    )
    right = np.zeros(len(labels), bool)
    right_cropped = np.zeros(len(labels), bool)
    for train, test in splitter.split(plain, labels):
        if len(np.unique(labels[train])) < 2:
            continue
        probe = _fit(plain[train], labels[train], seed)
        right[test] = probe.predict(plain[test]) == labels[test]
        right_cropped[test] = probe.predict(cropped[test]) == labels[test]
    lost = int(np.sum(right & ~right_cropped))
    gained = int(np.sum(~right & right_cropped))
    accuracy, cropped_accuracy = float(right.mean()), float(right_cropped.mean())
    chance = 1.0 / len(counts)
    loss = (accuracy - cropped_accuracy) / max(accuracy - chance, 1e-9)
    significant = lost - gained > Z * math.sqrt(max(1, lost + gained))
    return {
        "area": CROP_TEST_AREA,
        "accuracy": round(accuracy, 4),
        "cropped_accuracy": round(cropped_accuracy, 4),
        "chance": round(chance, 4),
        "share_lost": round(loss, 4),
        "lost": lost,
        "gained": gained,
        "keeps_classes": not (significant and loss > CROP_MAX_LOSS),
    }


def _fit(features: np.ndarray, targets: np.ndarray, seed: int) -> Any:
    """A ridge classifier on standardised features: a linear probe in milliseconds (a
    logistic one took seconds a fold on 1,024 features)."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    del seed  # the ridge solution is exact: nothing is drawn
    return make_pipeline(StandardScaler(), RidgeClassifier(alpha=RIDGE_ALPHA)).fit(
        features, targets
    )
