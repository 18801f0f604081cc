"""Two runs at once on the same output URI do not corrupt each other's files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covid_pipeline import storage
from covid_pipeline.metrics import METRICS
from covid_pipeline.shards import read_parquet, verify_dataset
from covid_pipeline.synth import make_synthetic


def temp_litter(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name)


def test_two_ingests_at_once_on_the_same_out(tmp_path):
    data = make_synthetic(str(tmp_path / "data"), covid_patients=4, normals=8, size=96, seed=5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "covid_pipeline.cli", "ingest",
           "--source", f"ieee8023={data.ieee8023}", "--source", f"rsna={data.rsna}",
           "--folds", "2", "--image-size", "64", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]  # both run while we wait
    results = [(p.returncode, *o) for p, o in zip(procs, outputs, strict=True)]
    for code, _, err in results:
        assert code == 0, err
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


@pytest.mark.slow
@pytest.mark.flow
def test_two_benchmark_runs_at_once_share_features_and_results(prefect_api, synth_root,
                                                                tmp_path):
    """Two whole flows on one --out: one dataset, intact features, each fold result once."""
    config = tmp_path / "cached.yaml"
    config.write_text("preset: smoke\nmode: cached\nfolds: 3\nepochs: 2\ninput_size: 48\n"
                      "batch_size: 8\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "covid_pipeline.cli", "run", "--config", str(config),
           "--models", "ResNet50", "--weights", "none", "--workers", "1", "--out", str(out),
           "--source", f"ieee8023={synth_root / 'ieee8023'}",
           "--source", f"rsna={synth_root / 'rsna'}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output[-3000:]
    versions = {line for o in outputs for line in o.splitlines()
                if line.startswith("dataset version:")}
    assert len(versions) == 1, versions

    (dataset,) = (out / "datasets").iterdir()
    assert verify_dataset(str(dataset)) == []
    n_images = len(read_parquet(str(dataset / "manifest.parquet")))
    feature_files = sorted(out.glob("features/ResNet50/*/*/*.npy"))
    assert len(feature_files) == n_images
    shapes = {np.load(f, allow_pickle=False).shape for f in feature_files}
    assert len(shapes) == 1 and next(iter(shapes))[0] == 3  # view 0 + one per epoch

    folds = sorted(out.glob("results/*/*/ResNet50/fold-*.json"))
    assert [f.name for f in folds] == ["fold-0.json", "fold-1.json", "fold-2.json"]
    for f in folds:
        record = json.loads(f.read_text())
        assert record["model"] == "ResNet50" and set(record["metrics"]) >= set(METRICS)
        assert storage.exists(record["predictions_uri"])
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["model"]) == ["ResNet50"]
    assert board.loc[0, "status"] == "ok" and board.loc[0, "n_folds"] == 3
    assert temp_litter(out) == []
