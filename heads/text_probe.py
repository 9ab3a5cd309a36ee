"""Learning from text in ``compare``: the zero-shot row and a linear probe that starts from
the zero-shot classifier and is pulled back toward it.

**text-probe**: multinomial logistic regression on the unit image embeddings ``x`` of the
shared space, logits ``s * x @ W + b`` with the preset's logit scale ``s``, ``W``
initialised at the class text embeddings ``W0`` (the zero-shot classifier) and the loss

    mean cross-entropy + lambda * ||W - W0||^2

minimised by L-BFGS. This is the L2-SP penalty toward the starting point (Li, Grandvalet and
Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks", ICML
2018) applied to CLIP's zero-shot linear head, as in the constrained linear probe of CLAP
(Silva-Rodriguez, Hajimiri, Ben Ayed and Dolz, "A Closer Look at the Few-Shot Adaptation of
Large Vision-Language Models", CVPR 2024), with one penalty chosen on val from a grid
instead of CLAP's per-class multipliers updated by an augmented Lagrangian. Large lambda
gives the zero-shot classifier back; small lambda a linear probe started from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fit_progress import detail
from .metrics import Scored
from .probe import ProbeData, ProbeSettings, _Fitted

TEXT_PROBE_LAMBDAS = tuple(float(v) for v in np.logspace(-5, 1, 13))
"""The penalties tried (chosen on val; the largest among ties)."""
TEXT_KINDS = ("zero-shot", "text-probe")
"""The rows ``compare --zero-shot`` adds to a probe protocol's."""
_MAX_ITER = 300


@dataclass
class TextProbe:
    """A fitted text-initialised probe."""

    weights: np.ndarray
    """``(P, C)``."""
    bias: np.ndarray
    scale: float
    lam: float
    sweep: list[tuple[float, float]]
    val_accuracy: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(x, np.float64) @ self.weights + self.bias


def fit_penalised(
    x: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    scale: float,
    lam: float,
    max_iter: int = _MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` minimising mean cross-entropy of ``scale * x @ W + b`` plus
    ``lam * ||W - w0||^2``, from ``W = w0``, ``b = 0`` (L-BFGS, float64)."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    w0 = np.asarray(w0, np.float64)
    dim, classes = w0.shape
    onehot = np.zeros((len(y), classes))
    onehot[np.arange(len(y)), np.asarray(y, np.int64)] = 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: dim * classes].reshape(dim, classes)
        b = theta[dim * classes :]
        z = scale * x @ w + b
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        diff = w - w0
        value = -np.mean(np.sum(onehot * log_p, axis=1)) + lam * np.sum(diff * diff)
        residual = (np.exp(log_p) - onehot) / len(y)
        grad_w = scale * x.T @ residual + 2 * lam * diff
        return float(value), np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

    start = np.concatenate([w0.ravel(), np.zeros(classes)])
    found = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = found.x
    return theta[: dim * classes].reshape(dim, classes), theta[dim * classes :]


def text_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    w0: np.ndarray,
    scale: float,
    lambdas: tuple[float, ...] = TEXT_PROBE_LAMBDAS,
    refit: bool = True,
) -> TextProbe:
    """Choose the penalty on val (the largest among ties: closest to zero-shot), then
    refit on train+val with it (``refit``)."""
    sweep = []
    for i, lam in enumerate(lambdas):
        detail(f"lambda {i + 1}/{len(lambdas)}")
        w, b = fit_penalised(x_train, y_train, w0, scale, lam)
        predicted = np.argmax(scale * x_val @ w + b, axis=1)
        sweep.append((lam, float(np.mean(predicted == y_val))))
    best_score = max(score for _, score in sweep)
    lam = max(lam for lam, score in sweep if score == best_score)
    if refit:
        x_all = np.concatenate([x_train, x_val])
        y_all = np.concatenate([y_train, y_val])
        w, b = fit_penalised(x_all, y_all, w0, scale, lam)
    else:
        w, b = fit_penalised(x_train, y_train, w0, scale, lam)
    return TextProbe(w, b, scale, lam, sweep, best_score)


def text_fitters(classifier: Any) -> dict[str, Callable[..., _Fitted]]:
    """``zero-shot`` and ``text-probe`` fitters for :func:`~.probe.run_protocols`, on a
    :class:`~featcache.backbones.zero_shot.ZeroShotClassifier` of the cache's classes."""
    classes = np.arange(len(classifier.class_names))

    def zero_shot(data: ProbeData, settings: ProbeSettings, how: str, refit: bool) -> _Fitted:
        del settings, how, refit  # nothing learnt from the labelled rows
        hits = classifier.predict(data.x_val) == data.y_val
        val = float(np.mean(hits)) if len(hits) else 0.0
        scores = classifier.logits(data.x_test)
        params = {"family": classifier.family, "templates": len(classifier.templates)}
        return _Fitted(params, val, Scored.of(data.y_test, scores, classes), [])

    def probe(data: ProbeData, settings: ProbeSettings, how: str, refit: bool) -> _Fitted:
        del settings, how
        w0 = classifier.texts.T.astype(np.float64)
        fitted = text_probe(
            classifier.image_vectors(data.x_train),
            data.y_train,
            classifier.image_vectors(data.x_val),
            data.y_val,
            w0,
            classifier.scale,
            refit=refit,
        )
        scores = fitted.logits(classifier.image_vectors(data.x_test))
        params = {"lambda": fitted.lam, "init": "zero-shot", "normalize": "l2"}
        sweep = [[lam, score] for lam, score in fitted.sweep]
        return _Fitted(params, fitted.val_accuracy, Scored.of(data.y_test, scores, classes), sweep)

    return {"zero-shot": zero_shot, "text-probe": probe}
