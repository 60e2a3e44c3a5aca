"""The shared weighted-bootstrap helpers of fedrec.eval.metrics (used by the ads benchmarks)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.eval.metrics import auc, seed_bootstrap, weighted_auc, weighted_difference, weighted_mean


def test_weighted_auc_equals_auc_on_the_expanded_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    s = np.round(rng.normal(size=200) + y, 1)  # ties on purpose
    assert weighted_auc(y, s)(np.ones(200)) == pytest.approx(auc(y, s), abs=1e-12)
    w = rng.integers(0, 4, 200)
    expanded = np.repeat(np.arange(200), w)
    assert weighted_auc(y, s)(w.astype(float)) == pytest.approx(auc(y[expanded], s[expanded]), abs=1e-12)


def test_weighted_auc_with_one_class_is_a_half_and_shapes_are_checked() -> None:
    stat = weighted_auc(np.array([1.0, 1.0, 0.0]), np.array([0.1, 0.2, 0.3]))
    assert stat(np.array([1.0, 1.0, 0.0])) == 0.5  # the only negative has weight 0
    with pytest.raises(ValueError, match="equal-length"):
        weighted_auc(np.zeros(3), np.zeros(4))


def test_seed_bootstrap_brackets_the_point_and_pairs_differences() -> None:
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(5):
        y = rng.integers(0, 2, 300).astype(float)
        a, b = y + rng.normal(size=300), y + 2 * rng.normal(size=300)
        runs.append((300, weighted_difference(weighted_auc(y, a), weighted_auc(y, b))))
    ci = seed_bootstrap(runs, n_boot=200, seed=0)
    assert ci["low"] <= ci["point"] <= ci["high"]
    assert ci["low"] > 0  # the less noisy score wins beyond the paired CI
    assert weighted_mean(np.array([1.0, 4.0]), root=True)(np.array([1.0, 1.0])) == pytest.approx(np.sqrt(2.5))
    with pytest.raises(ValueError, match="at least one run"):
        seed_bootstrap([], n_boot=10)
