"""Class balancing: seeded undersampling that is stable under data updates, or none, or
class weights.

The study undersampled the majority class at random without saying how. Here each class
keeps its ``n`` images (``n`` = the smaller class's count) with the lowest
``sha256(f"{seed}:{image sha256}")``: a seeded uniform random subset like any other draw,
but one that depends only on the seed and each image's content. Adding k images to a class
changes at most k of its kept images, and a larger ``n`` only adds images; the positional
``rng.choice`` used before replaced 176 of 250 kept images when 10 were added to 1,000
(and each replaced image needs backbone features). No positional draw is kept: the
study's own draw cannot be reproduced anyway.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from covid_pipeline.config import BALANCES
from covid_pipeline.errors import ConfigError, DataError
from covid_pipeline.manifest import LABEL_NAMES

STRATEGIES = BALANCES


@dataclass(frozen=True)
class BalanceReport:
    strategy: str
    kept: dict[str, int]
    dropped: dict[str, int]
    class_weight: dict[int, float] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _counts(df: pd.DataFrame) -> dict[str, int]:
    return {LABEL_NAMES[k]: int((df["label"] == k).sum()) for k in sorted(LABEL_NAMES)}


def check_two_classes(df: pd.DataFrame) -> None:
    counts = _counts(df)
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DataError(
            f"no {' or '.join(empty)} images left after ingestion and filters "
            f"(counts: {counts}); add a source for that class or relax the filters"
        )


def draw_keys(df: pd.DataFrame, seed: int) -> list[str]:
    """Each row's undersampling key: sha256 of the seed and the image's content id (its
    sha256; the image_id for manifests without one)."""
    ids = df["sha256"] if "sha256" in df else df["image_id"]
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in ids.astype(str)]


def undersample_mask(df: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    """Rows kept: per class, the ``n`` with the lowest :func:`draw_keys` (ties by id)."""
    keys = np.array(draw_keys(df, seed))
    ids = df["image_id"].astype(str).to_numpy()
    labels = df["label"].to_numpy()
    keep = np.zeros(len(df), bool)
    for label in sorted(LABEL_NAMES):
        idx = np.flatnonzero(labels == label)
        keep[idx[np.lexsort((ids[idx], keys[idx]))[:n]]] = True
    return keep


def balance(df: pd.DataFrame, strategy: str = "undersample", seed: int = 42) -> tuple[
    pd.DataFrame, BalanceReport
]:
    """Return the balanced manifest (sorted by image_id) and what was kept and dropped."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--balance {strategy!r}: use one of {', '.join(STRATEGIES)}")
    check_two_classes(df)
    df = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    before = _counts(df)
    weights = None
    if strategy == "undersample":
        df = df[undersample_mask(df, min(before.values()), seed)].reset_index(drop=True)
    elif strategy == "class-weight":
        total = sum(before.values())
        weights = {k: total / (len(LABEL_NAMES) * before[LABEL_NAMES[k]]) for k in LABEL_NAMES}
    kept = _counts(df)
    dropped = {k: before[k] - kept[k] for k in before}
    return df, BalanceReport(strategy, kept, dropped, weights)
