"""Training and evaluation of one (model, fold): frozen backbone + the study's head.

Returns plain values (metrics, timing, the URI of the per-image predictions), never a Keras
object. A finished fold's result file is reused: an interrupted run redoes only what is
missing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from covid_pipeline import storage, zoo
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.metrics import fold_metrics
from covid_pipeline.shards import DatasetInfo, load_dataset, parquet_bytes, tfrecord_dataset

log = logging.getLogger(__name__)

RESULT_FORMAT = 2  # 2: keyed by feature precision and weights digest


@dataclass
class Split:
    """The images of some folds, in memory: uint8 [N, S, S, 1] (None if unneeded), keys."""

    images: np.ndarray | None
    labels: np.ndarray
    image_ids: list[str]
    shas: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def configure_tensorflow() -> None:
    """Deterministic ops; one GPU per worker (dask-cuda lists its own GPU first), growth on.

    Without growth a worker keeps all its GPU memory for life; without the visibility
    limit TensorFlow would open a context on every GPU of the machine in every worker.
    """
    import tensorflow as tf

    # Deterministic kernels: the same data, seed and preset give the same leaderboard on
    # any number of workers (training amplifies the tiniest kernel-order difference).
    tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    with contextlib.suppress(RuntimeError):  # already initialised in this process
        if gpus:
            tf.config.set_visible_devices(gpus[:1], "GPU")
            tf.config.experimental.set_memory_growth(gpus[0], True)


def results_root(out: str, version: str, cfg: BenchmarkConfig) -> str:
    return storage.join(out, "results", version, cfg.config_hash())


def fold_result_uri(out: str, version: str, cfg: BenchmarkConfig, model: str, fold: int) -> str:
    return storage.join(results_root(out, version, cfg), model, f"fold-{fold}.json")


def load_split(info: DatasetInfo, folds: list[int]) -> Split:
    """Read the TFRecord shards of ``folds`` (staged locally if remote), in image_id order.

    image_id order is the one row order of every training path (the cached path reads the
    manifest sorted by image_id): :func:`batch_schedule` permutes row indices, so two paths
    train on the same batches only if their rows come in the same order. Shard by shard
    is not that order from three folds on.
    """
    images, labels, ids, shas = [], [], [], []
    for k in folds:
        path = storage.stage_local(info.tfrecord_uri(k), storage.local_cache_dir(info.version))
        for ex in tfrecord_dataset(path).as_numpy_iterator():
            images.append(ex["image"])
            labels.append(int(ex["label"]))
            ids.append(ex["image_id"].decode())
            shas.append(ex["sha256"].decode())
    if not images:
        return Split(np.zeros((0, info.image_size, info.image_size, 1), np.uint8),
                     np.zeros(0, np.int64), [], [])
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return Split(np.stack([images[i] for i in order]), np.array(labels, np.int64)[order],
                 [ids[i] for i in order], [shas[i] for i in order])


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
                  jit_compile=False, steps_per_execution=steps_per_execution)


def epoch_order(cfg: BenchmarkConfig, fold: int, epoch: int, n: int) -> np.ndarray:
    """The seeded batch order of an epoch (the same in every training path)."""
    return np.random.default_rng([cfg.seed, fold, epoch]).permutation(n)


def class_weights(cfg: BenchmarkConfig, labels: np.ndarray) -> dict[int, float] | None:
    if cfg.balance != "class-weight" or len(labels) == 0:
        return None
    counts = np.bincount(labels, minlength=2)
    return {k: float(len(labels) / (2 * max(counts[k], 1))) for k in (0, 1)}


def batch_schedule(cfg: BenchmarkConfig, fold: int, n: int
                   ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every training batch of every epoch, in order: ``(rows, epochs, bounds)``.

    Batch b holds training rows ``rows[bounds[b]:bounds[b + 1]]`` (epoch e's seeded order,
    cut into ``batch_size`` pieces) of epoch ``epochs[bounds[b]]``. The online and cached
    paths both train on exactly these batches.
    """
    rows, epochs, bounds = [], [], [0]
    for epoch in range(cfg.epochs):
        order = epoch_order(cfg, fold, epoch, n)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            rows.append(idx)
            epochs.append(np.full(len(idx), epoch))
            bounds.append(bounds[-1] + len(idx))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), [0]
    return np.concatenate(rows), np.concatenate(epochs), bounds


def scheduled_batches(bounds: list[int], batch):
    """tf.data of ``batch(start, end)`` for each scheduled batch, prefetched.

    Batches of every size go through one traced train step (the batch dimension is left
    unknown), where ``train_on_batch`` would trace once per distinct batch size.
    """
    import tensorflow as tf

    starts = tf.constant(bounds[:-1], dtype=tf.int64)
    ends = tf.constant(bounds[1:], dtype=tf.int64)
    return (tf.data.Dataset.from_tensor_slices((starts, ends)).map(batch)
            .prefetch(tf.data.AUTOTUNE))


def fit_schedule(net, batches, n_batches: int,
                 weights: dict[int, float] | None) -> None:
    """One ``fit`` over the scheduled batches: the same updates, in the same order, as
    ``train_on_batch`` per batch, without its per-call overhead."""
    if n_batches:
        net.fit(batches, epochs=1, steps_per_epoch=n_batches, class_weight=weights,
                verbose=0, shuffle=False)


def fold_key(version: str, cfg: BenchmarkConfig, model: str, fold: int, precision: str,
             weights_sha256: str) -> dict[str, Any]:
    """Everything that changes a fold's predictions; a stored result is reused only when
    its key equals this. ``mode`` is left out: both modes train on the same batches and
    agree within 1e-3 (tests/test_features.py at 3 and 5 folds)."""
    return {"format": RESULT_FORMAT, "dataset_version": version,
            "config_hash": cfg.config_hash(), "model": model, "fold": fold,
            "feature_precision": precision, "weights_sha256": weights_sha256}


def train_fold(dataset_uri: str, model_name: str, fold: int, cfg: BenchmarkConfig,
               out: str, features: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate ``model_name`` on ``fold``; return (and store) its result record.

    ``features`` (cached mode) is what the extraction task returned: which feature root to
    read, in which precision and from which weights. Without it, this worker's own.
    """
    from covid_pipeline.features import (
        ONLINE_PRECISION,
        FeatureSource,
        feature_source,
        train_cached,
        train_online,
    )
    from covid_pipeline.weights import weights_digest

    info = load_dataset(dataset_uri)
    if cfg.mode == "cached":
        source = (FeatureSource.from_dict(features) if features else
                  feature_source(out, model_name, cfg, info.image_size))
        precision, digest = source.precision, source.weights_sha256
    else:
        precision, digest = ONLINE_PRECISION, weights_digest(zoo.get(model_name), cfg)
    key = fold_key(info.version, cfg, model_name, fold, precision, digest)
    uri = fold_result_uri(out, info.version, cfg, model_name, fold)
    if storage.exists(uri):
        record = storage.read_json(uri)
        if record.get("status") == "ok" and all(record.get(k) == v for k, v in key.items()):
            record["reused"] = True
            return record
        log.info("%s: made with other settings (%s); training again", uri,
                 ", ".join(k for k, v in key.items() if record.get(k) != v))
    configure_tensorflow()
    started = time.time()
    if cfg.mode == "cached":
        test, prob, timing = train_cached(info, model_name, fold, cfg, source)
    else:
        test, prob, timing = train_online(info, model_name, fold, cfg)
    pred_uri = storage.join(results_root(out, info.version, cfg), model_name,
                            f"fold-{fold}.predictions.parquet")
    storage.write_bytes(pred_uri, parquet_bytes(pd.DataFrame({
        "image_id": test.image_ids, "sha256": test.shas, "label": test.labels,
        "prob_covid": prob.astype(np.float64), "fold": fold, "model": model_name,
    })))
    record = {
        **key,
        "status": "ok",
        "mode": cfg.mode,
        "metrics": fold_metrics(test.labels, prob),
        "n_test": len(test),
        "test_image_ids_sha256": _ids_digest(test.image_ids),
        "predictions_uri": pred_uri,
        "timing": {**timing, "wall_seconds": time.time() - started},
        "reused": False,
    }
    storage.write_json(uri, record)
    return record


def _ids_digest(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
