"""Feature extraction: the one GPU-heavy task per model in ``cached`` mode."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.features import extract_features
from tasks.retries import RETRY


@task(
    name="extract-features",
    task_run_name="extract-{model}",
    **RETRY,
    # Features are reused per image from the content-addressed cache under <out>/features.
    cache_policy=NO_CACHE,
)
def extract_features_task(dataset_uri: str, model: str, config: dict, out: str) -> dict:
    """Run the frozen backbone over every image and view the cache lacks."""
    return extract_features(dataset_uri, model, BenchmarkConfig.from_dict(config), out)
