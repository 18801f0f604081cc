"""The Prefect UI shows a finished run and its leaderboard (headless Chromium)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.flow, pytest.mark.server, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, shot: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran; a screenshot of it is saved to ``shot``."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1400,1000",
             "--virtual-time-budget=30000"]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True,
                   timeout=180, check=False)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180, check=True)
    return dom.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_flow_run_and_leaderboard_pages_show_every_model(prefect_server, synth_root, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    models = ["VGG16", "ResNet50"]
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: smoke\nfolds: 2\nepochs: 1\ninput_size: 32\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(config),
           "--models", ",".join(models), "--weights", "none", "--out", str(tmp_path / "out"),
           "--source", f"ieee8023={synth_root / 'ieee8023'}",
           "--source", f"rsna={synth_root / 'rsna'}", "--workers", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with temporary_settings({PREFECT_API_URL: prefect_server}), \
            get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["covid-benchmark"])))
        # the server is shared by the session: take this test's run and its artifact
        run = next(r for r in runs if r.parameters.get("out") == str(tmp_path / "out"))
        assert run.state.is_completed()
        board = next(a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["leaderboard"])))
            if a.flow_run_id == run.id)
    ui = prefect_server.removesuffix("/api")
    pages = {"flow-run": f"{ui}/runs/flow-run/{run.id}",
             "leaderboard": f"{ui}/artifacts/artifact/{board.id}"}
    for name, url in pages.items():
        shot = tmp_path / f"{name}.png"
        dom = render(url, shot, tmp_path / f"profile-{name}")
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
        missing = [m for m in models if m not in dom]
        assert not missing, f"{name} page {url} does not show {missing}"
        if name == "leaderboard":  # as the Markdown shows it: ranking metrics, 3 decimals
            table = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
            for r in table.to_dict("records"):  # each ranking cell, made here from the CSV
                for m in ("balanced_accuracy", "auc"):
                    cell = (f"{r[m + '_mean']:.3f} ± {r[m + '_std']:.3f}; "
                            f"{r[m + '_pooled']:.3f} [{r[m + '_ci_low']:.3f}, "
                            f"{r[m + '_ci_high']:.3f}]")
                    assert cell in dom, f"{r['model']} {m}: {cell!r} not on {url}"
            headers = [dom.find(h) for h in ("balanced accuracy", "AUC", "status")]
            assert -1 < headers[0] < headers[2], "ranking metrics first, status last"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_deployment_run_form_shows_the_configs_fields(prefect_server, tmp_path):
    """The custom-run form of the covid-benchmark deployment renders the config model's
    validated fields (with their defaults), not 20 loose parameters."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from covid_pipeline.config import load_preset
    from flows.benchmark import covid_benchmark

    cfg = load_preset("smoke")
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        deployment = covid_benchmark.to_deployment(
            name="run-form", parameters={"sources": ["rsna=/data/rsna"], "out": "/tmp/o",
                                         "config": cfg.as_dict()})
        deployment_id = deployment.apply()
    ui = prefect_server.removesuffix("/api")
    shot = tmp_path / "run-form.png"
    dom = render(f"{ui}/deployments/deployment/{deployment_id}/run", shot, tmp_path / "profile")
    assert shot.exists() and shot.stat().st_size > 10_000
    for title in ("Config", "Epochs", "Learning Rate", "Rotation Degrees", "Extract Batch Size",
                  "Data", "Image Size", "Group By", "cluster", "sources"):
        assert title in dom, f"the run form does not show {title!r}"
