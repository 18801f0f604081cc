"""Progress of a benchmark run in the terminal, fed by the flow process.

The flow calls :func:`stage`, :func:`planned` and :func:`finished` as it goes; they do
nothing unless a command line installed a display with :func:`terminal` (deployments and
tests run without one). The display is rich's progress bar on a terminal only: the step
the run is in, GPU/training tasks finished of planned (extractions, head trainings: a
model's folds of a repeat, model figures), the last task finished, elapsed and estimated
time left. When output is not a terminal there is no display (no control characters in a
log file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

_display: Display | None = None

QUIET_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}


class Display:
    """One rich progress bar: the run's step, then its tasks done of planned."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
            MofNCompleteColumn(), TextColumn("tasks"), TimeElapsedColumn(),
            TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[last]}"),
            console=console, transient=False, refresh_per_second=4)
        self.task = self.progress.add_task("starting", total=None, last="")

    def stage(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def planned(self, total: int) -> None:
        self.progress.update(self.task, total=total, completed=0)

    def finished(self, name: str, ok: bool = True) -> None:
        self.progress.update(self.task, advance=1,
                             last=f"{name} {'done' if ok else 'FAILED'}")


def stage(text: str) -> None:
    """The run entered a step (ingest, shards, training, leaderboard...)."""
    if _display is not None:
        _display.stage(text)


def planned(total: int) -> None:
    """``total`` tasks are about to run (the bar's length)."""
    if _display is not None:
        _display.planned(total)


def finished(name: str, ok: bool = True) -> None:
    """A planned task finished (or failed)."""
    if _display is not None:
        _display.finished(name, ok)


@contextlib.contextmanager
def terminal(quiet: bool = False, console: Any = None) -> Iterator[Display | None]:
    """Show the progress display while the block runs, when stderr (or ``console``) is a
    terminal and not ``quiet``. On a terminal and with ``quiet``, the log lines printed
    here (Prefect's included) stop at warnings (the UI keeps every line): the bar, or
    nothing, replaces them.
    Call before Prefect is imported."""
    global _display
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    show = console.is_terminal and not quiet
    # the command line's handlers (Prefect's lines reach them), each with its level
    saved = [(h, h.level) for h in logging.getLogger().handlers]
    env = {key: os.environ.get(key) for key in QUIET_ENV}
    if show or quiet:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        for handler, level in saved:
            handler.setLevel(max(level, logging.WARNING))
    try:
        if not show:
            yield None
            return
        _display = Display(console)
        with _display.progress:
            yield _display
    finally:
        _display = None
        for handler, level in saved:
            handler.setLevel(level)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
