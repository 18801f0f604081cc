"""MLflow tracking, optional (the ``mlflow`` extra): one run per model, a nested run per
(repeat, fold) with its parameters, per-epoch curves and fold metrics; the model's board
row as metrics; the leaderboard, the model's curves and Grad-CAM panel and the report as
artifacts. MLflow is imported inside :func:`log_benchmark`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from typing import Any

import pandas as pd

from covid_pipeline import layout, storage
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.errors import ConfigError
from covid_pipeline.metrics import METRICS

EXPERIMENT = "covid-pipeline"
PARAMS = ("epochs", "batch_size", "optimizer", "learning_rate", "dropout", "head_units",
          "rotation_degrees", "weights", "input_size", "mode", "views", "repeats")


def tracking_uri(cfg: BenchmarkConfig) -> str | None:
    """``cfg.mlflow``, else ``MLFLOW_TRACKING_URI``, else None (no tracking); ``none``
    turns tracking off whatever the environment says."""
    if cfg.mlflow and cfg.mlflow.strip().lower() == "none":
        return None
    return cfg.mlflow or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_installed() -> None:
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("--mlflow (or MLFLOW_TRACKING_URI): MLflow is not installed; "
                          "install it with `pip install 'covid-pipeline[mlflow]'`")


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)}


def log_benchmark(uri: str, cfg: BenchmarkConfig, table: pd.DataFrame,
                  records: list[dict[str, Any]], results_uri: str, dataset_version: str,
                  tags: dict[str, str] | None = None) -> dict[str, str]:
    """Log every model of ``table`` to the MLflow tracking server at ``uri``; return
    model → its MLflow run id."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    common = {"dataset_version": dataset_version, "config_hash": cfg.config_hash(),
              "preset": cfg.name, **(tags or {})}
    params = {k: getattr(cfg, k) for k in PARAMS} | {"folds": cfg.folds, "seed": cfg.seed,
                                                       "group_by": cfg.group_by}
    run_ids = {}
    with tempfile.TemporaryDirectory(prefix="covid-mlflow-") as tmp:
        shared = [_local(layout.leaderboard(results_uri, ext), tmp) for ext in ("csv", "md")]
        shared.append(_local(layout.report(results_uri), tmp))
        for row in table.to_dict("records"):
            model = str(row["model"])
            with mlflow.start_run(run_name=model, tags={**common, "model": model}) as run:
                run_ids[model] = run.info.run_id
                mlflow.log_params({**params, "model": model,
                                   "input_size": row.get("input_size")})
                mlflow.log_metrics(_numbers({k: v for k, v in row.items() if k != "rank"}))
                if not pd.isna(row.get("rank")):
                    mlflow.log_metric("rank", float(row["rank"]))
                mlflow.set_tag("status", str(row.get("status")))
                for rec in sorted((r for r in records if r.get("model") == model),
                                  key=lambda r: (bool(r.get("control")), r.get("repeat", 0),
                                                 r["fold"])):
                    _log_fold(mlflow, rec, common)
                for path in [*shared, _local(layout.model_curves(results_uri, model), tmp),
                             _local(layout.model_gradcam(results_uri, model, "png"), tmp)]:
                    if path:
                        mlflow.log_artifact(path)
    return run_ids


def _log_fold(mlflow, rec: dict[str, Any], tags: dict[str, str]) -> None:
    repeat, fold = int(rec.get("repeat", 0)), int(rec["fold"])
    name = ("control-" if rec.get("control") else "") + (
        f"repeat-{repeat}-fold-{fold}" if repeat else f"fold-{fold}")
    with mlflow.start_run(run_name=name, nested=True, tags={**tags, "model": rec["model"]}):
        mlflow.log_params({"fold": fold, "repeat": repeat,
                           "control": bool(rec.get("control")),
                           "n_test": rec.get("n_test")})
        metrics = rec.get("metrics") or {}
        mlflow.log_metrics({m: float(metrics[m]) for m in METRICS
                            if isinstance(metrics.get(m), int | float)})
        for name_, values in (rec.get("curves") or {}).items():
            for epoch, value in enumerate(values):
                mlflow.log_metric(f"epoch_{name_}", float(value), step=epoch)


def _local(uri: str, tmp: str) -> str | None:
    """A local copy of ``uri`` named as it is (None when it does not exist)."""
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, storage.StorageError):
        return None
    folder = tempfile.mkdtemp(dir=tmp)
    path = os.path.join(folder, uri.rstrip("/").rsplit("/", 1)[-1])
    with open(path, "wb") as fh:
        fh.write(data)
    return path
