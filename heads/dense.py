"""A Keras dense classification head with the scikit-learn estimator contract."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .compiling import compile_for_training
from .fit_progress import keras_callbacks
from .options import (
    DEFAULT_ACTIVATION,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DROPOUT,
    DEFAULT_EPOCHS,
    DEFAULT_HIDDEN,
    DEFAULT_LR,
    DEFAULT_MOMENTUM,
    DEFAULT_MONITOR,
    DEFAULT_OPTIMIZER,
    DEFAULT_PATIENCE,
    DEFAULT_SEED,
    MONITORS,
    OPTIMIZERS,
)
from .train_input import STEPS_PER_EXECUTION, batched, steps_per_execution, train_input

__all__ = ["MONITORS", "OPTIMIZERS", "DenseHead"]


class DenseHead(ClassifierMixin, BaseEstimator):
    """Flatten/Dense/Dropout head, as in the Keras transfer-learning tutorials.

    ``hidden`` lists the widths of the hidden layers (empty: a linear softmax).
    Two classes get one sigmoid unit, more get softmax (or logits with
    ``from_logits=True``). With ``validation_data`` (or ``validation_fraction``),
    EarlyStopping watches ``monitor`` and restores the best weights.

    Examples
    --------
    >>> head = DenseHead(hidden=(64,), epochs=5).fit(x_train, y_train)  # doctest: +SKIP
    >>> head.predict_proba(x_test).shape  # doctest: +SKIP
    (n_test, n_classes)
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        batchnorm: bool = False,
        activation: str = DEFAULT_ACTIVATION,
        optimizer: str = DEFAULT_OPTIMIZER,
        lr: float = DEFAULT_LR,
        momentum: float = DEFAULT_MOMENTUM,
        epochs: int = DEFAULT_EPOCHS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        patience: int = DEFAULT_PATIENCE,
        monitor: str = DEFAULT_MONITOR,
        class_weight: str | dict[Any, float] | None = None,
        from_logits: bool = False,
        validation_fraction: float = 0.0,
        standardize: bool = False,
        seed: int = DEFAULT_SEED,
        verbose: int = 0,
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.batchnorm = batchnorm
        self.activation = activation
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.monitor = monitor
        self.class_weight = class_weight
        self.from_logits = from_logits
        self.validation_fraction = validation_fraction
        self.standardize = standardize
        self.seed = seed
        self.verbose = verbose

    # -- building --------------------------------------------------------------------

    def _build(
        self,
        n_features: int,
        n_classes: int,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        execution: int = STEPS_PER_EXECUTION,
    ) -> Any:
        from ..backbones.backbone import ensure_tensorflow_backend

        ensure_tensorflow_backend()
        import keras

        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: expected one of {OPTIMIZERS}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor {self.monitor!r}: expected one of {MONITORS}")
        keras.utils.set_random_seed(self.seed)
        inputs = keras.Input((n_features,), name="features")
        x = inputs
        if self.standardize and stats is not None:
            mean, variance = stats
            x = keras.layers.Normalization(mean=mean, variance=variance, name="standardize")(x)
        for i, width in enumerate(tuple(self.hidden)):
            x = keras.layers.Dense(int(width), name=f"dense_{i}")(x)
            if self.batchnorm:
                x = keras.layers.BatchNormalization(name=f"batchnorm_{i}")(x)
            x = keras.layers.Activation(self.activation, name=f"{self.activation}_{i}")(x)
            if self.dropout:
                x = keras.layers.Dropout(float(self.dropout), name=f"dropout_{i}")(x)
        binary = n_classes == 2
        if binary:
            activation = None if self.from_logits else "sigmoid"
            outputs = keras.layers.Dense(1, activation=activation, name="output")(x)
            loss = keras.losses.BinaryCrossentropy(from_logits=self.from_logits)
            metric = keras.metrics.BinaryAccuracy(
                name="accuracy", threshold=0.0 if self.from_logits else 0.5
            )
        else:
            activation = None if self.from_logits else "softmax"
            outputs = keras.layers.Dense(n_classes, activation=activation, name="output")(x)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits)
            metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        model = keras.Model(inputs, outputs, name="featcache_head")
        optimizers: dict[str, Callable[[], Any]] = {
            "adam": lambda: keras.optimizers.Adam(self.lr),
            "sgd": lambda: keras.optimizers.SGD(self.lr, momentum=self.momentum),
            "rmsprop": lambda: keras.optimizers.RMSprop(self.lr, momentum=self.momentum),
        }
        compile_for_training(
            model,
            optimizer=optimizers[self.optimizer](),
            loss=loss,
            metrics=[metric],
            steps_per_execution=execution,
        )
        return model

    def _callbacks(self, has_validation: bool) -> list[Any]:
        import keras

        if not has_validation or self.patience <= 0:
            return []
        mode = "max" if self.monitor == "val_accuracy" else "min"
        return [
            keras.callbacks.EarlyStopping(
                monitor=self.monitor,
                mode=mode,
                patience=self.patience,
                restore_best_weights=True,
            )
        ]

    # -- fitting ---------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
    ) -> DenseHead:
        """Train on ``X`` (n_samples, n_features); ``validation_data`` drives early stopping."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"DenseHead needs samples of at least 2 classes; got one class {self.classes_[0]}"
            )
        val = None
        if validation_data is not None:
            x_val = validate_data(self, validation_data[0], dtype=np.float32, reset=False)
            val = (x_val, self._encode(validation_data[1]))
        elif self.validation_fraction and len(X) >= 10:
            rng = np.random.default_rng(self.seed)
            order = rng.permutation(len(X))
            cut = round(len(X) * self.validation_fraction)
            val = (X[order[:cut]], encoded[order[:cut]])
            X, encoded = X[order[cut:]], encoded[order[cut:]]
        stats = (X.mean(axis=0), X.var(axis=0)) if self.standardize else None
        batch = int(self.batch_size)
        execution = steps_per_execution(len(X), batch)
        self.model_ = self._build(X.shape[1], len(self.classes_), stats, execution)
        train = train_input(X, encoded, batch, self.seed)  # after _build seeded TensorFlow
        history = self.model_.fit(
            train.dataset,
            steps_per_epoch=train.steps_per_epoch,
            validation_data=None if val is None else batched(*val, batch),
            epochs=self.epochs,
            class_weight=self._class_weights(encoded),
            callbacks=self._callbacks(val is not None) + keras_callbacks(),
            shuffle=False,  # shuffled already: a new order each epoch
            verbose=self.verbose,
        )
        self._record(history, val is not None)
        return self

    def fit_batches(
        self,
        train: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]],
        val: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]] | None,
        n_features: int,
        classes: np.ndarray,
        train_labels: np.ndarray,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        val_batches: int | None = None,
    ) -> DenseHead:
        """Train from batch generators (features streamed from disk); same model as ``fit``.

        ``train(epoch)`` yields the shuffled (features, labels) batches of one epoch,
        ``val()`` the validation batches; labels are values of ``classes``; ``stats``
        is the (mean, variance) of the training features, for ``standardize``;
        ``val_batches`` is how many batches ``val()`` yields.
        """
        self.classes_ = np.asarray(classes)
        self.n_features_in_ = n_features
        self.model_ = self._build(n_features, len(self.classes_), stats)
        epochs = itertools.count(1)
        train_batches = max(1, -(-len(train_labels) // int(self.batch_size)))
        train_data = _stream(lambda: train(next(epochs)), n_features, self._encode, train_batches)
        val_data = None
        if val is not None:
            val_data = _stream(val, n_features, self._encode, val_batches)
        history = self.model_.fit(
            train_data,
            validation_data=val_data,
            epochs=self.epochs,
            class_weight=self._class_weights(self._encode(train_labels)),
            callbacks=self._callbacks(val is not None) + keras_callbacks(),
            verbose=self.verbose,
            shuffle=False,
        )
        self._record(history, val is not None)
        return self

    def _class_weights(self, encoded: np.ndarray) -> dict[int, float] | None:
        if self.class_weight is None:
            return None
        if isinstance(self.class_weight, dict):
            weights = {
                int(self._encode([label])[0]): float(w)
                for label, w in self.class_weight.items()
                if label in self.classes_
            }
            return {i: weights.get(i, 1.0) for i in range(len(self.classes_))}
        if self.class_weight != "balanced":
            raise ValueError(
                f"class_weight {self.class_weight!r}: expected None, 'balanced' or a dict"
            )
        present = np.unique(encoded)
        values = compute_class_weight("balanced", classes=present, y=encoded)
        return {int(c): float(w) for c, w in zip(present, values)}

    def _record(self, history: Any, has_validation: bool) -> None:
        self.history_ = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        epochs = len(next(iter(self.history_.values()), []))
        self.n_epochs_ = epochs
        self.best_epoch_ = epochs
        if has_validation and self.patience > 0 and self.monitor in self.history_:
            scores = self.history_[self.monitor]
            pick = np.argmax if self.monitor == "val_accuracy" else np.argmin
            self.best_epoch_ = int(pick(scores)) + 1

    def _encode(self, y: Any) -> np.ndarray:
        lookup = {label: i for i, label in enumerate(self.classes_.tolist())}
        try:
            return np.asarray([lookup[v] for v in np.asarray(y).tolist()], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"label {exc.args[0]!r} was not seen in training") from None

    # -- predicting ------------------------------------------------------------------

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        step = 8192
        parts = [
            np.asarray(self.model_(X[start : start + step], training=False))
            for start in range(0, len(X), step)
        ]
        out = np.concatenate(parts) if parts else np.zeros((0, self._outputs()), np.float32)
        return self._probabilities(out)

    def _outputs(self) -> int:
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _probabilities(self, out: np.ndarray) -> np.ndarray:
        out = out.astype(np.float64)
        if len(self.classes_) == 2:
            p = out.reshape(-1)
            if self.from_logits:
                p = 1.0 / (1.0 + np.exp(-p))
            return np.stack([1.0 - p, p], axis=1)
        if self.from_logits:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class of each row."""
        check_is_fitted(self, "model_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _stream(
    make: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    n_features: int,
    encode: Callable[[np.ndarray], np.ndarray],
    batches: int | None = None,
) -> Any:
    """A tf.data pipeline over a Python batch generator, re-run every epoch."""
    import tensorflow as tf

    def generator() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for x, y in make():
            yield x.astype(np.float32), encode(y)

    spec = (
        tf.TensorSpec((None, n_features), tf.float32),
        tf.TensorSpec((None,), tf.int64),
    )
    dataset = tf.data.Dataset.from_generator(generator, output_signature=spec)
    if batches is not None:  # a known length lets Keras show progress and end epochs cleanly
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(2)
