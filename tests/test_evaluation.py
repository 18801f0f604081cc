"""Intervals and tests of the leaderboard against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from covid_pipeline import evaluation as ev


def sklearn_example_corrected_ttest(differences, df, n_train, n_test):
    """scikit-learn's example "Statistical comparison of models using grid search"
    (corrected_std and compute_corrected_ttest), verbatim in substance: right-tailed."""
    kr = len(differences)
    corrected_var = np.var(differences, ddof=1) * (1 / kr + n_test / n_train)
    t_stat = np.mean(differences) / np.sqrt(corrected_var)
    return t_stat, stats.t.sf(np.abs(t_stat), df)


FOLD_SCORE_DIFFS = [0.021, -0.004, 0.013, 0.030, 0.008, 0.017, -0.011, 0.025, 0.002, 0.019]


def test_corrected_ttest_matches_the_scikit_learn_example_formula():
    t, p = ev.corrected_ttest(FOLD_SCORE_DIFFS, n_train=288, n_test=72)
    t_ref, p_one_sided = sklearn_example_corrected_ttest(np.array(FOLD_SCORE_DIFFS), 9, 288, 72)
    assert t == pytest.approx(t_ref, rel=1e-12)
    assert p == pytest.approx(2 * p_one_sided, rel=1e-12)  # ours is two-sided
    # the correction widens the test: the naive paired t-test is more confident
    assert p > stats.ttest_1samp(FOLD_SCORE_DIFFS, 0.0).pvalue
    assert ev.corrected_ttest([0.0] * 5, 40, 10) == (0.0, 1.0)


def slow_delong(y, a, b):
    """DeLong, Delong & Clarke-Pearson (1988) by direct pairwise comparisons, O(m·n)."""
    y = np.asarray(y).astype(bool)

    def psi(x, z):
        return (x > z) + 0.5 * (x == z)

    v10, v01, aucs = [], [], []
    for p in (np.asarray(a), np.asarray(b)):
        pos, neg = p[y], p[~y]
        pairs = psi(pos[:, None], neg[None, :]).astype(float)
        aucs.append(pairs.mean())
        v10.append(pairs.mean(axis=1))
        v01.append(pairs.mean(axis=0))
    m, n = y.sum(), (~y).sum()
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (aucs[0] - aucs[1]) / np.sqrt(var)
    return aucs[0], aucs[1], z, 2 * stats.norm.sf(abs(z))


def test_delong_matches_a_slow_pairwise_implementation_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    a = np.round(y * 0.6 + rng.normal(0, 0.5, 120), 1)  # rounding makes ties
    b = np.round(y * 0.3 + rng.normal(0, 0.5, 120), 1)
    got = ev.delong_test(y, a, b)
    np.testing.assert_allclose(got, slow_delong(y, a, b), rtol=1e-10)
    from sklearn.metrics import roc_auc_score

    assert got[0] == pytest.approx(roc_auc_score(y, a)) and got[1] == pytest.approx(
        roc_auc_score(y, b))
    assert 0 < got[3] < 0.05  # a real difference is found
    assert ev.delong_test(y, a, a)[2:] == (0.0, 1.0)


def manual_holm(p):
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_matches_the_step_down_definition_and_statsmodels_and_keeps_nan():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    np.testing.assert_allclose(ev.holm(p), manual_holm(np.array(p)))
    out = ev.holm([0.01, float("nan"), 0.04])
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    rng = np.random.default_rng(3)
    for m in (1, 2, 7, 40):  # ties, values whose correction passes 1
        p = np.round(rng.uniform(0, 0.6, m) ** 2, 2)
        np.testing.assert_array_equal(ev.holm(p), multipletests(p, method="holm")[1])
    assert ev.holm([]) == [] and np.isnan(ev.holm([float("nan")])).all()


def test_bootstrap_moves_a_patients_images_together_and_stratifies_by_class():
    rng = np.random.default_rng(0)
    groups = [f"p{i}" for i in range(30)] + ["planted"] * 5 + [f"n{i}" for i in range(35)]
    labels = np.array([1] * 35 + [0] * 35)
    planted = np.arange(30, 35)
    blocks = list(ev.patient_resamples(groups, labels, 300, seed=1))
    assert [len(b) for b in blocks] == [256, 44]
    draws = np.concatenate(blocks)
    assert len({tuple(row) for row in draws}) > 290  # resamples differ
    for counts in draws:
        assert len(set(counts[planted].tolist())) == 1  # all five, the same number of times
        # per class, as many patients drawn as the class has (31 COVID-19, 35 normal): each
        # draw of the planted patient brings 5 images, of any other patient 1
        assert counts[labels == 0].sum() == 35
        assert counts[:35].sum() - 4 * counts[30] == 31
    again = np.concatenate(list(ev.patient_resamples(groups, labels, 300, seed=1)))
    np.testing.assert_array_equal(draws, again)  # seeded: every model resampled alike
    probs = np.clip(labels * 0.4 + rng.normal(0.3, 0.25, 70), 0, 1)
    ci = ev.bootstrap_intervals(labels, probs, groups, n_resamples=500, seed=2)
    point = ev.point_estimates(labels, probs)
    for name in ev.CI_METRICS:
        low, high = ci[name]
        assert low <= point[name] <= high and low < high, name
    assert ci == ev.bootstrap_intervals(labels, probs, groups, n_resamples=500, seed=2)


def test_bootstrap_of_repeats_averages_over_them():
    rng = np.random.default_rng(4)
    labels = np.array([1] * 20 + [0] * 20)
    groups = [f"g{i}" for i in range(40)]
    probs = np.clip(labels * 0.5 + rng.normal(0.25, 0.2, (3, 40)), 0, 1)
    point = ev.point_estimates(labels, probs)
    assert point["auc"] == pytest.approx(np.mean([ev.pooled_metrics(labels, r)["auc"]
                                                  for r in probs]))
    ci = ev.bootstrap_intervals(labels, probs, groups, n_resamples=200, seed=0)
    assert ci["auc"][0] <= point["auc"] <= ci["auc"][1]


def slow_bootstrap(labels, probs, groups, n_resamples, seed):
    """Percentile intervals from scikit-learn's metrics resample by resample (the mean over
    repeats of the defined values)."""
    draws: dict[str, list[float]] = {}
    for counts in np.concatenate(list(ev.patient_resamples(groups, labels, n_resamples, seed))):
        idx = np.repeat(np.arange(len(labels)), counts)  # the resample written out
        per_repeat = [ev.pooled_metrics(labels[idx], row[idx]) for row in np.atleast_2d(probs)]
        for name in ev.CI_METRICS:
            values = [r[name] for r in per_repeat if r[name] is not None]
            if values:
                draws.setdefault(name, []).append(float(np.mean(values)))
    return {name: (np.percentile(draws[name], 2.5), np.percentile(draws[name], 97.5))
            if name in draws else None for name in ev.CI_METRICS}


def test_the_vectorised_bootstrap_equals_one_resample_at_a_time():
    rng = np.random.default_rng(6)
    groups = [f"p{i // 3}" for i in range(90)]  # three images a patient
    labels = np.array([int(i < 45) for i in range(90)])
    probs = np.round(np.clip(labels * 0.3 + rng.normal(0.35, 0.25, (2, 90)), 0, 1), 1)  # ties
    counts = np.concatenate(list(ev.patient_resamples(groups, labels, 300, seed=3)))
    fast = ev.resampled_metrics(labels, probs[0], counts)
    for k, row in enumerate(counts):
        idx = np.repeat(np.arange(90), row)
        one = ev.pooled_metrics(labels[idx], probs[0][idx])
        for name in ev.CI_METRICS:
            assert fast[name][k] == pytest.approx(one[name], abs=1e-12), (name, k)
    got = ev.bootstrap_intervals(labels, probs, groups, n_resamples=300, seed=3)
    want = slow_bootstrap(labels, probs, groups, 300, 3)
    for name in ev.CI_METRICS:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    normals = np.zeros(90, int)  # one class: no AUC in any resample
    got = ev.bootstrap_intervals(normals, probs[0], groups, n_resamples=50, seed=1)
    assert got["auc"] is None and got == slow_bootstrap(normals, probs[0], groups, 50, 1)


def test_the_bootstraps_metrics_equal_scikit_learns():
    """Each resample's metrics (an image drawn c times weighs c) equal scikit-learn's on
    the resample written out, with ties, exact 0.5 thresholds and one-class draws."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        p = np.round(rng.random(n), 1)  # ties, and exact 0.5 thresholds
        if trial % 7 == 0:
            y[:] = y[0]  # one class: AUC undefined, balanced accuracy over one recall
        counts = np.stack([np.ones(n, int), rng.integers(0, 3, n)])
        counts[1, 0] = max(counts[1, 0], 1)  # never an empty resample
        fast = ev.resampled_metrics(y, p, counts)
        for k, c in enumerate(counts):
            reference = ev.pooled_metrics(np.repeat(y, c), np.repeat(p, c))
            for name in ev.CI_METRICS:
                if reference[name] is None:
                    assert np.isnan(fast[name][k]), name
                else:
                    assert fast[name][k] == pytest.approx(reference[name], abs=1e-12), name
