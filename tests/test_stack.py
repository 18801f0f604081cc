"""The Docker stack, built and running (docker/ci/stack.sh up): a benchmark through it.

`compose run cli covid-pipeline run --preset smoke --weights none` on a synthetic data set
in the stack's S3 store, on the stack's Dask scheduler, results to s3://; then, through the
Prefect server's API with the stack's credentials, the flow run is Completed with its task
runs and leaderboard artifact, the leaderboard file is in the bucket, and a client without
the credentials (or with a wrong password) gets 401.

Runs only with COVID_STACK=1 (`make test-stack`, which starts the stack first; CI runs it
after the main suite); otherwise it is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "docker" / "ci" / "stack.sh"

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.environ.get("COVID_STACK") != "1",
                       reason="the Docker stack is not up: `make test-stack` starts it and "
                              "runs this (CI does, after the main suite)"),
]


def compose(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(STACK), "compose", *args], capture_output=True,
                          text=True, timeout=timeout)
    print(f"$ compose {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-4000:]}"
          f"\n{proc.stderr[-4000:]}")
    return proc


def bucket() -> str:
    env = subprocess.run(["bash", str(STACK), "env"], capture_output=True, text=True,
                         check=True).stdout.strip()
    values = dict(line.split("=", 1) for line in Path(env).read_text().splitlines()
                  if "=" in line and not line.startswith("#"))
    return values.get("S3_BUCKET", "covid")


def test_compose_config_of_the_users_files():
    """docker/compose.yaml as users run it, with .env.example: valid, and every variable
    it requires is defined there (`docker compose config` fails on a missing `${X:?}`)."""
    proc = subprocess.run(["bash", str(STACK), "docker", "compose", "-f",
                           str(ROOT / "docker" / "compose.yaml"), "--env-file",
                           str(ROOT / "docker" / ".env.example"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_benchmark_through_the_stack():
    prefix = f"s3://{bucket()}/ci-{uuid.uuid4().hex[:8]}"
    out = f"{prefix}/out"
    made = compose("run", "--rm", "-T", "cli", "covid-pipeline", "synth-data", f"{prefix}/data",
                   "--patients", "8", "--normals", "16", "--size", "160")
    assert made.returncode == 0
    run = compose("run", "--rm", "-T", "cli", "covid-pipeline", "run", "--preset", "smoke",
                  "--weights", "none", "--source", f"ieee8023={prefix}/data/ieee8023",
                  "--source", f"rsna={prefix}/data/rsna",
                  "--cluster", "tcp://dask-scheduler:8786", "--out", out)
    assert run.returncode == 0
    assert f"report: {out}/" in run.stdout

    check = compose("run", "--rm", "-T", "cli", "python", "/app/docker/ci/check_run.py", out,
                    timeout=300)
    assert check.returncode == 0
    seen = json.loads(check.stdout.strip().splitlines()[-1])
    assert seen["flow_runs"] == 1
    assert seen["state"] == "COMPLETED"
    assert seen["subflows"].get("train-models") == "COMPLETED", seen["subflows"]
    assert set(seen["subflows"].values()) == {"COMPLETED"}
    assert seen["task_states"] == ["COMPLETED"]
    for task in ("plan-ingest", "write-shards", "extract-VGG16", "train-VGG16-r0-folds-0-2",
                 "train-ResNet50-control-folds-0-2", "figures-ResNet50", "aggregate"):
        assert any(name.startswith(task) for name in seen["task_runs"]), task
    assert {"leaderboard", "leaderboard-summary", "report"} <= set(seen["artifacts"])
    files = {f.rsplit("/", 1)[-1] for f in seen["files"]}
    assert {"leaderboard.csv", "leaderboard.md", "report.html"} <= files
    assert seen["status_without_credentials"] == 401
    assert seen["status_wrong_password"] == 401
