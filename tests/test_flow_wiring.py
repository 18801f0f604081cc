"""Fast flow wiring: the benchmark flow on a real (temporary) Prefect API with the in-process
thread runner (``--cluster threads``), the config as the flow's one validated parameter."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_pipeline.config import BenchmarkConfig, load_config, resolve_config

pytestmark = pytest.mark.flow


def test_the_run_form_shows_the_configs_fields_with_types_and_defaults():
    from prefect.utilities.callables import parameter_schema

    from flows.benchmark import covid_benchmark

    schema = parameter_schema(covid_benchmark.fn).model_dump_for_openapi()
    assert set(schema["properties"]) == {"sources", "out", "config", "cluster", "workers",
                                         "triggered_by", "credentials_block",
                                         "legacy_parameters"}
    assert "paper preset" in schema["properties"]["config"]["description"]
    config = schema["definitions"]["BenchmarkConfig"]["properties"]
    assert config["epochs"]["default"] == 120 and config["epochs"]["minimum"] == 1
    assert config["mode"]["enum"] == ["online", "cached"]
    assert config["learning_rate"]["exclusiveMinimum"] == 0
    data = schema["definitions"]["DataSettings"]["properties"]
    assert data["folds"] == {**data["folds"], "default": 5, "minimum": 2}
    assert data["image_size"]["maximum"] == 2048
    assert "description" in config["views"]


def test_flow_on_the_thread_runner_writes_the_board_and_the_resolved_config(
        prefect_api, tmp_path):
    from covid_pipeline.synth import make_synthetic
    from flows.benchmark import covid_benchmark

    data = make_synthetic(str(tmp_path / "data"), covid_patients=4, normals=8, size=96, seed=2)
    cfg = resolve_config("smoke", models="VGG16", folds=2, epochs=1, input_size=32,
                         image_size=64, weights="none")
    result = covid_benchmark(sources=[f"ieee8023={data.ieee8023}", f"rsna={data.rsna}"],
                             out=str(tmp_path / "out"), config=cfg, cluster="threads")
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(board["model"]) == ["VGG16"] and list(board["status"]) == ["ok"]
    assert result["config_hash"] == cfg.config_hash() == board.loc[0, "config_hash"]
    written = load_config(f"{result['results']}/config.yaml")
    assert written.config_hash() == cfg.config_hash()
    assert written.model_copy(update={"name": cfg.name}) == cfg

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result["flow_run_id"])
    # the run's parameter is the validated model's dump, data-path settings nested
    assert BenchmarkConfig(**run.parameters["config"]) == cfg
    assert run.parameters["config"]["data"]["folds"] == 2


def test_a_deployment_made_before_config_keeps_working(prefect_api, tmp_path):
    """Older deployments pass loose parameters (preset, weights_source, folds, ...): the
    flow turns them into the config and says how to re-create the deployment."""
    from covid_pipeline.synth import make_synthetic
    from flows.benchmark import covid_benchmark

    data = make_synthetic(str(tmp_path / "data"), covid_patients=4, normals=8, size=96, seed=3)
    result = covid_benchmark(sources=[f"ieee8023={data.ieee8023}", f"rsna={data.rsna}"],
                             out=str(tmp_path / "out"), cluster="threads", preset="smoke",
                             weights_source="none", models=["VGG16"], folds=2, epochs=1,
                             input_size=32, image_size=64)
    expected = resolve_config("smoke", models="VGG16", folds=2, epochs=1, input_size=32,
                              image_size=64, weights="none")
    assert result["config_hash"] == expected.config_hash()
    assert list(pd.read_csv(tmp_path / "out" / "leaderboard.csv")["status"]) == ["ok"]


def test_unknown_legacy_parameters_fail_in_one_line():
    from covid_pipeline.errors import ConfigError
    from flows.benchmark import legacy_config

    assert legacy_config({"preset": "smoke", "weights_source": "none"}) == resolve_config(
        "smoke", weights="none")
    with pytest.raises(ConfigError, match="unknown parameter.*bogus.*deployments.deploy"):
        legacy_config({"preset": "smoke", "bogus": 1})
