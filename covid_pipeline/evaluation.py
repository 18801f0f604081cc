"""Which differences on the leaderboard are real: intervals and tests.

- :func:`bootstrap_intervals`: percentile intervals of metrics of pooled out-of-fold
  predictions by a seeded cluster bootstrap that resamples *patients* (all images of a
  patient move together), stratified by class.
- :func:`corrected_ttest`: Nadeau and Bengio's corrected resampled t-test on per-fold score
  differences (the folds' training sets overlap, which the plain t-test ignores).
- :func:`delong_test`: DeLong's test for two correlated ROC AUCs on the same images (the
  fast midrank algorithm of Sun and Xu, 2014).
- :func:`holm`: Holm's step-down correction.

No maintained Python library offers the first three for this use, so they are written here
and checked against slow direct implementations and published formulas in the tests. Holm's
correction is three lines, written here too: statsmodels' ``multipletests`` runs a full
``gc.collect()`` on every Holm call (0.34 s in a flow's process, a third of a board's
build); the tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import stats

from covid_pipeline.metrics import fold_metrics

CI_METRICS: tuple[str, ...] = ("auc", "balanced_accuracy", "sensitivity", "specificity", "f1")


def pooled_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """The CI metrics of one set of predictions (scikit-learn's, through fold_metrics)."""
    values = fold_metrics(labels, probs)
    return {m: values[m] for m in CI_METRICS}


# resamples drawn and evaluated at once (memory: block x images floats); the draws depend on
# it: a change needs a new BOARD_FORMAT (stored boards are reused by it)
RESAMPLE_BLOCK = 256


def patient_resamples(groups: Sequence[str], labels: np.ndarray, n_resamples: int,
                      seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's resamples, :data:`RESAMPLE_BLOCK` at a time: [b, N] counts of how
    many times each image is drawn. Per class, as many patients as the class has are drawn
    with replacement; a drawn patient brings all of its images.

    Seeded: every model of a leaderboard is resampled alike (the same images, patients and
    seed give the same draws), without keeping them (they are cheap to draw again)."""
    labels = np.asarray(labels, dtype=np.int64)
    patients, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    # a patient's class: its images' label (the larger one if a patient has both)
    patient_class = np.zeros(len(patients), np.int64)
    np.maximum.at(patient_class, inverse, labels)
    by_class = [np.flatnonzero(patient_class == c) for c in np.unique(patient_class)]
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, RESAMPLE_BLOCK):
        b = min(RESAMPLE_BLOCK, n_resamples - start)
        drawn = np.concatenate([members[rng.integers(0, len(members), (b, len(members)))]
                                for members in by_class], axis=1)  # [b, patients drawn]
        flat = (drawn + len(patients) * np.arange(b)[:, None]).ravel()
        per_patient = np.bincount(flat, minlength=b * len(patients)).reshape(b, -1)
        yield per_patient[:, inverse]


def resampled_metrics(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """:func:`pooled_metrics` of many resamples at once, NaN where undefined: ``counts``
    [B, N] holds how many times each image is in each resample (scikit-learn's, resample by
    resample, took ~70x longer: 13.8 vs 0.19 ms at 360 images; tests/test_evaluation.py
    holds the two equal). The same threshold (p > 0.5) and zero_division=0.

    The confusion counts are weighted sums; the AUC is Mann-Whitney's U over weighted
    images (a positive above a negative counts one, a tie one half), from one sort of the
    probabilities for every resample instead of a ranking of each."""
    y = np.asarray(labels) == 1
    p = np.asarray(probs, dtype=np.float64)
    pred = p > 0.5
    w = np.asarray(counts, dtype=np.float64)
    tp, fn = w @ (pred & y), w @ (~pred & y)
    fp, tn = w @ (pred & ~y), w @ (~pred & ~y)
    pos, neg = tp + fn, tn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(pos > 0, tp / pos, 0.0)
        spec = np.where(neg > 0, tn / neg, 0.0)
        balanced = np.where((pos > 0) & (neg > 0), (sens + spec) / 2,
                            np.where(pos > 0, sens, spec))
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        order = np.argsort(p, kind="mergesort")
        ordered = p[order]
        ties = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # tie groups' starts
        sorted_w = w[:, order]
        pos_w = np.add.reduceat(sorted_w * y[order], ties, axis=1)
        neg_w = np.add.reduceat(sorted_w * ~y[order], ties, axis=1)
        below = np.cumsum(neg_w, axis=1) - neg_w  # negatives under each tie group
        u = (pos_w * (below + 0.5 * neg_w)).sum(axis=1)
        auc = np.where((pos > 0) & (neg > 0), u / (pos * neg), np.nan)
    return {"auc": auc, "balanced_accuracy": balanced, "sensitivity": sens,
            "specificity": spec, "f1": f1}


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, groups: Sequence[str],
                        n_resamples: int = 2000, seed: int = 0, level: float = 0.95,
                        ) -> dict[str, tuple[float, float] | None]:
    """Percentile interval of each metric over patient-level resamples (None for a metric
    no resample defines).

    ``probs`` may be [N] or [R, N] (R repeats of cross-validation predicting the same N
    images): a resample's metric is then the mean over repeats, as is the point estimate.
    Resamples are drawn and evaluated :data:`RESAMPLE_BLOCK` at a time
    (:func:`patient_resamples`, :func:`resampled_metrics`).
    """
    labels = np.asarray(labels)
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    draws: dict[str, list[np.ndarray]] = {name: [] for name in CI_METRICS}
    for counts in patient_resamples(groups, labels, n_resamples, seed):
        per_repeat = [resampled_metrics(labels, row, counts) for row in probs]
        for name in CI_METRICS:
            values = np.stack([r[name] for r in per_repeat])  # [R, block]
            defined = ~np.isnan(values)
            n = defined.sum(axis=0)
            mean = np.where(defined, values, 0.0).sum(axis=0) / np.maximum(n, 1)
            draws[name].append(mean[n > 0])
    tail = 100 * (1 - level) / 2
    out: dict[str, tuple[float, float] | None] = {}
    for name, parts in draws.items():
        v = np.concatenate(parts)
        out[name] = (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))
                     ) if len(v) else None
    return out


def point_estimates(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """The metrics of the pooled predictions (mean over repeats for [R, N] ``probs``)."""
    per_repeat = [pooled_metrics(np.asarray(labels), row)
                  for row in np.atleast_2d(np.asarray(probs, dtype=np.float64))]
    out: dict[str, float | None] = {}
    for name in CI_METRICS:
        values = [r[name] for r in per_repeat if r[name] is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


def corrected_ttest(differences: Sequence[float], n_train: float, n_test: float
                    ) -> tuple[float, float]:
    """(t, two-sided p) of the Nadeau–Bengio corrected resampled t-test.

    ``differences`` are the k·R per-fold score differences of two models on the same
    folds; the variance of their mean is corrected by ``1/(k·R) + n_test/n_train`` and
    the statistic has k·R − 1 degrees of freedom.
    """
    d = np.asarray(differences, dtype=np.float64)
    kr = d.size
    if kr < 2:
        return float("nan"), float("nan")
    mean, var = float(d.mean()), float(d.var(ddof=1))
    if var == 0.0:
        return (0.0, 1.0) if mean == 0.0 else (float(np.sign(mean) * np.inf), 0.0)
    t = mean / np.sqrt(var * (1.0 / kr + n_test / n_train))
    return float(t), float(2 * stats.t.sf(abs(t), kr - 1))


def _midranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def delong_test(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray
                ) -> tuple[float, float, float, float]:
    """(AUC a, AUC b, z, two-sided p) of DeLong's test for paired ROC AUCs.

    Ties count one half, as in the AUC itself. When the two models' AUC difference has no
    variance (identical rankings), z is 0 and p is 1.
    """
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    aucs, v10, v01 = [], [], []
    for p in (np.asarray(probs_a, float), np.asarray(probs_b, float)):
        tx, ty, tz = _midranks(p[pos]), _midranks(p[neg]), _midranks(p[np.r_[pos, neg]])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # structural components of the positives
        v01.append(1.0 - (tz[m:] - ty) / m)  # and of the negatives
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = aucs[0] - aucs[1]
    if var <= 1e-15:
        return float(aucs[0]), float(aucs[1]), 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    z = diff / np.sqrt(var)
    return float(aucs[0]), float(aucs[1]), float(z), float(2 * stats.norm.sf(abs(z)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-corrected p-values (as statsmodels' ``multipletests(method="holm")``): the
    k-th smallest of m p-values times (m - k + 1), made non-decreasing, at most 1; NaN
    stays."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(np.maximum.accumulate(p[order] * np.arange(m, 0, -1)), 1.0)
    return out.tolist()
