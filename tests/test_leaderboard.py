"""Aggregation: fold records → leaderboard rows, ranks, failures, files."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest

from covid_pipeline import leaderboard as lb
from covid_pipeline.metrics import METRICS, fold_metrics

CTX = lb.LeaderboardContext("abc123", "patient", {"COVID-19": 4, "normal": 4}, "cfg1",
                            "smoke", 2, {"VGG16": 96, "ResNet50": 96, "InceptionV3": 96})


def record(model: str, fold: int, probs: list[float]) -> dict:
    return {"model": model, "fold": fold, "metrics": fold_metrics([1, 1, 0, 0], probs),
            "timing": {"train_seconds": 1.0}}


def test_columns_ranks_failures_and_files(tmp_path):
    records = [record("VGG16", k, [0.9, 0.8, 0.2, 0.6]) for k in (0, 1)]
    records += [record("ResNet50", k, [0.9, 0.8, 0.2, 0.1]) for k in (0, 1)]
    table = lb.build(records, {"InceptionV3": "fold 0: ValueError: input too small"},
                     ["VGG16", "ResNet50", "InceptionV3"], CTX)
    required = ["rank", "model", "input_size", "n_folds", "status"]
    required += [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    assert list(table.columns[: len(required)]) == required
    assert list(table["model"]) == ["ResNet50", "VGG16", "InceptionV3"]
    assert list(table["rank"].astype(object).where(table["rank"].notna(), None)) == [1, 2, None]
    assert table.loc[2, "status"] == "failed: fold 0: ValueError: input too small"
    assert (table["dataset_version"] == "abc123").all() and (table["n_covid19"] == 4).all()
    assert table.loc[0, "balanced_accuracy_mean"] == 1.0
    assert table.loc[1, "balanced_accuracy_mean"] == 0.75

    uris = lb.write(table, CTX, [str(tmp_path)])
    assert pd.read_csv(uris["csv"])["model"].tolist() == ["ResNet50", "VGG16", "InceptionV3"]
    md = (tmp_path / "leaderboard.md").read_text()
    assert "`abc123`" in md and "**patient**" in md and "COVID-19 4, normal 4" in md
    assert (tmp_path / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


def test_ties_are_ranked_by_name_and_missing_folds_are_incomplete():
    records = [record(m, 0, [0.9, 0.8, 0.2, 0.1]) for m in ("VGG16", "ResNet50")]
    records += [record(m, 1, [0.9, 0.8, 0.2, 0.1]) for m in ("VGG16", "ResNet50")]
    records += [record("InceptionV3", 0, [0.9, 0.8, 0.2, 0.1])]
    table = lb.build(records, {}, ["VGG16", "ResNet50", "InceptionV3"], CTX)
    assert list(table["model"][:2]) == ["ResNet50", "VGG16"]
    assert table.set_index("model").loc["InceptionV3", "status"] == "incomplete: 1 of 2 folds"


def test_rows_state_the_feature_precision_and_weights_digest(tmp_path):
    digest = "ab" * 32
    records = [{**record("VGG16", k, [0.9, 0.8, 0.2, 0.6]), "feature_precision": "float32",
                "weights_sha256": digest} for k in (0, 1)]
    records += [{**record("ResNet50", 0, [0.9, 0.8, 0.2, 0.1]),
                 "feature_precision": "mixed_float16", "weights_sha256": "random"},
                {**record("ResNet50", 1, [0.9, 0.8, 0.2, 0.1]),
                 "feature_precision": "float32", "weights_sha256": "random"}]
    table = lb.build(records, {}, ["VGG16", "ResNet50"], CTX).set_index("model")
    assert table.loc["VGG16", "feature_precision"] == "float32"
    assert table.loc["VGG16", "weights_sha256"] == digest
    assert table.loc["ResNet50", "feature_precision"] == "float32,mixed_float16"
    md = lb.to_markdown(table.reset_index(), CTX)
    assert f"| float32 | {digest[:12]} | ok |" in md
    assert "| float32,mixed_float16 | random | ok |" in md


def synthetic_run(quality: dict[str, float], folds: int = 5, n: int = 100, seed: int = 0):
    """Records and pooled predictions of models whose scores separate classes by
    ``quality`` (0: chance), on the same images, folds and patients (2 images each)."""
    rng = np.random.default_rng(seed)
    labels = np.array([1, 0] * (n // 2))
    # COVID-19 images (even i) in pairs of one patient, each normal its own patient
    patients = [f"p{i // 4}" if labels[i] else f"n{i}" for i in range(n)]
    fold = np.arange(n) % folds
    records, frames = [], []
    for model, q in quality.items():
        prob = np.clip(0.5 + q * (labels - 0.5) + rng.normal(0, 0.25, n), 0, 1)
        frames.append(pd.DataFrame({"model": model, "fold": fold, "image_id": np.arange(n)
                                    .astype(str), "label": labels, "prob_covid": prob,
                                    "patient_id": patients}))
        for k in range(folds):
            m = fold == k
            records.append({"model": model, "fold": k, "n_test": int(m.sum()),
                            "metrics": fold_metrics(labels[m], prob[m]),
                            "timing": {"train_seconds": 1.0}})
    return records, pd.concat(frames, ignore_index=True)


def test_intervals_and_comparisons_with_the_best_model(tmp_path):
    from covid_pipeline import evaluation

    ctx = lb.LeaderboardContext("v", "patient", {"COVID-19": 50, "normal": 50}, "c", "t", 5,
                                {}, bootstrap_resamples=300, alpha=0.05, seed=1)
    records, preds = synthetic_run({"Strong": 0.8, "AlsoStrong": 0.78, "Weak": 0.1})
    table = lb.build(records, {}, ["Strong", "AlsoStrong", "Weak"], ctx, preds).set_index(
        "model")
    assert list(table.index) == ["Strong", "AlsoStrong", "Weak"]
    for model in table.index:
        for m in evaluation.CI_METRICS:
            low, point, high = (table.loc[model, f"{m}_{s}"] for s in
                                ("ci_low", "pooled", "ci_high"))
            assert low <= point <= high, (model, m)
    assert np.isnan(table.loc["Strong", "auc_p"]) and table.loc["Strong", "tied_with_best"]
    assert table.loc["AlsoStrong", "tied_with_best"]
    assert not table.loc["Weak", "tied_with_best"]
    assert table.loc["Weak", "auc_delong_p"] < 0.05 and table.loc["Weak", "auc_p"] < 0.1
    # one Holm family: the three tests of both comparisons, corrected together
    oof = {m: lb._oof(preds[preds.model == m]) for m in ("Strong", "AlsoStrong", "Weak")}
    by = {m: [r for r in records if r["model"] == m] for m in oof}
    raw = [p for m in ("AlsoStrong", "Weak") for p in (
        lb._fold_ttest(by["Strong"], by[m], "balanced_accuracy"),
        lb._fold_ttest(by["Strong"], by[m], "auc"), lb._delong(oof["Strong"], oof[m]))]
    got = [table.loc[m, c] for m in ("AlsoStrong", "Weak") for c in lb.P_COLUMNS]
    np.testing.assert_allclose(got, evaluation.holm(raw))
    assert raw[2] < got[2]  # the correction is not the identity here

    md = lb.to_markdown(table.reset_index(), ctx)
    assert ("**1 of the other 2 models is not distinguishable from Strong at α = 0.05**: "
            "AlsoStrong") in md
    assert "| 2 | AlsoStrong |" in md and " ✓ |" in md
    png = lb.to_png(table.reset_index(), ctx)
    assert png[:4] == b"\x89PNG"


def test_delong_joins_images_by_id_and_untested_models_are_not_called_tied():
    ctx = lb.LeaderboardContext("v", "patient", {"COVID-19": 50, "normal": 50}, "c", "t", 5,
                                {}, bootstrap_resamples=0)
    records, preds = synthetic_run({"A": 0.8, "B": 0.5, "C": 0.4}, seed=3)
    shuffled = preds[preds.model == "B"].sample(frac=1.0, random_state=0)
    preds = pd.concat([preds[preds.model != "B"], shuffled])  # row order must not matter
    table = lb.build(records, {}, ["A", "B", "C"], ctx, preds).set_index("model")
    expected = lb._delong(lb._oof(preds[preds.model == "A"]),
                          lb._oof(preds[preds.model == "B"].sort_values("image_id")))
    assert not np.isnan(expected)
    # a model with folds but no stored predictions: t-tests only, and no claim without tests
    lone = [{**r, "model": "D"} for r in records if r["model"] == "C"][:1]
    table = lb.build(records + lone, {}, ["A", "B", "C", "D"],
                     lb.LeaderboardContext("v", "patient", {}, "c", "t", 1, {},
                                           bootstrap_resamples=0), preds).set_index("model")
    assert pd.isna(table.loc["D", "tied_with_best"])
    assert np.isnan(table.loc["D", "auc_delong_p"])


def test_a_board_is_reused_only_for_the_same_inputs(tmp_path):
    """The digest ignores what differs between runs of the same results (``reused``,
    ``timing``) and nothing else; a stored board is copied into the other folders."""
    records = [record("VGG16", k, [0.9, 0.8, 0.2, 0.6]) for k in (0, 1)]
    models = ["VGG16"]
    digest = lb.inputs_digest(records, {}, models, CTX)
    rerun = [{**r, "reused": True, "timing": {"train_seconds": 9.0}} for r in records]
    assert lb.inputs_digest(rerun, {}, models, CTX) == digest
    changed = [records[0], record("VGG16", 1, [0.9, 0.8, 0.2, 0.1])]
    assert lb.inputs_digest(changed, {}, models, CTX) != digest
    assert lb.inputs_digest(records, {"VGG16": "fold 0: boom"}, models, CTX) != digest
    assert lb.inputs_digest(records, {}, models, CTX, control={
        "records": records, "failures": {}}) != digest
    # a new drawing of the curves or Grad-CAM panels the report embeds rebuilds it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lb.curves, "CURVES_FORMAT", lb.curves.CURVES_FORMAT + 1)
        assert lb.inputs_digest(records, {}, models, CTX) != digest
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lb, "PANEL_FORMAT", lb.PANEL_FORMAT + 1)
        assert lb.inputs_digest(records, {}, models, CTX) != digest

    first, other = str(tmp_path / "results"), str(tmp_path / "out")
    assert lb.stored([first, other], digest) is None  # nothing stored yet
    lb.write(lb.build(records, {}, models, CTX), CTX, [first])
    lb.write_key([first], digest)
    assert lb.stored([first, other], "another digest") is None
    uris = lb.stored([first, other], digest)
    assert uris == {ext: f"{first}/leaderboard.{ext}" for ext in ("csv", "md", "png")}
    for ext in ("csv", "md", "png"):
        assert (tmp_path / "out" / f"leaderboard.{ext}").read_bytes() == (
            tmp_path / "results" / f"leaderboard.{ext}").read_bytes()


def test_the_board_digest_does_not_depend_on_the_order_records_finished_in():
    records = [record(m, k, [0.9, 0.8, 0.2, 0.6]) for m in ("VGG16", "ResNet50") for k in (0, 1)]
    assert lb.inputs_digest(records, {}, ["VGG16", "ResNet50"], CTX) == lb.inputs_digest(
        records[::-1], {}, ["VGG16", "ResNet50"], CTX)


def test_the_table_artifact_shows_ranking_metrics_first_rounded_status_last():
    ctx = lb.LeaderboardContext("v", "patient", {"COVID-19": 50, "normal": 50}, "c", "t", 5,
                                {"Strong": 96, "Weak": 96}, bootstrap_resamples=200,
                                alpha=0.05, seed=1)
    records, preds = synthetic_run({"Strong": 0.8, "Weak": 0.1})
    table = lb.build(records, {"Broken": "fold 0: boom"}, ["Strong", "Weak", "Broken"], ctx,
                     preds)
    rows = lb.display_rows(table)
    assert [r["model"] for r in rows] == ["Strong", "Weak", "Broken"]
    keys = list(rows[0])
    assert keys[:4] == ["rank", "model", "balanced accuracy", "AUC"] and keys[-1] == "status"
    assert "border AUC (drop)" not in keys  # no control in this run
    strong = table.iloc[0]
    assert rows[0]["balanced accuracy"] == (
        f"{strong['balanced_accuracy_mean']:.3f} ± {strong['balanced_accuracy_std']:.3f}; "
        f"{strong['balanced_accuracy_pooled']:.3f} [{strong['balanced_accuracy_ci_low']:.3f}, "
        f"{strong['balanced_accuracy_ci_high']:.3f}]")
    for row, (_, r) in zip(rows[:2], table.iloc[:2].iterrows(), strict=True):
        assert row["AUC"].startswith(f"{r['auc_mean']:.3f} ± {r['auc_std']:.3f}; "), row
    for row in rows:
        assert all(isinstance(v, str) for v in row.values())
        assert not any(re.search(r"\d\.\d{4,}", v) for v in row.values()), row
    assert rows[2]["rank"] == "–" and rows[2]["status"] == "failed: fold 0: boom"
    assert rows[0]["tier"] == "✓" and rows[0]["input"] == "96"
    # a re-run publishes the stored board again, read back from its CSV: the same cells
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    buf.seek(0)
    assert lb.display_rows(pd.read_csv(buf)) == rows
