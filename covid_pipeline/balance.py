"""Class balancing: the study's seeded random undersampling, or none, or class weights."""

from __future__ import annotations

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
        n = min(before.values())
        rng = np.random.default_rng(seed)
        parts = []
        for label in sorted(LABEL_NAMES):
            idx = np.flatnonzero(df["label"].to_numpy() == label)
            parts.append(np.sort(rng.choice(idx, size=n, replace=False)))
        df = df.iloc[np.sort(np.concatenate(parts))].reset_index(drop=True)
    elif strategy == "class-weight":
        total = sum(before.values())
        weights = {k: total / (len(LABEL_NAMES) * before[LABEL_NAMES[k]]) for k in LABEL_NAMES}
    kept = _counts(df)
    dropped = {k: before[k] - kept[k] for k in before}
    return df, BalanceReport(strategy, kept, dropped, weights)
