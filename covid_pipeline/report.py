"""One self-contained page per results folder (``report.html``): the leaderboard with its
intervals, ties and notes, the forest plot, ROC curves of the top models, training curves,
Grad-CAM panels, the confound report, the run's settings and timing. Every image is inlined
(``data:`` URIs), so the file reads offline and travels alone.

Markdown (the board's own) is turned into HTML by Python-Markdown; matplotlib is imported
inside the plotting functions.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from typing import Any

import markdown
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from covid_pipeline import curves, layout, storage
from covid_pipeline.imaging import FAST_PNG
from covid_pipeline.leaderboard import LeaderboardContext, fmt3, to_markdown, to_png

TOP_ROC = 3  # models on the ROC figure
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
blockquote { border-left: 4px solid #d9822b; margin: 0.8em 0; padding: 0.2em 1em;
             background: #fdf6ee; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
"""


def image(png: bytes, alt: str) -> str:
    """An <img> holding ``png`` inline."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def roc_png(predictions: pd.DataFrame, models: list[str]) -> bytes | None:
    """ROC curves of ``models``' pooled out-of-fold predictions (repeat 0), AUC in the
    legend (scikit-learn's roc_curve and roc_auc_score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.6))
    drawn = 0
    for model in models:
        p = predictions[(predictions["model"] == model)
                        & (predictions.get("repeat", 0) == 0)]
        if p["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(p["label"], p["prob_covid"])
        ax.plot(fpr, tpr, label=f"{model} (AUC {roc_auc_score(p['label'], p['prob_covid']):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC of the pooled out-of-fold predictions", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, pil_kwargs=FAST_PNG)
    plt.close(fig)
    return buf.getvalue()


def _read(uri: str) -> bytes | None:
    try:
        return storage.read_bytes(uri)
    except (FileNotFoundError, storage.StorageError):
        return None


def build(table: pd.DataFrame, ctx: LeaderboardContext, records: list[dict[str, Any]],
          predictions: pd.DataFrame | None, results_uri: str) -> str:
    """The report's HTML. The forest plot and training curves are the PNGs written beside
    it (:func:`leaderboard.write`, :func:`curves.write_curves` run first), drawn here when
    absent."""
    ranked = table[table["rank"].notna()].sort_values("rank")
    cnns = [m for m in ranked["model"] if ctx.input_sizes.get(m) is not None]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>COVID-19 benchmark: {html.escape(ctx.dataset_version)}</title>"
             f"<style>{STYLE}</style></head><body>",
             markdown.markdown(to_markdown(table, ctx), extensions=["tables"]),
             "<h2>Forest plot</h2>",
             image(_read(layout.leaderboard(results_uri, "png")) or to_png(table, ctx),
                   "forest plot")]
    roc = roc_png(predictions, cnns[:TOP_ROC]) if predictions is not None else None
    if roc:
        parts += [f"<h2>ROC curves of the top {min(TOP_ROC, len(cnns))} models</h2>",
                  image(roc, "ROC curves")]
    for model in cnns:
        by_fold = curves.fold_curves(records, model)
        panel = _read(layout.model_gradcam(results_uri, model, "png"))
        if not by_fold and panel is None:
            continue
        parts.append(f"<h2>{html.escape(model)}</h2>")
        if by_fold:
            png = (_read(layout.model_curves(results_uri, model))
                   or curves.curves_png(model, by_fold))
            parts += ["<h3>Training curves</h3>", image(png, f"{model} training curves")]
        if panel is not None:
            parts += ["<h3>Grad-CAM on out-of-fold images</h3>",
                      image(panel, f"{model} Grad-CAM panel")]
    confounds = _read(layout.confounds(ctx.dataset_uri, "md")) if ctx.dataset_uri else None
    if confounds:
        parts += ["<h2>Confound report</h2>",
                  markdown.markdown(confounds.decode("utf-8"), extensions=["tables"])]
    settings = _read(layout.resolved_config(results_uri))
    timing = ranked[["model", "train_seconds_mean"]].to_numpy().tolist()
    parts += ["<h2>Run settings and timing</h2>",
              f"<p>Made {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from "
              f"<code>{html.escape(results_uri)}</code>. Mean head-training seconds per fold: "
              + ", ".join(f"{html.escape(str(m))} {s:.1f}" for m, s in timing
                          if not pd.isna(s)) + ".</p>"]
    if settings:
        parts.append(f"<pre>{html.escape(settings.decode('utf-8'))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(table: pd.DataFrame, ctx: LeaderboardContext, records: list[dict[str, Any]],
          predictions: pd.DataFrame | None, folders: list[str]) -> str:
    """Write ``report.html`` into each folder (the results folder first); return its URI."""
    page = build(table, ctx, records, predictions, folders[0]).encode("utf-8")
    for folder in folders:
        storage.write_bytes(layout.report(folder), page)
    return layout.report(folders[0])


def summary(table: pd.DataFrame, ctx: LeaderboardContext, uri: str) -> str:
    """The report's gist, for a Prefect markdown artifact."""
    ranked = table[table["rank"].notna()].sort_values("rank").head(5)
    rows = [f"| {int(r['rank'])} | {r['model']} | {fmt3(r.get('balanced_accuracy_pooled'))} | "
            f"{fmt3(r.get('auc_pooled'))} | {'✓' if _true(r.get('tied_with_best')) else ''} |"
            for r in ranked.to_dict("records")]
    warnings = [f"> **Warning:** {w}." for w in ctx.warnings]
    return "\n".join([f"# Benchmark report, dataset `{ctx.dataset_version}`", "", *warnings, "",
                      "| rank | model | balanced acc. (pooled) | AUC (pooled) | tier |",
                      "|---:|---|---|---|---|", *rows, "", f"Full report: `{uri}`"]) + "\n"


def _true(value: Any) -> bool:
    return not pd.isna(value) and bool(value)
