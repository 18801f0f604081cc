"""Which Dask cluster runs the training tasks: configuration, not code.

``--cluster`` takes ``local`` (a LocalCluster of worker processes sized to the machine),
``cuda`` (dask-cuda's LocalCUDACluster, one worker per GPU, each advertising ``GPU=1``),
or a scheduler address (``tcp://host:8786``, ``tls://…``) of an existing cluster: dask-cuda
workers, the Dask Kubernetes operator or dask-jobqueue (Slurm) all end up as one.
``threads`` runs the tasks in the flow's own process, one at a time, without Dask (for
debugging and the fast tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from covid_pipeline.errors import ConfigError
from covid_pipeline.tfsetup import TF_THREADS


@dataclass(frozen=True)
class ClusterSpec:
    """Arguments for a DaskTaskRunner: either an address or a cluster class + kwargs."""

    address: str | None = None
    cluster_class: str | None = None
    cluster_kwargs: dict[str, Any] = field(default_factory=dict)
    gpus: int = 0
    threads: bool = False  # ``--cluster threads``: no Dask, one task at a time in-process

    def runner_kwargs(self) -> dict[str, Any]:
        if self.address:
            return {"address": self.address}
        return {"cluster_class": self.cluster_class, "cluster_kwargs": dict(self.cluster_kwargs)}


KINDS = ("local", "cuda", "threads")


def local_gpu_count() -> int:
    """GPUs visible to this machine (nvidia-smi), without importing TensorFlow."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def check(cluster: str) -> None:
    """Validate a ``--cluster`` value's form (cheap: no GPU probe, no connection)."""
    cluster = (cluster or "local").strip()
    if "://" not in cluster and cluster not in KINDS:
        raise ConfigError(
            f"--cluster {cluster!r}: use local, cuda, threads, or a scheduler address like "
            "tcp://host:8786"
        )


def resolve(cluster: str, n_tasks: int, workers: int | None = None) -> ClusterSpec:
    """Turn a ``--cluster`` value into a :class:`ClusterSpec`."""
    check(cluster)
    cluster = (cluster or "local").strip()
    if "://" in cluster:
        return ClusterSpec(address=cluster)
    if cluster == "threads":
        return ClusterSpec(threads=True)
    if cluster == "cuda":
        gpus = local_gpu_count()
        if gpus == 0:
            raise ConfigError("--cluster cuda: no GPU found; use --cluster local")
        kwargs = {"resources": {"GPU": 1}, "threads_per_worker": 1}
        return ClusterSpec(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs=kwargs,
                           gpus=gpus)
    gpus = min(local_gpu_count(), 1)  # several GPUs: use --cluster cuda (one worker per GPU)
    n = 1 if gpus else workers or max(1, min(n_tasks, os.cpu_count() or 1))
    # each worker's share of the cores for its TensorFlow (tfsetup.cpu_threads)
    share = {TF_THREADS: str(max(1, (os.cpu_count() or 1) // n))}
    kwargs: dict[str, Any] = {"n_workers": n, "threads_per_worker": 1, "processes": True,
                              "dashboard_address": None, "env": share}
    if gpus:
        kwargs["resources"] = {"GPU": 1}
    return ClusterSpec(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs,
                       gpus=gpus)


def scheduler_workers(address: str) -> tuple[int, int]:
    """(workers, GPU resources) of an existing scheduler's cluster, whose workers must each
    run one task thread (:func:`check_one_thread_per_worker`)."""
    # distributed is imported here: it costs a second and only this call needs a client.
    from distributed import Client

    with Client(address, timeout="20s") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    check_one_thread_per_worker(address, workers)
    gpus = sum(w.get("resources", {}).get("GPU", 0) for w in workers.values())
    return len(workers), int(gpus)


def on_every_worker(address: str, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """``fn(*args)`` run in every worker process of the cluster at ``address`` (Dask's
    ``Client.run``: not a task, no scheduling); its results, one per worker."""
    from distributed import Client

    with Client(address, timeout="20s") as client:
        return list(client.run(fn, *args).values())


def check_one_thread_per_worker(address: str, workers: dict[str, dict[str, Any]]) -> None:
    """TensorFlow's process settings and the compiled-head cache are per worker process and
    not safe for two training tasks at once: every worker must run one task thread."""
    crowded = sorted(f"{name} ({info.get('nthreads')} threads)"
                     for name, info in workers.items() if int(info.get("nthreads", 1)) != 1)
    if crowded:
        raise ConfigError(
            f"--cluster {address}: worker(s) {', '.join(crowded)} run several task threads; "
            "TensorFlow tasks need one per worker process: start them with "
            "`dask worker ... --nthreads 1` (more processes for more parallelism)")


def home_workers(costs: dict[str, float], workers: dict[str, dict[str, Any]], gpu: bool
                 ) -> dict[str, str]:
    """Each model's home worker (address), where its backbone work goes (its extraction,
    its control's, its Grad-CAM panel): the worker keeps the built backbone between those
    tasks and, on a standing cluster, between runs (:mod:`covid_pipeline.backbone_cache`).

    Models, heaviest first, each onto the least loaded worker (ties by address), so the
    same models and workers give the same homes run after run, and scaling every cost (a
    grown data set) changes none. None when ``gpu`` and some worker has no GPU: a home is
    a loose restriction, and Dask loosens every restriction of a task with it (its GPU
    resource too: a CPU worker could steal the task)."""
    if gpu and any(float(info.get("resources", {}).get("GPU", 0)) < 1
                   for info in workers.values()):
        return {}
    eligible = sorted(workers)
    load = dict.fromkeys(eligible, 0.0)
    homes: dict[str, str] = {}
    for model in sorted(costs, key=lambda m: (-costs[m], m)):
        if not load:
            break
        home = min(load, key=lambda a: (load[a], a))
        homes[model] = home
        load[home] += costs[model]
    return homes


def size(spec: ClusterSpec) -> tuple[int, int]:
    """(workers, GPUs) the spec gives: read from the scheduler for an address."""
    if spec.address:
        return scheduler_workers(spec.address)
    if spec.threads:
        return 1, 0
    return int(spec.cluster_kwargs.get("n_workers", spec.gpus)), spec.gpus
