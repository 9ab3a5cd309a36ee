"""A linear scikit-learn head (logreg, linear-svm, ridge, behind its ``StandardScaler``) as
one affine map ``features @ weights + bias``: what ``export`` puts in a Keras ``Dense`` layer.

Pure numpy: no TensorFlow here. The scaler is folded into the weights
(``W' = W / sigma``, ``b' = b - W . mu / sigma``), and a binary head gets two output
columns so that every head has one column per class:

- logreg: logits whose softmax is ``predict_proba`` (binary: ``[0, s]``, whose softmax is
  ``[1 - sigmoid(s), sigmoid(s)]``); a one-vs-rest model (``multi_class="ovr"``, older
  scikit-learn) gives ``ovr-logits``: sigmoids normalised to sum to one, as it does.
- linear-svm and ridge: decision scores (binary: ``[-s/2, s/2]``), whose softmax is what
  featcache reports for them (:func:`featcache.heads.baselines.probabilities`): it ranks
  the classes as ``predict`` does but is not a probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidOptionError
from .options import LINEAR_HEADS

OUTPUTS = ("logits", "ovr-logits", "scores")
"""What the affine map gives: softmax logits, one-vs-rest logits, or decision scores."""


@dataclass(frozen=True)
class LinearForm:
    """``x @ weights + bias`` (float64), one column per class of the head."""

    weights: np.ndarray
    """``(features, classes)``."""
    bias: np.ndarray
    """``(classes,)``."""
    output: str
    """One of :data:`OUTPUTS`."""

    def values(self, features: np.ndarray) -> np.ndarray:
        """The affine map of ``features`` (what the Dense layer computes)."""
        return np.asarray(features, dtype=np.float64) @ self.weights + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """What the exported model outputs: one value per class summing to one."""
        values = self.values(features)
        if self.output == "ovr-logits":
            p = 1.0 / (1.0 + np.exp(-values))
            return p / p.sum(axis=1, keepdims=True)
        values = np.exp(values - values.max(axis=1, keepdims=True))
        return values / values.sum(axis=1, keepdims=True)


def linear_form(kind: str, estimator: Any) -> LinearForm:
    """The affine map of a fitted ``logreg``, ``linear-svm`` or ``ridge`` head (a
    ``Pipeline`` of an optional ``StandardScaler`` and the model, as
    :func:`featcache.heads.baselines.make_baseline` makes it)."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    expected = {"logreg": LogisticRegression, "linear-svm": LinearSVC, "ridge": RidgeClassifier}
    if kind not in LINEAR_HEADS:
        raise InvalidOptionError(f"a {kind} head is not linear ({', '.join(LINEAR_HEADS)} are)")
    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("head", estimator)]
    *before, (_, model) = steps
    if not isinstance(model, expected[kind]):
        raise InvalidOptionError(
            f"a {kind} head holds a {type(model).__name__}, not a {expected[kind].__name__}"
        )
    coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
    intercept = np.broadcast_to(
        np.asarray(model.intercept_, dtype=np.float64), (coef.shape[0],)
    ).copy()
    for _, step in reversed(before):  # fold each scaler, last first
        if step is None or step == "passthrough":
            continue
        if not isinstance(step, StandardScaler):
            raise InvalidOptionError(
                f"a {kind} head with a {type(step).__name__} step cannot be folded into one layer"
            )
        mean = np.zeros(coef.shape[1]) if step.mean_ is None else np.asarray(step.mean_)
        scale = np.ones(coef.shape[1]) if step.scale_ is None else np.asarray(step.scale_)
        if not step.with_mean:
            mean = np.zeros(coef.shape[1])
        coef = coef / scale
        intercept = intercept - coef @ mean
    output = "scores" if kind != "logreg" else "logits"
    if kind == "logreg" and getattr(model, "multi_class", None) == "ovr" and coef.shape[0] > 1:
        output = "ovr-logits"
    if coef.shape[0] == 1:  # binary: one score s for classes_[1]
        if kind == "logreg":  # softmax([0, s]) = [1 - sigmoid(s), sigmoid(s)]
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        else:  # softmax([-s/2, s/2]), as baselines.probabilities
            coef = np.concatenate([-coef, coef]) / 2.0
            intercept = np.concatenate([-intercept, intercept]) / 2.0
    return LinearForm(np.ascontiguousarray(coef.T), intercept, output)
