"""Retries only for transient causes: network and storage-service errors, lost workers."""

from __future__ import annotations

import errno

import pytest

from covid_pipeline.errors import ConfigError, is_transient
from covid_pipeline.storage import StorageError


class KilledWorker(Exception):  # same name as distributed's: matched by class name
    pass


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(("exc", "transient"), [
    (ConnectionResetError(), True),
    (TimeoutError("read timed out"), True),
    (OSError(errno.ECONNREFUSED, "refused"), True),
    (KilledWorker("task lost its worker 3 times"), True),
    (chained(StorageError("s3://b/x: cannot read"), ConnectionError("reset")), True),
    (ValueError("Input size must be at least 75x75; Received: input_shape=(64, 64, 3)"), False),
    (ConfigError("folds must be at least 2, got 1"), False),
    (chained(ConfigError("bad"), ConnectionError("reset")), False),
    (FileNotFoundError(errno.ENOENT, "gone"), False),
    (PermissionError(errno.EACCES, "denied"), False),
    (StorageError("/ro/x: cannot write (Read-only file system)"), False),
    (RuntimeError("3 of 44 images have no readable cached features"), False),
    (None, False),
])
def test_which_failures_are_transient(exc, transient):
    assert is_transient(exc) is transient


def test_distributed_and_botocore_classes_are_recognised():
    from botocore.exceptions import EndpointConnectionError
    from distributed import KilledWorker as DaskKilledWorker
    from distributed.comm.core import CommClosedError

    assert is_transient(DaskKilledWorker("k", "w", 3))
    assert is_transient(CommClosedError("closed"))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))


@pytest.mark.slow
def test_prefect_retries_a_transient_failure_and_not_a_deterministic_one(prefect_api):
    from prefect import flow, task

    from tasks.retries import RETRY

    calls: dict[str, int] = {}

    @task(**{**RETRY, "retry_delay_seconds": 0})
    def flaky(kind: str) -> str:
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "network" and calls[kind] < 3:
            raise ConnectionResetError("connection reset by peer")
        if kind == "model":
            raise ValueError("Input size must be at least 75x75")
        return "ok"

    @flow
    def both() -> tuple:
        return (flaky("network", return_state=True).is_completed(),
                flaky("model", return_state=True).is_failed())

    assert both() == (True, True)
    assert calls == {"network": 3, "model": 1}
