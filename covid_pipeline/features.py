"""Backbone feature cache: one backbone pass per image and view, shared by every fold.

A frozen backbone (BatchNorm in inference mode) is a fixed function of its input, so the
features of an image under a view never change. They are stored per image, keyed by the
model, its preprocessing settings and the image's sha256::

    <out>/features/<model>/<settings-hash>/<sha[:2]>/<sha256>.npy   float16 [views + 1, D]

Row 0 is the un-augmented image (evaluation), row v >= 1 the image rotated by
:func:`covid_pipeline.augment.rotation_degrees` for view v. Unchanged images are reused
across folds, runs and data-set updates; a run that needs more views extends the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from covid_pipeline import storage, zoo
from covid_pipeline.augment import resize, rotated_inputs, view_angles
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.shards import DatasetInfo, load_dataset, read_parquet
from covid_pipeline.training import (
    Split,
    class_weights,
    configure_tensorflow,
    epoch_order,
    fresh_head_model,
    load_split,
)
from covid_pipeline.weights import backbone_weights

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1
PRECISIONS = ("float32", "mixed_float16")


def backbone_precision() -> str:
    """``mixed_float16`` on GPUs (backbone only; head and loss stay float32), else float32.

    ``COVID_PIPELINE_PRECISION=float32`` turns mixed precision off.
    """
    wanted = os.environ.get("COVID_PIPELINE_PRECISION", "auto")
    if wanted != "auto":
        return wanted
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def settings_hash(model: str, cfg: BenchmarkConfig, image_size: int,
                  precision: str = "float32") -> str:
    """What decides a feature vector besides the image: model, weights, size, angles."""
    spec = zoo.get(model)
    payload = {
        "precision": precision,
        "format": FEATURE_FORMAT,
        "model": spec.name,
        "input_size": cfg.input_size or spec.input_size,
        "weights": str(backbone_weights(spec, cfg)),
        "seed": cfg.seed,
        "rotation_degrees": cfg.rotation_degrees,
        "image_size": image_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def feature_root(out: str, model: str, cfg: BenchmarkConfig, image_size: int,
                 precision: str | None = None) -> str:
    precision = precision or backbone_precision()
    return storage.join(out, "features", model,
                        settings_hash(model, cfg, image_size, precision))


def feature_uri(root: str, sha: str) -> str:
    return storage.join(root, sha[:2], f"{sha}.npy")


def _to_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_features(root: str, shas: list[str]) -> dict[str, np.ndarray]:
    """The cached feature arrays of ``shas`` that exist (missing ones are left out)."""

    def one(sha: str) -> tuple[str, np.ndarray | None]:
        try:
            return sha, _from_bytes(storage.read_bytes(feature_uri(root, sha)))
        except (FileNotFoundError, ValueError, OSError):
            return sha, None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {s: a for s, a in pool.map(one, shas) if a is not None}


def needed_views(cfg: BenchmarkConfig) -> int:
    """Rotated views per image: ``views`` or, by default, one per epoch."""
    return cfg.views or cfg.epochs


def epoch_view(cfg: BenchmarkConfig, epoch: int) -> int:
    """The view that epoch ``epoch`` (0-based) trains on."""
    k = needed_views(cfg)
    return epoch + 1 if k >= cfg.epochs else 1 + epoch % k


def extract_features(dataset_uri: str, model: str, cfg: BenchmarkConfig, out: str
                     ) -> dict[str, Any]:
    """Compute and store features for every image of the dataset that lacks them."""
    import keras


    info = load_dataset(dataset_uri)
    root = feature_root(out, model, cfg, info.image_size)
    views = needed_views(cfg)
    manifest = read_parquet(info.manifest_uri)
    shas = sorted(set(manifest["sha256"].astype(str)))
    have = {s: a for s, a in read_features(root, shas).items() if a.shape[0] >= views + 1}
    todo = [s for s in shas if s not in have]
    stats = {"model": model, "images": len(shas), "extracted_images": len(todo),
             "reused_images": len(have), "backbone_passes": 0, "seconds": 0.0,
             "feature_root": root}
    if not todo:
        return stats
    configure_tensorflow()
    t0 = time.perf_counter()
    spec = zoo.get(model)
    size = cfg.input_size or spec.input_size
    split = load_split(info, list(range(info.n_folds)))
    index = {s: i for i, s in enumerate(split.shas)}
    keras.utils.set_random_seed(cfg.seed)
    precision = backbone_precision()
    keras.mixed_precision.set_global_policy(precision)
    try:
        backbone = zoo.build_backbone(spec, backbone_weights(spec, cfg), input_size=size,
                                   seed=cfg.seed)
        feats = backbone_features(backbone, split.images[[index[s] for s in todo]], todo,
                                  cfg, size, zoo.preprocess_fn(spec), views,
                                  jit=precision != "float32")
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: storage.write_bytes(feature_uri(root, todo[i]),
                                                    _to_bytes(feats[i])), range(len(todo))))
    stats["backbone_passes"] = len(todo) * (views + 1)
    stats["seconds"] = time.perf_counter() - t0
    return stats


def backbone_features(backbone, images: np.ndarray, shas: list[str], cfg: BenchmarkConfig,
                      size: int, preprocess, views: int, jit: bool = False) -> np.ndarray:
    """float16 [N, views + 1, D]: the backbone on every image under views 0..views.

    Each image is resized once (the same op the online path applies per batch), then
    rotated per view. Batches have one fixed shape (the last one padded) so the forward
    pass is traced once; ``jit`` compiles it with XLA (worth it on GPUs, not on CPUs).
    """
    import tensorflow as tf

    # as few batches as extract_batch_size allows, all of one size (the last one padded)
    n_batches = max(1, -(-len(shas) // cfg.extract_batch_size))
    bs = -(-len(shas) // n_batches)

    @tf.function(jit_compile=jit)
    def forward(batch, angles):
        x = backbone(rotated_inputs(batch, angles, preprocess), training=False)
        return tf.cast(x, tf.float32)

    resized = np.concatenate([resize(tf.constant(images[i : i + bs]), size).numpy()
                              for i in range(0, len(images), bs)])
    out = None
    for v in range(views + 1):
        angles = view_angles(cfg.seed, shas, v, cfg.rotation_degrees)
        for start in range(0, len(shas), bs):
            batch, ang = resized[start : start + bs], angles[start : start + bs]
            n = len(batch)
            if n < bs:  # pad to the traced shape
                batch = np.concatenate([batch, np.zeros((bs - n, *batch.shape[1:]), batch.dtype)])
                ang = np.concatenate([ang, np.zeros(bs - n, ang.dtype)])
            f = forward(tf.constant(batch), tf.constant(ang)).numpy()[:n]
            if out is None:
                out = np.zeros((len(shas), views + 1, f.shape[-1]), np.float16)
            out[start : start + n, v] = f.astype(np.float16)
    return out


def head_batches(cfg: BenchmarkConfig, fold: int, x: np.ndarray, labels: np.ndarray):
    """tf.data of the training batches of every epoch, in order: epoch e's seeded order,
    features of view ``epoch_view(e)`` (``x`` is [N, views + 1, D])."""
    import tensorflow as tf

    sel_view, sel_idx, bounds = [], [], [0]
    for epoch in range(cfg.epochs):
        order = epoch_order(cfg, fold, epoch, len(labels))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            sel_idx.append(idx)
            sel_view.append(np.full(len(idx), epoch_view(cfg, epoch)))
            bounds.append(bounds[-1] + len(idx))
    feats = tf.constant(x)
    ys = tf.constant(labels)
    views = tf.constant(np.concatenate(sel_view))
    rows = tf.constant(np.concatenate(sel_idx))
    starts = tf.constant(bounds[:-1], dtype=tf.int64)
    ends = tf.constant(bounds[1:], dtype=tf.int64)

    def batch(start, end):
        r, v = rows[start:end], views[start:end]
        return tf.gather_nd(feats, tf.stack([r, v], axis=1)), tf.gather(ys, r)

    return tf.data.Dataset.from_tensor_slices((starts, ends)).map(batch)


def train_cached(info: DatasetInfo, model: str, fold: int, cfg: BenchmarkConfig, out: str):
    """Train the head on cached features: epoch e on view ``epoch_view(e)``, test on view 0."""
    import keras


    manifest = read_parquet(info.manifest_uri).sort_values("image_id")
    shas = sorted(set(manifest["sha256"].astype(str)))
    # The extraction may have run on another kind of worker (GPU: mixed precision).
    here = backbone_precision()
    for precision in (here, *(p for p in PRECISIONS if p != here)):
        root = feature_root(out, model, cfg, info.image_size, precision)
        feats = read_features(root, shas)
        if len(feats) == len(shas):
            break
    else:
        raise RuntimeError(f"{len(shas) - len(feats)} images have no cached features for "
                           f"{model} under {storage.join(out, 'features', model)}; "
                           "run the feature-extraction task first")

    def split(mask) -> tuple[Split, np.ndarray]:
        part = manifest[mask]
        shas = part["sha256"].astype(str).tolist()
        return (Split(None, part["label"].to_numpy(np.int64), part["image_id"].astype(str)
                      .tolist(), shas), np.stack([feats[s] for s in shas]).astype(np.float32))

    train, x_train = split(manifest["fold"] != fold)
    test, x_test = split(manifest["fold"] == fold)
    keras.utils.set_random_seed(cfg.seed)
    net = fresh_head_model(cfg, x_train.shape[-1])
    weights = class_weights(cfg, train.labels)
    t0 = time.perf_counter()
    batches = head_batches(cfg, fold, x_train, train.labels)
    steps = sum(1 for _ in range(cfg.epochs) for _ in range(0, len(train), cfg.batch_size))
    # One fit over the whole sequence of batches: the same updates, in the same order, as
    # train_on_batch per batch (the online path), without its per-call overhead.
    net.fit(batches, epochs=1, steps_per_epoch=steps, class_weight=weights, verbose=0,
            shuffle=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = np.asarray(net.predict_on_batch(x_test[:, 0]))[:, 1] if len(test) else np.zeros(0)
    timing = {"train_seconds": train_s, "predict_seconds": time.perf_counter() - t0,
              "backbone_passes": 0}
    return test, prob, timing
