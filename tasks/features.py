"""Feature extraction: the one GPU-heavy task per model in ``cached`` mode."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from covid_pipeline import curves, layout
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.features import extract_features
from covid_pipeline.shards import load_dataset
from tasks.retries import RETRY


@task(
    name="extract-features",
    task_run_name="extract-{model}",
    **RETRY,
    # Features are reused per image from the content-addressed cache under <out>/features.
    cache_policy=NO_CACHE,
)
def extract_features_task(dataset_uri: str, model: str, config: dict, out: str,
                          control: bool = False, views: int | None = None) -> dict:
    """Run the frozen backbone over every image and view the cache lacks (``control``: of
    the images with the central box blacked out; ``views`` 0: a test-only data set)."""
    return extract_features(dataset_uri, model, BenchmarkConfig.from_dict(config), out,
                            control, views)


@task(name="model-figures", task_run_name="figures-{model}", **RETRY, cache_policy=NO_CACHE)
def model_figures_task(dataset_uri: str, model: str, config: dict, out: str,
                       fold_records: list[list[dict]]) -> dict:
    """A model's figures once its repeat-0 folds are trained (``fold_records``: the records
    of its head-training tasks): the Grad-CAM panel of out-of-fold images under their
    folds' heads (reused while the heads and settings are unchanged), then the training
    curves (``curves.png``; on failure a warning: the aggregation draws what is missing).
    Returns the panel's summary (its mean heat share outside the box)."""
    from covid_pipeline import gradcam  # Keras: seconds to import

    cfg = BenchmarkConfig.from_dict(config)
    panel = gradcam.model_panel(dataset_uri, model, cfg, out)
    try:
        results = layout.results(out, load_dataset(dataset_uri).version, cfg.config_hash())
        curves.write_model_curves([r for task in fold_records for r in task], results, model)
    except Exception as exc:  # noqa: BLE001 - the aggregation redraws missing curves
        get_run_logger().warning("model %s curves not drawn here (%s: %s); the aggregation "
                                 "draws them", model, type(exc).__name__, exc)
    return panel
