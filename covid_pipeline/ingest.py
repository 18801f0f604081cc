"""Read every candidate image once: validate, hash, normalise, and split good from bad.

Good images get a manifest row and a normalised PNG in a content-addressed cache
(``<out>/cache/png-<size>/<sha256>.png``) that later steps read. Bad ones get a quarantine
row with a reason; the rest of the data set goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from covid_pipeline import imaging, layout, storage
from covid_pipeline.errors import DataError
from covid_pipeline.ingest_index import IngestIndex
from covid_pipeline.manifest import (
    LABEL_NAMES,
    Candidate,
    Rejected,
    manifest_frame,
    quarantine_frame,
)
from covid_pipeline.sources import SourceSpec, scan
from covid_pipeline.storage import FileStat

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> reason -> n

    def counts(self) -> dict[str, dict[str, int]]:
        """Per source, per class image counts."""
        out: dict[str, dict[str, int]] = {}
        for (source, name), n in self.manifest.groupby(["source", "label_name"]).size().items():
            out.setdefault(str(source), {})[str(name)] = int(n)
        return out


def normalised_uri(out: str, sha256: str, size: int) -> str:
    return layout.normalised_image(out, sha256, size)


def read_facts(uri: str, out: str, size: int, have_png: set[str] | None = None
               ) -> dict[str, Any]:
    """Read, hash and decode one file and write its normalised PNG (unless ``have_png``
    holds its sha256); return its facts, or ``{"reason", "detail"}`` when it is rejected.

    The facts depend on the file's bytes alone (no candidate metadata), so the ingest
    index can stand in for this read while the file is unchanged.
    """
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return {"reason": "missing_file", "detail": "the metadata names a file that does not "
                                                    "exist", "transient": True}
    except (OSError, storage.StorageError) as exc:
        return {"reason": "unreadable", "detail": str(exc), "transient": True}
    sha = hashlib.sha256(data).hexdigest()
    try:
        img = imaging.decode(data)
    except imaging.ImageRejected as exc:
        return {"reason": exc.reason, "detail": exc.detail}
    grey = imaging.to_uint8(img.pixels)  # once: both the PNG and the phash start from it
    target = normalised_uri(out, sha, size)
    if sha not in (have_png or ()) and not storage.exists(target):
        storage.write_bytes(target, imaging.encode_png(imaging.normalise(grey, size)))
    return {"sha256": sha, "width": img.width, "height": img.height,
            "file_format": img.file_format, "bit_depth": img.bit_depth,
            "colour_mode": img.colour_mode, "file_size": len(data),
            "phash": imaging.phash(grey), "patient_id": img.patient_id,
            "view": img.view, "sex": img.sex, "age": img.age}


def manifest_row(cand: Candidate, facts: dict[str, Any]) -> dict | Rejected:
    """The manifest row of a candidate from its file's facts (or its rejection)."""
    if "reason" in facts:
        return Rejected(cand.source, cand.image_id, cand.uri, facts["reason"], facts["detail"])
    patient = cand.patient_id
    if cand.fill_from_image and facts["patient_id"]:
        patient = f"{cand.source}:{facts['patient_id']}"
    return {
        "image_id": cand.image_id,
        "patient_id": patient,
        "label": cand.label,
        "label_name": LABEL_NAMES[cand.label],
        "source": cand.source,
        "view": cand.view or facts["view"],
        "sex": cand.sex or facts["sex"],
        "age": cand.age if cand.age is not None else facts["age"],
        "uri": cand.uri,
        **{k: facts[k] for k in FACT_COLUMNS},
    }


FACT_COLUMNS = ("sha256", "width", "height", "file_format", "bit_depth", "colour_mode",
                "file_size", "phash")
CHUNK = 512  # files read between two saves of the ingest index


def _stored_pngs(out: str, size: int) -> set[str]:
    """sha256 of every normalised PNG at ``size``, from one listing."""
    return {posixpath.basename(rel)[: -len(".png")]
            for rel in storage.file_sizes(layout.normalised_images(out, size))
            if rel.endswith(".png")}


def candidate_frame(candidates: list[Candidate]) -> pd.DataFrame:
    """Labels and patients of the candidates, an upper bound on what reading can yield.

    A candidate whose patient comes from its image header counts as a patient of its own.
    """
    return pd.DataFrame({
        "image_id": [c.image_id for c in candidates],
        "label": pd.Series([c.label for c in candidates], dtype="int64"),
        "patient_id": [c.image_id if c.fill_from_image else c.patient_id for c in candidates],
    })


@dataclass
class IngestPlan:
    """What an ingest has to do: the candidates (unique image ids, in order), the scan's
    rejections and exclusions, each source file's listing stat, and the facts the ingest
    index already holds (None: the file must be read)."""

    candidates: list[Candidate]
    rejected: list[Rejected]
    excluded: dict[str, dict[str, int]]
    stats: dict[str, FileStat]
    known: list[dict[str, Any] | None]
    roots: list[str]

    @property
    def todo(self) -> list[int]:
        """Positions of the candidates whose files must be read."""
        return [i for i, f in enumerate(self.known) if f is None]

    def to_json(self) -> dict[str, Any]:
        return {"candidates": [asdict(c) for c in self.candidates],
                "rejected": [asdict(r) for r in self.rejected], "excluded": self.excluded,
                "stats": {u: list(s) for u, s in sorted(self.stats.items())},
                "known": self.known, "roots": self.roots}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IngestPlan:
        return cls([Candidate(**c) for c in obj["candidates"]],
                   [Rejected(**r) for r in obj["rejected"]], obj["excluded"],
                   {u: FileStat(int(s[0]), str(s[1])) for u, s in obj["stats"].items()},
                   obj["known"], obj["roots"])


def plan(
    specs: list[SourceSpec],
    out: str,
    *,
    image_size: int = imaging.CANONICAL_SIZE,
    options: dict[str, dict] | None = None,
    precheck: Callable[[pd.DataFrame], None] | None = None,
    incremental: bool = True,
) -> IngestPlan:
    """Scan every source (one listing each) and look each candidate up in the ingest index.

    ``precheck`` gets the candidates (``label``, ``patient_id``) before any image is read or
    written, to fail early on a data set that cannot succeed (it raises DataError).
    """
    if not specs:
        raise DataError("no --source given; add e.g. --source ieee8023=/data/covid-chestxray")
    rejected: list[Rejected] = []
    candidates: list[Candidate] = []
    excluded: dict[str, dict[str, int]] = {}
    stats: dict[str, FileStat] = {}
    with storage.listing_scope():  # one listing per source: the scan's and the index's
        for spec in specs:
            if incremental:
                stats.update(storage.file_stats(spec.uri))
            result = scan(spec, (options or {}).get(spec.kind))
            candidates.extend(result.candidates)
            rejected.extend(result.rejected)
            if result.excluded:
                bucket = excluded.setdefault(spec.kind, {})
                for reason, n in result.excluded.items():
                    bucket[reason] = bucket.get(reason, 0) + n

    unique: list[Candidate] = []
    seen_ids: set[str] = set()
    for cand in candidates:
        if cand.image_id in seen_ids:
            rejected.append(Rejected(cand.source, cand.image_id, cand.uri, "duplicate_row",
                                     "the metadata lists this image more than once"))
            continue
        seen_ids.add(cand.image_id)
        unique.append(cand)
    if precheck is not None:
        precheck(candidate_frame(unique))

    known: list[dict[str, Any] | None] = [None] * len(unique)
    if incremental:
        index = IngestIndex(out)
        have_png = _stored_pngs(out, image_size)
        for i, cand in enumerate(unique):
            fact = index.lookup(cand.uri, stats.get(cand.uri))
            if fact is not None and ("reason" in fact or fact["sha256"] in have_png):
                known[i] = fact  # (a known image whose PNG at this size is missing: read)
    return IngestPlan(unique, rejected, excluded, stats, known, [s.uri for s in specs])


def read_files(uris: list[str], out: str, size: int, workers: int,
               record: Callable[[int, dict[str, Any]], None] | None = None,
               have_png: set[str] | None = None) -> list[dict[str, Any]]:
    """:func:`read_facts` of each of ``uris``, in order, on a pool of ``workers`` threads.

    Reads stream through one pool (no idle threads between chunks); ``record(i, facts)``
    is called as each result arrives, in order. An interrupt or a failed read stops the
    reading of the rest. ``have_png``: the normalised images known to exist (default: one
    listing of the cache; an empty set checks each image's PNG on its own).
    """
    have_png = _stored_pngs(out, size) if have_png is None else have_png
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(read_facts, uri, out, size, have_png) for uri in uris]
        try:
            for i, fut in enumerate(futures):
                results.append(fut.result())
                if record is not None:
                    record(i, results[-1])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results


def read_planned(p: IngestPlan, out: str, size: int, workers: int,
                 index: IngestIndex | None) -> list[dict[str, Any]]:
    """The facts of every candidate of ``p``: known ones from the plan, the rest read here
    (the ingest index, if given, records them and is saved every :data:`CHUNK` reads, so
    an interrupted ingest keeps what it read)."""
    todo = p.todo
    facts = list(p.known)

    def record(n: int, fact: dict[str, Any]) -> None:
        i = todo[n]
        facts[i] = fact
        if index is not None:
            uri = p.candidates[i].uri
            if not fact.get("transient"):
                index.record(uri, p.stats.get(uri), fact)
            if (n + 1) % CHUNK == 0:
                index.save()

    read_files([p.candidates[i].uri for i in todo], out, size, workers, record)
    if index is not None:
        log.info("ingest: %d files read, %d known from the ingest index", len(todo),
                 len(p.candidates) - len(todo))
    return facts  # type: ignore[return-value]


def finish(p: IngestPlan, facts: list[dict[str, Any]], out: str,
           index: IngestIndex | None = None, read: list[int] | None = None) -> IngestResult:
    """Manifest and quarantine from the plan and every candidate's facts. ``index`` is saved
    (recording the facts at positions ``read`` first, when given) and forgets files the
    listing no longer shows."""
    if index is not None:
        for i in read or []:
            uri = p.candidates[i].uri
            if not facts[i].get("transient"):
                index.record(uri, p.stats.get(uri), facts[i])
        index.forget_missing(p.roots, set(p.stats))
        index.save()
    rejected = list(p.rejected)
    rows: list[dict] = []
    by_sha: dict[str, str] = {}
    for res in (manifest_row(c, f) for c, f in zip(p.candidates, facts, strict=True)):
        if isinstance(res, Rejected):
            rejected.append(res)
        elif res["sha256"] in by_sha:
            rejected.append(Rejected(res["source"], res["image_id"], res["uri"], "duplicate_image",
                                     f"same bytes as {by_sha[res['sha256']]}"))
        else:
            by_sha[res["sha256"]] = res["image_id"]
            rows.append(res)
    for r in rejected:
        log.warning("quarantined %s (%s): %s %s", r.image_id, r.uri, r.reason, r.detail)
    return IngestResult(manifest_frame(rows), quarantine_frame(rejected), p.excluded)


def default_threads() -> int:
    return min(16, 2 * (os.cpu_count() or 1) + 2)


def ingest(
    specs: list[SourceSpec],
    out: str,
    *,
    image_size: int = imaging.CANONICAL_SIZE,
    options: dict[str, dict] | None = None,
    threads: int | None = None,
    precheck: Callable[[pd.DataFrame], None] | None = None,
    incremental: bool = True,
) -> IngestResult:
    """Scan every source, read every candidate image, and return manifest + quarantine, in
    this process (:func:`plan`, :func:`read_planned`, :func:`finish`).

    ``incremental``: files the ingest index knows at their current size and version are
    not read again (the result is the same as a cold ingest's: tests/test_ingest_index.py).
    """
    p = plan(specs, out, image_size=image_size, options=options, precheck=precheck,
             incremental=incremental)
    index = IngestIndex(out) if incremental else None
    facts = read_planned(p, out, image_size, threads or default_threads(), index)
    return finish(p, facts, out, index)
