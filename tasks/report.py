"""Aggregation: fold records → leaderboard files and Prefect artifacts."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from covid_pipeline import curves, layout, leaderboard, report, storage, tracking
from covid_pipeline.config import BenchmarkConfig


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate(records: list[dict], failures: dict[str, str], models: list[str],
              context: dict, folders: list[str], control: dict | None = None,
              external: dict | None = None, gradcam: dict | None = None) -> dict:
    """Write leaderboard.csv/.md/.png and publish the ``leaderboard`` artifacts.

    ``control``, ``external``: the border-only control's and the external test's
    {"records", "failures"}; ``gradcam``: model → share of Grad-CAM heat outside the
    control's central box."""
    ctx = leaderboard.LeaderboardContext(**context)
    digest = leaderboard.inputs_digest(records, failures, models, ctx, control, external,
                                       gradcam)
    uris = leaderboard.stored(folders, digest)
    if uris is not None and storage.exists(layout.report(folders[0])):
        # the same results as the stored board's: publish it again
        table = pd.read_csv(io.BytesIO(storage.read_bytes(uris["csv"])),
                            dtype={"tied_with_best": "boolean"})
        markdown = storage.read_text(uris["md"])
        page = storage.read_bytes(layout.report(folders[0]))
        for folder in folders[1:]:
            storage.write_bytes(layout.report(folder), page)
        uris = {**uris, "html": layout.report(folders[0])}
    else:
        leaderboard.write_key(folders, "rebuilding")  # never a stale key beside new files
        manifest = layout.dataset_manifest(ctx.dataset_uri) if ctx.dataset_uri else None
        predictions = leaderboard.pooled_predictions(records, manifest)
        table = leaderboard.build(records, failures, models, ctx, predictions, control,
                                  external, gradcam)
        uris = leaderboard.write(table, ctx, folders)
        curves.write_curves(records, folders[0])
        uris["html"] = report.write(table, ctx, records, predictions, folders)
        leaderboard.write_key(folders, digest)
        markdown = leaderboard.to_markdown(table, ctx)
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    create_table_artifact(table=leaderboard.display_rows(table), key="leaderboard",
                          description=f"Leaderboard, dataset {ctx.dataset_version}, "
                                      f"folds by {ctx.group_by}")
    create_markdown_artifact(markdown=markdown,
                             key="leaderboard-summary",
                             description="Leaderboard (mean ± std over folds, 95 % "
                                         "intervals, comparisons with the best model)")
    create_markdown_artifact(markdown=report.summary(table, ctx, uris["html"]),
                             key="report-summary", description="The benchmark report's gist")
    create_link_artifact(link=as_link(uris["html"]), link_text="report.html", key="report",
                         description="The self-contained report (leaderboard, plots, "
                                     "curves, Grad-CAM, confounds, settings)")
    return {"uris": uris, "rows": rows}


def as_link(uri: str) -> str:
    """A link a browser opens: object-store URIs as they are, local paths as file://."""
    return uri if "://" in uri else Path(uri).resolve().as_uri()


@task(name="mlflow", cache_policy=NO_CACHE)
def log_mlflow(uri: str, config: dict, rows: list[dict], records: list[dict],
               results_uri: str, dataset_version: str, flow_run_id: str) -> dict:
    """Log the benchmark to MLflow (in the flow's process); return model → run id."""
    return tracking.log_benchmark(uri, BenchmarkConfig.from_dict(config), pd.DataFrame(rows),
                                  records, results_uri, dataset_version,
                                  {"prefect_flow_run_id": flow_run_id})
