"""Zero-shot classifiers from class names: prompt templates, prompt ensembling, CLIP's and
SigLIP's logits on cached image features (NumPy; the text tower only while building one).

Prompt ensembling is CLIP's (Radford et al., 2021, section 3.1.4): each class's prompts are
encoded, normalised and averaged, and the mean normalised again. CLIP's logits are
``exp(scale) * cos``, a softmax over classes; SigLIP's are ``exp(scale) * cos + bias``,
each class its own sigmoid (probabilities here: the sigmoids normalised to sum to one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidOptionError
from .text_tower import DEFAULT_TEXT_BATCH, TextTower, normalise

TEMPLATES: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a {}.",),
    "plain": ("{}",),
    "clip": (  # the 7 of CLIP's 80 ImageNet templates its authors' selection kept
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ),
}
"""Built-in prompt template sets (``{}`` is the class name)."""
DEFAULT_TEMPLATES = "photo"
OUTPUTS = {"clip": "logits", "siglip": "ovr-logits", "metaclip2": "logits"}
"""How each family's logits become probabilities (as ``ClassProbabilities`` names it)."""


def load_templates(templates: str | list[str] | tuple[str, ...]) -> list[str]:
    """A built-in set's name, a file (one template a line; blank and ``#`` lines skipped)
    or the templates themselves; each has one ``{}``."""
    if isinstance(templates, list | tuple):
        found = [str(t) for t in templates]
    elif templates in TEMPLATES:
        found = list(TEMPLATES[templates])
    elif Path(templates).expanduser().is_file():
        lines = Path(templates).expanduser().read_text().splitlines()
        found = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
    else:
        raise InvalidOptionError(
            f"templates {templates!r}: expected {', '.join(TEMPLATES)} or a file of templates",
            "templates",
        )
    if not found:
        raise InvalidOptionError(f"templates {templates!r}: no template", "templates")
    for template in found:
        if template.count("{}") != 1:
            raise InvalidOptionError(
                f"templates: {template!r} must hold the class name's place once, as {{}}",
                "templates",
            )
    return found


def prompts(class_texts: list[str], templates: list[str]) -> list[str]:
    """Every template of every class, class by class."""
    return [t.replace("{}", name) for name in class_texts for t in templates]


@dataclass
class ZeroShotClassifier:
    """Cached features -> class logits, with no text tower left (what a run folder saves)."""

    family: str
    class_names: list[str]
    texts: np.ndarray
    """``(C, P)`` float32, unit rows: each class's ensembled prompt embedding."""
    scale: float
    bias: float
    projection: np.ndarray | None = None
    """``(D, P)``: applied to cached class tokens first (None: features are projected)."""
    templates: tuple[str, ...] = ()
    class_texts: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        """``logits`` (CLIP: softmax) or ``ovr-logits`` (SigLIP: per-class sigmoids)."""
        return OUTPUTS[self.family]

    @property
    def classes_(self) -> np.ndarray:
        return np.arange(len(self.class_names))

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The last layer: unit image vectors ``@ W + b`` gives :meth:`logits`."""
        w = (self.scale * self.texts.astype(np.float64)).T
        return w, np.full(len(self.class_names), self.bias, dtype=np.float64)

    def image_vectors(self, features: np.ndarray) -> np.ndarray:
        """Unit image embeddings of cached features."""
        x = np.asarray(features, dtype=np.float32)
        if self.projection is not None:
            x = x @ self.projection
        return normalise(x)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(N, C)``: CLIP's ``exp(s) cos``, SigLIP's ``exp(s) cos + b``."""
        cos = self.image_vectors(features) @ self.texts.T  # float32: ~1e-7 of the cosine
        return self.scale * cos + np.float32(self.bias)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """One value per class summing to one (SigLIP: its sigmoids normalised)."""
        z = self.logits(features)
        if self.output == "ovr-logits":
            p = 1.0 / (1.0 + np.exp(-z))
        else:
            p = np.exp(z - z.max(axis=1, keepdims=True))
        return np.asarray(p / p.sum(axis=1, keepdims=True), np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(features), axis=1)

    def save(self, path: str | os.PathLike[str]) -> None:
        """An ``.npz`` of arrays only (loading it runs no code)."""
        arrays: dict[str, Any] = {
            "texts": self.texts.astype(np.float32),
            "scale": np.float64(self.scale),
            "bias": np.float64(self.bias),
        }
        if self.projection is not None:
            arrays["projection"] = self.projection.astype(np.float32)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], family: str, class_names: list[str]
    ) -> ZeroShotClassifier:
        with np.load(path, allow_pickle=False) as data:
            projection = data["projection"] if "projection" in data else None
            return cls(
                family,
                list(class_names),
                np.asarray(data["texts"], dtype=np.float32),
                float(data["scale"]),
                float(data["bias"]),
                projection,
            )


def build_classifier(
    tower: TextTower,
    class_names: list[str],
    templates: str | list[str] = DEFAULT_TEMPLATES,
    class_texts: list[str] | None = None,
    batch_size: int = DEFAULT_TEXT_BATCH,
) -> ZeroShotClassifier:
    """The zero-shot classifier of ``class_names`` (in prompts as ``class_texts`` when given,
    one per class), every template's embedding averaged per class."""
    chosen = load_templates(templates)
    texts = list(class_texts) if class_texts is not None else list(class_names)
    if len(texts) != len(class_names):
        raise InvalidOptionError(
            f"classes: {len(texts)} texts for {len(class_names)} classes", "classes"
        )
    if not texts:
        raise InvalidOptionError("classes: no class to tell apart", "classes")
    encoded = normalise(tower.encode(prompts(texts, chosen), batch_size))
    mean = encoded.reshape(len(texts), len(chosen), -1).mean(axis=1)
    return ZeroShotClassifier(
        tower.family,
        list(class_names),
        normalise(mean),
        tower.scale,
        tower.bias,
        tower.projection,
        tuple(chosen),
        tuple(texts),
    )
