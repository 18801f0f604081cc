"""Head-training tasks (a model's folds of one repeat, or one fold), run on Dask
workers, and the checks around them."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from covid_pipeline.baseline import train_baseline
from covid_pipeline.cluster import on_every_worker
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.gradcam import stored_panels
from covid_pipeline.shards import load_dataset
from covid_pipeline.training import results_root, stored_results, stored_results_here, train_folds
from tasks.retries import RETRY


@task(
    name="train-folds",
    task_run_name="train-{model}-r{repeat}",
    **RETRY,
    # Finished folds are reused from their content-addressed result files
    # (results/<version>/<config-hash>/<model>/fold-<k>.json), which every worker reads:
    # a retry trains only the folds not yet stored.
    cache_policy=NO_CACHE,
)
def train_folds_task(dataset_uri: str, model: str, folds: list[int], config: dict, out: str,
                     features: dict | None = None, repeat: int = 0,
                     control: bool = False) -> list[dict]:
    """Train and evaluate one model on ``folds`` of one repeat, in turn; return their
    metrics records (a failure's exception names its fold in a note).

    ``features``: the extraction task's result (cached mode): which features to read.
    ``control``: the border-only control's folds (central box blacked out)."""
    return train_folds(dataset_uri, model, folds, BenchmarkConfig.from_dict(config), out,
                       features, repeat, control)


@task(name="acquisition-baseline", **RETRY, cache_policy=NO_CACHE)
def train_baseline_task(dataset_uri: str, config: dict, out: str) -> list[dict]:
    """The acquisition-only baseline on every fold (a logistic regression: seconds)."""
    return train_baseline(dataset_uri, BenchmarkConfig.from_dict(config), out)


@task(name="stored-results", cache_policy=NO_CACHE)
def stored_results_task(dataset_uri: str, config: dict, out: str, precision: str | None,
                        jobs: list[tuple[str, int, int, bool]], address: str | None = None
                        ) -> dict | None:
    """Every job's reusable stored result and every model's Grad-CAM panel, or None when
    one must be made (in the flow's process: it reads only result files). ``address``: a
    standing cluster's scheduler, whose every worker is asked instead (only a worker knows
    its backbone precision and weights files); any worker's doubt means None."""
    cfg = BenchmarkConfig.from_dict(config)
    jobs = [tuple(j) for j in jobs]  # type: ignore[misc]
    if address is None:
        records = stored_results(dataset_uri, cfg, out, str(precision), jobs)
    else:
        try:
            found = on_every_worker(address, stored_results_here, dataset_uri, config, out,
                                    jobs)
        except Exception as exc:  # noqa: BLE001 - the training tasks will say what is wrong
            get_run_logger().info("stored results not checked on the cluster's workers "
                                  "(%s: %s): the training tasks check them", type(exc).__name__,
                                  exc)
            return None
        records = found[0] if found and all(r is not None and r == found[0]
                                            for r in found) else None
    if records is None:
        return None
    version = load_dataset(dataset_uri).version
    panels = stored_panels(results_root(out, version, cfg), cfg, version)
    return None if panels is None else {"records": records, "gradcam": panels}
