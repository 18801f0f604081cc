"""A worker keeps its built backbones between tasks, and its feature files in memory."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from test_features import specs

from covid_pipeline import backbone_cache, backbones, storage
from covid_pipeline.config import resolve_config
from covid_pipeline.dataset import DataSettings, prepare
from covid_pipeline.features import (
    KEPT,
    encode_features,
    extract_features,
    feature_source,
    read_features,
)
from covid_pipeline.synth import add_normals, make_synthetic

pytestmark = pytest.mark.slow


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """Every backbone built while the test runs (by model name), from an empty cache."""
    built: list[str] = []
    real = backbones.build_backbone

    def counting(spec, *args, **kwargs):
        built.append(spec.name)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(backbones, "build_backbone", counting)
    backbone_cache.forget()
    yield built
    backbone_cache.forget()


def test_a_backbone_is_built_once_per_settings_and_the_least_recent_dropped(builds,
                                                                           monkeypatch):
    import keras

    cfg = resolve_config("smoke", weights="none", input_size=32)
    first = backbone_cache.backbone("VGG16", cfg, "float32")
    grey = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    angles = np.array([0.0, 0.3, -0.2, 0.5], np.float32)
    before = first.forward(grey, angles).numpy()
    keras.backend.clear_session()  # what every task does at its end
    assert backbone_cache.backbone("VGG16", cfg, "float32") is first
    np.testing.assert_array_equal(first.forward(grey, angles).numpy(), before)
    assert builds == ["VGG16"]

    other_seed = resolve_config("smoke", weights="none", input_size=32, seed=7)
    assert backbone_cache.backbone("VGG16", other_seed, "float32") is not first
    backbone_cache.backbone("ResNet50", cfg, "float32")  # a third: the least recent goes
    assert [k[0] for k in backbone_cache.kept()] == ["VGG16", "ResNet50"]
    assert backbone_cache.kept()[0][3] == other_seed.seed
    assert backbone_cache.backbone("VGG16", cfg, "float32") is not first
    assert builds == ["VGG16", "VGG16", "ResNet50", "VGG16"]

    monkeypatch.setenv(backbone_cache.ENV, "0")  # keep none
    backbone_cache.forget()
    backbone_cache.backbone("VGG16", cfg, "float32")
    assert backbone_cache.kept() == [] and builds[-1] == "VGG16" and len(builds) == 5
    monkeypatch.setenv(backbone_cache.ENV, "two")
    with pytest.raises(ValueError, match="COVID_PIPELINE_BACKBONES='two'"):
        backbone_cache.backbone("VGG16", cfg, "float32")


def test_a_re_extraction_of_new_images_builds_no_backbone(tmp_path, builds):
    """The extraction of the full images and the control's share the worker's backbone;
    a later extraction of a few new images builds and traces nothing, and its features
    equal a fresh process's (a new worker: nothing kept)."""
    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=4, normals=8, size=96, seed=5)
    out = str(tmp_path / "out")
    cfg = resolve_config("smoke", models=["VGG16"], weights="none", epochs=2, folds=2,
                         input_size=32, balance="none")
    settings = DataSettings(folds=2, image_size=64, balance="none")
    info, _ = prepare(specs(root), out, settings)
    extract_features(info.uri, "VGG16", cfg, out)
    extract_features(info.uri, "VGG16", cfg, out, control=True)
    assert builds == ["VGG16"]
    add_normals(str(root / "rsna"), 3, size=96, seed=9)
    grown, _ = prepare(specs(root), out, settings)
    stats = extract_features(grown.uri, "VGG16", cfg, out)
    assert stats["extracted_images"] == 3 and builds == ["VGG16"]

    root_uri = feature_source(out, "VGG16", cfg, 64).root
    new = sorted(storage.file_sizes(root_uri))[:3]
    kept_bytes = {rel: storage.read_bytes(storage.join(root_uri, rel)) for rel in new}
    backbone_cache.forget()  # a fresh worker
    for rel in new:
        os.remove(storage.join(root_uri, rel))
    assert extract_features(grown.uri, "VGG16", cfg, out)["extracted_images"] == 3
    assert builds == ["VGG16", "VGG16"]
    for rel, data in kept_bytes.items():
        np.testing.assert_array_equal(np.load(storage.join(root_uri, rel)),
                                      np.load(io.BytesIO(data)))


def test_kept_features_are_read_once_and_again_when_their_file_changes(tmp_path,
                                                                      monkeypatch):
    root = str(tmp_path / "features")
    rng = np.random.default_rng(0)
    arrays = {f"{i:02x}" * 32: rng.normal(size=(3, 8)).astype(np.float16) for i in range(4)}
    for sha, arr in arrays.items():
        storage.write_bytes(storage.join(root, sha[:2], f"{sha}.npy"), encode_features(arr))
    KEPT.clear()
    reads: list[str] = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: reads.append(uri) or real(uri))

    shas = sorted(arrays)
    first = read_features(root, shas, keep=True)
    assert len(reads) == 4
    second = read_features(root, shas + ["ff" * 32], keep=True)  # one never written
    assert len(reads) == 4 and set(second) == set(shas)
    for sha in shas:
        np.testing.assert_array_equal(second[sha], arrays[sha])
        assert second[sha] is first[sha] and not second[sha].flags.writeable

    grown = np.concatenate([arrays[shas[0]], arrays[shas[0]][:1]])  # a run with more views
    storage.write_bytes(storage.join(root, shas[0][:2], f"{shas[0]}.npy"),
                        encode_features(grown))
    os.remove(storage.join(root, shas[1][:2], f"{shas[1]}.npy"))
    third = read_features(root, shas, keep=True)
    assert len(reads) == 5 and reads[-1].endswith(f"{shas[0]}.npy")
    np.testing.assert_array_equal(third[shas[0]], grown)
    assert shas[1] not in third  # deleted: gone, however recently it was read

    monkeypatch.setenv(KEPT.ENV, str(2 * grown.nbytes / 2**20))  # room for two files
    KEPT.clear()
    read_features(root, shas, keep=True)  # three files: the least recent one dropped
    assert len(reads) == 8 and 0 < KEPT.nbytes <= 2 * grown.nbytes
    read_features(root, [shas[0]], keep=True)
    assert len(reads) == 9
    monkeypatch.setenv(KEPT.ENV, "0")  # keep none
    KEPT.clear()
    read_features(root, shas, keep=True)
    read_features(root, shas, keep=True)
    assert KEPT.nbytes == 0 and len(reads) == 9 + 4 + 4  # every file tried, each time
    KEPT.clear()
