"""Evaluation metrics with bootstrap confidence intervals.

Rating metrics take aligned arrays ``y_true, y_pred``. Ranking metrics take a matrix of recommended
item ids (one row per user, best first) and, per user, the collection of relevant items; they return
*per-user* arrays so the same values feed :func:`bootstrap_ci` (resampling users, the unit of analysis).

Definitions (``R_u`` the top-K list of user ``u``, ``T_u`` the relevant set, ``rank`` 1-based):

* ``HR@K(u)     = 1[|R_u ∩ T_u| > 0]``
* ``recall@K(u) = |R_u ∩ T_u| / min(|T_u|, K)``   (the "capped" recall, so a perfect list scores 1)
* ``NDCG@K(u)   = Σ_{i∈R_u∩T_u} 1/log2(rank_i + 1) / Σ_{r=1}^{min(|T_u|,K)} 1/log2(r + 1)``

Users with an empty ``T_u`` are rejected: they have no defined hit rate, and silently scoring them 0
would bias every model equally and hide the mistake.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class CI:
    """A point estimate with a two-sided percentile bootstrap interval."""

    point: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high

    def __str__(self) -> str:
        return f"{self.point:.4f} [{self.low:.4f}, {self.high:.4f}]"

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "low": self.low, "high": self.high}


def _pair(y_true: object, y_pred: object) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        raise ValueError("metrics need at least one value")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("y_true / y_pred contain NaN or inf")
    return t, p


def rmse(y_true: object, y_pred: object) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(y_true: object, y_pred: object) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def _binary_labels(y_true: np.ndarray) -> np.ndarray:
    if not np.isin(y_true, (0.0, 1.0)).all():
        raise ValueError("y_true must contain only 0/1 labels")
    return y_true


def auc(y_true: object, y_score: object) -> float:
    """Area under the ROC curve via the rank statistic (ties get the average rank)."""
    from scipy.stats import rankdata

    t, s = _pair(y_true, y_score)
    t = _binary_labels(t)
    n_pos = float(t.sum())
    n_neg = float(t.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined with a single class in y_true")
    ranks = rankdata(s)
    return float((ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y_true: object, p: object, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy; probabilities are clipped to ``[eps, 1-eps]``."""
    t, q = _pair(y_true, p)
    t = _binary_labels(t)
    if (q < 0).any() or (q > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    q = np.clip(q, eps, 1 - eps)
    return float(-np.mean(t * np.log(q) + (1 - t) * np.log1p(-q)))


def ranking_metrics(
    recommended: np.ndarray, relevant: Sequence[Collection[object]], k: int
) -> dict[str, np.ndarray]:
    """Per-user ``hr``, ``ndcg`` and ``recall`` at ``k`` (arrays of length ``n_users``)."""
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be 2-D (users x ranks), got shape {rec.shape}")
    if k < 1 or k > rec.shape[1]:
        raise ValueError(f"k must be in [1, {rec.shape[1]}], got {k}")
    if len(relevant) != rec.shape[0]:
        raise ValueError(f"{rec.shape[0]} recommendation rows but {len(relevant)} relevant sets")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)
    hr = np.zeros(rec.shape[0])
    ndcg = np.zeros(rec.shape[0])
    recall = np.zeros(rec.shape[0])
    for u, (row, rel) in enumerate(zip(rec[:, :k], relevant, strict=True)):
        rel_set = set(rel)
        if not rel_set:
            raise ValueError(f"user row {u} has no relevant items; drop such users before evaluating")
        hits = np.fromiter((item in rel_set for item in row.tolist()), dtype=bool, count=k)
        n_hit = int(hits.sum())
        cap = min(len(rel_set), k)
        hr[u] = float(n_hit > 0)
        recall[u] = n_hit / cap
        ndcg[u] = float(discounts[hits].sum() / ideal[cap - 1])
    return {"hr": hr, "ndcg": ndcg, "recall": recall}


def _check_boot(values: np.ndarray, n_boot: int, alpha: float) -> None:
    if values.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")


def _resample_stats(values: np.ndarray, statistic: Statistic, n_boot: int, seed: int,
                    other: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty(n_boot)
    # Resample in blocks of indices to keep memory at O(block * n).
    block = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    done = 0
    while done < n_boot:
        m = min(block, n_boot - done)
        idx = rng.integers(0, n, size=(m, n))
        for j in range(m):
            sel = idx[j]
            s = statistic(values[sel])
            if other is not None:
                s -= statistic(other[sel])
            out[done + j] = s
        done += m
    return out


def bootstrap_ci(values: object, statistic: Statistic = np.mean, *, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> CI:
    """Percentile bootstrap CI of ``statistic(values)``, resampling units with replacement.

    For RMSE pass the squared errors and ``statistic=lambda x: float(np.sqrt(x.mean()))``.
    """
    v = np.asarray(values, dtype=np.float64)
    _check_boot(v, n_boot, alpha)
    boots = _resample_stats(v, statistic, n_boot, seed)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return CI(float(statistic(v)), float(lo), float(hi))


def paired_bootstrap_diff(a: object, b: object, statistic: Statistic = np.mean, *, n_boot: int = 1000,
                          alpha: float = 0.05, seed: int = 0) -> CI:
    """CI of ``statistic(a) - statistic(b)`` where ``a[i]`` and ``b[i]`` belong to the same unit.

    The same resampled units are used for both, so the interval reflects the difference between two
    models on the same test rows/users rather than the (much larger) spread of either one alone.
    A difference is significant at level ``alpha`` when the interval excludes 0.
    """
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape:
        raise ValueError(f"paired values differ in shape: {va.shape} vs {vb.shape}")
    _check_boot(va, n_boot, alpha)
    boots = _resample_stats(va, statistic, n_boot, seed, other=vb)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return CI(float(statistic(va) - statistic(vb)), float(lo), float(hi))


def rmse_statistic(squared_errors: np.ndarray) -> float:
    """``statistic`` for :func:`bootstrap_ci` over squared errors."""
    return float(np.sqrt(np.mean(squared_errors)))


# ---------------------------------------------------------------------------------- weighted bootstrap
# A bootstrap resample of n rows is a vector of multiplicities ``w`` (counts summing to n). Statistics are
# prepared once as functions of ``w`` so that a resample costs O(n) and no sort: the AUC of a resample is
# the weighted AUC below (ties count 1/2, as average ranks do), a mean loss the weighted mean. Shared by the
# benchmarks (leakage, ads, ads_returns) and the attack evaluations (item_inference).
WeightedStat = Callable[[np.ndarray], float]


def weighted_auc(labels: object, scores: object) -> WeightedStat:
    """``w -> AUC`` of ``scores`` against 0/1 ``labels`` with row multiplicities ``w``: the Mann-Whitney
    statistic ``Σ_{pos i, neg j} w_i w_j (1[s_i > s_j] + ½ 1[s_i = s_j]) / (W_pos W_neg)``; 0.5 when the
    resample has one class. ``w = 1`` gives :func:`auc` exactly."""
    t = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 1:
        raise ValueError(f"weighted_auc: labels {t.shape} and scores {s.shape} must be equal-length 1-D")
    _, g = np.unique(s, return_inverse=True)
    n_groups = int(g.max()) + 1 if g.size else 0

    def stat(w: np.ndarray) -> float:
        pos = np.bincount(g, weights=w * t, minlength=n_groups)
        neg = np.bincount(g, weights=w * (1.0 - t), minlength=n_groups)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return 0.5
        below = np.cumsum(neg) - neg
        return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))

    return stat


def weighted_mean(values: object, root: bool = False) -> WeightedStat:
    """``w -> Σ w v / Σ w`` (its square root with ``root``: RMSE from squared errors)."""
    v = np.asarray(values, dtype=np.float64)
    return lambda w: float(np.sqrt(w @ v / w.sum()) if root else w @ v / w.sum())


def weighted_difference(a: WeightedStat, b: WeightedStat) -> WeightedStat:
    """``w -> a(w) − b(w)``: a paired difference (both statistics see the same resampled rows)."""
    return lambda w: a(w) - b(w)


def multiplicities(rng: np.random.Generator, n: int) -> np.ndarray:
    """The multiplicities of one bootstrap resample of ``n`` rows (float64, summing to ``n``)."""
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def seed_bootstrap(per_seed: Sequence[tuple[int, WeightedStat]], n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> dict[str, float]:
    """Two-level (hierarchical) bootstrap over runs: ``per_seed`` holds ``(n_rows, stat)`` per run (seed or
    fold). Point = mean over runs of ``stat`` on all rows; CI by resampling runs, then rows within each
    drawn run, averaging over the drawn runs. Returns ``{"point", "low", "high"}``."""
    if not per_seed:
        raise ValueError("seed_bootstrap needs at least one run")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"seed_bootstrap: n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    rng = np.random.default_rng(seed)
    point = float(np.mean([stat(np.ones(n)) for n, stat in per_seed]))
    k = len(per_seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, k, k) if k > 1 else np.zeros(1, np.int64)
        boots[b] = np.mean([per_seed[s][1](multiplicities(rng, per_seed[s][0])) for s in drawn])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"point": point, "low": float(lo), "high": float(hi)}
