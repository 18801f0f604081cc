"""GPU work reaches only workers that advertise the GPU resource.

A cluster as an operator starts one: ``dask scheduler`` and two ``dask worker`` processes on
loopback, ``gpu0`` with ``--resources GPU=1`` and ``cpu0`` without. The flow is pointed at
the scheduler's address (``--cluster tcp://...``); the scheduler's task stream tells which
worker ran each task.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import free_port, stop

pytestmark = [pytest.mark.slow, pytest.mark.flow]
ROOT = Path(__file__).resolve().parents[1]
MODELS = ["VGG16", "ResNet50"]


@pytest.fixture
def scheduler(prefect_api) -> Iterator[str]:
    """A ``dask scheduler`` with workers ``gpu0`` (GPU=1) and ``cpu0``; yields its address."""
    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    common = ["--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"]
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port",
                               address.rsplit(":", 1)[1], "--no-dashboard"], env=env, cwd=ROOT)]
    try:
        procs += [
            subprocess.Popen([dask, "worker", address, "--name", "gpu0", "--resources", "GPU=1",
                              *common], env=env, cwd=ROOT),
            subprocess.Popen([dask, "worker", address, "--name", "cpu0", *common], env=env,
                             cwd=ROOT),
        ]
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_extraction_runs_only_on_the_gpu_worker(scheduler, synth_root, tmp_path):
    from distributed import Client

    with Client(scheduler) as client:
        names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
        client.get_task_stream()  # installs the scheduler's task-stream plugin
        out = tmp_path / "out"
        run = subprocess.run(
            [sys.executable, "-m", "covid_pipeline.cli", "run", "--preset", "smoke",
             "--models", ",".join(MODELS), "--folds", "2", "--epochs", "1",
             "--input-size", "32", "--weights", "none", "--cluster", scheduler,
             "--out", str(out), "--source", f"ieee8023={synth_root / 'ieee8023'}",
             "--source", f"rsna={synth_root / 'rsna'}"],
            capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-3000:]
        stream = client.get_task_stream()

    ran: dict[str, list[str]] = {"extract": [], "train": []}
    for record in stream:
        for kind, where in ran.items():
            if kind in str(record["key"]):
                where.append(names[record["worker"]])
    # Two extraction tasks and two idle one-thread workers: without the GPU restriction
    # Dask would give one to each worker.
    assert ran["extract"] == ["gpu0", "gpu0"], ran
    assert len(ran["train"]) == len(MODELS) * 2, ran  # head training: any worker
