"""Dask for tests: ``dask scheduler`` / ``dask worker`` processes on loopback, and a
scheduler plugin that records the annotations each submitted task arrives with."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from netutil import free_port, stop

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def dask_processes(workers: list[list[str]], protocol: str = "tcp",
                   scheduler_args: tuple[str, ...] = (),
                   client_options: dict[str, Any] | None = None) -> Iterator[str]:
    """A ``dask scheduler`` and one ``dask worker`` per entry of ``workers`` (its extra
    arguments), all on 127.0.0.1 and able to import the project and this folder; yields
    the scheduler address once every worker has joined."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    port = free_port()
    address = f"{protocol}://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)}
    procs = [subprocess.Popen([dask, "scheduler", "--protocol", protocol, "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard", *scheduler_args],
                              env=env, cwd=ROOT)]
    try:
        procs += [subprocess.Popen([dask, "worker", address, "--host", "127.0.0.1",
                                    "--nthreads", "1", "--no-dashboard", *args],
                                   env=env, cwd=ROOT) for args in workers]
        with Client(address, timeout="60s", **(client_options or {})) as client:
            client.wait_for_workers(len(workers), timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)


class GraphProbe(SchedulerPlugin):
    """Keeps ``{key: {annotation: value}}`` for every task the scheduler is given."""

    name = "graph-probe"

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, Any]] = {}

    def update_graph(self, scheduler, *, keys, annotations, **kwargs) -> None:
        for key in keys:
            self.seen[str(key)] = {name: values[key] for name, values in annotations.items()
                                   if key in values}


def seen(dask_scheduler) -> dict[str, dict[str, Any]]:
    """What the probe recorded (run with ``client.run_on_scheduler``)."""
    return dask_scheduler.plugins[GraphProbe.name].seen
