"""The border-only control (Maguolo & Nanni, Information Fusion 2021): the same frozen
backbone and head, trained and tested on the same folds, on images whose central box
(most of the lungs) is blacked out.

A model that still separates the classes without the centre of the image has learned
something other than the lungs: the source's borders, text markers, collimation or
exposure. The box is blacked out in the normalised image *before* the rotation
augmentation, so no pixel from inside it ever reaches the backbone.

Its features are cached like the full images' under their own key (the box enters the
feature settings hash). Its backbone cost is images x (``control_views`` + 1) passes per
model (default 4 rotated views: 5 passes per image, against the study's 121), and it runs
repeat 0 only: its heads cycle through those views over the study's epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from covid_pipeline.config import BenchmarkConfig

COLUMNS = ("control_auc", "control_balanced_accuracy", "control_auc_drop",
           "control_balanced_accuracy_drop")
HIGH_AUC = 0.8  # a control AUC at least this high is called out on the leaderboard


@dataclass(frozen=True)
class Control:
    """What makes a control result besides the model and fold: box and views."""

    box: float
    views: int

    def key(self) -> dict[str, Any]:
        return {"control_box": self.box, "control_views": self.views}


def of(cfg: BenchmarkConfig) -> Control:
    return Control(cfg.control_box, cfg.effective_control_views)


def box_bounds(side: int, box: float) -> tuple[int, int]:
    """[start, stop) of the central box on one image side of ``side`` pixels."""
    margin = round(side * (1 - box) / 2)
    return margin, side - margin


def blackout(images: np.ndarray, box: float) -> np.ndarray:
    """A copy of a uint8 batch [N, H, W, C] with the central ``box`` (a fraction of each
    side) set to 0 (black)."""
    out = np.array(images, copy=True)
    top, bottom = box_bounds(out.shape[1], box)
    left, right = box_bounds(out.shape[2], box)
    out[:, top:bottom, left:right] = 0
    return out


def main_passes(cfg: BenchmarkConfig, n_images: int) -> int:
    """Backbone passes per model of the main (full-image) cross-validation."""
    if cfg.mode == "cached":
        return n_images * (cfg.effective_views + 1)
    return n_images * (cfg.epochs * (cfg.folds - 1) + 1)  # every fold's epochs, then its test


def cost_line(cfg: BenchmarkConfig, n_images: int) -> str:
    """The control's backbone cost, for the flow's log."""
    models = cfg.controlled_models
    if not models:
        return "border-only control: off (control_models none)"
    ctl = of(cfg)
    passes, main = n_images * (ctl.views + 1), main_passes(cfg, n_images)
    return (f"border-only control for {', '.join(models)}: central {ctl.box:.0%} of each side "
            f"blacked out, {n_images} images x ({ctl.views} rotated "
            f"view{'s' if ctl.views != 1 else ''} + 1) = {passes} "
            f"backbone passes per model, {passes / max(main, 1):.1%} of the full images' "
            f"{main}; heads on the same folds, repeat 0")


def fold_means(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean AUC and balanced accuracy over fold records (NaN where none has it)."""
    out = {}
    for metric in ("auc", "balanced_accuracy"):
        values = [r["metrics"][metric] for r in records
                  if r["metrics"].get(metric) is not None]
        out[metric] = float(np.mean(values)) if values else float("nan")
    return out


def summary(records: list[dict[str, Any]], failures: dict[str, str], n_folds: int
            ) -> dict[str, dict[str, Any]]:
    """Per model: the control's mean AUC and balanced accuracy over its folds, and its
    status (ok, failed: why, or incomplete)."""
    by_model: dict[str, list[dict]] = {}
    for rec in records:
        by_model.setdefault(rec["model"], []).append(rec)
    out: dict[str, dict[str, Any]] = {}
    for model in sorted(set(by_model) | set(failures)):
        recs = by_model.get(model, [])
        row: dict[str, Any] = {f"control_{m}": v for m, v in fold_means(recs).items()}
        if model in failures:
            row["control_status"] = f"failed: {failures[model]}"
        elif len(recs) < n_folds:
            row["control_status"] = f"incomplete: {len(recs)} of {n_folds} folds"
        else:
            row["control_status"] = "ok"
        out[model] = row
    return out
