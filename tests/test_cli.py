"""The command line: fast start, one-line errors, synthetic data."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_does_not_import_tensorflow_or_prefect():
    code = ("import sys; from covid_pipeline.cli import build_parser; "
            "from flows.cli import add_flow_commands; add_flow_commands(build_parser()[1]); "
            "print('tensorflow' in sys.modules, 'prefect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "--source", "bogus=/x", "--out", "/tmp/x"], "unknown kind 'bogus'"),
        (["ingest", "--out", "/tmp/x"], "no --source given"),
        (["ingest", "--source", "ieee8023=/nonexistent", "--out", "/tmp/x"],
         "/nonexistent/metadata.csv: file not found"),
        (["ingest", "--source", "ieee8023=/x", "--folds", "1", "--out", "/tmp/x"],
         "folds must be at least 2, got 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_synth_data_then_ingest(tmp_path, capsys):
    assert main(["synth-data", str(tmp_path / "d"), "--patients", "5", "--normals", "10"]) == 0
    assert main(["ingest", "--source", f"ieee8023={tmp_path / 'd' / 'ieee8023'}",
                 "--source", f"rsna={tmp_path / 'd' / 'rsna'}", "--folds", "3",
                 "--image-size", "96", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "ieee8023: COVID-19 10" in out and "rsna: normal 10" in out
    assert "excluded by filters (ieee8023): finding:SARS 1, modality:CT 1, view:L 1" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--preset", "nope", "--source", "rsna=/x", "--out", "/tmp/x"], "nope"),
        (["run", "--preset", "smoke", "--models", "ResNet51", "--source", "rsna=/x",
          "--out", "/tmp/x"], "unknown model 'ResNet51'"),
        (["run", "--preset", "smoke", "--epochs", "0", "--source", "rsna=/x",
          "--out", "/tmp/x"], "epochs must be a positive integer"),
        (["run", "--preset", "smoke", "--source", "nope=/x", "--out", "/tmp/x"],
         "unknown kind 'nope'"),
        (["run", "--preset", "smoke", "--out", "/tmp/x"], "no --source given"),
        (["demo", "--folds", "1"], "folds must be at least 2"),
    ],
)
def test_run_parameters_are_validated_before_any_work(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_models_lists_the_table_without_tensorflow(capsys):
    assert main(["models", "--preset", "paper"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 27 and "NASNetLarge" in "\n".join(out)
    assert main(["models", "--presets"]) == 0
    assert "paper: 26 models, 5 folds, 120 epochs" in capsys.readouterr().out


def test_missing_weights_stop_run_in_one_line_before_prefect(tmp_path):
    """The weights preflight runs before Prefect starts: one line, exit 2, no Prefect
    output, no traceback (a folder without the files: no network is asked)."""
    empty = tmp_path / "weights"
    empty.mkdir()
    proc = run_cli("run", "--preset", "smoke", "--weights", str(empty), "--source",
                   f"rsna={tmp_path}", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"ImageNet weights missing from {empty}: " in lines[0]
    assert "covid-pipeline weights download --models ResNet50,VGG16" in lines[0]
    assert "prefect" not in (proc.stdout + proc.stderr).lower()
    assert not (tmp_path / "out").exists()
