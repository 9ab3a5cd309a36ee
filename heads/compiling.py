"""Compiling a Keras model for training so that its train step is traced once, not twice.

Keras 3 on TensorFlow, with no distribution strategy, builds the optimizer's slots (Adam's
moments, SGD's momentum) inside the first traced train step. A ``tf.function`` that creates
variables is traced twice (once creating them, once more without), so each ``compile`` then
``fit`` (or ``train_on_batch``) paid the train step's trace twice. Building the slots eagerly
right after ``compile`` (what Keras itself does under a strategy) leaves one trace.
"""

from __future__ import annotations

from typing import Any


def compile_for_training(model: Any, **compile_args: Any) -> None:
    """``model.compile(**compile_args)``, then the optimizer built for the variables the
    model trains now (as Keras would build it on the first step). A model not built yet is
    left to Keras: its variables do not exist before its first call."""
    model.compile(**compile_args)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and model.built and not optimizer.built:
        optimizer.build(model.trainable_variables)
