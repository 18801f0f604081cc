"""Built backbones that a worker process keeps between tasks, with their compiled forward pass.

A model's extraction, its border-only control's extraction and its Grad-CAM panel all run
the same frozen backbone; a re-run after a data update runs them on a handful of images.
An extraction of five new images took ~2 s with ResNet50's build and trace and ~0.35 s
without (96 px, CPU, measured here): a worker keeps what it built, keyed by everything
that decides the backbone's function (model, input size, weights' digest, seed,
precision), so later tasks pay neither again.

``COVID_PIPELINE_BACKBONES`` backbones per process (default 2; 0 keeps none), the least
recently used dropped first. A GPU worker keeps their weights in GPU memory meanwhile (at
most a few hundred MB each), and its tasks skip Keras' ``clear_session`` while it keeps
any (:func:`end_of_task`). The flow sends a model's backbone tasks to one home worker
(:func:`cluster.home_workers`).
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from covid_pipeline import backbones, zoo
from covid_pipeline.augment import rotated_inputs
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.weights import backbone_weights, weights_digest

ENV = "COVID_PIPELINE_BACKBONES"  # how many a process keeps
DEFAULT_KEPT = 2


@dataclass
class Backbone:
    """A built backbone, its compiled forward pass (traced once) and its eager maps pass."""

    model: Any  # keras.Model: preprocessed RGB batch → pooled features
    forward: Callable  # (resized grey batch, angles) → pooled float32 features
    maps: Callable  # resized grey batch → float32 last feature map (pooling's input), eager
    jit: bool  # forward compiled by XLA: once per batch shape (pad to one size)


_KEPT: OrderedDict[tuple, Backbone] = OrderedDict()
_LOCK = threading.Lock()


def kept_limit() -> int:
    """How many backbones a process keeps (``COVID_PIPELINE_BACKBONES``, default 2)."""
    text = os.environ.get(ENV, "").strip()
    try:
        return max(0, int(text)) if text else DEFAULT_KEPT
    except ValueError:
        raise ValueError(f"{ENV}={text!r}: give a whole number of backbones (0 keeps "
                         "none)") from None


def backbone(model: str, cfg: BenchmarkConfig, precision: str) -> Backbone:
    """``model``'s backbone under ``cfg`` and ``precision`` (a Keras mixed-precision
    policy): the one this process kept, or a new one (kept unless the limit is 0)."""
    spec = zoo.get(model)
    size = cfg.input_size or spec.input_size
    key = (spec.name, size, weights_digest(spec, cfg), cfg.seed, precision)
    with _LOCK:
        if key in _KEPT:
            _KEPT.move_to_end(key)
            return _KEPT[key]
        limit = kept_limit()
        if limit and len(_KEPT) >= limit:  # room first: never limit + 1 backbones at once
            while len(_KEPT) >= limit:
                _KEPT.popitem(last=False)
            gc.collect()  # a Keras model's reference cycles: freed now, not some time later
        built = _build(spec, cfg, size, precision)
        if limit:
            _KEPT[key] = built
        return built


def end_of_task() -> None:
    """What a task that ran a backbone does last: Keras' ``clear_session`` (state, kernel
    caches, a full garbage collection) when this process keeps no backbone; nothing when
    it does: the kept ones hold the memory it would free, and a cleared kernel cache cost
    the next pass 0.2-0.5 s (ResNet50, CPU, measured here) to set its kernels up again."""
    if kept_limit() == 0:
        import keras

        keras.backend.clear_session()


def forget() -> None:
    """Drop every kept backbone and free their memory."""
    with _LOCK:
        if _KEPT:
            _KEPT.clear()
            gc.collect()


def kept() -> list[tuple]:
    """The keys of the kept backbones, least recently used first."""
    with _LOCK:
        return list(_KEPT)


def _build(spec: zoo.ModelSpec, cfg: BenchmarkConfig, size: int, precision: str) -> Backbone:
    import keras

    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = backbones.build_backbone(spec, backbone_weights(spec, cfg), input_size=size,
                                         seed=cfg.seed)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    preprocess = backbones.preprocess_fn(spec)
    jit = precision != "float32"
    return Backbone(model, feature_function(model, preprocess, jit), maps_function(model,
                                                                                   preprocess),
                    jit)


def feature_function(model, preprocess, jit: bool = False):
    """The compiled forward pass: resized grey batch + angles → pooled float32 features.

    Traced once for every batch size (the batch dimension is left unknown), so a re-run's
    few new images need neither a trace nor padding. ``jit`` compiles the backbone with XLA
    (worth it on GPUs, not on CPUs), which compiles once per batch shape: callers then pad
    to one size (:attr:`Backbone.jit`). The rotation stays outside the XLA cluster, as XLA
    has no kernel for ImageProjectiveTransformV3 (TensorFlow 2.21). Autograph is off: the
    pass has no data-dependent Python control flow, and converting the backbone's call
    costs ~0.5 s of tracing per model (ResNet50).
    """
    import tensorflow as tf

    def run_backbone(x):
        return model(x, training=False)

    if jit:
        run_backbone = tf.function(run_backbone, jit_compile=True, autograph=False)

    @tf.function(autograph=False, input_signature=[grey_batch_spec(model),
                                                   tf.TensorSpec([None], tf.float32)])
    def forward(batch, angles):
        return tf.cast(run_backbone(rotated_inputs(batch, angles, preprocess)), tf.float32)

    return forward


def maps_function(model, preprocess):
    """The pass to the last feature map (the input of the backbone's global average
    pooling) of the un-rotated view: what Grad-CAM weighs.

    Eager, not a ``tf.function``: a panel makes one pass over a few images per model and
    run, and tracing and optimising the graph cost a worker's first pass ~2.3 s against
    ~0.6 s eager (ResNet50, 8 images, 96 px, CPU, measured here); a re-run's panel often
    runs on a worker whose pass was never traced. The maps were equal to the traced pass's
    there (graph optimisations may change the last bits in general)."""
    import keras
    import tensorflow as tf

    to_maps = keras.Model(model.inputs, pooling_layer(model).input)

    def maps(batch):
        batch = tf.convert_to_tensor(batch, tf.float32)
        angles = tf.zeros(tf.shape(batch)[:1], tf.float32)
        return tf.cast(to_maps(rotated_inputs(batch, angles, preprocess), training=False),
                       tf.float32)

    return maps


def pooling_layer(model):
    """The backbone's global average pooling (``pooling="avg"``): its last layer, or for
    ConvNeXt the one before the final LayerNormalization."""
    import keras

    return next(layer for layer in reversed(model.layers)
                if isinstance(layer, keras.layers.GlobalAveragePooling2D))


def after_pooling(model, pooled):
    """The backbone's layers after its pooling (ConvNeXt's LayerNormalization; none for
    the others) applied to ``pooled``: the backbone's output from its pooled maps."""
    layers = model.layers
    for layer in layers[layers.index(pooling_layer(model)) + 1:]:
        pooled = layer(pooled, training=False)
    return pooled


def grey_batch_spec(model):
    """Resized grey batches of any size at the model's input size."""
    import tensorflow as tf

    return tf.TensorSpec([None, *model.input_shape[1:3], 1], tf.float32)
