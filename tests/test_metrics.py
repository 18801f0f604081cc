"""Fold metrics agree with scikit-learn and never produce NaN."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from covid_pipeline.metrics import METRIC_NAMES, fold_metrics, summarise


def _sklearn(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    pred = (p > 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": skm.accuracy_score(y, pred),
            "precision": skm.precision_score(y, pred, zero_division=0),
            "sensitivity": skm.recall_score(y, pred, zero_division=0),
            "specificity": tn / (tn + fp) if tn + fp else 0.0,
            "f1": skm.f1_score(y, pred, zero_division=0),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
            "auc": skm.roc_auc_score(y, p) if len(set(y.tolist())) == 2 else None,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
        }


def _assert_matches(y: np.ndarray, p: np.ndarray) -> dict:
    ours = fold_metrics(y, p)
    ref = _sklearn(y, p)
    for key, expected in ref.items():
        if expected is None:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(expected, abs=1e-12), key
    assert ours["n"] == len(y)
    for name in METRIC_NAMES:
        assert ours[name] is None or math.isfinite(ours[name])
    return ours


def test_matches_sklearn_on_random_folds() -> None:
    rng = np.random.default_rng(20200401)
    for trial in range(200):
        n = int(rng.integers(1, 80))
        y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
        p = rng.random(n)
        if trial % 3 == 0:
            p = np.round(p, 1)  # many ties, some exactly at the threshold
        elif trial % 3 == 1:
            p = np.clip(y * rng.uniform(0, 0.6) + rng.normal(0.3, 0.2, n), 0, 1)
        _assert_matches(y, p)


def test_threshold_tie_is_normal_like_softmax_argmax() -> None:
    m = fold_metrics([1, 0], [0.5, 0.5])
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (0, 1, 1, 0)
    assert m["auc"] == 0.5


def test_softmax_output_is_accepted() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    assert fold_metrics([0, 1, 0, 1], probs) == fold_metrics([0, 1, 0, 1], probs[:, 1])


def test_all_negative_predictions() -> None:
    y = np.array([0, 1, 1, 0, 1, 0])
    m = _assert_matches(y, np.full(6, 0.1))
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["sensitivity"] == 0.0
    assert m["specificity"] == 1.0 and m["balanced_accuracy"] == 0.5
    assert m["auc"] == 0.5


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("prob", [0.2, 0.8])
def test_single_class_fold(label: int, prob: float) -> None:
    y = np.full(5, label)
    m = _assert_matches(y, np.linspace(prob - 0.1, prob + 0.1, 5))
    assert m["auc"] is None


def test_single_sample_fold() -> None:
    m = _assert_matches(np.array([1]), np.array([0.9]))
    assert m["accuracy"] == 1.0 and m["auc"] is None


def test_perfect_and_inverted_ranking() -> None:
    y = np.array([0, 0, 1, 1])
    assert fold_metrics(y, [0.1, 0.2, 0.8, 0.9])["auc"] == 1.0
    assert fold_metrics(y, [0.9, 0.8, 0.2, 0.1])["auc"] == 0.0


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([], [], "at least one"),
        ([0, 1], [0.5], "values"),
        ([0, 2], [0.1, 0.9], "only 0"),
        ([0, 1], [0.1, float("nan")], "NaN"),
    ],
)
def test_bad_input(y, p, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fold_metrics(y, p)


def test_summarise_means_and_sample_std() -> None:
    rng = np.random.default_rng(7)
    folds = []
    for _ in range(5):
        y = rng.integers(0, 2, 40)
        folds.append(fold_metrics(y, rng.random(40)))
    summary = summarise(folds)
    assert summary["n_folds"] == 5
    for name in METRIC_NAMES:
        values = np.array([f[name] for f in folds])
        assert summary[f"{name}_mean"] == pytest.approx(values.mean())
        assert summary[f"{name}_std"] == pytest.approx(values.std(ddof=1))


def test_summarise_skips_undefined_auc() -> None:
    folds = [
        fold_metrics([0, 1, 1, 0], [0.2, 0.9, 0.7, 0.4]),  # auc 1.0
        fold_metrics([0, 1, 1, 0], [0.2, 0.3, 0.7, 0.4]),  # auc 0.75
        fold_metrics([0, 0, 0], [0.2, 0.6, 0.1]),  # auc None
        {**fold_metrics([0, 1], [0.1, 0.9]), "auc": float("nan")},
    ]
    summary = summarise(folds)
    assert summary["auc_mean"] == pytest.approx(0.875)
    assert summary["auc_std"] == pytest.approx(np.std([1.0, 0.75], ddof=1))
    assert summary["n_folds"] == 4
    assert summary["accuracy_mean"] == pytest.approx(np.mean([f["accuracy"] for f in folds]))


def test_summarise_never_nan() -> None:
    summary = summarise([fold_metrics([1, 1], [0.9, 0.1])])
    assert summary["auc_mean"] is None and summary["auc_std"] is None
    assert summary["accuracy_std"] is None  # one fold: no sample std
    empty = summarise([])
    assert empty["n_folds"] == 0 and empty["f1_mean"] is None
    assert set(empty) == {f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")} | {"n_folds"}
