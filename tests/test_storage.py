"""Storage faults: failed writes are clear one-line errors that leave nothing half-written,
and a dataset version damaged after the fact is detected by its checksums and rebuilt."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

from covid_pipeline import storage
from covid_pipeline.dataset import DataSettings, prepare
from covid_pipeline.shards import load_dataset, verify_dataset
from covid_pipeline.sources import SourceSpec
from covid_pipeline.storage import StorageError
from covid_pipeline.synth import make_synthetic


def litter(folder: Path) -> list[str]:
    """Temporary files a failed or interrupted write could have left behind."""
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name)


def assert_one_line(err: pytest.ExceptionInfo, uri: str, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and uri in msg, msg
    for needle in needles:
        assert needle in msg, msg


# --- atomic writes -------------------------------------------------------------------------


def test_write_below_a_regular_file_fails_clearly_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file where a folder should be")
    uri = str(blocker / "datasets" / "v1" / "dataset.json")
    with pytest.raises(StorageError) as err:
        storage.write_json(uri, {"a": 1})
    assert_one_line(err, uri, "cannot write", "--out")
    assert blocker.read_text() == "a file where a folder should be"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_local_reads_keep_fsspecs_contract(tmp_path, monkeypatch):
    """Local files are read with the os module (fsspec's URI resolution cost a threaded
    ingest 12 % of its GIL time): the same bytes and answers as fsspec, for plain paths and
    file:// URIs, and the same errors."""
    import fsspec

    data = os.urandom(5000)
    (tmp_path / "a.bin").write_bytes(data)
    local = fsspec.filesystem("file")
    for uri in (str(tmp_path / "a.bin"), f"file://{tmp_path / 'a.bin'}"):
        assert storage.read_bytes(uri) == local.cat_file(str(tmp_path / "a.bin")) == data
        assert storage.exists(uri) and local.exists(str(tmp_path / "a.bin"))
    # a relative path, and ~ where no shell expanded it (a quoted --source ~/data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for uri in ("a.bin", "~/a.bin", "file://~/a.bin"):
        assert storage.read_bytes(uri) == data and storage.exists(uri), uri
    missing = str(tmp_path / "no" / "such.bin")
    assert not storage.exists(missing) and not storage.exists(f"file://{missing}")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(missing)
    with pytest.raises(StorageError) as err:  # a folder where a file should be
        storage.read_bytes(str(tmp_path))
    assert_one_line(err, str(tmp_path), "cannot read")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/sys"),
                    reason="needs Linux sysfs, where no file can be created even as root")
def test_read_only_location_fails_clearly():
    # Tests run as root, so chmod does not stop writes; sysfs refuses new files (EACCES or
    # EPERM, EROFS where it is mounted read-only).
    uri = "/sys/covid-pipeline-test/dataset.json"
    with pytest.raises(StorageError) as err:
        storage.write_json(uri, {"a": 1})
    assert_one_line(err, uri, "cannot write", "--out")
    assert not os.path.exists(uri)


@pytest.mark.parametrize(
    ("call", "code"),
    [("fsync", errno.ENOSPC), ("replace", errno.EROFS)],
    ids=["disk-full-while-writing", "read-only-at-rename"],
)
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, call, code):
    target = tmp_path / "results" / "fold-0.json"
    storage.write_json(str(target), {"old": True})

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, fail)
    with pytest.raises(StorageError) as err:
        storage.write_json(str(target), {"new": True})
    monkeypatch.undo()
    assert_one_line(err, str(target), os.strerror(code))
    assert storage.read_json(str(target)) == {"old": True}
    assert litter(tmp_path) == []


# --- dataset versions are verified before they are trusted ---------------------------------

SETTINGS = DataSettings(folds=2, image_size=64)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[SourceSpec], Path, str]:
    """Small synthetic sources and one complete dataset version built from them."""
    data = tmp_path_factory.mktemp("data")
    s = make_synthetic(str(data), covid_patients=3, normals=6, size=96, seed=3)
    specs = [SourceSpec("ieee8023", s.ieee8023), SourceSpec("rsna", s.rsna)]
    out = tmp_path_factory.mktemp("pristine")
    info, _ = prepare(specs, str(out), SETTINGS)
    return specs, out, str(Path(info.uri).relative_to(out))


@pytest.fixture
def built(pristine, tmp_path) -> tuple[list[SourceSpec], Path, Path]:
    """A private copy of the pristine output: (specs, out, dataset folder)."""
    specs, out, rel = pristine
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return specs, copy, copy / rel


def test_a_complete_version_verifies_and_is_reused_untouched(built):
    specs, out, root = built
    assert verify_dataset(str(root)) == []
    assert load_dataset(str(root), verify=True).n_folds == 2
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    prepare(specs, str(out), SETTINGS)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda root: _truncate(root / "images" / "fold-0.parquet"), ["images/fold-0.parquet"]),
        (lambda root: _flip_byte(root / "tfrecords" / "fold-1.tfrecord"),
         ["tfrecords/fold-1.tfrecord"]),
        (lambda root: (root / "manifest.parquet").unlink(), ["manifest.parquet"]),
        (lambda root: _truncate(root / "dataset.json"), ["dataset.json"]),
    ],
    ids=["truncated-parquet", "flipped-tfrecord-byte", "missing-manifest", "torn-dataset-json"],
)
def test_damage_after_the_fact_is_detected_and_rebuilt(built, caplog, damage, expected):
    specs, out, root = built
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    damage(root)
    assert verify_dataset(str(root)) == expected
    if expected != ["dataset.json"]:
        with pytest.raises(StorageError) as err:
            load_dataset(str(root), verify=True)
        assert_one_line(err, str(root), expected[0], "covid-pipeline ingest")

    with caplog.at_level(logging.WARNING, logger="covid_pipeline.shards"):
        info, _ = prepare(specs, str(out), SETTINGS)
    assert info.uri == str(root) and verify_dataset(info.uri) == []
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert any("rebuilding" in r.getMessage() for r in caplog.records)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
