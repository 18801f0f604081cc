"""The terminal's progress display and --quiet: rich's console for the display itself, a
pseudo-terminal and a pipe for the command line."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys

import pytest
from rich.console import Console

from flows import progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_display_shows_step_tasks_done_of_planned_and_the_last_one():
    console = Console(file=io.StringIO(), force_terminal=True, width=140, record=True)
    with progress.terminal(console=console) as display:
        assert display is not None
        progress.stage("training")
        progress.planned(5)
        progress.finished("extract-VGG16")
        progress.finished("VGG16 fold 0")
        progress.finished("VGG16 fold 1", ok=False)
    text = console.export_text()
    assert "training" in text and "3/5" in text and "VGG16 fold 1 FAILED" in text


def test_no_display_without_a_terminal_or_when_quiet(monkeypatch):
    key = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
    monkeypatch.setenv(key, "x")
    monkeypatch.delenv(key)  # absent here, restored as it was after the test
    plain = Console(file=io.StringIO(), width=140)
    with progress.terminal(console=plain) as display:
        assert display is None
        progress.planned(3)  # no display: the flow's calls do nothing
        progress.finished("x")
    assert plain.file.getvalue() == ""
    assert key not in os.environ
    tty = Console(file=io.StringIO(), force_terminal=True, width=140)
    with progress.terminal(quiet=True, console=tty) as display:
        assert display is None
        assert os.environ[key] == "WARNING"  # Prefect, imported here, prints only warnings
    assert tty.file.getvalue() == ""
    assert key not in os.environ  # as it was


def in_pty(args: list[str], env: dict) -> tuple[int, str]:
    """Run ``args`` with stdin/stdout/stderr on a pseudo-terminal; return (rc, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=600), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.flow
def test_run_on_a_terminal_shows_progress_and_quiet_keeps_the_summary(synth_root, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: smoke\nmodels: [VGG16]\nfolds: 2\nepochs: 1\ninput_size: 32\n"
                      "control_models: none\ngradcam_images: 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(TERM="xterm", COLUMNS="160", PREFECT_HOME=str(tmp_path / "home"))
    args = [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--weights",
            "none", "--out", str(tmp_path / "out"), "--workers", "1",
            "--source", f"ieee8023={synth_root / 'ieee8023'}",
            "--source", f"rsna={synth_root / 'rsna'}"]
    rc, shown = in_pty(args, env)
    assert rc == 0, shown[-3000:]
    text = ANSI.sub("", shown)
    # 1 extraction + 1 head training (2 folds) + 1 panel (the control is off): the bar's
    # last frame says so
    assert re.search(r"3/3 tasks", text), text[-3000:]
    assert "INFO" not in text  # the bar replaces Prefect's info lines on a terminal
    assert "leaderboard: " in text and "report: " in text

    rc, shown = in_pty([*args, "--quiet"], env)  # a re-run: everything reused
    assert rc == 0, shown[-3000:]
    text = ANSI.sub("", shown)
    assert "tasks" not in text and "INFO" not in text
    assert "fold results reused from earlier runs: 2" in text and "report: " in text

    piped = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert not ANSI.search(piped.stdout + piped.stderr) and "\r" not in piped.stderr
    assert "INFO" in piped.stderr  # not a terminal: Prefect's log lines, no display
