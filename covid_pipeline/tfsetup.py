"""TensorFlow's process-wide settings, made once per worker process.

They (and the compiled-head cache of :mod:`covid_pipeline.head`) assume one task thread per
worker process: :func:`covid_pipeline.cluster.check_one_thread_per_worker` enforces it.

TensorFlow is imported inside the functions: importing this module must stay cheap.
"""

from __future__ import annotations

import contextlib
import os

from covid_pipeline.errors import ConfigError

PRECISIONS = ("float32", "mixed_float16")
TF_THREADS = "COVID_PIPELINE_TF_THREADS"


def configure_tensorflow() -> None:
    """Deterministic ops; one GPU per worker (dask-cuda lists its own GPU first), growth on.

    Without growth a worker keeps all its GPU memory for life; without the visibility
    limit TensorFlow would open a context on every GPU of the machine in every worker.
    """
    import tensorflow as tf

    # Deterministic kernels: the same data, seed and preset give the same leaderboard on
    # any number of workers (training amplifies the tiniest kernel-order difference).
    tf.config.experimental.enable_op_determinism()
    threads = cpu_threads()
    if threads:
        with contextlib.suppress(RuntimeError):  # already initialised in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    with contextlib.suppress(RuntimeError):  # already initialised in this process
        if gpus:
            tf.config.set_visible_devices(gpus[:1], "GPU")
            tf.config.experimental.set_memory_growth(gpus[0], True)


def cpu_threads() -> int | None:
    """TensorFlow's CPU thread pools' size: ``COVID_PIPELINE_TF_THREADS``, which the local
    cluster sets for each worker process to its share of the machine's cores (so that
    workers sharing a machine do not each start a thread per core); None (TensorFlow's
    default: every core) without it."""
    text = os.environ.get(TF_THREADS, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{TF_THREADS}={text!r}: give a whole number of threads (at "
                          "least 1), or leave it unset for one per core")
    return int(text)


def _chosen_precision() -> str | None:
    """``COVID_PIPELINE_PRECISION`` when it names a precision; None for ``auto``."""
    wanted = os.environ.get("COVID_PIPELINE_PRECISION", "auto")
    if wanted in PRECISIONS:
        return wanted
    if wanted != "auto":
        raise ConfigError(f"COVID_PIPELINE_PRECISION={wanted!r}: use auto, "
                         f"{' or '.join(PRECISIONS)}")
    return None


def backbone_precision() -> str:
    """``mixed_float16`` on GPUs (backbone only; head and loss stay float32), else float32.

    ``COVID_PIPELINE_PRECISION=float32`` turns mixed precision off.
    """
    chosen = _chosen_precision()
    if chosen:
        return chosen
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def precision_for(gpus: int) -> str:
    """:func:`backbone_precision` of a worker on this machine given ``gpus`` GPUs (as
    nvidia-smi counts them), without importing TensorFlow."""
    return _chosen_precision() or ("mixed_float16" if gpus else "float32")
