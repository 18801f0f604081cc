"""Content-addressed dataset versions: manifest, normalised images in Parquet, TFRecords.

Layout under ``<out>/datasets/<version>/``::

    manifest.parquet            one row per image, with ``fold``
    quarantine.parquet          rejected inputs with a reason
    images/fold-<k>.parquet     image_id, sha256, label, fold, png (normalised grey PNG)
    tfrecords/fold-<k>.tfrecord tf.train.Example: image (PNG), label, image_id, sha256, fold
    dataset.json                settings, counts, file checksums; written last

``<version>`` hashes the manifest's content columns and the preprocessing settings, so the
same inputs give the same version and any changed, added or removed image a new one.

TensorFlow is imported inside the TFRecord functions (seconds to import; reading
manifests does not need it).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from covid_pipeline import imaging, layout, storage
from covid_pipeline.ingest import normalised_uri

log = logging.getLogger(__name__)

VERSION_COLUMNS = ["image_id", "sha256", "label", "patient_id", "fold"]
FORMAT = 1


@dataclass(frozen=True)
class DatasetInfo:
    version: str
    uri: str
    n_folds: int
    image_size: int
    counts: dict[str, int]

    @property
    def manifest_uri(self) -> str:
        return layout.dataset_manifest(self.uri)

    def tfrecord_uri(self, fold: int) -> str:
        return layout.fold_tfrecord(self.uri, fold)

    def images_uri(self, fold: int) -> str:
        return layout.fold_images(self.uri, fold)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_version(manifest: pd.DataFrame, settings: dict[str, Any]) -> str:
    rows = manifest[VERSION_COLUMNS].sort_values("image_id").astype(str).to_numpy().tolist()
    payload = json.dumps({"format": FORMAT, "settings": settings, "rows": rows},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parquet_bytes(df: pd.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


def write_parquet(uri: str, df: pd.DataFrame) -> str:
    return storage.write_bytes(uri, parquet_bytes(df))


def read_parquet(uri: str) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pandas()


def load_dataset(dataset_uri: str, verify: bool = False) -> DatasetInfo:
    """The dataset version at ``dataset_uri``; ``verify`` checks every file's sha256 first."""
    if verify:
        bad = verify_dataset(dataset_uri)
        if bad:
            raise storage.StorageError(
                f"{dataset_uri}: {', '.join(bad)} missing or damaged (sha256 differs from "
                f"dataset.json); run `covid-pipeline ingest` again to rebuild it"
            )
    try:
        meta = storage.read_json(layout.dataset_meta(dataset_uri))
    except FileNotFoundError:
        raise storage.StorageError(
            f"{dataset_uri}: no dataset.json (not a complete dataset version); run "
            "`covid-pipeline ingest` again to build it") from None
    return DatasetInfo(meta["version"], dataset_uri, meta["n_folds"], meta["image_size"],
                       meta["counts"]["final"])


def verify_dataset(dataset_uri: str) -> list[str]:
    """Files of a dataset version that are missing or whose sha256 differs from dataset.json.

    ``dataset.json`` itself is listed when it is missing or unreadable. Reads each file once.
    """
    try:
        meta = storage.read_json(layout.dataset_meta(dataset_uri))
        files = dict(meta["files"])
    except (FileNotFoundError, storage.StorageError, ValueError, KeyError, TypeError):
        return ["dataset.json"]
    bad = []
    for rel, digest in sorted(files.items()):
        try:
            data = storage.read_bytes(layout.dataset_file(dataset_uri, rel))
        except (FileNotFoundError, storage.StorageError):
            bad.append(rel)
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            bad.append(rel)
    return bad


def _tf_example(row: dict, png: bytes) -> bytes:
    import tensorflow as tf

    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": b(png),
        "label": i(row["label"]),
        "fold": i(row["fold"]),
        "image_id": b(str(row["image_id"]).encode()),
        "sha256": b(str(row["sha256"]).encode()),
    })).SerializeToString(deterministic=True)  # same bytes in every process


def write_dataset(
    manifest: pd.DataFrame,
    quarantine: pd.DataFrame,
    out: str,
    settings: dict[str, Any],
    report: dict[str, Any],
) -> DatasetInfo:
    """Write a dataset version (skipped when a complete one already exists).

    A version whose files fail verification against ``dataset.json`` (damaged or removed
    after the fact) is rebuilt, not reused; ``dataset.json`` is always written last.
    """
    version = dataset_version(manifest, settings)
    root = layout.dataset(out, version)
    n_folds = int(manifest["fold"].max()) + 1
    size = int(settings["image_size"])
    final = {str(k): int(v) for k, v in manifest.groupby("label_name").size().items()}
    info = DatasetInfo(version, root, n_folds, size, final)
    meta_uri = layout.dataset_meta(root)
    if storage.exists(meta_uri):
        bad = verify_dataset(root)
        lacking = [] if bad else sorted(set(manifest.columns) - set(
            pq.read_schema(io.BytesIO(storage.read_bytes(info.manifest_uri))).names))
        if not bad and not lacking:
            log.info("dataset %s already complete at %s; reusing it", version, root)
            return info
        log.warning("dataset %s at %s: %s; rebuilding it", version, root,
                    f"{', '.join(bad)} missing or damaged" if bad else
                    f"its manifest lacks {', '.join(lacking)} (made by an older ingest)")

    files: dict[str, str] = {}

    def put(uri: str, data: bytes) -> None:
        storage.write_bytes(uri, data)
        files[uri[len(root) + 1 :]] = hashlib.sha256(data).hexdigest()

    manifest = manifest.sort_values("image_id").reset_index(drop=True)
    put(info.manifest_uri, parquet_bytes(manifest))
    put(layout.dataset_quarantine(root), parquet_bytes(quarantine))
    for k in range(n_folds):
        part = manifest[manifest["fold"] == k]
        for uri, digest in _write_fold(part, out, size, info.images_uri(k),
                                       info.tfrecord_uri(k)).items():
            files[uri[len(root) + 1 :]] = digest
    folds = {
        str(k): {str(n): int(c) for n, c in g.groupby("label_name").size().items()}
        for k, g in manifest.groupby("fold")
    }
    meta = {
        "version": version,
        "format": FORMAT,
        "n_folds": n_folds,
        "image_size": size,
        "settings": settings,
        "counts": {**report.get("counts", {}), "final": final, "folds": folds},
        "report": {k: v for k, v in report.items() if k != "counts"},
        "files": files,
    }
    storage.write_json(meta_uri, meta)
    return info


IMAGES_SCHEMA = pa.schema([("image_id", pa.string()), ("sha256", pa.string()),
                           ("label", pa.int64()), ("fold", pa.int64()), ("png", pa.binary())])
ROWS_PER_GROUP = 256  # normalised images held at once while a fold is written


def _write_fold(part: pd.DataFrame, out: str, size: int, images_uri: str,
                tfrecord_uri: str) -> dict[str, str]:
    """Write one fold's Parquet images and TFRecord shard, :data:`ROWS_PER_GROUP` images at
    a time (memory bounded whatever the fold's size); return {uri: sha256}."""
    import tensorflow as tf

    with storage.writing(images_uri) as pq_path, storage.writing(tfrecord_uri) as tf_path:
        with pq.ParquetWriter(pq_path, IMAGES_SCHEMA) as parquet, \
                tf.io.TFRecordWriter(tf_path) as tfrecord:
            for start in range(0, max(len(part), 1), ROWS_PER_GROUP):
                rows = part.iloc[start : start + ROWS_PER_GROUP]
                pngs = [storage.read_bytes(normalised_uri(out, s, size))
                        for s in rows["sha256"]]
                parquet.write_table(pa.table({
                    "image_id": rows["image_id"].astype(str).tolist(),
                    "sha256": rows["sha256"].astype(str).tolist(),
                    "label": rows["label"].astype("int64").tolist(),
                    "fold": rows["fold"].astype("int64").tolist(),
                    "png": pngs,
                }, schema=IMAGES_SCHEMA))
                for row, png in zip(rows.to_dict("records"), pngs, strict=True):
                    tfrecord.write(_tf_example(row, png))
        return {images_uri: storage.file_sha256(pq_path),
                tfrecord_uri: storage.file_sha256(tf_path)}


def tfrecord_dataset(path: str):  # -> tf.data.Dataset
    """A ``tf.data`` dataset of dicts (image uint8 HxWx1, label, fold, image_id, sha256)."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "fold": tf.io.FixedLenFeature([], tf.int64),
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "sha256": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        ex["image"] = tf.io.decode_png(ex["image"], channels=1)
        return ex

    return tf.data.TFRecordDataset(path).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


@dataclass
class Split:
    """The images of some folds, in memory: uint8 [N, S, S, 1] (None if unneeded), keys."""

    images: np.ndarray | None
    labels: np.ndarray
    image_ids: list[str]
    shas: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _examples(info: DatasetInfo, fold: int) -> Iterator[dict]:
    """The parsed examples of one fold's TFRecord shard (staged locally if remote)."""
    try:
        path = storage.stage_local(info.tfrecord_uri(fold),
                                   storage.local_cache_dir(info.version))
    except FileNotFoundError:
        raise storage.StorageError(
            f"{info.tfrecord_uri(fold)}: missing from the dataset version; run "
            "`covid-pipeline ingest` (or the same `run`) again to rebuild it") from None
    yield from tfrecord_dataset(path).as_numpy_iterator()


def _split(examples: list[dict]) -> Split:
    return Split(np.stack([ex["image"] for ex in examples]),
                 np.array([int(ex["label"]) for ex in examples], np.int64),
                 [ex["image_id"].decode() for ex in examples],
                 [ex["sha256"].decode() for ex in examples])


def iter_splits(info: DatasetInfo, folds: list[int], chunk: int,
                only: set[str] | None = None) -> Iterator[Split]:
    """The images of ``folds`` (those whose sha256 is in ``only``, if given; the others are
    not decoded) in chunks of at most ``chunk`` images, in shard order: for passes that
    need no global row order, in memory bounded by ``chunk``.

    Read from the Parquet shards a row group at a time and decoded with Pillow (the same
    pixels as the TFRecords': PNG is lossless); no tf.data buffers, whose autotuning
    grows with the number of images read.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    shas: list[str] = []
    for k in folds:
        if not storage.exists(info.images_uri(k)):
            raise storage.StorageError(
                f"{info.images_uri(k)}: missing from the dataset version; run "
                "`covid-pipeline ingest` (or the same `run`) again to rebuild it")
        with storage.open_read(info.images_uri(k)) as fh:
            for rows in pq.ParquetFile(fh).iter_batches(
                    batch_size=chunk, columns=["image_id", "sha256", "label", "png"]):
                for image_id, sha, label, png in zip(*(rows.column(c).to_pylist() for c in (
                        "image_id", "sha256", "label", "png")), strict=True):
                    if only is not None and sha not in only:
                        continue
                    images.append(imaging.decode_png(png)[..., None])
                    labels.append(int(label))
                    ids.append(str(image_id))
                    shas.append(str(sha))
                    if len(ids) == chunk:
                        yield Split(np.stack(images), np.array(labels, np.int64), ids, shas)
                        images, labels, ids, shas = [], [], [], []
    if ids:
        yield Split(np.stack(images), np.array(labels, np.int64), ids, shas)


def load_split(info: DatasetInfo, folds: list[int]) -> Split:
    """Read the TFRecord shards of ``folds`` (staged locally if remote), in image_id order.

    image_id order is the one row order of every training path (the cached path reads the
    manifest sorted by image_id): :func:`covid_pipeline.head.batch_schedule` permutes row
    indices, so two paths
    train on the same batches only if their rows come in the same order. Shard by shard
    is not that order from three folds on.
    """
    examples = [ex for k in folds for ex in _examples(info, k)]
    if not examples:
        return Split(np.zeros((0, info.image_size, info.image_size, 1), np.uint8),
                     np.zeros(0, np.int64), [], [])
    examples.sort(key=lambda ex: ex["image_id"].decode())
    return _split(examples)
