"""Backbone feature cache (layout, reuse, extraction): one backbone pass per image and view,
shared by every fold.

A frozen backbone (BatchNorm in inference mode) is a fixed function of its input, so the
features of an image under a view never change. They are stored per image, keyed by the
model, its preprocessing settings and the image's sha256::

    <out>/features/<model>/<settings-hash>/<sha[:2]>/<sha256>.npy   float16 [views + 1, D]

Row 0 is the un-augmented image (evaluation), row v >= 1 the image rotated by
:func:`covid_pipeline.augment.rotation_degrees` for view v. Unchanged images are reused
across folds, runs and data-set updates; a run that needs more views extends the files.

TensorFlow and Keras are imported inside the functions (seconds to import; the flow
process and the CLI never need them).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from covid_pipeline import backbone_cache, layout, storage, zoo
from covid_pipeline.augment import resize, view_angles
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.control import blackout
from covid_pipeline.shards import DatasetInfo, iter_splits, load_dataset, read_parquet
from covid_pipeline.tfsetup import backbone_precision, configure_tensorflow
from covid_pipeline.weights import weights_digest

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1
EXTRACT_CHUNK = 256  # images decoded and held at once by an extraction


def settings_hash(model: str, cfg: BenchmarkConfig, image_size: int, precision: str,
                  weights_sha256: str, box: float | None = None) -> str:
    """What decides a feature vector besides the image: model, weights' bytes, precision,
    sizes, angles, and the border-only control's blacked-out box (``box``)."""
    spec = zoo.get(model)
    payload = {
        "precision": precision,
        "format": FEATURE_FORMAT,
        "model": spec.name,
        "input_size": cfg.input_size or spec.input_size,
        "weights_sha256": weights_sha256,
        "seed": cfg.seed,
        "rotation_degrees": cfg.rotation_degrees,
        "image_size": image_size,
    }
    if box is not None:
        payload["central_box"] = box
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FeatureSource:
    """Where a model's features live and what made them (part of every fold result's key)."""

    root: str
    precision: str
    weights_sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"feature_root": self.root, "precision": self.precision,
                "weights_sha256": self.weights_sha256}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSource:
        """From :meth:`as_dict` or the stats :func:`extract_features` returns."""
        return cls(values["feature_root"], values["precision"], values["weights_sha256"])


def feature_source(out: str, model: str, cfg: BenchmarkConfig, image_size: int,
                   precision: str | None = None, control: bool = False) -> FeatureSource:
    """The feature root of ``model`` for this worker's precision (or ``precision``), of the
    full images or (``control``) of the border-only control's."""
    precision = precision or backbone_precision()
    digest = weights_digest(zoo.get(model), cfg)
    box = cfg.control_box if control else None
    return FeatureSource(
        layout.features(out, model, settings_hash(model, cfg, image_size, precision, digest,
                                                  box)),
        precision, digest)


def feature_uri(root: str, sha: str) -> str:
    return layout.feature_file(root, sha)


def encode_features(arr: np.ndarray) -> bytes:
    """``.npy`` bytes of a feature array (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_features(data: bytes) -> np.ndarray:
    """The array in ``.npy`` bytes; refuses pickled objects."""
    return np.load(io.BytesIO(data), allow_pickle=False)


@cache
def _file_size(rows: int, width: int) -> int:
    """Bytes of a float16 ``[rows, width]`` feature file as :func:`encode_features` writes it."""
    return len(encode_features(np.zeros((rows, width), np.float16)))


def stored_views(root: str, width: int) -> dict[str, int]:
    """Rotated views held by each feature file under ``root``, from a listing of sizes.

    Costs one listing instead of reading every file (one GET per image on S3). A file
    whose size fits no float16 ``[views + 1, width]`` array (foreign, another width, a
    temporary left by a killed writer) is left out and so recomputed like a missing one.
    """
    out = {}
    for rel, size in storage.file_sizes(root).items():
        sha, ext = posixpath.splitext(posixpath.basename(rel))
        if ext != ".npy" or rel != layout.feature_relpath(sha):
            continue
        rows = (size - _file_size(1, width)) // (2 * width) + 1
        if rows >= 1 and _file_size(rows, width) == size:
            out[sha] = rows - 1
    return out


def read_features(root: str, shas: list[str], keep: bool = False) -> dict[str, np.ndarray]:
    """The cached feature arrays of ``shas`` that exist (missing ones are left out).

    ``keep``: through this process's memory of feature files (:class:`KeptFeatures`): one
    listing of ``root``, then only files this process has not read at their listed size
    are fetched (a head task reads every image of its model, fold after fold and run after
    run). Arrays from memory are read-only.

    Files are fetched by a thread pool but decoded in this thread: ``np.load`` parses the
    header with ``ast``, which CPython 3.11 does not allow from several threads at once
    ("AST constructor recursion depth mismatch").
    """
    if not keep or KEPT.limit() == 0:
        return _fetch_features(root, shas)
    sizes = storage.file_sizes(root)
    out, todo = {}, []
    for sha in shas:
        size = sizes.get(layout.feature_relpath(sha))
        if size is None:
            continue  # missing, as for a fetch
        arr = KEPT.get(feature_uri(root, sha), size)
        if arr is None:
            todo.append(sha)
        else:
            out[sha] = arr
    for sha, arr in _fetch_features(root, todo).items():
        arr.flags.writeable = False
        KEPT.put(feature_uri(root, sha), sizes[layout.feature_relpath(sha)], arr)
        out[sha] = arr
    return out


def _fetch_features(root: str, shas: list[str]) -> dict[str, np.ndarray]:
    def fetch(sha: str) -> bytes | None:
        try:
            return storage.read_bytes(feature_uri(root, sha))
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        blobs = list(pool.map(fetch, shas))
    out = {}
    for sha, blob in zip(shas, blobs, strict=True):
        if blob is not None:
            try:
                out[sha] = decode_features(blob)
            except ValueError:  # a foreign or damaged file: training reports it missing
                log.warning("%s: unreadable feature file; delete it and the next extraction "
                            "recomputes it", feature_uri(root, sha))
    return out


class KeptFeatures:
    """Feature files a process has read, by URI and size, the least recently used dropped
    first beyond ``COVID_PIPELINE_FEATURE_MEMORY_MB`` (default 512; 0 keeps none).

    A feature file is content-addressed (the image's sha256 under the settings' hash) and
    only ever rewritten with more views, so a file listed at the size it was read at holds
    the same array."""

    ENV = "COVID_PIPELINE_FEATURE_MEMORY_MB"
    DEFAULT_MB = 512

    def __init__(self) -> None:
        self._arrays: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def limit(self) -> int:
        """The bound in bytes."""
        text = os.environ.get(self.ENV, "").strip()
        try:
            mb = float(text) if text else self.DEFAULT_MB
        except ValueError:
            raise ValueError(f"{self.ENV}={text!r}: give a number of MB (0 keeps no "
                             "features in memory)") from None
        return max(0, int(mb * 2**20))

    def get(self, uri: str, size: int) -> np.ndarray | None:
        with self._lock:
            entry = self._arrays.get(uri)
            if entry is None or entry[0] != size:
                return None
            self._arrays.move_to_end(uri)
            return entry[1]

    def put(self, uri: str, size: int, arr: np.ndarray) -> None:
        limit = self.limit()
        with self._lock:
            old = self._arrays.pop(uri, None)
            if old is not None:
                self._bytes -= old[1].nbytes
            if arr.nbytes > limit:
                return
            self._arrays[uri] = (size, arr)
            self._bytes += arr.nbytes
            while self._bytes > limit:
                _, (_, dropped) = self._arrays.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._arrays.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


KEPT = KeptFeatures()


def needed_views(cfg: BenchmarkConfig) -> int:
    """Rotated views per image: ``views`` or, by default, one per epoch (never more views
    than epochs: training would not use them)."""
    return cfg.effective_views


def epoch_view(cfg: BenchmarkConfig, epoch: int, views: int | None = None) -> int:
    """The view that epoch ``epoch`` (0-based) trains on, of ``views`` (default
    :func:`needed_views`)."""
    k = needed_views(cfg) if views is None else views
    return epoch + 1 if k >= cfg.epochs else 1 + epoch % k


def extract_features(dataset_uri: str, model: str, cfg: BenchmarkConfig, out: str,
                     control: bool = False, views: int | None = None) -> dict[str, Any]:
    """Compute and store features for every image of the dataset that lacks them.

    ``control``: of the images with the border-only control's central box blacked out
    (their own feature root, ``cfg.effective_control_views`` views). ``views``: the rotated
    views needed (default: what training needs; 0 for a test-only data set).
    """
    info = load_dataset(dataset_uri)
    source = feature_source(out, model, cfg, info.image_size, control=control)
    root, precision = source.root, source.precision
    if views is None:
        views = cfg.effective_control_views if control else needed_views(cfg)
    manifest = read_parquet(info.manifest_uri)
    shas = sorted(set(manifest["sha256"].astype(str)))
    stored = stored_views(root, zoo.feature_width(zoo.get(model)))
    todo = [s for s in shas if stored.get(s, -1) < views]
    stats = {"model": model, "control": control, "images": len(shas),
             "extracted_images": len(todo),
             "reused_images": len(shas) - len(todo), "backbone_passes": 0, "seconds": 0.0,
             **source.as_dict()}
    if not todo:
        return stats  # nothing to compute: Keras (seconds to import) is never loaded
    configure_tensorflow()
    t0 = time.perf_counter()
    size = cfg.input_size or zoo.get(model).input_size
    wanted = set(todo)
    try:
        # the worker's kept backbone of this model (the full images' and the control's):
        # built and traced once per process
        kept = backbone_cache.backbone(model, cfg, precision)
        # EXTRACT_CHUNK images at a time (memory bounded whatever N); under XLA every batch
        # padded to the config's size, as in every run (one compilation)
        for images, shas in wanted_chunks(info, wanted, EXTRACT_CHUNK):
            if control:
                images = blackout(images, cfg.control_box)
            feats = backbone_features(kept.forward, images, shas, cfg, size, views,
                                      cfg.extract_batch_size, exact=kept.jit)
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda sha, arr: write_unless_richer(feature_uri(root, sha),
                                                                   encode_features(arr)),
                              shas, feats))
    finally:
        backbone_cache.end_of_task()
    stats["backbone_passes"] = len(todo) * (views + 1)
    stats["seconds"] = time.perf_counter() - t0
    return stats


def write_unless_richer(uri: str, data: bytes) -> None:
    """Write a feature file unless one with as many views or more is there already (a
    concurrent run on the same --out that needs more views wrote it meanwhile)."""
    if (storage.size(uri) or 0) < len(data):
        storage.write_bytes(uri, data)


def wanted_chunks(info: DatasetInfo, wanted: set[str], chunk: int
                  ) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(uint8 images, shas) of the ``wanted`` images of a dataset version, ``chunk`` at a
    time (every chunk full but the last), read shard by shard."""
    images: list[np.ndarray] = []
    shas: list[str] = []
    for part in iter_splits(info, list(range(info.n_folds)), chunk, only=wanted):
        for i, sha in enumerate(part.shas):
            images.append(part.images[i])
            shas.append(sha)
            if len(shas) == chunk:
                yield np.stack(images), shas
                images, shas = [], []
    if shas:
        yield np.stack(images), shas


def resize_all(images: np.ndarray, size: int, step: int) -> np.ndarray:
    """uint8 grey [N,H,W,1] → float32 [N,S,S,1], once per image (views rotate the result)."""
    import tensorflow as tf

    if len(images) == 0:
        return np.zeros((0, size, size, 1), np.float32)
    return np.concatenate([resize(tf.constant(images[i : i + step]), size).numpy()
                           for i in range(0, len(images), step)])


def run_backbone(forward, resized: np.ndarray, rows: np.ndarray, angles: np.ndarray,
                 batch_size: int, dtype=np.float32, exact: bool = False) -> np.ndarray:
    """[len(rows), D]: ``forward`` on ``resized[rows]`` rotated by ``angles``, in batches of
    ``batch_size`` (at most the pairs given, unless ``exact``).

    ``exact``: the last batch padded to ``batch_size`` too, so that every call has one
    shape (what XLA, compiling per shape, needs; the forward pass of :mod:`backbone_cache` is
    traced once for any batch size).
    """
    import tensorflow as tf

    bs = max(1, batch_size if exact else min(batch_size, len(rows)))
    out = None
    for start in range(0, len(rows), bs):
        idx, ang = rows[start : start + bs], angles[start : start + bs]
        k = len(idx)
        if k < bs:  # pad to the traced shape
            idx = np.concatenate([idx, np.zeros(bs - k, idx.dtype)])
            ang = np.concatenate([ang, np.zeros(bs - k, ang.dtype)])
        f = forward(tf.constant(resized[idx]), tf.constant(ang)).numpy()[:k]
        if out is None:
            out = np.empty((len(rows), f.shape[-1]), dtype)
        out[start : start + k] = f
    return out if out is not None else np.zeros((0, 0), dtype)


def backbone_features(forward, images: np.ndarray, shas: list[str], cfg: BenchmarkConfig,
                      size: int, views: int, batch_size: int | None = None,
                      exact: bool = True) -> np.ndarray:
    """float16 [N, views + 1, D]: the backbone on every image under views 0..views.

    All (image, view) pairs form one stream of batches of ``batch_size`` (default: the
    config's, at most the pairs), however few images there are; ``exact``: the last one
    padded to it too (:func:`run_backbone`).
    """
    n = len(shas)
    resized = resize_all(images, size, cfg.extract_batch_size)
    rows = np.tile(np.arange(n), views + 1)
    angles = np.concatenate([view_angles(cfg.seed, shas, v, cfg.rotation_degrees)
                             for v in range(views + 1)])
    batch = batch_size or min(cfg.extract_batch_size, len(rows))
    feats = run_backbone(forward, resized, rows, angles, batch, np.float16, exact=exact)
    return feats.reshape(views + 1, n, -1).transpose(1, 0, 2)
