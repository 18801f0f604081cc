"""GPU work reaches only workers that advertise the GPU resource, heaviest model first.

A cluster as an operator starts one: ``dask scheduler`` and two ``dask worker`` processes on
loopback, ``gpu0`` with ``--resources GPU=1`` and ``cpu0`` without. The flow is pointed at
the scheduler's address (``--cluster tcp://...``); a scheduler plugin records the
annotations each task arrives with, and the task stream tells which worker ran it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from daskutil import ROOT, GraphProbe, dask_processes, seen

pytestmark = [pytest.mark.slow, pytest.mark.flow, pytest.mark.cluster]
MODELS = ["VGG16", "ResNet50"]


@pytest.fixture
def scheduler(prefect_api) -> Iterator[str]:
    """A ``dask scheduler`` with workers ``gpu0`` (GPU=1) and ``cpu0``; yields its address."""
    with dask_processes([["--name", "gpu0", "--resources", "GPU=1"], ["--name", "cpu0"]]) as a:
        yield a


def test_extraction_runs_only_on_the_gpu_worker_heaviest_first(scheduler, synth_root, tmp_path):
    from distributed import Client

    from covid_pipeline import zoo

    with Client(scheduler) as client:
        names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
        client.register_plugin(GraphProbe())
        client.get_task_stream()  # installs the scheduler's task-stream plugin
        out = tmp_path / "out"
        run = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke",
             "--models", ",".join(MODELS), "--folds", "2", "--epochs", "1",
             "--input-size", "32", "--weights", "none", "--cluster", scheduler,
             "--out", str(out), "--source", f"ieee8023={synth_root / 'ieee8023'}",
             "--source", f"rsna={synth_root / 'rsna'}"],
            capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-3000:]
        stream = client.get_task_stream()
        annotations = client.run_on_scheduler(seen)

    ran: dict[str, list[tuple[float, str, str]]] = {"extract": [], "train": []}
    for record in stream:
        for kind, tasks in ran.items():
            if kind in str(record["key"]):
                start = min(s["start"] for s in record["startstops"])
                tasks.append((start, str(record["key"]), names[record["worker"]]))
    extract, train = sorted(ran["extract"]), ran["train"]
    # Four extraction tasks (each model's full images and its border-only control's) and
    # two idle one-thread workers: without the GPU restriction Dask would use both.
    assert [worker for _, _, worker in extract] == ["gpu0"] * 4, ran
    # head training (control too), one task per model's folds: any worker
    assert len(train) == len(MODELS) * 2, ran
    assert all("resources" not in annotations[key] for _, key, _ in train)
    assert all(annotations[key]["resources"] == {"GPU": 1} for _, key, _ in extract)
    # Dask priorities in proportion to the backbone work (with one epoch, both passes of an
    # image for the full images and for the control), and the heavier model (VGG16) first.
    # no home workers here: their loose restriction would let cpu0 steal GPU work
    panels = [key for key in annotations if "model_figures" in str(key)]
    assert len(panels) == len(MODELS)
    assert all("workers" not in annotations[key] for key in [k for _, k, _ in extract] + panels)
    # a panel runs as soon as its heads are stored, before heads queued on its worker
    assert all(annotations[key]["priority"] == 1 for key in panels)
    assert all("priority" not in annotations[key] for _, key, _ in train)
    priorities = [annotations[key]["priority"] for _, key, _ in extract]
    gmacs = [zoo.gmacs_at(zoo.get(m), 32) for m in MODELS]
    assert max(priorities) / min(priorities) == pytest.approx(gmacs[0] / gmacs[1], rel=1e-6)
    assert priorities[0] == max(priorities)
    # The flow logs the makespan lower bound next to the wall time: 4 extractions + 8 fold
    # heads, 2 workers.
    wall, bound = map(float, re.search(
        r"wall ([\d.]+)s; makespan lower bound ([\d.]+)s \(12 extractions and heads, 2 "
        r"workers\)",
        run.stdout + run.stderr).groups())
    assert 0 < bound <= wall


def test_each_models_backbone_work_goes_to_its_home_worker(prefect_api, synth_root, tmp_path):
    """Two GPU workers: each model's extraction, its control's and its Grad-CAM panel carry
    a loose restriction to one home worker (which keeps the built backbone), the two models
    on different ones; head training goes anywhere."""
    from distributed import Client

    with dask_processes([["--name", "gpu0", "--resources", "GPU=1"],
                         ["--name", "gpu1", "--resources", "GPU=1"]]) as address, \
            Client(address) as client:
        client.register_plugin(GraphProbe())
        args = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke",
                "--models", ",".join(MODELS), "--folds", "2", "--epochs", "1",
                "--input-size", "32", "--weights", "none", "--cluster", address,
                "--out", str(tmp_path / "out"),
                "--source", f"ieee8023={synth_root / 'ieee8023'}",
                "--source", f"rsna={synth_root / 'rsna'}"]
        run = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-3000:]
        workers = set(client.scheduler_info()["workers"])
        annotations = client.run_on_scheduler(seen)
        # an unchanged re-run on the standing cluster: its workers find every result
        # stored, and no task reaches the scheduler
        again = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "fold results are stored" in again.stderr + again.stdout, again.stderr[-3000:]
        assert client.run_on_scheduler(seen) == annotations
    per_home: dict[str, int] = {}
    for key, seen_with in annotations.items():
        if "extract" in key or "model_figures" in key:
            assert seen_with["allow_other_workers"] is True and seen_with["resources"] == {
                "GPU": 1}, key
            assert len(seen_with["workers"]) == 1, seen_with
            per_home[seen_with["workers"][0]] = per_home.get(seen_with["workers"][0], 0) + 1
        elif "train" in key:
            assert "workers" not in seen_with, key
    # a model's three backbone tasks (its extraction, its control's, its panel) on one
    # home, the two models on different workers
    assert set(per_home) == workers and sorted(per_home.values()) == [3, 3], per_home
