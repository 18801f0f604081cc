"""The border-only control: the central box never reaches the backbone, its settings and
cost, and its leaderboard columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from imagefiles import grey, png_bytes

from covid_pipeline import control
from covid_pipeline.config import resolve_config
from covid_pipeline.errors import ConfigError
from covid_pipeline.leaderboard import LeaderboardContext, build, to_markdown


def test_blackout_sets_exactly_the_central_box_to_black():
    images = np.full((2, 100, 80, 1), 200, np.uint8)
    out = control.blackout(images, 0.6)
    assert (images == 200).all()  # the input is left alone
    # 60 % of each side: rows 20..80, columns 16..64; a direct mask for comparison
    expected = images.copy()
    expected[:, 20:80, 16:64] = 0
    np.testing.assert_array_equal(out, expected)
    assert control.box_bounds(128, 0.6) == (26, 102)  # round(25.6): 76 px, 59 %


def test_control_settings_validate_and_name_a_subset():
    cfg = resolve_config("smoke")
    assert cfg.controlled_models == ("VGG16", "ResNet50")
    assert resolve_config("smoke", control_models="resnet50").controlled_models == (
        "ResNet50",)
    assert resolve_config("smoke", control_models="none").controlled_models == ()
    with pytest.raises(ConfigError, match="control_models names InceptionV3, not among"):
        resolve_config("smoke", control_models="InceptionV3")
    with pytest.raises(ConfigError, match=r"control_box must be in \(0, 1\)"):
        resolve_config("smoke", control_box=1.0)
    # the control's settings enter its own keys, not the config hash of the main results
    assert resolve_config("smoke", control_box=0.5, control_views=2).config_hash() == (
        cfg.config_hash())


def test_cost_line_states_the_backbone_passes():
    paper = resolve_config("paper")
    line = control.cost_line(paper, 360)
    # 4 rotated views + the plain image, against the study's 120 views + 1
    assert "360 images x (4 rotated views + 1) = 1800 backbone passes per model" in line
    assert "4.1% of the full images' 43560" in line
    smoke = control.cost_line(resolve_config("smoke"), 44)
    assert "= 88 backbone passes per model, 50.0% of the full images' 176" in smoke
    assert control.cost_line(resolve_config("smoke", control_models="none"), 44).endswith(
        "off (control_models none)")


def fold(model: str, k: int, auc: float, ba: float) -> dict:
    metrics = {m: 0.5 for m in ("accuracy", "precision", "sensitivity", "specificity", "f1")}
    return {"model": model, "fold": k, "repeat": 0, "status": "ok", "n_test": 10,
            "metrics": {**metrics, "auc": auc, "balanced_accuracy": ba},
            "timing": {"train_seconds": 1.0}}


def test_leaderboard_control_columns_drops_and_note():
    ctx = LeaderboardContext("v1", "patient", {"COVID-19": 10, "normal": 10}, "h", "smoke", 2,
                             {"A": 96, "B": 96}, bootstrap_resamples=0, control_box=0.6)
    records = [fold("A", k, 0.95, 0.9) for k in range(2)] + [
        fold("B", k, 0.85, 0.8) for k in range(2)]
    # a second repeat of A: the control (repeat 0) is compared with A's repeat-0 folds
    records += [{**fold(m, k, 0.55, 0.5), "repeat": 1} for m in "AB" for k in range(2)]
    ctx = LeaderboardContext(**{**ctx.__dict__, "repeats": 2})
    ctl = {"records": [fold("A", 0, 0.9, 0.85), fold("A", 1, 0.8, 0.75)],
           "failures": {"B": "fold 1: boom"}}
    board = build(records, {}, ["A", "B"], ctx, None, ctl).set_index("model")
    assert board.loc["A", "auc_mean"] == pytest.approx(0.75)  # over both repeats
    assert board.loc["A", "control_auc"] == pytest.approx(0.85)
    assert board.loc["A", "control_auc_drop"] == pytest.approx(0.10)
    assert board.loc["A", "control_balanced_accuracy_drop"] == pytest.approx(0.10)
    assert board.loc["A", "control_status"] == "ok"
    assert np.isnan(board.loc["B", "control_auc"])  # a partial control is not shown
    assert board.loc["B", "control_status"] == "failed: fold 1: boom"
    half = {"records": [fold("B", 0, 0.9, 0.9)], "failures": {}}
    partial = build(records, {}, ["A", "B"], ctx, None, half).set_index("model")
    assert partial.loc["B", "control_status"] == "incomplete: 1 of 2 folds"
    assert np.isnan(partial.loc["B", "control_auc"])
    assert board.loc["B", "status"] == "ok"  # the control's failure leaves the row ranked
    md = to_markdown(board.reset_index(), ctx)
    assert "A (AUC 0.850) still reach AUC ≥ 0.8 without the image's centre" in md
    assert "| 0.850 (+0.100) |" in md and "| failed |" in md
    low = {"records": [fold("A", k, 0.6, 0.55) for k in range(2)], "failures": {}}
    md = to_markdown(build(records, {}, ["A", "B"], ctx, None, low), ctx)
    assert "no model reaches AUC 0.8 without the image's centre" in md


@pytest.mark.slow
def test_control_features_do_not_see_the_centre(tmp_path):
    """Two images that differ only inside the central box get the same control features
    (view 0), and different full-image features: the box never reaches the backbone."""
    from covid_pipeline.dataset import DataSettings, prepare
    from covid_pipeline.features import extract_features, feature_source, read_features
    from covid_pipeline.sources import SourceSpec

    root = tmp_path / "data"
    base = grey(128, 128, seed=1)
    changed = base.copy()
    changed[40:88, 40:88] = 255 - changed[40:88, 40:88]  # inside 60 % of each side
    for cls, images in (("covid", [base, changed, grey(128, 128, 2), grey(128, 128, 3)]),
                        ("normal", [grey(128, 128, s) for s in (4, 5, 6, 7)])):
        (root / cls).mkdir(parents=True)
        for i, img in enumerate(images):
            (root / cls / f"{cls}-{i}.png").write_bytes(png_bytes(img))
    out = str(tmp_path / "out")
    info, _ = prepare([SourceSpec("folder", str(root))], out,
                      DataSettings(balance="none", folds=2, group_by="none", image_size=128))
    cfg = resolve_config("smoke", models="VGG16", weights="none", input_size=64,
                         image_size=128)
    manifest = pd.read_parquet(f"{info.uri}/manifest.parquet").set_index("uri")
    shas = [manifest.loc[str(root / "covid" / f"covid-{i}.png"), "sha256"] for i in (0, 1)]
    stats = extract_features(info.uri, "VGG16", cfg, out, control=True)
    assert stats["control"] and stats["backbone_passes"] == 8 * (1 + 1)
    extract_features(info.uri, "VGG16", cfg, out)
    masked = read_features(feature_source(out, "VGG16", cfg, 128, control=True).root, shas)
    full = read_features(feature_source(out, "VGG16", cfg, 128).root, shas)
    a, b = (masked[s][0].astype(np.float32) for s in shas)
    scale = float(np.abs(a).max())
    assert scale > 0 and np.abs(a - b).max() <= 1e-3 * scale
    fa, fb = (full[s][0].astype(np.float32) for s in shas)
    assert np.abs(fa - fb).max() > 0.05 * float(np.abs(fa).max())
    assert masked[shas[0]].shape[0] == 2 and full[shas[0]].shape[0] == 4  # views + 1
