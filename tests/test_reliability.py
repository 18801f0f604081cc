"""Faults with real processes: a Dask worker killed mid-training, a flow process killed
mid-run and started again, and determinism across worker counts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from covid_pipeline.metrics import METRICS

pytestmark = [pytest.mark.slow, pytest.mark.flow]
MODELS = ["VGG16", "ResNet50"]
METRIC_COLUMNS = ["model", "rank", "n_folds", "status"] + [
    f"{m}_{s}" for m in METRICS for s in ("mean", "std")]


def command(synth_root: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "covid_pipeline.cli", "run", "--config", str(config),
            "--models", ",".join(MODELS), "--weights", "none", "--out", str(out),
            "--source", f"ieee8023={synth_root / 'ieee8023'}",
            "--source", f"rsna={synth_root / 'rsna'}", *extra]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "online.yaml"
    path.write_text("preset: smoke\nmode: online\nfolds: 3\nepochs: 2\ninput_size: 48\n"
                    "batch_size: 8\n")
    return path


def fold_files(out: Path) -> list[Path]:
    return sorted(out.glob("results/*/*/*/fold-*.json"))


def leaderboard(out: Path) -> pd.DataFrame:
    board = pd.read_csv(out / "leaderboard.csv")
    return board[METRIC_COLUMNS].sort_values("model").reset_index(drop=True)


def wait_until(check, timeout: float, proc: subprocess.Popen, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_flow_resumes_without_retraining_and_matches_uninterrupted(
        prefect_api, synth_root, tmp_path, config):
    reference = tmp_path / "reference"
    done = subprocess.run(command(synth_root, reference, config, "--workers", "2"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    total = len(MODELS) * 3
    assert len(fold_files(reference)) == total

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(command(synth_root, out, config, "--workers", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_until(lambda: len(fold_files(out)) >= 1, 600, proc, "a first finished fold")
    os.killpg(proc.pid, signal.SIGKILL)  # the flow, its Dask workers and its Prefect API
    proc.wait(60)
    finished = {p: p.read_bytes() for p in fold_files(out)}
    assert 1 <= len(finished) < total

    again = subprocess.run(command(synth_root, out, config, "--workers", "1"),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    reused = int(re.search(r"reused from earlier runs: (\d+)", again.stdout).group(1))
    assert reused == len(finished)
    for path, content in finished.items():
        assert path.read_bytes() == content, f"{path} was retrained"
    assert len(fold_files(out)) == total
    # same data, seed and preset: the same leaderboard, on 1 worker (resumed) as on 2
    pd.testing.assert_frame_equal(leaderboard(out), leaderboard(reference))


def test_sigkilled_dask_worker_mid_training_loses_nothing(prefect_api, synth_root, tmp_path,
                                                          config):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        out = tmp_path / "out"
        proc = subprocess.Popen(
            command(synth_root, out, config, "--cluster", cluster.scheduler_address),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def busy_worker():
            busy = [w for w, keys in client.processing().items()
                    if any("train" in str(k) for k in keys)]
            return busy[0] if busy else None

        victim = wait_until(busy_worker, 600, proc, "a training task on a worker")
        time.sleep(2)  # well inside the task
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-3000:]

    files = fold_files(out)
    expected = {(m, k) for m in MODELS for k in range(3)}
    assert {(p.parent.name, int(p.stem.split("-")[1])) for p in files} == expected
    assert len(files) == len(expected)
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["model"]) == sorted(MODELS)
    assert (board["status"] == "ok").all() and (board["n_folds"] == 3).all()
