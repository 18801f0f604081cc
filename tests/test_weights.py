"""Weights preflight: a clear stop when ImageNet weights are missing offline."""

from __future__ import annotations

import pytest

from covid_pipeline import weights, zoo
from covid_pipeline.config import resolve_config
from covid_pipeline.errors import ConfigError


def test_missing_weights_offline_is_one_message_listing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cfg = resolve_config("smoke")
    with pytest.raises(ConfigError) as err:
        weights.preflight(cfg, online=False)
    msg = str(err.value)
    assert "\n" not in msg
    for name in cfg.models:
        assert zoo.weights_ref(zoo.get(name), cfg.input_size)[0] in msg
    assert "covid-pipeline weights download --models ResNet50,VGG16" in msg


def test_weights_in_cache_or_folder_pass_and_none_needs_nothing(tmp_path, monkeypatch):
    cfg = resolve_config("smoke")
    folder = tmp_path / "w"
    folder.mkdir()
    for name in cfg.models:
        (folder / zoo.weights_ref(zoo.get(name), cfg.input_size)[0]).write_bytes(b"h5")
    weights.preflight(resolve_config("smoke", weights=str(folder)), online=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    for f in folder.iterdir():
        (tmp_path / "models" / f.name).write_bytes(b"h5")
    weights.preflight(cfg, online=False)
    weights.preflight(resolve_config("smoke", weights="none"), online=False)
    spec = zoo.get("VGG16")
    assert weights.backbone_weights(spec, resolve_config("smoke", weights=str(folder))) == str(
        folder / zoo.weights_ref(spec, 96)[0])
    assert weights.backbone_weights(spec, resolve_config("smoke", weights="none")) is None


def test_a_worker_asked_for_stored_results_downloads_no_weights(tmp_path, monkeypatch):
    """Asked outside any task (a standing cluster's unchanged re-run), a worker lacking a
    weights file answers None at once: the extraction task fetches it."""
    from covid_pipeline.training import stored_results_here

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "download_weights", lambda *a, **k: pytest.fail("download"))
    cfg = resolve_config("smoke")
    spec = zoo.get("VGG16")
    assert weights.needs_download(spec, cfg)
    assert not weights.needs_download(spec, resolve_config("smoke", weights="none"))
    jobs = [("VGG16", 0, 0, False)]
    assert stored_results_here(str(tmp_path / "no-dataset"), cfg.as_dict(), str(tmp_path),
                               jobs) is None
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / zoo.weights_ref(spec, cfg.input_size)[0]).write_bytes(b"h5")
    assert not weights.needs_download(spec, cfg)
    assert weights.weights_file(spec, cfg) == tmp_path / "models" / zoo.weights_ref(
        spec, cfg.input_size)[0]


def test_weights_digest_follows_the_bytes_even_when_size_and_mtime_are_kept(tmp_path,
                                                                             monkeypatch):
    import hashlib
    import os

    monkeypatch.setenv("COVID_PIPELINE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "vgg16.weights.h5"
    path.write_bytes(b"a" * 64)
    cfg = resolve_config("smoke", models="VGG16", weights=str(path))
    spec = zoo.get("VGG16")
    first = weights.weights_digest(spec, cfg)
    assert first == hashlib.sha256(b"a" * 64).hexdigest()

    hashed = []
    monkeypatch.setattr(weights.storage, "file_sha256", lambda p: hashed.append(p) or "x")
    weights._DIGESTS.clear()
    assert weights.weights_digest(spec, cfg) == first and hashed == []  # remembered on disk

    monkeypatch.undo()
    monkeypatch.setenv("COVID_PIPELINE_CACHE", str(tmp_path / "cache"))
    stat = path.stat()
    tmp = tmp_path / "new.h5"
    tmp.write_bytes(b"b" * 64)  # same size; `cp -p` / rsync -a also keep the mtime
    os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(tmp, path)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == 64
    assert weights.weights_digest(spec, cfg) == hashlib.sha256(b"b" * 64).hexdigest()
    assert weights.weights_digest(zoo.get("VGG16"), resolve_config("smoke", weights="none")) \
        == "random"
