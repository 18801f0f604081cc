"""report.html: self-contained (every image inline), with the board, plots, curves,
Grad-CAM panels and settings; in headless Chromium every image loads."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from test_leaderboard import synthetic_run

from covid_pipeline import leaderboard as lb
from covid_pipeline import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page(tmp_path) -> Path:
    records, preds = synthetic_run({"VGG16": 0.8, "ResNet50": 0.6}, folds=3, n=60)
    for r in records:
        r["curves"] = {"loss": [0.7, 0.6, 0.5], "accuracy": [0.5, 0.7, 0.8],
                       "val_loss": [0.7, 0.65, 0.6], "val_accuracy": [0.5, 0.6, 0.7]}
    ctx = lb.LeaderboardContext("v1", "patient", {"COVID-19": 30, "normal": 30}, "c1", "t", 3,
                                {"VGG16": 96, "ResNet50": 96}, bootstrap_resamples=200,
                                warnings=("every COVID-19 image comes from one source",))
    table = lb.build(records, {}, ["VGG16", "ResNet50"], ctx, preds, gradcam={"VGG16": 0.4})
    results = tmp_path / "results"
    (results / "VGG16").mkdir(parents=True)
    (results / "VGG16" / "gradcam.png").write_bytes(lb.to_png(table, ctx))  # any PNG
    (results / "config.yaml").write_text("epochs: 3\nfolds: 3\n")
    uri = report.write(table, ctx, records, preds, [str(results), str(tmp_path / "out")])
    assert (tmp_path / "out" / "report.html").read_bytes() == Path(uri).read_bytes()
    return Path(uri)


def test_the_report_holds_everything_inline(page):
    text = page.read_text()
    assert "<table>" in text and "VGG16" in text and "ResNet50" in text
    for heading in ("Forest plot", "ROC curves of the top 2 models", "Training curves",
                    "Grad-CAM on out-of-fold images", "Run settings and timing"):
        assert heading in text, heading
    assert "every COVID-19 image comes from one source" in text and "epochs: 3" in text
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', text)
    assert len(sources) == 1 + 1 + 2 + 1  # forest, ROC, two models' curves, one panel
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text  # nothing fetched from outside


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_every_image_of_the_report_loads_in_chromium(page, tmp_path):
    from test_ui import render

    probe = tmp_path / "probe.html"  # the page plus a script that records each image's load
    probe.write_text(page.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => document.body.setAttribute("
        "'data-loaded', JSON.stringify([...document.images].map("
        "i => i.complete && i.naturalWidth > 0))));</script></body>")))
    dom = render(probe.as_uri(), tmp_path / "probe.png", tmp_path / "profile")
    loaded = json.loads(re.search(r'data-loaded="([^"]*)"', dom).group(1)
                        .replace("&quot;", '"'))
    assert loaded == [True] * 5, loaded
    shot = tmp_path / "report.png"
    render(page.as_uri(), shot, tmp_path / "profile2")
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


def test_the_summary_ticks_only_models_tied_with_the_best():
    import pandas as pd

    table = pd.DataFrame({"rank": [1, 2, 3], "model": ["A", "B", "C"],
                          "balanced_accuracy_pooled": [0.9, 0.8, 0.7],
                          "auc_pooled": [0.95, 0.9, 0.8],
                          "tied_with_best": pd.array([True, False, pd.NA], dtype="boolean")})
    ctx = lb.LeaderboardContext("v", "patient", {}, "c", "t", 3, {})
    rows = [line for line in report.summary(table, ctx, "r.html").splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [line.endswith("| ✓ |") for line in rows] == [True, False, False]
    assert not report._true(float("nan")) and not report._true(pd.NA)
