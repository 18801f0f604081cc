"""The feature cache: same predictions as the study's online procedure, and reuse."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pytest
from imagefiles import add_covid_images

from covid_pipeline import augment, storage
from covid_pipeline.config import resolve_config
from covid_pipeline.dataset import DataSettings, prepare
from covid_pipeline.features import (
    FeatureSource,
    encode_features,
    epoch_view,
    extract_features,
    needed_views,
    stored_views,
)
from covid_pipeline.shards import load_dataset
from covid_pipeline.sources import SourceSpec
from covid_pipeline.synth import make_synthetic
from covid_pipeline.training import train_cached, train_fold

pytestmark = pytest.mark.slow


def specs(root) -> list[SourceSpec]:
    return [SourceSpec("ieee8023", str(root / "ieee8023")), SourceSpec("rsna", str(root / "rsna"))]


def test_angles_are_pure_bounded_and_zero_for_view_zero():
    a = augment.rotation_degrees(1, "abc", 3, 45)
    assert a == augment.rotation_degrees(1, "abc", 3, 45)
    assert a != augment.rotation_degrees(2, "abc", 3, 45)
    assert augment.rotation_degrees(1, "abc", 0, 45) == 0.0
    draws = [augment.rotation_degrees(0, f"{i}", v, 45) for i in range(200) for v in (1, 2)]
    assert max(draws) <= 45 and min(draws) >= -45
    assert max(draws) > 40 and min(draws) < -40


def test_epoch_views():
    cfg = resolve_config("smoke", epochs=6)
    assert [epoch_view(cfg, e) for e in range(6)] == [1, 2, 3, 4, 5, 6]
    cfg = resolve_config("smoke", epochs=6, views=4)
    assert [epoch_view(cfg, e) for e in range(6)] == [1, 2, 3, 4, 1, 2]


def test_stored_views_come_from_file_sizes_alone(tmp_path):
    root, width = str(tmp_path / "features"), 48
    assert stored_views(root, width) == {}  # no folder yet

    def put(sha: str, data: bytes, name: str | None = None) -> None:
        storage.write_bytes(storage.join(root, sha[:2], name or f"{sha}.npy"), data)

    a, b, c, d, e = (f"{i}" * 64 for i in "abcde")
    put(a, encode_features(np.ones((121, width), np.float16)))  # 120 views
    put(b, encode_features(np.ones((1, width), np.float16)))  # view 0 only
    put(c, encode_features(np.ones((3, width), np.float16))[:-7])  # cut short
    put(d, encode_features(np.ones((3, 2 * width + 1), np.float16)))  # another model's width
    put(e, encode_features(np.ones((3, width), np.float16)), name=".tmp-x1")  # killed writer
    storage.write_bytes(storage.join(root, "zz", f"{a}.npy"), b"")  # wrong folder
    assert stored_views(root, width) == {a: 120, b: 0}


def real_specs(shared_data) -> list[SourceSpec]:
    return [SourceSpec("ieee8023", str(shared_data / "ieee8023-2020-04")),
            SourceSpec("rsna", str(shared_data / "rsna-pneumonia-format"))]


@pytest.mark.parametrize("folds", [3, 5])
def test_online_and_cached_give_the_same_predictions(shared_data, tmp_path, folds):
    """From 3 folds on, the training folds' shards are not in global image_id order: both
    paths must still train on the same rows in the same order (the same batches)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    info, _ = prepare(real_specs(shared_data), str(tmp_path / "out"),
                      DataSettings(folds=folds, image_size=64))
    preds = {}
    for mode in ("online", "cached"):
        cfg = resolve_config("smoke", models=["ResNet50"], weights="none", mode=mode, epochs=3,
                             folds=folds, input_size=64, batch_size=8)
        assert needed_views(cfg) == cfg.epochs
        out = str(tmp_path / mode)
        stats = None
        if mode == "cached":
            stats = extract_features(info.uri, "ResNet50", cfg, out)
            assert stats["backbone_passes"] == 44 * 4
        # later folds reuse the process's compiled head (state reset)
        recs = [train_fold(info.uri, "ResNet50", k, cfg, out, stats) for k in range(folds)]
        assert {r["mode"] for r in recs} == {mode}
        preds[mode] = pd.concat([pd.read_parquet(r["predictions_uri"]) for r in recs]
                                ).set_index("image_id")["prob_covid"].sort_index()
    assert preds["online"].index.equals(preds["cached"].index) and len(preds["online"]) == 44
    assert preds["online"].std() > 1e-2  # the check is not vacuous: predictions vary
    np.testing.assert_allclose(preds["cached"], preds["online"], rtol=0, atol=1e-3)


def test_adding_images_extracts_only_the_new_ones(tmp_path, caplog):
    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=6, normals=12, size=96, seed=4)
    out = str(tmp_path / "out")
    cfg = resolve_config("smoke", models=["VGG16"], weights="none", epochs=2, folds=2,
                         input_size=32, balance="none")
    settings = DataSettings(folds=2, image_size=64, balance="none")
    first, _ = prepare(specs(root), out, settings)
    assert extract_features(first.uri, "VGG16", cfg, out)["extracted_images"] == 24

    add_covid_images(root, 10, seed=7, first_patient=900, per_patient=2)  # 5 new patients

    second, _ = prepare(specs(root), out, settings)
    assert second.version != first.version
    stats = extract_features(second.uri, "VGG16", cfg, out)
    assert (stats["images"], stats["extracted_images"], stats["reused_images"]) == (34, 10, 24)
    assert stats["backbone_passes"] == 10 * 3
    assert extract_features(second.uri, "VGG16", cfg, out)["extracted_images"] == 0

    more_views = resolve_config("smoke", models=["VGG16"], weights="none", epochs=4, folds=2,
                                input_size=32, balance="none")
    assert extract_features(second.uri, "VGG16", more_views, out)["extracted_images"] == 34

    # A damaged file of the right size passes the listing; training names it and the fix.
    damaged = sorted((tmp_path / "out" / "features" / "VGG16").rglob("*.npy"))[0]
    damaged.write_bytes(b"garbage!" + damaged.read_bytes()[8:])
    assert extract_features(second.uri, "VGG16", cfg, out)["extracted_images"] == 0
    with caplog.at_level(logging.WARNING, logger="covid_pipeline.features"), \
            pytest.raises(RuntimeError, match="1 of 34 images have no readable cached"):
        train_cached(load_dataset(second.uri), "VGG16", 0, cfg,
                     FeatureSource.from_dict(stats))
    assert str(damaged) in caplog.text and "delete it" in caplog.text
    damaged.unlink()
    assert extract_features(second.uri, "VGG16", cfg, out)["extracted_images"] == 1


def test_heads_read_features_a_gpu_worker_extracted(tmp_path, monkeypatch):
    """Extraction under mixed precision (as on a GPU worker), head training in float32 (a
    CPU worker): the head task reads the root the extraction names, and says so."""
    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=4, normals=8, size=96, seed=5)
    out = str(tmp_path / "out")
    cfg = resolve_config("smoke", models=["VGG16"], weights="none", epochs=2, folds=2,
                         input_size=32, balance="none")
    info, _ = prepare(specs(root), out, DataSettings(folds=2, image_size=64, balance="none"))
    monkeypatch.setenv("COVID_PIPELINE_PRECISION", "mixed_float16")
    stats = extract_features(info.uri, "VGG16", cfg, out)
    assert stats["extracted_images"] > 0 and stats["precision"] == "mixed_float16"
    monkeypatch.setenv("COVID_PIPELINE_PRECISION", "float32")
    record = train_fold(info.uri, "VGG16", 0, cfg, out, stats)
    assert record["feature_precision"] == "mixed_float16"
    preds = pd.read_parquet(record["predictions_uri"])
    assert len(preds) == record["n_test"] > 0 and np.isfinite(preds["prob_covid"]).all()


def save_random_weights(path, seed: int) -> None:
    from covid_pipeline import backbones, zoo

    backbones.build_backbone(zoo.get("VGG16"), None, input_size=32, seed=seed).save_weights(path)


def test_new_weights_bytes_or_precision_recompute_features_and_folds(tmp_path, monkeypatch):
    """Fold results and features are keyed by the weights file's content (not its path)
    and by the backbone precision; an unchanged rerun reuses everything."""
    monkeypatch.setenv("COVID_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COVID_PIPELINE_PRECISION", "float32")
    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=4, normals=8, size=96, seed=6)
    out = str(tmp_path / "out")
    weights = tmp_path / "vgg16.weights.h5"
    save_random_weights(weights, seed=1)
    cfg = resolve_config("smoke", models=["VGG16"], weights=str(weights), epochs=2, folds=2,
                         input_size=32, balance="none")
    info, _ = prepare(specs(root), out, DataSettings(folds=2, image_size=64, balance="none"))

    def run() -> tuple[dict, list[dict]]:
        stats = extract_features(info.uri, "VGG16", cfg, out)
        recs = [train_fold(info.uri, "VGG16", k, cfg, out, stats) for k in (0, 1)]
        for r in recs:  # read now: a retrained fold overwrites its predictions file
            r["probs"] = pd.read_parquet(r["predictions_uri"])["prob_covid"].to_numpy()
        return stats, recs

    first, folds = run()
    assert first["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert not any(r["reused"] for r in folds)
    again, refolds = run()  # unchanged: nothing recomputed
    assert (again["feature_root"], again["extracted_images"]) == (first["feature_root"], 0)
    assert all(r["reused"] for r in refolds)

    # a result stored before repeats existed (no "repeat" key) is repeat 0, still reused
    stored = tmp_path / "out" / "results" / info.version / cfg.config_hash() / "VGG16"
    record = json.loads((stored / "fold-0.json").read_text())
    del record["repeat"]
    (stored / "fold-0.json").write_text(json.dumps(record))
    assert train_fold(info.uri, "VGG16", 0, cfg, out, again)["reused"]

    save_random_weights(weights, seed=2)  # other bytes, same path (and size)
    new, newfolds = run()
    assert new["weights_sha256"] != first["weights_sha256"]
    assert new["feature_root"] != first["feature_root"]
    assert new["extracted_images"] == new["images"]
    assert not any(r["reused"] for r in newfolds)
    assert {r["weights_sha256"] for r in newfolds} == {new["weights_sha256"]}
    assert not np.allclose(newfolds[0]["probs"], folds[0]["probs"])

    monkeypatch.setenv("COVID_PIPELINE_PRECISION", "mixed_float16")
    mixed, mixedfolds = run()
    assert mixed["feature_root"] not in (first["feature_root"], new["feature_root"])
    assert mixed["extracted_images"] == mixed["images"]
    assert not any(r["reused"] for r in mixedfolds)
    assert {r["feature_precision"] for r in mixedfolds} == {"mixed_float16"}
    assert all(r["reused"] for r in run()[1])


def test_extraction_in_bounded_chunks_gives_the_same_features(tmp_path, monkeypatch):
    """Extraction holds at most EXTRACT_CHUNK images at once; the chunking changes no
    feature beyond float noise."""
    from covid_pipeline import features

    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=3, normals=6, size=96, seed=2)
    cfg = resolve_config("smoke", models="VGG16", weights="none", input_size=32,
                         image_size=64, epochs=2, folds=2)
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    info, _ = prepare(specs(root), out_a, DataSettings(folds=2, image_size=64))
    prepare(specs(root), out_b, DataSettings(folds=2, image_size=64))
    extract_features(info.uri, "VGG16", cfg, out_a)
    sizes: list[int] = []
    real = features.backbone_features
    monkeypatch.setattr(features, "EXTRACT_CHUNK", 5)
    monkeypatch.setattr(features, "backbone_features",
                        lambda fwd, images, *a, **k: sizes.append(len(images)) or real(
                            fwd, images, *a, **k))
    extract_features(info.uri.replace(out_a, out_b), "VGG16", cfg, out_b)
    assert max(sizes) <= 5 and sum(sizes) == 12
    a = features.read_features(features.feature_source(out_a, "VGG16", cfg, 64).root,
                               sorted(pd.read_parquet(f"{info.uri}/manifest.parquet")
                                      ["sha256"]))
    b = features.read_features(features.feature_source(out_b, "VGG16", cfg, 64).root,
                               list(a))
    assert len(a) == len(b) == 12
    for sha, arr in a.items():
        np.testing.assert_allclose(b[sha].astype(np.float32), arr.astype(np.float32),
                                   atol=1e-2 * float(np.abs(arr).max()))


def test_files_with_more_views_than_needed_are_cut_to_what_the_run_uses(tmp_path):
    """A run with fewer epochs than an earlier one reads files of both lengths."""
    from covid_pipeline.features import encode_features, feature_uri
    from covid_pipeline.training import cached_features

    root = str(tmp_path / "features")
    long_sha, short_sha = "a" * 64, "b" * 64
    storage.write_bytes(feature_uri(root, long_sha),
                        encode_features(np.ones((121, 8), np.float16)))
    storage.write_bytes(feature_uri(root, short_sha),
                        encode_features(np.ones((4, 8), np.float16)))
    feats = cached_features(root, [long_sha, short_sha], 3, "VGG16")
    assert {sha: arr.shape for sha, arr in feats.items()} == {long_sha: (4, 8),
                                                               short_sha: (4, 8)}
    np.stack(list(feats.values()))  # what training does with them
