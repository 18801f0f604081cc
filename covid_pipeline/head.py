"""The study's head on frozen-backbone features: the model, its seeded batch schedule, fit.

Dense(64, ReLU) → Dropout(0.5) → Dense(2, softmax), Adam at 0.002 in the ``paper`` preset.
Both training paths (``online``, ``cached``) train it through :func:`train_head` on the
same batches: epoch e's seeded permutation of the rows, cut into ``batch_size`` pieces.
Keras and TensorFlow are imported inside the functions (they cost seconds to import).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covid_pipeline.config import BenchmarkConfig


def build_head(cfg: BenchmarkConfig):
    """Dense(units, ReLU) → Dropout → Dense(2, softmax), every random part seeded."""
    import keras

    seed = cfg.seed
    return keras.Sequential(
        [
            keras.layers.Dense(cfg.head_units, activation="relu", name="head_dense",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed)),
            keras.layers.Dropout(cfg.dropout, seed=seed + 1, name="head_dropout"),
            keras.layers.Dense(2, activation="softmax", name="head_out",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2)),
        ],
        name="head",
    )


_HEADS: dict[tuple, tuple] = {}


HEAD_STEPS_PER_CALL = 32  # head steps per compiled call: the head is tiny, calls are not
VALIDATION_BATCH = 32  # held-out rows per evaluation step (Keras' default for arrays)


def fresh_head_model(cfg: BenchmarkConfig, width: int):
    """A compiled head on ``width`` features, in its seeded initial state.

    Reused within a process (weights, Adam state and Dropout seed reset to their initial
    values), so Keras traces its train function once per worker, not once per fold.
    """
    import keras

    key = (width, cfg.head_units, cfg.dropout, cfg.seed, cfg.learning_rate, cfg.optimizer)
    if key not in _HEADS:
        inputs = keras.Input((width,))
        net = keras.Model(inputs, build_head(cfg)(inputs))
        compile_model(net, cfg, steps_per_execution=HEAD_STEPS_PER_CALL)
        seeds = [layer.seed_generator for layer in net.layers[-1].layers
                 if getattr(layer, "seed_generator", None) is not None]
        _HEADS[key] = (net, net.get_weights(), [(g, g.state.numpy()) for g in seeds])
        return net
    net, weights, seeds = _HEADS[key]
    net.set_weights(weights)
    for generator, state in seeds:
        generator.state.assign(state)
    for var in net.optimizer.variables:
        if not var.path.endswith("learning_rate"):
            var.assign(np.zeros(var.shape, var.dtype))
    return net


OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "nadam": "Nadam", "rmsprop": "RMSprop",
              "sgd": "SGD"}


def compile_model(model, cfg: BenchmarkConfig, steps_per_execution: int = 1) -> None:
    """The study's loss with ``cfg.optimizer`` (Adam, learning rate 0.002, in ``paper``)."""
    import keras

    optimizer = getattr(keras.optimizers, OPTIMIZERS[cfg.optimizer])(
        learning_rate=cfg.learning_rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False,
                  steps_per_execution=steps_per_execution)


def epoch_order(cfg: BenchmarkConfig, fold: int, epoch: int, n: int, repeat: int = 0
                ) -> np.ndarray:
    """The seeded batch order of an epoch (the same in every training path); repeat 0 keeps
    the order of single cross-validation."""
    key = [cfg.seed, fold, epoch] if repeat == 0 else [cfg.seed, repeat, fold, epoch]
    return np.random.default_rng(key).permutation(n)


def class_weights(cfg: BenchmarkConfig, labels: np.ndarray) -> dict[int, float] | None:
    if cfg.balance != "class-weight" or len(labels) == 0:
        return None
    counts = np.bincount(labels, minlength=2)
    return {k: float(len(labels) / (2 * max(counts[k], 1))) for k in (0, 1)}


def batch_schedule(cfg: BenchmarkConfig, fold: int, n: int, repeat: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every training batch of every epoch, in order: ``(rows, epochs, bounds)``.

    Batch b holds training rows ``rows[bounds[b]:bounds[b + 1]]`` (epoch e's seeded order,
    cut into ``batch_size`` pieces) of epoch ``epochs[bounds[b]]``. The online and cached
    paths both train on exactly these batches.
    """
    rows, epochs, bounds = [], [], [0]
    for epoch in range(cfg.epochs):
        order = epoch_order(cfg, fold, epoch, n, repeat)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            rows.append(idx)
            epochs.append(np.full(len(idx), epoch))
            bounds.append(bounds[-1] + len(idx))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), [0]
    return np.concatenate(rows), np.concatenate(epochs), bounds


def epoch_batches(cfg: BenchmarkConfig, fold: int, x: np.ndarray, labels: np.ndarray,
                  columns: np.ndarray, repeat: int = 0):
    """A function of the epoch e giving (tf.data of epoch e's training batches, their
    count): features ``x[:, columns[e]]`` (``x`` is [N, C, D]) in the epoch's seeded
    batch order (:func:`batch_schedule`), gathered for the whole epoch at once and cut into
    ``batch_size`` pieces (a tf.data map gathering each batch cost ~0.7 ms a batch, a fifth
    of a head's training)."""
    import tensorflow as tf

    rows, _, bounds = batch_schedule(cfg, fold, len(labels), repeat)
    per_epoch = (len(bounds) - 1) // max(cfg.epochs, 1)  # every epoch has as many batches

    def of_epoch(e: int):
        part = bounds[e * per_epoch : (e + 1) * per_epoch + 1]
        order = rows[part[0] : part[-1]]
        data = tf.data.Dataset.from_tensor_slices((x[order, columns[e]], labels[order]))
        return data.batch(cfg.batch_size), len(part) - 1

    return of_epoch


@dataclass
class HeadFit:
    """A trained head's test probabilities, timing, and curves: per epoch, ``loss`` and
    ``accuracy`` over its training batches and, when test labels are given, ``val_loss``
    and ``val_accuracy`` on the held-out rows after it."""

    prob: np.ndarray
    train_seconds: float
    predict_seconds: float
    curves: dict[str, list[float]] = field(default_factory=dict)
    weights: list[np.ndarray] = field(default_factory=list)  # the trained head's


def train_head(cfg: BenchmarkConfig, fold: int, x_train: np.ndarray, labels: np.ndarray,
               columns: np.ndarray, x_test: np.ndarray, repeat: int = 0,
               test_labels: np.ndarray | None = None, callbacks: Sequence[Any] = ()
               ) -> HeadFit:
    """Train the study's head on features (epoch e on ``x_train[:, columns[e]]``); return
    the test images' COVID-19 probabilities, the train / predict seconds and the curves.

    One ``fit`` call per epoch (the same updates in the same order as one call over every
    batch: optimizer and Dropout states carry over), so Keras reports each epoch and
    evaluates the held-out rows after it; ``callbacks`` (e.g. TensorBoard) see each epoch.

    Every random part is seeded by the head itself (initialisers, Dropout's seed generator,
    the batch order), not by the process's global seeds: setting those (``tf.random.set_seed``)
    makes TensorFlow trace the train and test functions again, ~0.4 s a head.
    """
    import tensorflow as tf

    net = fresh_head_model(cfg, x_train.shape[-1])
    t0 = time.perf_counter()
    of_epoch = epoch_batches(cfg, fold, x_train, labels, columns, repeat)
    weights = class_weights(cfg, labels)
    # one validation dataset for every epoch's fit (arrays would be converted again by each
    # fit: ~0.1 s an epoch), in batches of Keras' default size for arrays
    validation = (tf.data.Dataset.from_tensor_slices((x_test, test_labels))
                  .batch(VALIDATION_BATCH) if test_labels is not None and len(x_test)
                  else None)
    curves: dict[str, list[float]] = {}
    for epoch in range(cfg.epochs if len(labels) else 0):
        batches, n_batches = of_epoch(epoch)
        history = net.fit(batches, initial_epoch=epoch, epochs=epoch + 1,
                          steps_per_epoch=n_batches, class_weight=weights,
                          validation_data=validation, callbacks=list(callbacks), verbose=0,
                          shuffle=False)
        for name, values in history.history.items():
            curves.setdefault(name, []).append(float(values[-1]))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = np.asarray(net.predict_on_batch(x_test))[:, 1] if len(x_test) else np.zeros(0)
    return HeadFit(prob, train_s, time.perf_counter() - t0, curves,
                   [w.copy() for w in net.get_weights()])
