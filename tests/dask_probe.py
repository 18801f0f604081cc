"""A scheduler plugin for tests: records the annotations each submitted task arrives with."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin


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
