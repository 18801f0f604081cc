"""The whole data path in one call: ingest → balance → folds → shards."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging

import pandas as pd

from covid_pipeline import layout, storage
from covid_pipeline.balance import balance, check_two_classes
from covid_pipeline.config import DataSettings
from covid_pipeline.folds import assign_folds, check_enough_units, near_duplicates
from covid_pipeline.ingest import (
    IngestPlan,
    IngestResult,
    default_threads,
    finish,
    ingest,
    plan,
    read_files,
    read_planned,
)
from covid_pipeline.ingest_index import IngestIndex
from covid_pipeline.shards import (
    DatasetInfo,
    parquet_bytes,
    read_parquet,
    write_dataset,
    write_parquet,
)
from covid_pipeline.sources import SourceSpec

log = logging.getLogger(__name__)


def report_of(result: IngestResult) -> dict:
    q = result.quarantine
    return {
        "counts": {"ingested": result.counts()},
        "excluded": result.excluded,
        "quarantined": {str(k): int(v) for k, v in q.groupby("reason").size().items()},
    }


def _stage(out: str, manifest: pd.DataFrame, quarantine: pd.DataFrame, report: dict,
           step: str) -> str:
    """Write an intermediate step under ``<out>/staging/<content-hash>/``; return its URI."""
    digest = hashlib.sha256(parquet_bytes(manifest) + json.dumps(report, sort_keys=True,
                                                                 default=str).encode())
    uri = layout.staging(out, step, digest.hexdigest()[:16])
    write_parquet(layout.staged_file(uri, "manifest.parquet"), manifest)
    write_parquet(layout.staged_file(uri, "quarantine.parquet"), quarantine)
    storage.write_json(layout.staged_file(uri, "report.json"), report)
    return uri


def _unstage(uri: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return (read_parquet(layout.staged_file(uri, "manifest.parquet")),
            read_parquet(layout.staged_file(uri, "quarantine.parquet")),
            storage.read_json(layout.staged_file(uri, "report.json")))


def _feasible(settings: DataSettings):
    def check(candidates: pd.DataFrame) -> None:  # before any image is read or written
        check_two_classes(candidates)
        check_enough_units(candidates, settings.folds, settings.group_by)
    return check


def _stage_ingest(result: IngestResult, specs: list[str], out: str,
                  settings: DataSettings) -> str:
    report = report_of(result)
    report["sources"] = specs
    if settings.group_by == "patient":  # copies of one radiograph share a fold group
        report["near_duplicates"] = near_duplicates(result.manifest)
    return _stage(out, result.manifest, result.quarantine, report, "ingest")


def ingest_step(specs: list[SourceSpec], out: str, settings: DataSettings) -> str:
    """Ingest every source in this process; stage manifest, quarantine and report; return
    the staging URI."""
    result = ingest(specs, out, image_size=settings.image_size,
                    options=settings.source_options, precheck=_feasible(settings))
    return _stage_ingest(result, [str(s) for s in specs], out, settings)


# The ingest in steps, for a cluster: plan here, read chunks of files anywhere, finish here.
CLUSTER_CHUNK = 256  # files one read task reads (at ~100 files/s and core: seconds each)
CLUSTER_THREADS = 4  # reads in flight per task: single-thread workers, one per core


def plan_ingest_step(specs: list[SourceSpec], out: str, settings: DataSettings
                     ) -> tuple[str, int, int]:
    """Scan the sources and stage the ingest's plan (the files to read in chunks of
    :data:`CLUSTER_CHUNK`); return (plan URI, files to read, chunks)."""
    p = plan(specs, out, image_size=settings.image_size, options=settings.source_options,
             precheck=_feasible(settings))
    payload = json.dumps({"plan": p.to_json(), "specs": [str(s) for s in specs],
                          "settings": settings.as_dict()}, sort_keys=True)
    uri = layout.staging(out, "ingest-plan", hashlib.sha256(payload.encode()).hexdigest()[:16])
    todo = [p.candidates[i].uri for i in p.todo]
    chunks = [todo[i : i + CLUSTER_CHUNK] for i in range(0, len(todo), CLUSTER_CHUNK)]
    for k, uris in enumerate(chunks):
        storage.write_json(layout.staged_file(uri, f"todo-{k:05d}.json"), uris)
    storage.write_text(layout.staged_file(uri, "plan.json"), payload)
    return uri, len(todo), len(chunks)


def read_chunk_step(plan_uri: str, chunk: int, out: str, settings: DataSettings,
                    threads: int | None = None) -> int:
    """Read, hash, validate and normalise the files of one chunk of a staged plan (its
    PNGs go to the shared cache); stage their facts; return how many files it read.
    A chunk staged earlier without transient failures is not read again (resume)."""
    done = layout.staged_file(plan_uri, f"facts-{chunk:05d}.json")
    with contextlib.suppress(FileNotFoundError):
        if not any(f.get("transient") for f in storage.read_json(done)):
            return 0
    uris = storage.read_json(layout.staged_file(plan_uri, f"todo-{chunk:05d}.json"))
    # no listing of the whole normalised-image cache per chunk: each PNG is checked alone
    facts = read_files(uris, out, settings.image_size, threads or CLUSTER_THREADS,
                       have_png=set())
    storage.write_json(done, facts)
    return len(uris)


def ingest_planned_step(plan_uri: str, out: str, settings: DataSettings) -> str:
    """Read a staged plan's files in this process and finish (:func:`ingest_step`'s
    reading: one thread pool, the ingest index saved as it goes)."""
    staged = storage.read_json(layout.staged_file(plan_uri, "plan.json"))
    p = IngestPlan.from_json(staged["plan"])
    index = IngestIndex(out)
    facts = read_planned(p, out, settings.image_size, default_threads(), index)
    return _stage_ingest(finish(p, facts, out, index), staged["specs"], out, settings)


def finish_ingest_step(plan_uri: str, out: str, settings: DataSettings, chunks: int) -> str:
    """Merge a plan's staged chunk facts into the ingest index and the manifest; stage
    them as :func:`ingest_step` does (the same result as an in-process ingest)."""
    staged = storage.read_json(layout.staged_file(plan_uri, "plan.json"))
    p = IngestPlan.from_json(staged["plan"])
    read = [f for k in range(chunks)
            for f in storage.read_json(layout.staged_file(plan_uri, f"facts-{k:05d}.json"))]
    todo = p.todo
    if len(read) != len(todo):
        raise storage.StorageError(f"{plan_uri}: {len(read)} facts staged for {len(todo)} "
                                   "files; run the ingest again")
    facts = list(p.known)
    for i, fact in zip(todo, read, strict=True):
        facts[i] = fact
    result = finish(p, facts, out, IngestIndex(out), read=todo)  # type: ignore[arg-type]
    return _stage_ingest(result, staged["specs"], out, settings)


def balance_folds_step(staged: str, out: str, settings: DataSettings) -> str:
    """Balance and assign folds to a staged manifest; return the new staging URI."""
    manifest, quarantine, report = _unstage(staged)
    balanced, breport = balance(manifest, settings.balance, settings.seed)
    folded = assign_folds(balanced, settings.folds, settings.group_by, settings.seed)
    report["balance"] = breport.as_dict()
    return _stage(out, folded, quarantine, report, "folds")


def shard_step(staged: str, out: str, settings: DataSettings) -> tuple[DatasetInfo, dict]:
    """Write the dataset version of a balanced, folded staged manifest."""
    manifest, quarantine, report = _unstage(staged)
    return write_dataset(manifest, quarantine, out, settings.as_dict(), report), report


def prepare(specs: list[SourceSpec], out: str, settings: DataSettings) -> tuple[
    DatasetInfo, dict
]:
    """Ingest the sources, balance, assign folds and write the dataset version."""
    staged = ingest_step(specs, out, settings)
    staged = balance_folds_step(staged, out, settings)
    return shard_step(staged, out, settings)
