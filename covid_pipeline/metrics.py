"""Per-fold classification metrics and their summary over folds.

Positive class = COVID-19 (label 1). A sample is predicted positive when its COVID-19
probability is above the threshold (0.5), which matches ``argmax`` of a 2-way softmax
(a tie goes to "normal") and Keras' ``BinaryAccuracy``. Every metric is scikit-learn's;
undefined ratios are 0.0 (``zero_division=0``); AUC is None when ``y_true`` holds a single
class. No value is ever NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

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
    """scikit-learn's ROC AUC; None when ``y_true`` holds a single class."""
    if len(np.unique(y_true)) < 2:
        return None
    return float(skm.roc_auc_score(y_true, y_prob))


def fold_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of one test fold from labels and COVID-19 probabilities.

    ``y_prob`` is 1-D (probability of COVID-19) or an ``(n, 2)`` softmax output.
    Returns floats for the metrics (``auc`` may be None) and ints for the counts.
    """
    y, p = _as_arrays(y_true, y_prob)
    pred = (p > threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    present = sorted(set(y.tolist()))  # balanced accuracy: recall of the classes present
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "sensitivity": float(skm.recall_score(y, pred, labels=[1], zero_division=0)),
        "specificity": float(skm.recall_score(y, pred, pos_label=0, labels=[0],
                                              zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "balanced_accuracy": float(np.mean(skm.recall_score(
            y, pred, labels=present, average=None, zero_division=0))),
        "auc": roc_auc(y, p),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": tp + fp + tn + fn,
    }


def _defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def summarise(folds: Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``<metric>_mean`` and ``<metric>_std`` (sample std, ddof=1; None from one fold) over
    folds, plus ``n_folds``.

    A metric that is None (or NaN) in a fold is left out of that metric's statistics; a
    metric defined in no fold summarises to None.
    """
    folds = list(folds)
    out: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = np.array([float(f[name]) for f in folds if _defined(f.get(name))])
        out[f"{name}_mean"] = float(values.mean()) if values.size else None
        out[f"{name}_std"] = float(values.std(ddof=1)) if values.size > 1 else None
    out["n_folds"] = len(folds)
    return out
