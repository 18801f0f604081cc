"""The external test set as Prefect tasks: its own dataset version, one head per model."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from covid_pipeline.config import BenchmarkConfig, DataSettings
from covid_pipeline.external import prepare_external, train_external
from covid_pipeline.sources import parse_source
from tasks.retries import RETRY


@task(name="ingest-external", **RETRY, cache_policy=NO_CACHE)
def external_dataset(sources: list[str], out: str, settings: dict, cv_dataset_uri: str
                     ) -> dict:
    """Ingest the external sources (no balancing, no folds, CV images dropped)."""
    info, report = prepare_external([parse_source(s) for s in sources], out,
                                    DataSettings(**settings), cv_dataset_uri)
    return {"dataset": info.as_dict(), "dropped_in_cv": report["dropped_in_cv"],
            "dropped_copies": report["dropped_copies"]}


@task(name="test-external", task_run_name="test-external-{model}", **RETRY,
      cache_policy=NO_CACHE)
def train_external_task(cv_dataset_uri: str, external_uri: str, model: str, config: dict,
                        out: str, train_features: dict, test_features: dict) -> dict:
    """Train ``model``'s head on all CV images and predict the external set."""
    return train_external(cv_dataset_uri, external_uri, model,
                          BenchmarkConfig.from_dict(config), out, train_features,
                          test_features)
