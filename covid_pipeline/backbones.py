"""Building a frozen backbone from a model-table row, and its input normalisation.

Keras (and with it TensorFlow) is imported inside the functions that need it: importing
it costs seconds, and the table (:mod:`covid_pipeline.zoo`) must stay cheap to list.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covid_pipeline.errors import ConfigError
from covid_pipeline.zoo import ModelSpec

if TYPE_CHECKING:
    import keras


def _resolve(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _identity(x: Any) -> Any:
    return x


def preprocess_fn(spec: ModelSpec) -> Callable[[Any], Any]:
    """The input normalisation of ``spec``'s mode (Keras' ``imagenet_utils``): identity
    for ``none``, where the model rescales inside itself.

    Keras' ``preprocess_input`` changes NumPy float arrays in place; the returned function
    works on a float32 copy instead, so callers' arrays are never changed.
    """
    if spec.preprocess == "none":
        return _identity
    mode = spec.preprocess

    def preprocess(x: Any) -> Any:
        # Keras loads TensorFlow (seconds): imported on first use, not with the module.
        from keras.applications import imagenet_utils

        if isinstance(x, np.ndarray):
            x = x.astype("float32", copy=True)
        return imagenet_utils.preprocess_input(x, mode=mode)

    preprocess.__name__ = f"preprocess_{spec.name}"
    return preprocess


def _weights_arg(weights: str | os.PathLike[str] | None) -> str | None:
    """Normalise ``weights`` to "imagenet", None or an existing file path."""
    if weights is None:
        return None
    text = os.fspath(weights).strip()
    if text.lower() in ("", "none", "null", "random"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    if not Path(text).expanduser().is_file():
        raise ConfigError(
            f"weights file {text!r} not found; use 'imagenet', 'none' or a path to an .h5 file"
        )
    return str(Path(text).expanduser())


def build_backbone(
    spec: ModelSpec,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_size: int | None = None,
    seed: int | None = None,
) -> keras.Model:
    """The frozen-able feature extractor: ``include_top=False``, global average pooling.

    ``weights`` is "imagenet" (Keras cache, downloaded if absent), None (random init) or
    a path to an .h5/.weights.h5 file for this backbone. ``input_size`` overrides the
    table's size (e.g. the light presets run at 96). With random weights, ``seed`` makes
    them a pure function of the seed (see :func:`reinitialise`).
    """
    weights = _weights_arg(weights)
    size = int(input_size or spec.input_size)
    constructor = _resolve(spec.constructor)
    model = constructor(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_shape=(size, size, 3),
        pooling="avg",
    )
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    if weights is None and seed is not None:
        reinitialise(model, seed)
    return model


def reinitialise(model: keras.Model, seed: int) -> None:
    """Redraw a random backbone's random variables from ``numpy`` seeded by ``seed``.

    Keras draws initial weights from Python's global ``random``, which other threads of a
    Dask worker (Prefect, distributed) also consume: the same seed could give different
    backbones. Kernels get Glorot-uniform values from a private generator instead; constant
    variables (biases, BatchNorm statistics) are left as built.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        if len(var.shape) < 2:
            continue
        shape = tuple(int(d) for d in var.shape)
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
        var.assign(rng.uniform(-limit, limit, shape).astype(var.dtype))
