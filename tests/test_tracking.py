"""MLflow tracking into a real MLflow file store: a run per model, a nested run per fold
with its per-epoch curves, the board's metrics and the files as artifacts."""

from __future__ import annotations

import pytest
from test_leaderboard import synthetic_run

from covid_pipeline import leaderboard as lb
from covid_pipeline import report, tracking
from covid_pipeline.config import resolve_config

pytest.importorskip("mlflow", reason="the mlflow extra (make test installs it)")


def test_a_run_per_model_and_a_nested_run_per_fold(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    records, preds = synthetic_run({"VGG16": 0.8, "ResNet50": 0.6}, folds=3, n=60)
    for r in records:
        r["curves"] = {"loss": [0.7, 0.6, 0.5], "val_accuracy": [0.5, 0.6, 0.7]}
    ctx = lb.LeaderboardContext("v1", "patient", {"COVID-19": 30, "normal": 30}, "c1", "t", 3,
                                {"VGG16": 96, "ResNet50": 96}, bootstrap_resamples=100)
    table = lb.build(records, {}, ["VGG16", "ResNet50"], ctx, preds)
    results = str(tmp_path / "results")
    lb.write(table, ctx, [results])
    report.write(table, ctx, records, preds, [results])
    cfg = resolve_config("smoke", epochs=3, folds=3)
    uri = (tmp_path / "mlruns").as_uri()

    runs = tracking.log_benchmark(uri, cfg, table, records, results, "v1", {"x": "1"})
    assert sorted(runs) == ["ResNet50", "VGG16"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    every = client.search_runs([experiment.experiment_id], max_results=100)
    for model, run_id in runs.items():
        parent = client.get_run(run_id)
        row = table.set_index("model").loc[model]
        assert parent.data.metrics["auc_mean"] == pytest.approx(row["auc_mean"])
        assert parent.data.params["epochs"] == "3" and parent.data.tags["dataset_version"] == "v1"
        children = [r for r in every if r.data.tags.get("mlflow.parentRunId") == run_id]
        assert sorted(r.info.run_name for r in children) == ["fold-0", "fold-1", "fold-2"]
        fold0 = next(r for r in children if r.info.run_name == "fold-0")
        rec = next(r for r in records if r["model"] == model and r["fold"] == 0)
        assert fold0.data.metrics["balanced_accuracy"] == pytest.approx(
            rec["metrics"]["balanced_accuracy"])
        history = client.get_metric_history(fold0.info.run_id, "epoch_loss")
        assert [(m.step, m.value) for m in history] == [(0, 0.7), (1, 0.6), (2, 0.5)]
        files = {a.path for a in client.list_artifacts(run_id)}
        assert {"leaderboard.csv", "leaderboard.md", "report.html"} <= files


def test_the_tracking_uri_comes_from_the_flag_else_the_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(resolve_config("smoke")) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(resolve_config("smoke")) == "http://127.0.0.1:5000"
    assert tracking.tracking_uri(resolve_config("smoke", mlflow="file:///x")) == "file:///x"
    assert tracking.tracking_uri(resolve_config("smoke", mlflow="none")) is None
