"""One (model, fold) training task, run on a Dask worker."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from covid_pipeline.baseline import train_baseline
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.gradcam import stored_panels
from covid_pipeline.shards import load_dataset
from covid_pipeline.training import results_root, stored_results, train_fold
from tasks.retries import RETRY


@task(
    name="train-fold",
    task_run_name="train-{model}-r{repeat}-fold-{fold}",
    **RETRY,
    # Finished folds are reused from their content-addressed result files
    # (results/<version>/<config-hash>/<model>/fold-<k>.json), which every worker reads.
    cache_policy=NO_CACHE,
)
def train_fold_task(dataset_uri: str, model: str, fold: int, config: dict, out: str,
                    features: dict | None = None, repeat: int = 0,
                    control: bool = False) -> dict:
    """Train and evaluate one model on one fold of one repeat; return its metrics record.

    ``features``: the extraction task's result (cached mode): which features to read.
    ``control``: the border-only control's fold (central box blacked out)."""
    return train_fold(dataset_uri, model, fold, BenchmarkConfig.from_dict(config), out,
                      features, repeat, control)


@task(name="acquisition-baseline", **RETRY, cache_policy=NO_CACHE)
def train_baseline_task(dataset_uri: str, config: dict, out: str) -> list[dict]:
    """The acquisition-only baseline on every fold (a logistic regression: seconds)."""
    return train_baseline(dataset_uri, BenchmarkConfig.from_dict(config), out)


@task(name="stored-results", cache_policy=NO_CACHE)
def stored_results_task(dataset_uri: str, config: dict, out: str, precision: str,
                        jobs: list[tuple[str, int, int, bool]]) -> dict | None:
    """Every job's reusable stored result and every model's Grad-CAM panel, or None when
    one must be made (in the flow's process: it reads only result files)."""
    cfg = BenchmarkConfig.from_dict(config)
    records = stored_results(dataset_uri, cfg, out, precision,
                             [tuple(j) for j in jobs])  # type: ignore[misc]
    if records is None:
        return None
    version = load_dataset(dataset_uri).version
    panels = stored_panels(results_root(out, version, cfg), cfg, version)
    return None if panels is None else {"records": records, "gradcam": panels}
