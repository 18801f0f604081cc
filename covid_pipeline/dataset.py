"""The whole data path in one call: ingest → balance → folds → shards."""

from __future__ import annotations

import hashlib
import json
import logging

import pandas as pd

from covid_pipeline import layout, storage
from covid_pipeline.balance import balance, check_two_classes
from covid_pipeline.config import DataSettings
from covid_pipeline.folds import assign_folds, check_enough_units, near_duplicates
from covid_pipeline.ingest import IngestResult, ingest
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


def ingest_step(specs: list[SourceSpec], out: str, settings: DataSettings) -> str:
    """Ingest every source; stage manifest, quarantine and report; return the staging URI."""
    def feasible(candidates: pd.DataFrame) -> None:  # before any image is read or written
        check_two_classes(candidates)
        check_enough_units(candidates, settings.folds, settings.group_by)

    result = ingest(specs, out, image_size=settings.image_size, options=settings.source_options,
                    precheck=feasible)
    report = report_of(result)
    report["sources"] = [str(s) for s in specs]
    if settings.group_by == "patient":  # copies of one radiograph share a fold group
        report["near_duplicates"] = near_duplicates(result.manifest)
    return _stage(out, result.manifest, result.quarantine, report, "ingest")


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
