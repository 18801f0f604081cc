"""Dataset versions: Parquet and TFRecord round trips, and version stability."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from covid_pipeline import imaging, storage
from covid_pipeline.dataset import DataSettings, prepare
from covid_pipeline.shards import read_parquet, tfrecord_dataset
from covid_pipeline.sources import SourceSpec
from covid_pipeline.synth import chest_image

SETTINGS = DataSettings(folds=3, image_size=128)


def specs(root) -> list[SourceSpec]:
    return [SourceSpec("ieee8023", str(root / "ieee8023")), SourceSpec("rsna", str(root / "rsna"))]


@pytest.fixture(scope="module")
def dataset(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    info, report = prepare(specs(synth_root), str(out), SETTINGS)
    return info, report, out


def test_layout_and_report(dataset):
    info, report, _ = dataset
    meta = storage.read_json(storage.join(info.uri, "dataset.json"))
    assert meta["version"] == info.version and meta["n_folds"] == 3
    assert meta["counts"]["final"] == {"COVID-19": 16, "normal": 16}
    assert report["balance"]["dropped"] == {"COVID-19": 0, "normal": 0}
    for rel, digest in meta["files"].items():
        assert hashlib.sha256(storage.read_bytes(storage.join(info.uri, rel))).hexdigest() == digest
    m = read_parquet(info.manifest_uri)
    assert {"image_id", "patient_id", "label", "label_name", "source", "view", "sex", "age",
            "uri", "sha256", "width", "height", "fold"} <= set(m.columns)


def test_parquet_and_tfrecord_give_the_same_pixels_and_labels(dataset):
    info, _, out = dataset
    manifest = read_parquet(info.manifest_uri).set_index("image_id")
    for k in range(info.n_folds):
        pq_rows = read_parquet(info.images_uri(k))
        tf_rows = list(tfrecord_dataset(info.tfrecord_uri(k)).as_numpy_iterator())
        assert len(pq_rows) == len(tf_rows) == int((manifest["fold"] == k).sum())
        for row, ex in zip(pq_rows.to_dict("records"), tf_rows, strict=True):
            image_id = ex["image_id"].decode()
            assert row["image_id"] == image_id
            assert row["label"] == ex["label"] == manifest.loc[image_id, "label"]
            assert ex["fold"] == k
            pq_pixels = imaging.decode_png(row["png"])
            assert pq_pixels.shape == (128, 128)
            np.testing.assert_array_equal(pq_pixels, ex["image"][..., 0])


def test_same_inputs_same_version_and_changes_make_new_versions(synth_root, tmp_path, dataset):
    info, _, _ = dataset
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    same, _ = prepare(specs(root), str(tmp_path / "o1"), SETTINGS)
    assert same.version == info.version

    other_settings, _ = prepare(specs(root), str(tmp_path / "o1"),
                                DataSettings(folds=3, image_size=96))
    assert other_settings.version != info.version

    image = root / "ieee8023" / "images" / "covid-100-0.png"
    image.write_bytes(imaging.encode_png(chest_image(np.random.default_rng(9), (200, 200), True)))
    changed, _ = prepare(specs(root), str(tmp_path / "o1"), SETTINGS)
    assert changed.version not in (info.version,)

    image.unlink()
    removed, _ = prepare(specs(root), str(tmp_path / "o1"), SETTINGS)
    assert len({info.version, changed.version, removed.version}) == 3


def test_complete_version_is_reused_not_rewritten(synth_root, tmp_path):
    first, _ = prepare(specs(synth_root), str(tmp_path), SETTINGS)
    marker = storage.join(first.uri, "dataset.json")
    before = storage.read_bytes(marker)
    mtime = os.stat(marker).st_mtime_ns
    again, _ = prepare(specs(synth_root), str(tmp_path), SETTINGS)
    assert again == first and os.stat(marker).st_mtime_ns == mtime
    assert storage.read_bytes(marker) == before


def test_a_version_whose_manifest_lacks_new_columns_is_rebuilt(tmp_path, synth_root):
    """A dataset version written before ingest recorded the acquisition facts keeps its
    version id (they are not version columns) but gets its manifest rewritten with them."""
    from covid_pipeline.shards import parquet_bytes

    out = tmp_path / "out"
    info, _ = prepare(specs(synth_root), str(out), SETTINGS)
    manifest_path = out / "datasets" / info.version / "manifest.parquet"
    old = read_parquet(str(manifest_path)).drop(columns=["file_format", "phash"])
    manifest_path.write_bytes(parquet_bytes(old))
    meta_path = out / "datasets" / info.version / "dataset.json"
    meta = json.loads(meta_path.read_text())  # as the older ingest left it: consistent
    meta["files"]["manifest.parquet"] = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    again, _ = prepare(specs(synth_root), str(out), SETTINGS)
    assert again.version == info.version
    assert {"file_format", "phash"} <= set(read_parquet(str(manifest_path)).columns)


def test_folds_are_written_a_row_group_at_a_time(synth_root, tmp_path, dataset, monkeypatch):
    """Shards stream: a fold's Parquet holds row groups of at most ROWS_PER_GROUP images
    (never the whole fold at once); the content and the TFRecord bytes do not change."""
    import pyarrow.parquet as pq

    from covid_pipeline import shards

    info, _, _ = dataset
    monkeypatch.setattr(shards, "ROWS_PER_GROUP", 3)
    small, _ = prepare(specs(synth_root), str(tmp_path / "out"), SETTINGS)
    assert small.version == info.version
    for k in range(info.n_folds):
        meta = pq.ParquetFile(storage.local_path(small.images_uri(k))).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert max(sizes) == 3 and sum(sizes) == len(read_parquet(info.images_uri(k)))
        assert read_parquet(small.images_uri(k)).equals(read_parquet(info.images_uri(k)))
        assert (storage.read_bytes(small.tfrecord_uri(k))
                == storage.read_bytes(info.tfrecord_uri(k)))
