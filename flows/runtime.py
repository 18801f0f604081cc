"""Running flows without a Prefect server: one temporary API for the flow and its workers.

Without ``PREFECT_API_URL`` Prefect starts a temporary server per process, so every Dask
worker process would report its task runs to a server of its own. This starts one and
points the flow process and every worker it spawns at it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the API URL in use, starting a temporary server when none is configured.

    Flow runs against a temporary server send no heartbeats: they let a server mark a run
    crashed when its process dies, and this server dies with the process; and a flow run's
    end waits for its heartbeat thread, which sleeps in 1 s steps (up to a second a run).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start(timeout=180)
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
    try:
        with (temporary_settings({PREFECT_API_URL: server.api_url}),
              temporary_settings(updates={"flows.heartbeat_frequency": None})):
            yield server.api_url
    finally:
        drain_to_api()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def drain_to_api(timeout: float = 15.0) -> None:
    """Send queued logs and events before the temporary API goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)
