"""The data path as Prefect tasks: ingest → balance and folds → shards (URIs in and out)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from covid_pipeline import confounds
from covid_pipeline.dataset import (
    DataSettings,
    balance_folds_step,
    finish_ingest_step,
    ingest_planned_step,
    plan_ingest_step,
    read_chunk_step,
    shard_step,
)
from covid_pipeline.sources import parse_source
from tasks.retries import RETRY


@task(name="plan-ingest", **RETRY, cache_policy=NO_CACHE)
def plan_ingest(sources: list[str], out: str, settings: dict) -> dict:
    """List every source once and stage what to read: {plan URI, files to read, chunks}."""
    uri, files, chunks = plan_ingest_step([parse_source(s) for s in sources], out,
                                          DataSettings(**settings))
    return {"uri": uri, "files": files, "chunks": chunks}


@task(name="ingest", **RETRY, cache_policy=NO_CACHE)
def ingest_sources(plan_uri: str, out: str, settings: dict) -> str:
    """Read a plan's files in this process; return the staging URI of manifest +
    quarantine."""
    return ingest_planned_step(plan_uri, out, DataSettings(**settings))


@task(name="read-chunk", **RETRY, cache_policy=NO_CACHE)
def read_chunk(plan_uri: str, chunk: int, out: str, settings: dict) -> int:
    """Read, hash, validate and normalise one chunk of a plan's files (on a Dask worker)."""
    return read_chunk_step(plan_uri, chunk, out, DataSettings(**settings))


@task(name="finish-ingest", **RETRY, cache_policy=NO_CACHE)
def finish_ingest(plan_uri: str, out: str, settings: dict, chunks: int) -> str:
    """Merge the chunks' facts into the ingest index and the staged manifest."""
    return finish_ingest_step(plan_uri, out, DataSettings(**settings), chunks)


@task(name="balance-and-folds", **RETRY, cache_policy=NO_CACHE)
def balance_and_folds(staged: str, out: str, settings: dict) -> str:
    return balance_folds_step(staged, out, DataSettings(**settings))


@task(name="write-shards", **RETRY, cache_policy=NO_CACHE)
def write_shards(staged: str, out: str, settings: dict) -> dict:
    """Write (or reuse) the dataset version; return its description and the ingest report."""
    info, report = shard_step(staged, out, DataSettings(**settings))
    return {"dataset": info.as_dict(), "report": report}


@task(name="confound-report", **RETRY, cache_policy=NO_CACHE)
def confound_report(dataset_uri: str, version: str) -> list[str]:
    """Write the dataset version's confound report, publish it as the ``confounds``
    artifact, and return its warnings (the leaderboard states them)."""
    rep = confounds.write_report(dataset_uri, version)
    create_markdown_artifact(markdown=rep["markdown"], key="confounds",
                             description=f"Confounds of dataset {version}")
    return rep["warnings"]
