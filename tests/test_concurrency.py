"""Two runs at once on the same output URI do not corrupt each other's files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from boards import cnn_rows

from covid_pipeline import storage
from covid_pipeline.metrics import METRICS
from covid_pipeline.shards import read_parquet, verify_dataset
from covid_pipeline.synth import make_synthetic

# The real CLI, started in step: after its imports it waits for the go file, then
# brackets main() with wall-clock stamps on stderr (its run window).
IN_STEP = """
import sys, time
from pathlib import Path
from covid_pipeline import cli, dataset, sources  # imports are not the work
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.01)
print(f"window-start {time.time()!r}", file=sys.stderr, flush=True)
rc = cli.main(sys.argv[3:])
print(f"window-end {time.time()!r}", file=sys.stderr, flush=True)
sys.exit(rc)
"""


def temp_litter(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name)


def start_logged(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` with its output in the file ``log`` (never a pipe that can fill)."""
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **kwargs)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    """Wait for every process (all started already), killing them all on a timeout."""
    deadline = time.time() + timeout
    try:
        for proc in procs:
            proc.wait(max(1.0, deadline - time.time()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def overlap(windows: list[tuple[float, float]]) -> float:
    """Seconds during which every (start, end) window was open at once (<= 0: never)."""
    return min(end for _, end in windows) - max(start for start, _ in windows)


def test_two_ingests_at_once_on_the_same_out(tmp_path):
    data = make_synthetic(str(tmp_path / "data"), covid_patients=4, normals=8, size=96, seed=5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flows.cli", "ingest",
           "--source", f"ieee8023={data.ieee8023}", "--source", f"rsna={data.rsna}",
           "--folds", "2", "--image-size", "64", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    go = tmp_path / "go"
    procs, logs = [], []
    for i in range(2):
        logs.append((tmp_path / f"ingest-{i}.out", tmp_path / f"ingest-{i}.err"))
        with open(logs[i][0], "wb") as out_f, open(logs[i][1], "wb") as err_f:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", IN_STEP, str(tmp_path / f"ready-{i}"), str(go), *cmd[3:]],
                stdout=out_f, stderr=err_f, env=env))
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), [e.read_text() for _, e in logs]
            assert time.time() < deadline, "the ingests never got ready"
            time.sleep(0.05)
        go.touch()  # both are running: let them ingest at once
    finally:
        wait_all(procs, 300)
    results = [(p.returncode, o.read_text(), e.read_text())
               for p, (o, e) in zip(procs, logs, strict=True)]
    for code, _, err in results:
        assert code == 0, err
    windows = [tuple(float(line.split()[1]) for line in err.splitlines()
                     if line.startswith(("window-start ", "window-end ")))
               for _, _, err in results]
    assert all(len(w) == 2 for w in windows), windows
    assert overlap(windows) > 0, windows  # each ingest ran while the other did
    versions = {stdout.splitlines()[0] for _, stdout, _ in results}
    assert len(versions) == 1, versions
    version = versions.pop().removeprefix("dataset version: ")

    root = out / "datasets" / version
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["version"] == version and meta["files"]
    assert verify_dataset(str(root)) == []
    manifest = read_parquet(str(root / "manifest.parquet"))
    assert len(manifest) == sum(meta["counts"]["final"].values()) == 16
    assert sorted(p.name for p in (out / "datasets").iterdir()) == [version]
    assert temp_litter(out) == []


def test_threads_writing_one_content_addressed_file_leave_it_intact(tmp_path):
    """Writers race on one URI while a reader polls it: never a torn or mixed file."""
    payloads = [os.urandom(1 << 21), os.urandom(3 << 20)]
    digests = {hashlib.sha256(p).hexdigest() for p in payloads}
    uri = str(tmp_path / "cache" / "ab" / "abcdef.png")
    seen: list[str] = []
    done = threading.Event()

    def write(i: int) -> None:
        for _ in range(5):
            storage.write_bytes(uri, payloads[i % 2])

    def read() -> None:
        while not done.is_set():
            if storage.exists(uri):
                seen.append(hashlib.sha256(storage.read_bytes(uri)).hexdigest())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert hashlib.sha256(Path(uri).read_bytes()).hexdigest() in digests
    assert seen and set(seen) <= digests
    assert temp_litter(tmp_path) == []


def benchmark_runs(since: datetime, out: str) -> list:
    """The Prefect API's covid-benchmark flow runs started after ``since`` on ``out``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["covid-benchmark"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
    return [r for r in runs if r.parameters.get("out") == out]


@pytest.mark.slow
@pytest.mark.flow
def test_two_benchmark_runs_at_once_share_features_and_results(prefect_api, synth_root,
                                                                tmp_path):
    """Two whole flows on one --out: one dataset, intact features, each fold result once."""
    config = tmp_path / "cached.yaml"
    config.write_text("preset: smoke\nmode: cached\nfolds: 3\nepochs: 2\ninput_size: 48\n"
                      "batch_size: 8\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(config),
           "--models", "ResNet50", "--weights", "none", "--workers", "1", "--out", str(out),
           "--source", f"ieee8023={synth_root / 'ieee8023'}",
           "--source", f"rsna={synth_root / 'rsna'}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    since = datetime.now(UTC)
    logs = [tmp_path / f"run-{i}.log" for i in range(2)]
    procs = [start_logged(cmd, log, env=env) for log in logs]  # both start, then we wait
    wait_all(procs, 900)
    outputs = [log.read_text(errors="replace") for log in logs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output[-3000:]
    runs = benchmark_runs(since, str(out))
    assert len(runs) == 2 and all(r.state.is_completed() for r in runs), runs
    windows = [(r.start_time.timestamp(), r.end_time.timestamp()) for r in runs]
    assert overlap(windows) > 0, windows  # each flow ran while the other did
    versions = {line for o in outputs for line in o.splitlines()
                if line.startswith("dataset version:")}
    assert len(versions) == 1, versions

    (dataset,) = (out / "datasets").iterdir()
    assert verify_dataset(str(dataset)) == []
    n_images = len(read_parquet(str(dataset / "manifest.parquet")))
    # two feature roots: the full images' (view 0 + one per epoch) and the border-only
    # control's (view 0 + its one rotated view); one intact file per image in each
    rows = {}
    for root in (out / "features" / "ResNet50").iterdir():
        files = sorted(root.glob("*/*.npy"))
        assert len(files) == n_images, root
        shapes = {np.load(f, allow_pickle=False).shape for f in files}
        assert len(shapes) == 1, shapes
        rows[root.name] = next(iter(shapes))[0]
    assert sorted(rows.values()) == [2, 3]

    folds = sorted(out.glob("results/*/*/ResNet50/fold-*.json"))
    assert [f.name for f in folds] == ["fold-0.json", "fold-1.json", "fold-2.json"]
    for f in folds:
        record = json.loads(f.read_text())
        assert record["model"] == "ResNet50" and set(record["metrics"]) >= set(METRICS)
        assert storage.exists(record["predictions_uri"])
    board = cnn_rows(pd.read_csv(out / "leaderboard.csv"))
    assert list(board["model"]) == ["ResNet50"]
    assert board.loc[0, "status"] == "ok" and board.loc[0, "n_folds"] == 3
    assert temp_litter(out) == []
