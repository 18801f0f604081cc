"""The data path as Prefect tasks: ingest → balance and folds → shards (URIs in and out)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from covid_pipeline import confounds
from covid_pipeline.dataset import DataSettings, balance_folds_step, ingest_step, shard_step
from covid_pipeline.sources import parse_source
from tasks.retries import RETRY


@task(name="ingest", **RETRY, cache_policy=NO_CACHE)
def ingest_sources(sources: list[str], out: str, settings: dict) -> str:
    """Read and validate every source; return the staging URI of manifest + quarantine."""
    return ingest_step([parse_source(s) for s in sources], out, DataSettings(**settings))


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
