"""Per-fold classification metrics and their summary over folds.

Positive class = COVID-19 (label 1). A sample is predicted positive when its COVID-19
probability is above the threshold (0.5), which matches ``argmax`` of a 2-way softmax
(a tie goes to "normal") and Keras' ``BinaryAccuracy``. Undefined ratios are 0.0, as
scikit-learn's ``zero_division=0``; AUC is None when ``y_true`` holds a single class.
No value is ever NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "precision",
    "sensitivity",
    "specificity",
    "f1",
    "balanced_accuracy",
    "auc",
)
METRICS = METRIC_NAMES  # alias
COUNT_NAMES: tuple[str, ...] = ("tp", "fp", "tn", "fn", "n")


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _as_arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D int labels and 1-D COVID-19 probabilities."""
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] in (1, 2):
        p = p[:, -1]  # softmax output: column 1 is COVID-19
    y, p = y.reshape(-1), p.reshape(-1)
    if y.size == 0:
        raise ValueError("fold_metrics needs at least one sample")
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but y_prob has {p.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 (normal) and 1 (COVID-19)")
    if not np.isfinite(p).all():
        raise ValueError("y_prob holds NaN or infinite values")
    return y.astype(np.int64), p


def roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties at half; None if one class."""
    n_pos = int(y_true.sum())
    n_neg = int(y_true.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(y_prob, return_inverse=True, return_counts=True)
    # 1-based average rank of each group of tied scores.
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse.reshape(-1)][y_true == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def fold_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of one test fold from labels and COVID-19 probabilities.

    ``y_prob`` is 1-D (probability of COVID-19) or an ``(n, 2)`` softmax output.
    Returns floats for the metrics (``auc`` may be None) and ints for the counts.
    """
    y, p = _as_arrays(y_true, y_prob)
    pred = p > threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    tn = int(np.sum(~pred & ~pos))
    fn = int(np.sum(~pred & pos))
    n = tp + fp + tn + fn
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    # Balanced accuracy averages the recall of the classes present in y_true (as sklearn).
    present = [r for r, count in ((sensitivity, tp + fn), (specificity, tn + fp)) if count]
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": _ratio(tp, tp + fp),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": float(sum(present) / len(present)),
        "auc": roc_auc(y, p),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
    }


def _defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def summarise(folds: Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``<metric>_mean`` and ``<metric>_std`` (population std) over folds, plus ``n_folds``.

    A metric that is None (or NaN) in a fold is left out of that metric's statistics; a
    metric defined in no fold summarises to None.
    """
    folds = list(folds)
    out: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = np.array([float(f[name]) for f in folds if _defined(f.get(name))])
        out[f"{name}_mean"] = float(values.mean()) if values.size else None
        out[f"{name}_std"] = float(values.std(ddof=0)) if values.size else None
    out["n_folds"] = len(folds)
    return out
