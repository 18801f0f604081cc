"""Incremental ingest: a re-run reads only new or changed files and writes exactly what a
cold ingest of the same data writes."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from imagefiles import add_covid_images, grey
from PIL import Image
from s3util import moto_s3

from covid_pipeline import storage
from covid_pipeline.dataset import DataSettings, prepare
from covid_pipeline.ingest_index import IngestIndex
from covid_pipeline.sources import SourceSpec
from covid_pipeline.synth import make_synthetic

SETTINGS = DataSettings(folds=2, image_size=64, balance="none")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def specs(root) -> list[SourceSpec]:
    return [SourceSpec("ieee8023", str(root / "ieee8023")), SourceSpec("rsna", str(root / "rsna"))]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def image_reads(monkeypatch) -> Counter:
    """Source image files read through the storage helper, by file name."""
    reads: Counter = Counter()
    real = storage.read_bytes

    def counting(uri: str) -> bytes:
        if uri.lower().endswith(IMAGE_SUFFIXES) and "/cache/" not in uri:
            reads[os.path.basename(uri)] += 1
        return real(uri)

    monkeypatch.setattr(storage, "read_bytes", counting)
    return reads


def test_rerun_reads_only_new_and_changed_files_and_equals_a_cold_ingest(tmp_path,
                                                                         image_reads):
    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=6, normals=10, size=96, seed=3)
    images = sorted((root / "ieee8023" / "images").glob("covid-*.png"))
    replaced, broken = images[0], images[1]
    replaced.write_bytes(uncompressed_png(seed=1))
    out = tmp_path / "out"
    first, _ = prepare(specs(root), str(out), SETTINGS)
    n_files = sum(image_reads.values())
    assert n_files == 6 * 2 + 10

    image_reads.clear()
    again, _ = prepare(specs(root), str(out), SETTINGS)
    assert again.version == first.version and sum(image_reads.values()) == 0

    # a data update: 3 new images, one replaced in place by other pixels of the same size
    # with its mtime kept (as a copy that preserves times does), one made unreadable
    add_covid_images(root, 3, seed=9, first_patient=700)
    kept = replaced.stat()
    replaced.write_bytes(uncompressed_png(seed=2))
    os.utime(replaced, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert replaced.stat().st_size == kept.st_size
    broken.write_bytes(b"not an image at all")
    image_reads.clear()
    incremental, _ = prepare(specs(root), str(out), SETTINGS)
    assert sorted(image_reads) == sorted(
        ["added-0.png", "added-1.png", "added-2.png", replaced.name, broken.name])
    assert all(n == 1 for n in image_reads.values())

    cold_out = tmp_path / "cold"
    cold, _ = prepare(specs(root), str(cold_out), SETTINGS)
    assert incremental.version == cold.version != first.version
    assert tree(out / "datasets" / cold.version) == tree(cold_out / "datasets" / cold.version)
    quarantine = tree(cold_out / "datasets" / cold.version)["quarantine.parquet"]
    assert broken.name.encode() in quarantine  # the broken file, quarantined
    manifest = tree(cold_out / "datasets" / cold.version)["manifest.parquet"]
    assert hashlib.sha256(uncompressed_png(seed=2)).hexdigest().encode() in manifest


def uncompressed_png(seed: int) -> bytes:
    """A 96 x 96 grey PNG stored without compression: the same size whatever its pixels."""
    buf = io.BytesIO()
    Image.fromarray(grey(96, 96, seed)).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def test_an_interrupted_ingest_keeps_what_it_read(tmp_path, monkeypatch):
    """The index is saved after each chunk: a crash in the second chunk leaves the first
    chunk's files known, and the re-run reads only the rest."""
    from covid_pipeline import ingest

    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=5, normals=10, size=96, seed=4)
    monkeypatch.setattr(ingest, "CHUNK", 8)
    real, calls = ingest.read_facts, []

    def crash_in_second_chunk(uri, *args):
        calls.append(uri)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return real(uri, *args)

    monkeypatch.setattr(ingest, "read_facts", crash_in_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        prepare(specs(root), str(tmp_path / "out"), SETTINGS)
    assert len(IngestIndex(str(tmp_path / "out")).entries) == 8
    monkeypatch.setattr(ingest, "read_facts", real)
    counted: list[str] = []
    monkeypatch.setattr(ingest, "read_facts", lambda uri, *a: counted.append(uri) or real(
        uri, *a))
    prepare(specs(root), str(tmp_path / "out"), SETTINGS)
    assert len(counted) == 5 * 2 + 10 - 8


@pytest.fixture
def counting_s3(synth_root):
    """A moto S3 server on loopback that counts GET requests per object key."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    gets: Counter = Counter()
    lock = threading.Lock()

    class Counting(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)

            def counted(environ, start_response):
                if environ["REQUEST_METHOD"] == "GET":
                    with lock:
                        gets[environ.get("PATH_INFO", "")] += 1
                return app(environ, start_response)

            self._server = make_server(self._ip_address, self._port, counted, True,
                                       request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    with moto_s3(Counting, "ingest", synth_root):
        yield gets


@pytest.mark.slow
@pytest.mark.s3
def test_an_unchanged_s3_rerun_gets_no_image_object(counting_s3):
    sources = [SourceSpec("ieee8023", "s3://ingest/data/ieee8023"),
               SourceSpec("rsna", "s3://ingest/data/rsna")]

    def image_gets() -> int:
        return sum(n for path, n in counting_s3.items()
                   if path.startswith("/ingest/data/") and path.lower().endswith(IMAGE_SUFFIXES))

    first, _ = prepare(sources, "s3://ingest/out", SETTINGS)
    assert image_gets() == 8 * 2 + 16  # every image read once
    counting_s3.clear()
    again, _ = prepare(sources, "s3://ingest/out", SETTINGS)
    assert again.version == first.version
    assert image_gets() == 0, sorted(counting_s3)


def test_a_new_decoder_version_reads_every_file_again(tmp_path, image_reads, monkeypatch):
    """Facts from another decoder (or image library) version are never trusted."""
    from covid_pipeline import imaging

    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=3, normals=6, size=96, seed=5)
    prepare(specs(root), str(tmp_path / "out"), SETTINGS)
    image_reads.clear()
    prepare(specs(root), str(tmp_path / "out"), SETTINGS)
    assert sum(image_reads.values()) == 0
    monkeypatch.setattr(imaging, "DECODER_VERSION", imaging.DECODER_VERSION + 1)
    prepare(specs(root), str(tmp_path / "out"), SETTINGS)
    assert sum(image_reads.values()) == 3 * 2 + 6
