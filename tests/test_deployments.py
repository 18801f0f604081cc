"""Deployments on a real Prefect server: schedules, the watcher's event, a triggered run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from boards import cnn_rows
from netutil import stop

from deployments.deploy import table

pytestmark = [pytest.mark.slow, pytest.mark.flow, pytest.mark.server]
ROOT = Path(__file__).resolve().parents[1]


def test_table_has_a_weekly_benchmark_with_a_trigger_and_a_watcher():
    specs = {s.name: s for s in table(["rsna=/x"], "/o", "paper", "local", None, "0 3 * * 1", 300)}
    assert specs["covid-benchmark"].cron == "0 3 * * 1"
    assert specs["covid-benchmark"].on_event == "covid.dataset.updated"
    assert specs["covid-benchmark"].event_parameters["triggered_by"] == "{{ event.id | string }}"
    assert specs["dataset-watcher"].interval_seconds == 300


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the serving process exited while waiting for {what}")
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def test_served_deployments_schedules_event_and_triggered_run(prefect_server, synth_root,
                                                              tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = tmp_path / "out"
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: smoke\nmodels: [VGG16]\nfolds: 2\nepochs: 1\ninput_size: 32\n")
    sources = [f"ieee8023={synth_root / 'ieee8023'}", f"rsna={synth_root / 'rsna'}"]
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "DASK_LOGGING__DISTRIBUTED": "warning"}
    args = [sys.executable, "-m", "deployments.deploy", "serve", "--out", str(out),
            "--preset", "smoke", "--config", str(config), "--weights", "none",
            "--watch-seconds", "3600", "--cron", "0 3 * * 1"]
    for s in sources:
        args += ["--source", s]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}), \
                get_client(sync_client=True) as client:

            def deployments():
                found = client.read_deployments(deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["covid-benchmark", "dataset-watcher"])))
                return {d.name: d for d in found} if len(found) == 2 else None

            deps = wait_for(deployments, 120, "deployments", serve)
            bench_schedules = [s.schedule for s in deps["covid-benchmark"].schedules]
            assert [s.cron for s in bench_schedules] == ["0 3 * * 1"]
            watch = [s.schedule for s in deps["dataset-watcher"].schedules]
            assert [s.interval.total_seconds() for s in watch] == [3600]

            # The watcher runs as a deployment would run it: a flow process of its own,
            # pointed at this server (this test process' event client may already be
            # bound to another test's API).
            def watch() -> list[str]:
                code = ("import json, sys; from flows.watcher import dataset_watcher; "
                        "print(json.dumps(dataset_watcher(json.loads(sys.argv[1]), sys.argv[2])))")
                done = subprocess.run([sys.executable, "-c", code, json.dumps(sources), str(out)],
                                      env=env, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, done.stderr[-2000:]
                return json.loads(done.stdout.strip().splitlines()[-1])

            assert watch() == sources  # emits covid.dataset.updated
            assert watch() == []  # nothing changed since

            bench_id = deps["covid-benchmark"].id

            def finished_run():
                runs = [r for r in client.read_flow_runs()
                        if r.deployment_id == bench_id and r.state and r.state.is_final()]
                return runs[0] if runs else None

            run = wait_for(finished_run, 420, "a triggered covid-benchmark run", serve)
            assert run.state.is_completed(), run.state
            assert run.parameters["triggered_by"]
            assert run.parameters["sources"] == sources
    finally:
        stop(serve)
        log.close()
    board = cnn_rows(pd.read_csv(out / "leaderboard.csv"))
    assert list(board["model"]) == ["VGG16"] and list(board["status"]) == ["ok"]


YAML_DEFAULTS = ["--preset", "paper", "--cluster", "tcp://dask-scheduler:8786",
                 "--source", "ieee8023=/data/covid-chestxray-dataset",
                 "--source", "rsna=/data/rsna-pneumonia-detection-challenge",
                 "--out", "s3://covid/benchmark", "--pool", "covid-process", "--workdir", "/app"]


def yaml_of(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "deployments.deploy", "yaml", *args],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_prefect_yaml_is_what_the_table_gives():
    """The committed prefect.yaml is generated from the table (README's defaults): the two
    cannot drift apart."""
    import yaml

    committed = (ROOT / "prefect.yaml").read_text()
    assert committed == yaml_of(YAML_DEFAULTS), (
        "prefect.yaml is stale: regenerate it with `python -m deployments.deploy yaml "
        + " ".join(YAML_DEFAULTS) + " > prefect.yaml`")
    specs = {s.name: s for s in table(
        ["ieee8023=/data/covid-chestxray-dataset", "rsna=/data/rsna-pneumonia-detection-challenge"],
        "s3://covid/benchmark", "paper", "tcp://dask-scheduler:8786", None, "0 3 * * 1", 300)}
    deployments = {d["name"]: d for d in yaml.safe_load(committed)["deployments"]}
    assert set(deployments) == set(specs)
    for name, spec in specs.items():
        assert deployments[name]["parameters"] == spec.parameters
        assert deployments[name]["entrypoint"] == spec.entrypoint


def test_prefect_deploy_all_creates_both_deployments(prefect_server, tmp_path):
    """`prefect deploy --all` with a generated prefect.yaml, against a real server: both
    deployments, their schedules, the benchmark's event trigger (an automation) and its
    parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pool = f"pool-{tmp_path.name[-8:]}"
    args = ["--preset", "smoke", "--source", "rsna=/data/rsna", "--out", str(tmp_path / "out"),
            "--pool", pool, "--workdir", str(ROOT), "--cron", "0 4 * * 2",
            "--watch-seconds", "600"]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml_of(args))
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    prefect = [str(Path(sys.executable).with_name("prefect")), "--no-prompt"]
    for cmd in (["work-pool", "create", pool, "--type", "process"],
                ["deploy", "--all", "--prefect-file", str(prefect_file)]):
        done = subprocess.run(prefect + cmd, env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    specs = {s.name: s for s in table(["rsna=/data/rsna"], str(tmp_path / "out"), "smoke",
                                      "local", None, "0 4 * * 2", 600)}
    with temporary_settings({PREFECT_API_URL: prefect_server}), \
            get_client(sync_client=True) as client:
        found = {d.name: d for d in client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(
                any_=list(specs)))) if d.work_pool_name == pool}
        assert set(found) == set(specs)
        bench, watcher = found["covid-benchmark"], found["dataset-watcher"]
        assert [s.schedule.cron for s in bench.schedules] == ["0 4 * * 2"]
        assert [s.schedule.interval.total_seconds() for s in watcher.schedules] == [600]
        assert bench.parameters == specs["covid-benchmark"].parameters
        assert watcher.parameters == specs["dataset-watcher"].parameters
        automations = [a for a in client.read_automations()
                       if a.name == "covid-benchmark on covid.dataset.updated"
                       and any(getattr(act, "deployment_id", None) == bench.id
                               for act in a.actions)]
        assert len(automations) == 1
        trigger = automations[0].trigger
        assert trigger.expect == {"covid.dataset.updated"}
        action = next(a for a in automations[0].actions if a.deployment_id == bench.id)
        assert action.parameters["triggered_by"] == "{{ event.id | string }}"
        assert action.parameters["sources"] == "{{ event.payload.sources }}"
