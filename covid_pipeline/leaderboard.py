"""Fold results → per-model mean ± std → leaderboard CSV, Markdown and PNG.

matplotlib is imported inside :func:`to_png` (slow to import; only the PNG needs it).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from covid_pipeline import control as controls
from covid_pipeline import curves, evaluation, layout, storage, zoo
from covid_pipeline import external as externals
from covid_pipeline.baseline import NAME as BASELINE
from covid_pipeline.evaluation import CI_METRICS
from covid_pipeline.gradcam import PANEL_FORMAT
from covid_pipeline.imaging import FAST_PNG
from covid_pipeline.metrics import METRICS, summarise
from covid_pipeline.shards import read_parquet

RANK_BY = ("balanced_accuracy_mean", "auc_mean")


@dataclass(frozen=True)
class LeaderboardContext:
    """What the leaderboard states besides the numbers."""

    dataset_version: str
    group_by: str
    class_counts: dict[str, int]
    config_hash: str
    preset: str
    n_folds: int
    input_sizes: dict[str, int]
    repeats: int = 1
    dataset_uri: str | None = None  # its manifest gives each image's patient
    bootstrap_resamples: int = 2000
    alpha: float = 0.05
    seed: int = 42
    warnings: tuple[str, ...] = ()  # the dataset's confound warnings, stated on top
    control_box: float | None = None  # the border-only control's box, when it ran
    external: dict[str, Any] | None = None  # the external set's version, counts, dropped_in_cv


COMPARED = ("balanced_accuracy", "auc")  # fold scores compared with the best CNN's
P_COLUMNS = ("balanced_accuracy_p", "auc_p", "auc_delong_p")


def pooled_predictions(records: list[dict[str, Any]], manifest_uri: str | None
                       ) -> pd.DataFrame:
    """Every stored out-of-fold prediction of ``records`` (model, repeat, fold, image_id,
    label, prob_covid) with each image's ``patient_id`` from the dataset's manifest."""
    frames = []
    for r in records:
        if r.get("predictions_uri"):  # the record says which repeat (older files lack it)
            frames.append(read_parquet(r["predictions_uri"]).assign(
                repeat=int(r.get("repeat", 0)), fold=int(r["fold"]), model=r["model"]))
    if not frames:
        return pd.DataFrame(columns=["model", "repeat", "fold", "image_id", "label",
                                     "prob_covid", "patient_id"])
    preds = pd.concat(frames, ignore_index=True)
    if manifest_uri:
        patients = read_parquet(manifest_uri).set_index("image_id")["patient_id"].astype(str)
        preds["patient_id"] = preds["image_id"].map(patients).fillna(preds["image_id"])
    else:  # no manifest: each image its own cluster
        preds["patient_id"] = preds["image_id"]
    return preds


def build(records: list[dict[str, Any]], failures: dict[str, str], models: list[str],
          ctx: LeaderboardContext, predictions: pd.DataFrame | None = None,
          control: dict[str, Any] | None = None, external: dict[str, Any] | None = None,
          gradcam: dict[str, float | None] | None = None) -> pd.DataFrame:
    """One row per model; models with failed folds keep a row whose ``status`` says why.

    With ``predictions`` (:func:`pooled_predictions`), each ranked row also gets 95 %
    intervals of its pooled out-of-fold metrics and its comparison with the best model.
    With ``control`` ({"records": [...], "failures": {...}} of the border-only control),
    the control's columns (:data:`control.COLUMNS`, ``control_status``). With
    ``external`` (the same for the external test set), ``external_<metric>`` with
    intervals, ``external_n``, ``external_status`` and ``external_note``. With ``gradcam``
    (model → share of its Grad-CAM heat outside the control's central box, on its panel's
    out-of-fold images), ``gradcam_outside_share``: a shortcut indicator.
    """
    by_model: dict[str, list[dict]] = {m: [] for m in models}
    for rec in records:
        by_model.setdefault(rec["model"], []).append(rec)
    rows = []
    for model, recs in by_model.items():
        recs = sorted(recs, key=lambda r: r["fold"])
        row: dict[str, Any] = {"model": model, "input_size": ctx.input_sizes.get(model),
                               "family": _family(model)}
        row.update(summarise([r["metrics"] for r in recs]))
        row["n_folds"] = len(recs)
        if model in failures:
            row["status"] = f"failed: {failures[model]}"
        elif len(recs) < ctx.n_folds * ctx.repeats:
            row["status"] = f"incomplete: {len(recs)} of {ctx.n_folds * ctx.repeats} folds"
        else:
            row["status"] = "ok"
        # what made the features: the same for every fold unless a run was interrupted and
        # resumed on another kind of worker, which the row then shows
        for field in ("feature_precision", "weights_sha256"):
            row[field] = ",".join(sorted({str(r[field]) for r in recs if r.get(field)})) or None
        row["train_seconds_mean"] = (
            sum(r["timing"]["train_seconds"] for r in recs) / len(recs) if recs else math.nan
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    ok = df["status"] == "ok"
    ranked = df[ok].sort_values([*RANK_BY, "model"], ascending=[False] * len(RANK_BY) + [True],
                                na_position="last")  # ties ranked by name, deterministically
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    rest = df[~ok].copy()
    rest.insert(0, "rank", pd.NA)
    out = pd.concat([ranked, rest], ignore_index=True) if len(rest) else ranked
    out["rank"] = out["rank"].astype("Int64")
    out["input_size"] = out["input_size"].astype("Int64")  # None for the baseline row
    out = add_uncertainty(out, by_model, predictions, ctx)
    out = add_control(out, control, ctx, by_model)
    if external is not None:
        out = add_external(out, external, ctx)
    out["gradcam_outside_share"] = [(gradcam or {}).get(m) for m in out["model"]]
    out["gradcam_outside_share"] = out["gradcam_outside_share"].astype(float)
    out["dataset_version"] = ctx.dataset_version
    out["group_by"] = ctx.group_by
    out["config_hash"] = ctx.config_hash
    for name, n in sorted(ctx.class_counts.items()):
        out[f"n_{name.lower().replace('-', '')}"] = n
    columns = ["rank", "model", "input_size", "n_folds", "status"]
    columns += [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    columns += [f"{m}_{s}" for m in CI_METRICS for s in ("pooled", "ci_low", "ci_high")]
    columns += [*P_COLUMNS, "tied_with_best", *controls.COLUMNS, "control_status"]
    return out[columns + [c for c in out.columns if c not in columns]].reset_index(drop=True)


def add_uncertainty(table: pd.DataFrame, by_model: dict[str, list[dict]],
                    predictions: pd.DataFrame | None, ctx: LeaderboardContext) -> pd.DataFrame:
    """Pooled estimates with bootstrap intervals, and each ranked model against the best:
    Nadeau–Bengio corrected t-tests on fold balanced accuracy and AUC, DeLong on the pooled
    AUC, each Holm-corrected over the comparisons; ``tied_with_best`` when none rejects."""
    table = table.copy()
    for m in CI_METRICS:
        for suffix in ("pooled", "ci_low", "ci_high"):
            table[f"{m}_{suffix}"] = float("nan")
    for col in P_COLUMNS:
        table[col] = float("nan")
    table["tied_with_best"] = pd.array([pd.NA] * len(table), dtype="boolean")
    ranked = table[table["rank"].notna()].sort_values("rank")
    if ranked.empty:
        return table
    if predictions is None or predictions.empty:  # intervals and DeLong need predictions;
        predictions = pd.DataFrame(columns=["model", "image_id"])  # the t-tests do not
    oof = {m: _oof(predictions[predictions["model"] == m]) for m in ranked["model"]}
    for model, (labels, probs, patients, _) in oof.items():
        if len(labels) == 0:
            continue
        i = table.index[table["model"] == model][0]
        point = evaluation.point_estimates(labels, probs)
        ci = (evaluation.bootstrap_intervals(labels, probs, patients, ctx.bootstrap_resamples,
                                             ctx.seed) if ctx.bootstrap_resamples else {})
        for m in CI_METRICS:
            table.loc[i, f"{m}_pooled"] = point[m] if point[m] is not None else float("nan")
            if ci.get(m):
                table.loc[i, f"{m}_ci_low"], table.loc[i, f"{m}_ci_high"] = ci[m]
    best = reference_model(ranked)
    others = [m for m in ranked["model"] if m != best]
    # one family: the three tests of every comparison (3 (M - 1) p-values), Holm-corrected
    raw = [[_fold_ttest(by_model[best], by_model[m], metric) for metric in COMPARED]
           + [_delong(oof[best], oof[m])] for m in others]
    flat = evaluation.holm([p for row in raw for p in row])
    for i, model in enumerate(others):
        for j, col in enumerate(P_COLUMNS):
            table.loc[table["model"] == model, col] = flat[3 * i + j]
    for model in ranked["model"]:
        row = table.loc[table["model"] == model, list(P_COLUMNS)].iloc[0]
        tested = [p for p in row if not pd.isna(p)]
        if model == best:
            tied: Any = True
        elif not tested:
            tied = pd.NA  # nothing could be tested: not claimed tied
        else:
            tied = not any(p < ctx.alpha for p in tested)
        table.loc[table["model"] == model, "tied_with_best"] = tied
    return table


def add_control(table: pd.DataFrame, control: dict[str, Any] | None,
                ctx: LeaderboardContext, by_model: dict[str, list[dict]]) -> pd.DataFrame:
    """The border-only control's mean AUC and balanced accuracy over its folds (repeat 0),
    and their drops from the full images' on the same folds (full minus control: a small
    drop means the border alone does as well). Filled only for a complete control."""
    table = table.copy()
    for col in controls.COLUMNS:
        table[col] = float("nan")
    table["control_status"] = None
    rows = controls.summary((control or {}).get("records", []),
                            (control or {}).get("failures", {}), ctx.n_folds)
    for model, values in rows.items():
        where = table["model"] == model
        table.loc[where, "control_status"] = values["control_status"]
        if values["control_status"] != "ok":
            continue  # a partial control is not shown as if it were the model's
        full = controls.fold_means([r for r in by_model.get(model, [])
                                    if r.get("repeat", 0) == 0])
        for metric in ("auc", "balanced_accuracy"):
            table.loc[where, f"control_{metric}"] = values[f"control_{metric}"]
            table.loc[where, f"control_{metric}_drop"] = (full[metric]
                                                         - values[f"control_{metric}"])
    return table


def add_external(table: pd.DataFrame, external: dict[str, Any], ctx: LeaderboardContext
                 ) -> pd.DataFrame:
    """Each model's external-test cells (:func:`external.summary`) and status."""
    table = table.copy()
    rows = {r["model"]: externals.summary(r, ctx.bootstrap_resamples, ctx.seed)
            for r in external.get("records", [])}
    columns = ["external_n"] + [f"external_{m}{s}" for m in CI_METRICS
                                for s in ("", "_ci_low", "_ci_high")]
    for col in columns:
        table[col] = float("nan")
    table["external_status"] = None
    table["external_note"] = None
    for model, values in rows.items():
        for key, value in values.items():
            table.loc[table["model"] == model, key] = value
        table.loc[table["model"] == model, "external_status"] = "ok"
    for model, why in external.get("failures", {}).items():
        table.loc[table["model"] == model, "external_status"] = f"failed: {why}"
    table["external_n"] = table["external_n"].astype("Int64")
    return table


def _oof(preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(labels [N], probabilities [R, N], patients [N], image ids [N]) in image_id order,
    over the images predicted in every one of the R repeats."""
    if preds.empty:
        return np.zeros(0, np.int64), np.zeros((1, 0)), [], []
    if "repeat" not in preds:
        preds = preds.assign(repeat=0)
    wide = preds.pivot_table(index="image_id", columns="repeat", values="prob_covid",
                             aggfunc="first").dropna().sort_index()
    first = preds.drop_duplicates("image_id").set_index("image_id").loc[wide.index]
    return (first["label"].to_numpy(np.int64), wide.to_numpy().T,
            first["patient_id"].astype(str).tolist(), [str(i) for i in wide.index])


def _fold_ttest(best: list[dict], other: list[dict], metric: str) -> float:
    """Two-sided corrected t-test p of the per-fold differences (matched by repeat, fold)."""
    def scores(recs):
        return {(r.get("repeat", 0), r["fold"]): r for r in recs
                if r["metrics"].get(metric) is not None}

    a, b = scores(best), scores(other)
    keys = sorted(set(a) & set(b))
    if len(keys) < 2:
        return float("nan")
    if any("n_test" not in r for r in best):  # the correction needs the fold sizes
        return float("nan")
    diffs = [a[k]["metrics"][metric] - b[k]["metrics"][metric] for k in keys]
    n_test = float(np.mean([a[k]["n_test"] for k in keys]))
    per_repeat: dict[int, int] = {}
    for rec in best:  # every image is tested once per repeat: N = a repeat's test sizes
        repeat = rec.get("repeat", 0)
        per_repeat[repeat] = per_repeat.get(repeat, 0) + int(rec["n_test"])
    n_total = max(per_repeat.values())
    return evaluation.corrected_ttest(diffs, n_total - n_test, n_test)[1]


def _delong(best: tuple, other: tuple) -> float:
    """DeLong p on the images both models predicted (joined by image_id), each model's
    probability averaged over repeats."""
    (yb, pb, _, ids_b), (_, po, _, ids_o) = best, other
    position = {image: i for i, image in enumerate(ids_o)}
    shared = [i for i, image in enumerate(ids_b) if image in position]
    if not shared:
        return float("nan")
    y = yb[shared]
    if len(np.unique(y)) < 2:
        return float("nan")
    other_idx = [position[ids_b[i]] for i in shared]
    return evaluation.delong_test(y, pb[:, shared].mean(axis=0),
                                  po[:, other_idx].mean(axis=0))[3]


def _family(model: str) -> str | None:
    try:
        return zoo.get(model).family
    except ValueError:
        return None


def reference_model(ranked: pd.DataFrame) -> str:
    """The model every other is compared with: the best-ranked CNN (the acquisition-only
    baseline is compared with it too, whatever its own rank)."""
    models = [m for m in ranked["model"] if m != BASELINE]
    return models[0] if models else str(ranked["model"].iloc[0])


def top_tier(df: pd.DataFrame, ctx: LeaderboardContext) -> str | None:
    """The sentence that names the models statistically tied with the best CNN, if tested."""
    ranked = df[df["rank"].notna()].sort_values("rank")
    if ranked.empty or ranked["tied_with_best"].isna().all():
        return None
    best = reference_model(ranked)
    tied = [m for m, t in zip(ranked["model"], ranked["tied_with_best"], strict=True)
            if _true(t) and m != best]
    if len(ranked) == 1:
        return f"Only {best} was ranked: nothing to compare."
    names = f": {', '.join(tied)}" if tied else ""
    verb = "is" if len(tied) == 1 else "are"
    return (f"**{len(tied)} of the other {len(ranked) - 1} models {verb} not distinguishable "
            f"from {best} at α = {ctx.alpha:g}**{names} (Holm-corrected Nadeau–Bengio t-tests "
            "on fold balanced accuracy and AUC, and DeLong on the pooled AUC).")


def baseline_note(df: pd.DataFrame) -> str | None:
    """What the acquisition-only baseline's place says, when it reaches the top tier."""
    rows = df[df["model"] == BASELINE]
    if rows.empty or pd.isna(rows["rank"].iloc[0]):
        return None
    row = rows.iloc[0]
    if int(row["rank"]) == 1:
        where = "ranks above every CNN"
    elif _true(row.get("tied_with_best")):
        where = "is not distinguishable from the best CNN"
    else:
        return None
    return (f"> **The {BASELINE} {where}**: a logistic regression on file format, size, bit "
            "depth, colour mode and a 16-bin intensity histogram, which never sees the "
            "lungs' structure, does as well; the CNNs' scores may then come from the "
            "acquisition, not the disease.")


def control_note(df: pd.DataFrame, ctx: LeaderboardContext) -> str | None:
    """What the border-only control says: which models still separate the classes with
    the centre of the image blacked out."""
    done = df[df["control_auc"].notna()] if "control_auc" in df else df.iloc[:0]
    if done.empty:
        return None
    box = f"{ctx.control_box:.0%}" if ctx.control_box else "central box"
    high = done[done["control_auc"] >= controls.HIGH_AUC]
    lead = (f"**Border-only control** (the central {box} of each side blacked out, same "
            "backbone, head and folds; Maguolo & Nanni 2021): ")
    if high.empty:
        return (f"{lead}no model reaches AUC {controls.HIGH_AUC:g} without the image's "
                "centre (the column *border AUC (drop)*).")
    names = ", ".join(f"{m} (AUC {a:.3f})" for m, a in zip(high["model"], high["control_auc"],
                                                          strict=True))
    return (f"> {lead}{names} still reach AUC ≥ {controls.HIGH_AUC:g} without the image's "
            "centre: the border alone separates the classes, so their full-image scores "
            "need not come from the lungs.")


def gradcam_note(df: pd.DataFrame, ctx: LeaderboardContext) -> str | None:
    """Where the models look: the share of each one's Grad-CAM heat outside the central
    box, on its panel of out-of-fold images (``<model>/gradcam.png``)."""
    if "gradcam_outside_share" not in df or df["gradcam_outside_share"].isna().all():
        return None
    box = f"{ctx.control_box:.0%}" if ctx.control_box else "60%"
    shares = ", ".join(f"{m} {s:.0%}" for m, s in zip(df["model"], df["gradcam_outside_share"],
                                                      strict=True) if not pd.isna(s))
    return (f"**Grad-CAM** (share of the COVID-19 score's heat outside the central {box} of "
            f"each side, on out-of-fold images; panels in `<model>/gradcam.png`): {shares}. "
            "A large share says a model looks at the borders (labels, markers, collimation), "
            "not the lungs.")


def to_markdown(df: pd.DataFrame, ctx: LeaderboardContext) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(ctx.class_counts.items()))
    lines = [
        f"# Leaderboard ({ctx.preset})",
        "",
        f"Dataset version `{ctx.dataset_version}`, folds grouped by **{ctx.group_by}**, "
        f"{ctx.n_folds} folds{f' × {ctx.repeats} repeats' if ctx.repeats > 1 else ''}; "
        f"images per class: {counts}. Config `{ctx.config_hash}`. "
        "Each cell: mean ± std (ddof=1) over folds; then the pooled out-of-fold estimate "
        "[95 % interval, patient-level bootstrap]; positive class COVID-19. p: Holm-corrected "
        "p-values against the best-ranked CNN (balanced accuracy / AUC by the corrected t-test, "
        "AUC by DeLong); tier ✓: not distinguishable from the best. Precision: the "
        "backbone's when the features were made; weights: the first 12 hex digits of the "
        "weights file's sha256 (`random`: seeded random initialisation).",
        "",
    ]
    lines += [f"> **Warning:** {w}." for w in ctx.warnings]
    if ctx.warnings:
        lines += ["> See `confounds.md` beside the dataset's manifest.", ""]
    tier = top_tier(df, ctx)
    if tier:
        lines += [tier, ""]
    baseline = baseline_note(df)
    if baseline:
        lines += [baseline, ""]
    control = control_note(df, ctx)
    if control:
        lines += [control, ""]
    heat = gradcam_note(df, ctx)
    if heat:
        lines += [heat, ""]
    lines += [
        "| rank | model | input | balanced acc. | AUC | sensitivity | specificity | F1 "
        "| p (BA / AUC / DeLong) | tier | border AUC (drop) | precision | weights | status |",
        "|---:|---|---:|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in df.to_dict("records"):
        rank = "" if pd.isna(r["rank"]) else str(r["rank"])
        cells = [_pm(r, m) for m in ("balanced_accuracy", "auc", "sensitivity", "specificity",
                                     "f1")]
        cells += [" / ".join(_p(r.get(c)) for c in P_COLUMNS),
                  "✓" if _true(r.get("tied_with_best")) else "",
                  _control_cell(r),
                  _text(r.get("feature_precision")),
                  ",".join(d[:12] for d in _text(r.get("weights_sha256")).split(","))]
        lines.append(f"| {rank} | {r['model']} | {_text(r['input_size'])} | "
                     + " | ".join(cells)
                     + f" | {r['status']} |")
    if ctx.external is not None and "error" in ctx.external:
        lines += ["", "## External test set", "", f"Failed: {ctx.external['error']}"]
    elif ctx.external is not None and "external_status" in df:
        lines += ["", *external_markdown(df, ctx.external)]
    return "\n".join(lines) + "\n"


def display_rows(df: pd.DataFrame) -> list[dict[str, str]]:
    """The board as the Prefect table artifact shows it, the way the Markdown does: rank and
    model, then the ranking metrics (mean ± std over folds; pooled [95 % interval] once
    computed), comparisons and the other metrics, 3 decimals, text cells; status last.
    Columns a run did not make (control, Grad-CAM, external) are left out. The CSV keeps
    every raw column."""
    optional = {
        "border AUC (drop)": ("control_auc", _control_cell),
        "Grad-CAM heat outside box": ("gradcam_outside_share",
                                      lambda r: fmt3(r.get("gradcam_outside_share"))),
        "external AUC": ("external_auc", lambda r: _interval(r, "external_auc")),
    }
    shown = {label: cell for label, (column, cell) in optional.items()
             if column in df and df[column].notna().any()}
    rows = []
    for r in df.to_dict("records"):
        row = {"rank": _whole(r["rank"]), "model": r["model"],
               "balanced accuracy": _pm(r, "balanced_accuracy"), "AUC": _pm(r, "auc"),
               "p (BA / AUC / DeLong)": " / ".join(_p(r.get(c)) for c in P_COLUMNS),
               "tier": "✓" if _true(r.get("tied_with_best")) else "",
               "sensitivity": _pm(r, "sensitivity"), "specificity": _pm(r, "specificity"),
               "F1": _pm(r, "f1")}
        row.update({label: cell(r) for label, cell in shown.items()})
        row.update({"input": _whole(r["input_size"]), "precision": _text(r.get(
            "feature_precision")), "weights": ",".join(
            d[:12] for d in _text(r.get("weights_sha256")).split(",")),
            "status": str(r["status"])})
        rows.append(row)
    return rows


def fmt3(value: Any) -> str:
    """A number cell: 3 decimals, or – when missing."""
    return "–" if _missing(value) else f"{value:.3f}"


def _whole(value: Any) -> str:
    """An integer column's cell, also when a CSV read it back as float (NaN beside it)."""
    return "–" if _missing(value) else str(int(value))


def external_markdown(df: pd.DataFrame, ext: dict[str, Any]) -> list[str]:
    """The external test set's section: counts, what was dropped, one row per model."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(ext["counts"].items()))
    lines = [f"## External test set `{ext['version']}`", "",
             f"Images per class: {counts}; {ext['dropped_in_cv']} images dropped as also in "
             f"the cross-validation data (same sha256), {ext.get('dropped_copies', 0)} as "
             "copies of its images (perceptual hash). Each model's head was trained once on "
             "all cross-validation images (the same settings) and predicted these. Each cell: "
             "estimate [95 % interval, patient-level bootstrap].", ""]
    notes = {n for n in df["external_note"] if isinstance(n, str)}
    lines += [f"> **Note:** {n}." for n in sorted(notes)]
    if notes:
        lines.append("")
    lines += ["| model | balanced acc. | AUC | sensitivity | specificity | F1 | status |",
              "|---|---|---|---|---|---|---|"]
    rows = df[df["external_status"].notna()]
    for r in rows.to_dict("records"):
        cells = [_interval(r, f"external_{m}") for m in ("balanced_accuracy", "auc",
                                                          "sensitivity", "specificity", "f1")]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['external_status']} |")
    return lines


def _interval(row: dict, column: str) -> str:
    value = row.get(column)
    if _missing(value):
        return "–"
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if _missing(low) or _missing(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _true(value: Any) -> bool:
    return not _missing(value) and bool(value)


def _text(value: Any) -> str:
    return "–" if _missing(value) else str(value)


def _p(value: Any) -> str:
    return "–" if _missing(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _control_cell(row: dict) -> str:
    auc, drop = row.get("control_auc"), row.get("control_auc_drop")
    if _missing(auc):
        status = row.get("control_status")
        return "failed" if isinstance(status, str) and status.startswith("failed") else "–"
    return f"{auc:.3f}" + ("" if _missing(drop) else f" ({drop:+.3f})")


def _pm(row: dict, metric: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if _missing(mean):
        return "–"
    text = f"{mean:.3f} ± {std:.3f}" if not _missing(std) else f"{mean:.3f}"
    pooled = row.get(f"{metric}_pooled")
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if not _missing(pooled) and not _missing(low) and not _missing(high):
        text += f"; {pooled:.3f} [{low:.3f}, {high:.3f}]"
    return text


def to_png(df: pd.DataFrame, ctx: LeaderboardContext) -> bytes:
    """A forest plot: per ranked model, the pooled balanced accuracy and AUC with their
    95 % intervals (fold mean ± std where no interval was computed); models tied with the
    best in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"].iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.35 * max(len(ok), 1)))
    y = np.arange(len(ok))
    for offset, metric, colour in ((-0.15, "balanced_accuracy", "tab:blue"),
                                   (0.15, "auc", "tab:orange")):
        pooled = ok[f"{metric}_pooled"].astype(float)
        has_ci = pooled.notna() & ok[f"{metric}_ci_low"].notna()
        centre = pooled.where(has_ci, ok[f"{metric}_mean"].astype(float)).fillna(0)
        low = (centre - ok[f"{metric}_ci_low"].astype(float)).where(
            has_ci, ok[f"{metric}_std"].astype(float)).fillna(0)
        high = (ok[f"{metric}_ci_high"].astype(float) - centre).where(
            has_ci, ok[f"{metric}_std"].astype(float)).fillna(0)
        ax.errorbar(centre, y + offset, xerr=[low.clip(lower=0), high.clip(lower=0)],
                    fmt="o", color=colour, label=metric, capsize=3, markersize=4)
    ax.set_yticks(list(y), list(ok["model"]))
    for label, tied in zip(ax.get_yticklabels(), ok["tied_with_best"], strict=True):
        if _true(tied):
            label.set_fontweight("bold")
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("pooled out-of-fold estimate, 95 % patient-bootstrap interval")
    ax.set_title(f"COVID-19 vs normal, dataset {ctx.dataset_version}, folds by {ctx.group_by}"
                 "; bold: tied with the best", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, pil_kwargs=FAST_PNG)
    plt.close(fig)
    return buf.getvalue()


def write(df: pd.DataFrame, ctx: LeaderboardContext, folders: list[str]) -> dict[str, str]:
    """Write leaderboard.csv/.md/.png into each folder; return the URIs of the first."""
    csv = df.to_csv(index=False).encode()
    md = to_markdown(df, ctx).encode()
    png = to_png(df, ctx)
    uris: dict[str, str] = {}
    for folder in folders:
        for ext, data in zip(layout.LEADERBOARD_FILES, (csv, md, png), strict=True):
            uri = storage.write_bytes(layout.leaderboard(folder, ext), data)
            uris.setdefault(ext, uri)
    return uris


BOARD_FORMAT = 3  # bump when the board made from the same inputs changes (2: intervals
# from the vectorised bootstrap, equal up to float rounding; 3: resamples drawn a block at a
# time, other seeded draws)


def inputs_digest(records: list[dict[str, Any]], failures: dict[str, str], models: list[str],
                  ctx: LeaderboardContext, control: dict | None = None,
                  external: dict | None = None, gradcam: dict | None = None) -> str:
    """What a board is made from: the fold records in any order (less ``reused`` and
    ``timing``, which differ between runs of the same results), failures, models, context,
    control and external results, and the drawing formats of the curves and Grad-CAM panels
    its report embeds (a new drawing rebuilds the report)."""
    def strip(recs: list[dict[str, Any]]) -> list[str]:  # in any order they finished
        return sorted(json.dumps({k: v for k, v in r.items() if k not in ("reused", "timing")},
                                 sort_keys=True, default=str) for r in recs)

    payload = {"format": BOARD_FORMAT, "records": strip(records), "failures": failures,
               "models": models, "context": ctx.__dict__,
               "control": control and {**control, "records": strip(control["records"])},
               "external": external and {**external, "records": strip(external["records"])},
               "gradcam": gradcam,
               "figures": {"curves": curves.CURVES_FORMAT, "panel": PANEL_FORMAT}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stored(folders: list[str], digest: str) -> dict[str, str] | None:
    """The board files of ``folders[0]`` if they were made from inputs with ``digest``
    (copied into the other folders when theirs differ); None when it must be built."""
    first = folders[0]
    try:
        if storage.read_text(layout.leaderboard_key(first)).strip() != digest:
            return None
        files = {ext: storage.read_bytes(layout.leaderboard(first, ext))
                 for ext in layout.LEADERBOARD_FILES}
    except (FileNotFoundError, storage.StorageError):
        return None
    for folder in folders[1:]:
        for ext, data in files.items():
            uri = layout.leaderboard(folder, ext)
            try:
                same = storage.read_bytes(uri) == data
            except (FileNotFoundError, storage.StorageError):
                same = False
            if not same:
                storage.write_bytes(uri, data)
    return {ext: layout.leaderboard(first, ext) for ext in layout.LEADERBOARD_FILES}


def write_key(folders: list[str], digest: str) -> None:
    """Record the inputs' digest beside the board (after its files are written)."""
    storage.write_text(layout.leaderboard_key(folders[0]), digest + "\n")
