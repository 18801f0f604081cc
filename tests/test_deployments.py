"""Deployments on a real Prefect server: schedules, the watcher's event, a triggered run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from boards import cnn_rows
from netutil import stop

from deployments.deploy import table

pytestmark = [pytest.mark.slow, pytest.mark.flow, pytest.mark.server]


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
