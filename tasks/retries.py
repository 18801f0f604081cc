"""Retry policy of every task: retry transient failures only (storage, network, workers).

A deterministic failure (a model whose input is too small, a bad parameter) fails its task
at once with its own message instead of running again after a pause.
"""

from __future__ import annotations

from typing import Any

from covid_pipeline.errors import is_transient

TRANSIENT_RETRIES = 2
RETRY_DELAY_SECONDS = 10


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure is transient."""
    return is_transient(state.result(raise_on_failure=False))


RETRY = {"retries": TRANSIENT_RETRIES, "retry_delay_seconds": RETRY_DELAY_SECONDS,
         "retry_condition_fn": retry_if_transient}
