"""Fold results → per-model mean ± std → leaderboard CSV, Markdown and PNG.

matplotlib is imported inside :func:`to_png` (slow to import; only the PNG needs it).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from covid_pipeline import layout, storage, zoo
from covid_pipeline.metrics import METRICS, summarise

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


def build(records: list[dict[str, Any]], failures: dict[str, str], models: list[str],
          ctx: LeaderboardContext) -> pd.DataFrame:
    """One row per model; models with failed folds keep a row whose ``status`` says why."""
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
        elif len(recs) < ctx.n_folds:
            row["status"] = f"incomplete: {len(recs)} of {ctx.n_folds} folds"
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
    out["dataset_version"] = ctx.dataset_version
    out["group_by"] = ctx.group_by
    out["config_hash"] = ctx.config_hash
    for name, n in sorted(ctx.class_counts.items()):
        out[f"n_{name.lower().replace('-', '')}"] = n
    columns = ["rank", "model", "input_size", "n_folds", "status"]
    columns += [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    return out[columns + [c for c in out.columns if c not in columns]].reset_index(drop=True)


def _family(model: str) -> str | None:
    try:
        return zoo.get(model).family
    except ValueError:
        return None


def to_markdown(df: pd.DataFrame, ctx: LeaderboardContext) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(ctx.class_counts.items()))
    lines = [
        f"# Leaderboard ({ctx.preset})",
        "",
        f"Dataset version `{ctx.dataset_version}`, folds grouped by **{ctx.group_by}**, "
        f"{ctx.n_folds} folds; images per class: {counts}. Config `{ctx.config_hash}`. "
        "Mean ± std over folds; positive class COVID-19. Precision: the backbone's when "
        "the features were made; weights: the first 12 hex digits of the weights file's "
        "sha256 (`random`: seeded random initialisation).",
        "",
        "| rank | model | input | balanced acc. | AUC | sensitivity | specificity | F1 "
        "| precision | weights | status |",
        "|---:|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for r in df.to_dict("records"):
        rank = "" if pd.isna(r["rank"]) else str(r["rank"])
        cells = [_pm(r, m) for m in ("balanced_accuracy", "auc", "sensitivity", "specificity",
                                     "f1")]
        cells += [_text(r.get("feature_precision")),
                  ",".join(d[:12] for d in _text(r.get("weights_sha256")).split(","))]
        lines.append(f"| {rank} | {r['model']} | {r['input_size']} | " + " | ".join(cells)
                     + f" | {r['status']} |")
    return "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _pm(row: dict, metric: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}"


def to_png(df: pd.DataFrame, ctx: LeaderboardContext) -> bytes:
    """Models on the y axis; mean ± std of balanced accuracy and AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"].iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * max(len(ok), 1)))
    y = range(len(ok))
    for offset, metric, colour in ((-0.18, "balanced_accuracy", "tab:blue"),
                                   (0.18, "auc", "tab:orange")):
        ax.barh([v + offset for v in y], ok[f"{metric}_mean"].fillna(0), height=0.34,
                xerr=ok[f"{metric}_std"].fillna(0), color=colour, label=metric, capsize=2)
    ax.set_yticks(list(y), list(ok["model"]))
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("mean ± std over folds")
    ax.set_title(f"COVID-19 vs normal, dataset {ctx.dataset_version}, folds by {ctx.group_by}",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
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
