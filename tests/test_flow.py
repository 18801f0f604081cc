"""The benchmark flow under Prefect's engine on a real LocalCluster of worker processes."""

from __future__ import annotations

import pandas as pd
import pytest
from imagefiles import add_covid_images

from covid_pipeline import storage
from covid_pipeline.metrics import METRICS
from covid_pipeline.shards import read_parquet

pytestmark = [pytest.mark.slow, pytest.mark.flow]


def run(sources: list[str], out, **kw):
    from flows.benchmark import covid_benchmark

    params = dict(preset="smoke", weights_source="none", cluster="local", workers=2)
    params.update(kw)
    return covid_benchmark(sources=sources, out=str(out), **params)


def read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)  # the session's API holds other runs' too


def test_two_models_two_folds_leaderboard_and_artifact(prefect_api, synth_root, tmp_path):
    sources = [f"ieee8023={synth_root / 'ieee8023'}", f"rsna={synth_root / 'rsna'}"]
    result = run(sources, tmp_path, folds=2, epochs=2)
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert sorted(board["model"]) == ["ResNet50", "VGG16"]
    assert list(board["status"]) == ["ok", "ok"] and list(board["rank"]) == [1, 2]
    assert (board["n_folds"] == 2).all()
    for metric in METRICS:
        values = board[f"{metric}_mean"].dropna()
        assert len(values) == 2 and values.between(0, 1).all(), metric
    assert (board["dataset_version"] == result["dataset_version"]).all()
    assert (board["group_by"] == "patient").all()
    assert (tmp_path / "leaderboard.md").read_text().count("| ok |") == 2
    assert (tmp_path / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    artifacts = read_artifact("leaderboard")
    assert artifacts, "no 'leaderboard' artifact on the Prefect API"
    table = artifacts[-1].data
    assert "ResNet50" in str(table) and "VGG16" in str(table)
    assert read_artifact("training-progress")[-1].data == 100.0

    again = run(sources, tmp_path, folds=2, epochs=2)
    assert again["reused"] == 4
    assert pd.read_csv(tmp_path / "leaderboard.csv").equals(board)


def test_failing_model_gets_an_error_row_and_the_others_complete(prefect_api, synth_root,
                                                                  tmp_path):
    sources = [f"ieee8023={synth_root / 'ieee8023'}", f"rsna={synth_root / 'rsna'}"]
    # InceptionV3 refuses inputs below 75 px: a real, persistent failure for that model.
    result = run(sources, tmp_path, models=["VGG16", "InceptionV3"], folds=2, epochs=1,
                 input_size=64)
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["model"]) == {"VGG16", "InceptionV3"}
    rows = board.set_index("model")
    assert rows.loc["VGG16", "status"] == "ok" and rows.loc["VGG16", "rank"] == 1
    assert rows.loc["InceptionV3", "status"].startswith("failed: ")
    assert "InceptionV3" in result["failures"]


@pytest.mark.usefixtures("prefect_api")
def test_acceptance_real_samples_smoke_preset_held_out_patients(shared_data, tmp_path):
    sources = [f"ieee8023={shared_data / 'ieee8023-2020-04'}",
               f"rsna={shared_data / 'rsna-pneumonia-format'}"]
    result = run(sources, tmp_path)
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert sorted(board["model"]) == ["ResNet50", "VGG16"] and (board["status"] == "ok").all()
    assert (board["n_covid19"] == 22).all() and (board["n_normal"] == 22).all()

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
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert (board["dataset_version"] == second["dataset_version"]).all()
    assert (tmp_path / "out" / "results" / first["dataset_version"]).exists()
