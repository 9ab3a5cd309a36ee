"""In-memory training input for a small Keras model (a head on features): batches in a new
order each epoch, read by one iterator for every epoch when an epoch is one execution of
the train step.

Keras's own array input starts new iterators over its tf.data pipeline, for train and
for val, every epoch (tf.data instantiates and optimizes the pipeline anew each time), about
16-30 ms each on 2 cores: most of a small head's training time, which takes a few
milliseconds an epoch (``benchmarks/bench_dense_fit.py``, RESULTS 36)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STEPS_PER_EXECUTION = 16
"""Train steps a call runs at most: a small head is dominated by per-step Python overhead."""


@dataclass
class TrainInput:
    """What ``compile`` and ``fit`` take for one in-memory training set."""

    dataset: Any
    """A ``tf.data.Dataset`` of (features, labels) batches, shuffled each epoch."""
    steps_per_epoch: int | None
    """For ``fit``: set when the dataset is endless (one iterator for every epoch)."""
    steps_per_execution: int
    """For ``compile``: the steps of one epoch when they fit one execution, else
    :data:`STEPS_PER_EXECUTION` (an execution must never run on into the next epoch)."""


def steps_per_execution(rows: int, batch_size: int) -> int:
    """What :func:`train_input` gives ``compile`` for ``rows`` rows (known before it runs)."""
    steps = -(-rows // batch_size)
    return steps if steps <= STEPS_PER_EXECUTION else STEPS_PER_EXECUTION


def train_input(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> TrainInput:
    """Batches of ``(x, y)``, every row once an epoch, in a new order each epoch. Rows are
    gathered by shuffled index, as Keras does: the arrays are never copied into a shuffle
    buffer. The orders follow ``seed`` and TensorFlow's global seed when this is called:
    call it after ``keras.utils.set_random_seed`` for the same orders every run."""
    import tensorflow as tf

    rows = len(x)
    steps = -(-rows // batch_size)
    endless = steps <= STEPS_PER_EXECUTION
    order = tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)
    if endless:
        order = order.repeat()
    arrays = tf.data.Dataset.from_tensors((x, y)).repeat()
    batches = tf.data.Dataset.zip(arrays, order).map(
        lambda data, index: (tf.gather(data[0], index), tf.gather(data[1], index))
    )
    return TrainInput(
        batches.prefetch(2), steps if endless else None, steps_per_execution(rows, batch_size)
    )


def batched(x: np.ndarray, y: np.ndarray, batch_size: int) -> Any:
    """Validation batches of ``(x, y)`` in order (a lighter pipeline than Keras's own)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
