"""Leaderboard helpers for tests."""

from __future__ import annotations

import pandas as pd

from covid_pipeline.baseline import NAME as BASELINE


def cnn_rows(board: pd.DataFrame) -> pd.DataFrame:
    """The board without the acquisition-only baseline's row (the models' rows only)."""
    return board[board["model"] != BASELINE].reset_index(drop=True)
