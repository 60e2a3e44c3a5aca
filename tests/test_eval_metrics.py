"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from fedrec.eval.metrics import (
    CI,
    auc,
    bootstrap_ci,
    log_loss,
    mae,
    paired_bootstrap_diff,
    ranking_metrics,
    rmse,
    rmse_statistic,
)


def test_rmse_mae_hand_values() -> None:
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)


def test_rating_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        rmse([1, 2], [1])
    with pytest.raises(ValueError, match="NaN"):
        mae([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="at least one"):
        rmse([], [])


def test_auc_and_logloss_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    s = np.round(rng.random(500) + 0.3 * y, 2)  # rounding creates ties
    assert auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    p = np.clip(s / s.max(), 0, 1)
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p), abs=1e-9)


def test_auc_single_class_and_bad_labels() -> None:
    with pytest.raises(ValueError, match="single class"):
        auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0/1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([0, 1], [0.5, 1.5])


def test_ranking_metrics_hand_values() -> None:
    rec = np.array([[10, 11, 12], [20, 21, 22], [30, 31, 32]])
    rel = [{12}, {99}, {30, 32, 33, 34}]
    m = ranking_metrics(rec, rel, k=3)
    np.testing.assert_allclose(m["hr"], [1, 0, 1])
    # user 0: hit at rank 3 -> (1/log2 4) / (1/log2 2) = 0.5
    # user 2: hits at ranks 1, 3; ideal = 3 hits (cap min(4,3)=3)
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    np.testing.assert_allclose(m["ndcg"], [0.5, 0.0, (1 + 0.5) / ideal])
    np.testing.assert_allclose(m["recall"], [1.0, 0.0, 2 / 3])


def test_ndcg_matches_sklearn_for_binary_relevance() -> None:
    rng = np.random.default_rng(1)
    n_items, k = 30, 10
    for _ in range(20):
        scores = rng.random(n_items)
        truth = (rng.random(n_items) < 0.2).astype(float)
        if truth.sum() == 0:
            continue
        top = np.argsort(-scores)[:k]
        ours = ranking_metrics(top[None, :], [set(np.flatnonzero(truth))], k)["ndcg"][0]
        assert ours == pytest.approx(skm.ndcg_score(truth[None, :], scores[None, :], k=k), abs=1e-12)


def test_ranking_metrics_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="2-D"):
        ranking_metrics(np.arange(3), [{1}], 1)
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(np.zeros((1, 3)), [{1}], 4)
    with pytest.raises(ValueError, match="no relevant items"):
        ranking_metrics(np.zeros((1, 3)), [set()], 3)
    with pytest.raises(ValueError, match="relevant sets"):
        ranking_metrics(np.zeros((2, 3)), [{1}], 3)


def test_bootstrap_ci_covers_mean_and_is_reproducible() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 1.0, 2000)
    ci = bootstrap_ci(x, n_boot=500, seed=3)
    assert isinstance(ci, CI)
    assert ci.low < x.mean() < ci.high
    # standard error of the mean is ~1/sqrt(2000) = 0.022 -> 95% CI width ~0.088
    assert 0.06 < ci.high - ci.low < 0.12
    assert bootstrap_ci(x, n_boot=500, seed=3) == ci


def test_bootstrap_rmse_statistic() -> None:
    err = np.array([1.0, -1.0, 2.0, 0.0])
    ci = bootstrap_ci(err**2, statistic=rmse_statistic, n_boot=200)
    assert ci.point == pytest.approx(rmse(err, np.zeros(4)))


def test_paired_diff_detects_a_consistent_gap() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(0, 1, 1000)
    better = base - 0.05  # the same units, uniformly lower: a tiny but consistent gap
    d = paired_bootstrap_diff(better, base, n_boot=300)
    assert d.point == pytest.approx(-0.05)
    assert d.excludes(0.0)
    # an unpaired view of the same numbers cannot separate them
    assert not bootstrap_ci(better, n_boot=300).excludes(float(base.mean()))


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0], alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap_diff([1.0, 2.0], [1.0])
