"""Fast flow wiring: the benchmark flow on a real (temporary) Prefect API with the in-process
thread runner (``--cluster threads``), the config as the flow's one validated parameter."""

from __future__ import annotations

import pandas as pd
import pytest
from boards import cnn_rows

from covid_pipeline.config import BenchmarkConfig, load_config, resolve_config

pytestmark = pytest.mark.flow


def test_the_run_form_shows_the_configs_fields_with_types_and_defaults():
    from prefect.utilities.callables import parameter_schema

    from flows.benchmark import covid_benchmark

    schema = parameter_schema(covid_benchmark.fn).model_dump_for_openapi()
    assert set(schema["properties"]) == {"sources", "out", "config", "cluster", "workers",
                                         "triggered_by", "credentials_block",
                                         "preset", "config_file", "weights_source",
                                         "external"}
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
    board = cnn_rows(pd.read_csv(tmp_path / "out" / "leaderboard.csv"))
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
    """Deployments registered before `config` pass preset, config_file and weights_source
    (deployments.deploy never passed other settings): Prefect accepts those parameters as
    stored, and the flow turns them into the config."""
    from covid_pipeline.synth import make_synthetic
    from flows.benchmark import covid_benchmark

    data = make_synthetic(str(tmp_path / "data"), covid_patients=4, normals=8, size=96, seed=3)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("models: [VGG16]\nfolds: 2\nepochs: 1\ninput_size: 32\nimage_size: 64\n")
    stored = {"sources": [f"ieee8023={data.ieee8023}", f"rsna={data.rsna}"],
              "out": str(tmp_path / "out"), "preset": "smoke", "config_file": str(tiny),
              "weights_source": "none", "cluster": "threads"}
    covid_benchmark.validate_parameters(stored)  # what a deployment run does first
    result = covid_benchmark(**stored)
    expected = resolve_config("smoke", tiny, weights="none")
    assert result["config_hash"] == expected.config_hash()
    assert list(cnn_rows(pd.read_csv(tmp_path / "out" / "leaderboard.csv"))["status"]) == ["ok"]


def test_unknown_parameters_of_a_stored_deployment_are_refused():
    from prefect.exceptions import SignatureMismatchError

    from flows.benchmark import covid_benchmark

    with pytest.raises(SignatureMismatchError, match="bogus"):
        covid_benchmark.validate_parameters({"sources": [], "out": "/o", "bogus": 1})


def test_missing_weights_fail_a_deployment_run_in_one_line(prefect_api, tmp_path):
    """A run that does not come through the CLI (a deployment's) checks the weights first:
    the flow run fails with the one-line message, which its logs hold, and no traceback."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    from flows.benchmark import covid_benchmark

    empty = tmp_path / "weights"
    empty.mkdir()
    cfg = resolve_config("smoke", weights=str(empty))
    state = covid_benchmark(sources=[f"rsna={tmp_path}"], out=str(tmp_path / "out"),
                            config=cfg, cluster="threads", return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"ImageNet weights missing from {empty}: ")
    assert not (tmp_path / "out").exists()
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])))
    text = "\n".join(log.message for log in logs)
    assert "Traceback" not in text and "weights download --models ResNet50,VGG16" in text


def test_a_subflow_in_the_flows_process_sends_no_heartbeats_of_its_own(prefect_api):
    """The parent's heartbeats say whether the process lives; Prefect joins a flow's
    heartbeat thread on exit (it sleeps in 1 s steps), so a subflow with its own would
    end up to a second late."""
    from prefect import flow
    from prefect.settings import get_current_settings, temporary_settings

    from flows.benchmark import own_process_subflow

    @flow
    def child() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    @flow
    def parent() -> tuple[int | None, int | None]:
        with own_process_subflow():
            inside = child()
        return get_current_settings().flows.heartbeat_frequency, inside

    with temporary_settings(updates={"flows.heartbeat_frequency": 60}):  # a real server's
        outer, inside = parent()
    assert outer == 60 and inside is None


def test_flows_on_a_temporary_api_send_no_heartbeats(prefect_api):
    """A temporary server dies with the process whose crash a heartbeat would tell it, and
    each flow run's end would wait up to a second for its heartbeat thread."""
    from prefect import flow
    from prefect.settings import get_current_settings

    @flow
    def run() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    assert run() is None
