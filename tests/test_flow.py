"""The benchmark flow under Prefect's engine on a real LocalCluster of worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from boards import cnn_rows
from imagefiles import add_covid_images

from covid_pipeline import storage
from covid_pipeline.config import resolve_config
from covid_pipeline.metrics import METRICS
from covid_pipeline.shards import read_parquet
from covid_pipeline.tfsetup import PRECISIONS

pytestmark = [pytest.mark.slow, pytest.mark.flow, pytest.mark.cluster]


def run(sources: list[str], out, **kw):
    from flows.benchmark import covid_benchmark

    runner = {"cluster": kw.pop("cluster", "local"), "workers": kw.pop("workers", 2)}
    config = resolve_config("smoke", **{"weights": "none", **kw})
    return covid_benchmark(sources=sources, out=str(out), config=config, **runner)


def read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)  # the session's API holds other runs' too


def sklearn_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """The leaderboard's metrics by scikit-learn (positive class COVID-19, p > 0.5)."""
    from sklearn import metrics as sk

    pred = (prob > 0.5).astype(int)
    return {
        "accuracy": sk.accuracy_score(y, pred),
        "precision": sk.precision_score(y, pred, zero_division=0),
        "sensitivity": sk.recall_score(y, pred),
        "specificity": sk.recall_score(y, pred, pos_label=0),
        "f1": sk.f1_score(y, pred, zero_division=0),
        "balanced_accuracy": sk.balanced_accuracy_score(y, pred),
        "auc": sk.roc_auc_score(y, prob),
    }


def test_two_models_two_folds_leaderboard_and_artifact(prefect_api, synth_root, tmp_path):
    from covid_pipeline import curves as curves_module

    sources = [f"ieee8023={synth_root / 'ieee8023'}", f"rsna={synth_root / 'rsna'}"]
    drawn_here, draw = [], curves_module.curves_png
    with pytest.MonkeyPatch.context() as mp:  # this process only: the workers draw unwatched
        mp.setattr(curves_module, "curves_png",
                   lambda model, by_fold: drawn_here.append(model) or draw(model, by_fold))
        result = run(sources, tmp_path, folds=2, epochs=2)
    # each model's curves drawn on a worker by its figures task: the aggregation found them
    # current and drew none
    assert drawn_here == []
    # on cached features one head-training task per (model, repeat, control) trains its
    # folds in turn
    assert sorted(t.name for t in task_runs_of(result["flow_run_id"])
                  if t.name.startswith(("train-VGG16", "train-ResNet50"))) == [
        "train-ResNet50-control-folds-0-1", "train-ResNet50-r0-folds-0-1",
        "train-VGG16-control-folds-0-1", "train-VGG16-r0-folds-0-1"]
    board = cnn_rows(pd.read_csv(tmp_path / "leaderboard.csv"))
    assert sorted(board["model"]) == ["ResNet50", "VGG16"]
    # ranked with the acquisition-only baseline (its row is left out here): two ranks of three
    assert list(board["status"]) == ["ok", "ok"] and board["rank"].is_monotonic_increasing
    assert set(board["rank"]) < {1, 2, 3} and board["rank"].nunique() == 2
    assert (board["n_folds"] == 2).all()
    # every mean on the board, recomputed with scikit-learn from the stored predictions
    results = result["results"]
    for row in board.to_dict("records"):
        per_fold = []
        for fold in range(2):
            p = pd.read_parquet(f"{results}/{row['model']}/fold-{fold}.predictions.parquet")
            assert (p["fold"] == fold).all() and len(p) > 0
            per_fold.append(sklearn_metrics(p["label"].to_numpy(), p["prob_covid"].to_numpy()))
        for metric in METRICS:
            expected = np.mean([f[metric] for f in per_fold])
            assert row[f"{metric}_mean"] == pytest.approx(expected, abs=1e-12), metric
        assert row["feature_precision"] in PRECISIONS and row["weights_sha256"] == "random"
        # training curves: per fold and epoch, on the training batches and held out
        for fold in range(2):
            curves = storage.read_json(f"{results}/{row['model']}/fold-{fold}.json")["curves"]
            assert {k: len(v) for k, v in curves.items()} == {
                "loss": 2, "accuracy": 2, "val_loss": 2, "val_accuracy": 2}
        assert Path(f"{results}/{row['model']}/curves.png").read_bytes()[:4] == b"\x89PNG"
        # Grad-CAM panel of out-of-fold images, and its heat share outside the box
        assert Path(f"{results}/{row['model']}/gradcam.png").read_bytes()[:4] == b"\x89PNG"
        panel = storage.read_json(f"{results}/{row['model']}/gradcam.json")
        assert len(panel["images"]) == 8
        if panel["outside_share"] is None:  # no positive evidence on any of its images
            assert np.isnan(row["gradcam_outside_share"])
        else:
            assert row["gradcam_outside_share"] == pytest.approx(panel["outside_share"])
    assert board["gradcam_outside_share"].between(0, 1).any()
    assert (board["dataset_version"] == result["dataset_version"]).all()
    assert (board["group_by"] == "patient").all()
    assert (tmp_path / "leaderboard.md").read_text().count("| ok |") == 3  # with the baseline
    assert (tmp_path / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    artifacts = read_artifact("leaderboard")
    assert artifacts, "no 'leaderboard' artifact on the Prefect API"
    table = artifacts[-1].data
    assert "ResNet50" in str(table) and "VGG16" in str(table)
    assert read_artifact("training-progress")[-1].data == 100.0
    report = Path(result["leaderboard"]["html"])
    assert report.parent == Path(results) and "Grad-CAM on out-of-fold images" in (
        report.read_text())
    link = read_artifact("report")[-1]  # a link artifact to the report
    assert link.type == "markdown" and report.resolve().as_uri() in link.data

    # an unchanged re-run: every fold result stored, so no cluster starts and the stored
    # board (made from the same inputs) is published again, not rebuilt
    from covid_pipeline import leaderboard
    from covid_pipeline.training import stored_results, training_jobs

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the board was rebuilt from unchanged inputs")

    csv = (tmp_path / "leaderboard.csv").read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(leaderboard, "build", no_rebuild)
        again = run(sources, tmp_path, folds=2, epochs=2)
    assert again["reused"] == 4 and again["extraction"] == []
    names = {t.name.rsplit("-", 1)[0] for t in task_runs_of(again["flow_run_id"])}
    assert "stored-results" in names and "train-models" not in names, names
    assert (tmp_path / "leaderboard.csv").read_bytes() == csv
    assert len(read_artifact("leaderboard")) == len(artifacts) + 1
    cfg = resolve_config("smoke", weights="none", folds=2, epochs=2)
    dataset = f"{tmp_path}/datasets/{result['dataset_version']}"
    jobs = training_jobs(cfg)
    assert len(stored_results(dataset, cfg, str(tmp_path), "float32", jobs)) == len(jobs)
    assert stored_results(dataset, cfg, str(tmp_path), "mixed_float16", jobs) is None


def task_runs_of(flow_run_id: str) -> list:
    """The task runs of a flow run and of its subflow runs (train-models)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [flow_run_id, *(str(r.id) for r in subflows)]
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))


def test_failing_model_gets_an_error_row_and_the_others_complete(prefect_api, synth_root,
                                                                  tmp_path):
    sources = [f"ieee8023={synth_root / 'ieee8023'}", f"rsna={synth_root / 'rsna'}"]
    # InceptionV3 refuses inputs below 75 px: a real, persistent failure for that model.
    result = run(sources, tmp_path, models=["VGG16", "InceptionV3"], folds=2, epochs=1,
                 input_size=64)
    board = cnn_rows(pd.read_csv(tmp_path / "leaderboard.csv"))
    assert set(board["model"]) == {"VGG16", "InceptionV3"}
    rows = board.set_index("model")
    assert rows.loc["VGG16", "status"] == "ok" and rows.loc["VGG16", "rank"] in (1, 2)
    assert rows.loc["InceptionV3", "status"].startswith("failed: ")
    assert "InceptionV3" in result["failures"]
    assert "input" in result["failures"]["InceptionV3"]  # the model's own message
    # A deterministic error is not retried: the extraction ran once and failed.
    runs = {r.name: r for r in task_runs_of(result["flow_run_id"])}
    failed = runs["extract-InceptionV3"]
    assert failed.state.is_failed() and failed.run_count == 1, (failed.state, failed.run_count)
    assert runs["extract-VGG16"].state.is_completed()


@pytest.mark.usefixtures("prefect_api")
def test_acceptance_real_samples_smoke_preset_held_out_patients(shared_data, tmp_path):
    sources = [f"ieee8023={shared_data / 'ieee8023-2020-04'}",
               f"rsna={shared_data / 'rsna-pneumonia-format'}"]
    result = run(sources, tmp_path)
    board = cnn_rows(pd.read_csv(tmp_path / "leaderboard.csv"))
    assert sorted(board["model"]) == ["ResNet50", "VGG16"] and (board["status"] == "ok").all()
    assert (board["n_covid19"] == 22).all() and (board["n_normal"] == 22).all()
    full = pd.read_csv(tmp_path / "leaderboard.csv").set_index("model")
    assert full.loc["acquisition-only baseline", "status"] == "ok"
    assert full.loc["acquisition-only baseline", "auc_pooled"] > 0.95  # the file format
    assert full["rank"].notna().all()  # ranked with the models
    # the confounding of the study's data is stated on the board and as an artifact
    warning = ("> **Warning:** every COVID-19 image comes from ieee8023 and every normal image "
               "comes from rsna: a model can score perfectly by telling the sources apart.")
    assert warning in (tmp_path / "leaderboard.md").read_text()
    artifact = [a for a in read_artifact("confounds")
                if str(a.flow_run_id) == result["flow_run_id"]]
    assert artifact and "telling the sources apart" in artifact[0].data
    # the border-only control ran for both smoke models, on the same folds, at its stated
    # cost (44 images x (1 rotated view + 1)), and fills its columns
    assert sorted((e["model"], e["backbone_passes"]) for e in result["control"]["extraction"]
                  ) == [("ResNet50", 88), ("VGG16", 88)]
    for model in ("ResNet50", "VGG16"):
        assert full.loc[model, "control_status"] == "ok"
        assert 0 <= full.loc[model, "control_auc"] <= 1
        assert full.loc[model, "control_auc_drop"] == pytest.approx(
            full.loc[model, "auc_mean"] - full.loc[model, "control_auc"])
        assert 0 <= full.loc[model, "control_balanced_accuracy"] <= 1
    assert "**Border-only control** (the central 60% of each side blacked out" in (
        tmp_path / "leaderboard.md").read_text()

    dataset = storage.join(str(tmp_path), "datasets", result["dataset_version"])
    manifest = read_parquet(storage.join(dataset, "manifest.parquet")).set_index("image_id")
    for model in ("ResNet50", "VGG16"):
        for fold in range(3):
            preds = pd.read_parquet(
                f"{result['results']}/{model}/fold-{fold}.predictions.parquet")
            tested = manifest.loc[preds["image_id"]]
            assert (tested["fold"] == fold).all()
            assert len(preds) == int((manifest["fold"] == fold).sum())
            trained_patients = set(manifest[manifest["fold"] != fold]["patient_id"])
            assert not set(tested["patient_id"]) & trained_patients
            control = pd.read_parquet(
                f"{result['results']}/{model}/control/fold-{fold}.predictions.parquet")
            assert sorted(control["image_id"]) == sorted(preds["image_id"])  # same folds


def test_rerun_after_adding_images_extracts_only_new_ones(prefect_api, tmp_path):
    from covid_pipeline.synth import make_synthetic

    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=6, normals=12, size=96, seed=5)
    sources = [f"ieee8023={root / 'ieee8023'}", f"rsna={root / 'rsna'}"]
    kw = dict(models=["VGG16"], folds=2, epochs=1, input_size=32, image_size=64,
              balance="none", workers=1)
    first = run(sources, tmp_path / "out", **kw)
    assert [e["extracted_images"] for e in first["extraction"]] == [24]

    add_covid_images(root, 4, seed=11, first_patient=800)

    second = run(sources, tmp_path / "out", **kw)
    assert second["dataset_version"] != first["dataset_version"]
    assert [(e["extracted_images"], e["reused_images"]) for e in second["extraction"]] == [
        (4, 24)]
    board = cnn_rows(pd.read_csv(tmp_path / "out" / "leaderboard.csv"))
    assert (board["dataset_version"] == second["dataset_version"]).all()
    assert (tmp_path / "out" / "results" / first["dataset_version"]).exists()


@pytest.mark.usefixtures("prefect_api")
def test_repeated_cv_on_real_samples_costs_no_backbone_pass_and_adds_only_new_folds(
        shared_data, tmp_path):
    """Smoke preset with 3 repeats of 3-fold CV on ../shared/data: intervals and comparisons
    on the board, one extraction per model with the passes of a single repeat; then 4
    repeats train only the new repeat's folds."""
    from covid_pipeline import evaluation

    sources = [f"ieee8023={shared_data / 'ieee8023-2020-04'}",
               f"rsna={shared_data / 'rsna-pneumonia-format'}"]
    first = run(sources, tmp_path, repeats=3)
    assert sorted((e["model"], e["backbone_passes"]) for e in first["extraction"]) == [
        ("ResNet50", 44 * 4), ("VGG16", 44 * 4)]  # 44 images x (3 views + 1): as with R = 1
    assert first["reused"] == 0 and not first["failures"]
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("model")
    assert (board["n_folds"] == 9).all() and (board["status"] == "ok").all()
    for model in board.index:
        for m in evaluation.CI_METRICS:
            low, point, high = (board.loc[model, f"{m}_{s}"] for s in
                                ("ci_low", "pooled", "ci_high"))
            assert low <= point <= high, (model, m)
    cnns = board.drop(index="acquisition-only baseline")
    best = cnns["rank"].idxmin()  # every row is compared with the best CNN
    assert board.loc[best, "tied_with_best"] and np.isnan(board.loc[best, "auc_p"])
    other = next(m for m in cnns.index if m != best)
    assert 0 <= board.loc["acquisition-only baseline", "auc_p"] <= 1
    assert 0 <= board.loc[other, "balanced_accuracy_p"] <= 1
    assert 0 <= board.loc[other, "auc_delong_p"] <= 1
    repeat_dirs = sorted(p.name for p in (Path(first["results"]) / "VGG16").glob("repeat-*"))
    assert repeat_dirs == ["repeat-1", "repeat-2"]

    second = run(sources, tmp_path, repeats=4)
    assert second["reused"] == 2 * 3 * 3  # every fold of repeats 0-2
    assert [e["extracted_images"] for e in second["extraction"]] == [0, 0]
    assert (pd.read_csv(tmp_path / "leaderboard.csv")["n_folds"] == 12).all()
