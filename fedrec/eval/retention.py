"""Retention-lift evaluation (DESIGN §7): dormant users at a time cut and whether recommendations hit.

Definitions (``T`` the cut, ``D`` = ``inactive_days``, all times Unix seconds):

* **history** of user ``u``: its interactions with ``timestamp < T``; ``n_history(u)`` their number.
* **dormant at T**: ``n_history(u) >= min_history`` and no interaction in ``[T − D·86400, T)``.
* **returns**: at least one interaction with ``timestamp >= T`` (within ``horizon_days`` when given).
* **relevant set** ``T_u``: the items ``u`` interacts with at or after ``T`` that are *not* in its
  history (recommendations are drawn from unseen items, so re-interactions cannot be hits). The
  hit-rate denominator is the dormant users with a non-empty ``T_u``; users who only come back to
  items they had already seen are counted separately (``n_returned_repeat_only``).
* A **hit** for ``u`` = one of its top-K recommended items is in ``T_u`` (``HR@K``; NDCG@K and the
  capped recall@K as in :mod:`fedrec.eval.metrics`).
* **Lift** of model A over baseline B = ``HR@K(A) / HR@K(B)`` on the same users, with a paired
  bootstrap interval of the ratio of means (users resampled jointly) and of the difference.
* **Targeting**: rank users by a propensity score; ``top-decile lift = return rate among the top 10%
  / base return rate``.
* **Rolling cuts** (:func:`rolling_cuts`, :func:`pooled_setups`): the same at several cut dates, the
  evaluated dormant customers pooled into *cases* (a customer dormant at several cuts is one case per
  cut). A customer's cases are not independent, so intervals resample **customers**
  (:func:`customer_bootstrap`: the mean over the cases of the resampled customers; paired when given
  a second model's values on the same cases).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedrec.eval.metrics import CI, bootstrap_ci, paired_bootstrap_diff, ranking_metrics

DAY = 86_400


def _require(df: pd.DataFrame, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")


def user_history(interactions: pd.DataFrame, as_of: int) -> pd.DataFrame:
    """Per user with rows before ``as_of``: ``n_history, first_activity, last_activity`` (index user_id)."""
    _require(interactions, "interactions")
    before = interactions.loc[interactions["timestamp"].to_numpy() < as_of]
    g = before.groupby("user_id", sort=True)["timestamp"]
    return pd.DataFrame({"n_history": g.size(), "first_activity": g.min(), "last_activity": g.max()})


def dormant_users(interactions: pd.DataFrame, as_of: int, inactive_days: float = 30.0,
                  min_history: int = 5) -> pd.DataFrame:
    """Users dormant at ``as_of``: ``user_id, n_history, first_activity, last_activity, days_inactive``.

    Sorted by user id. ``inactive_days`` must be > 0 and ``min_history`` >= 1.
    """
    if inactive_days <= 0:
        raise ValueError(f"inactive_days must be > 0, got {inactive_days!r}")
    if min_history < 1:
        raise ValueError(f"min_history must be >= 1, got {min_history!r}")
    hist = user_history(interactions, as_of)
    quiet = hist["last_activity"].to_numpy() < as_of - inactive_days * DAY
    out = hist.loc[quiet & (hist["n_history"].to_numpy() >= min_history)].copy()
    out["days_inactive"] = (as_of - out["last_activity"].to_numpy()) / DAY
    return out.reset_index()


@dataclass
class RetentionSetup:
    """The users and targets of one retention evaluation (see the module docstring).

    ``dormant``: every dormant user with ``returned`` (bool) and ``n_relevant``; ``eval_users``: those
    with a non-empty relevant set, in ``dormant`` order; ``relevant[j]`` belongs to ``eval_users[j]``.
    """

    cut_ts: int
    before: pd.DataFrame
    after: pd.DataFrame
    dormant: pd.DataFrame
    eval_users: np.ndarray
    relevant: list[set[object]]

    @property
    def eval_history(self) -> np.ndarray:
        d = self.dormant.set_index("user_id")
        return d.loc[self.eval_users, "n_history"].to_numpy()

    def summary(self) -> dict[str, int]:
        returned = self.dormant["returned"].to_numpy()
        return {"cut_ts": int(self.cut_ts), "n_before": len(self.before), "n_after": len(self.after),
                "n_dormant": len(self.dormant), "n_returned": int(returned.sum()),
                "n_eval": len(self.eval_users),
                "n_returned_repeat_only": int(returned.sum()) - len(self.eval_users)}


def retention_setup(interactions: pd.DataFrame, cut_ts: int, inactive_days: float = 30.0,
                    min_history: int = 5, horizon_days: float | None = None) -> RetentionSetup:
    """Split at ``cut_ts`` and find the dormant users, who returned, and their relevant sets."""
    _require(interactions, "interactions")
    ts = interactions["timestamp"].to_numpy()
    before = interactions.loc[ts < cut_ts].reset_index(drop=True)
    after_mask = ts >= cut_ts
    if horizon_days is not None:
        after_mask &= ts < cut_ts + horizon_days * DAY
    after = interactions.loc[after_mask].reset_index(drop=True)
    dormant = dormant_users(interactions, cut_ts, inactive_days, min_history)
    users = dormant["user_id"].to_numpy()
    dormant["returned"] = pd.Index(users).isin(pd.Index(after["user_id"].unique()))
    seen = before.loc[before["user_id"].isin(users)].groupby("user_id")["item_id"].agg(set)
    later = after.loc[after["user_id"].isin(users)].groupby("user_id")["item_id"].agg(set)
    rel = [later.get(u, set()) - seen.get(u, set()) for u in users]
    dormant["n_relevant"] = [len(r) for r in rel]
    keep = dormant["n_relevant"].to_numpy() > 0
    return RetentionSetup(int(cut_ts), before, after, dormant, users[keep],
                          [r for r, k in zip(rel, keep, strict=True) if k])


def per_user_metrics(recommended: np.ndarray, relevant: Sequence[set[object]], k: int = 10
                     ) -> dict[str, np.ndarray]:
    """Per-user ``hr, ndcg, recall`` at ``k`` (ids compared by string form: ``"7"`` matches ``7``)."""
    rec = np.asarray(recommended, dtype=object)
    rec_s = np.vectorize(str, otypes=[object])(rec) if rec.size else rec
    rel_s = [{str(x) for x in r} for r in relevant]
    return ranking_metrics(rec_s, rel_s, k)


def metric_cis(per_user: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, CI]:
    """Bootstrap CI (users resampled) of the mean of every per-user metric."""
    return {name: bootstrap_ci(v, n_boot=n_boot, seed=seed) for name, v in per_user.items()}


def paired_ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
                    seed: int = 0) -> CI:
    """CI of ``mean(a) / mean(b)`` resampling the paired units jointly (resamples with ``mean(b) = 0``
    are dropped; the point estimate is ``inf`` when ``mean(b) = 0``)."""
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if va.shape != vb.shape or va.ndim != 1 or va.size == 0:
        raise ValueError(f"paired_ratio_ci needs two equal-length non-empty 1-D arrays, got {va.shape}, "
                         f"{vb.shape}")
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    for j in range(n_boot):
        idx = rng.integers(0, va.size, va.size)
        den = vb[idx].mean()
        ratios[j] = va[idx].mean() / den if den > 0 else np.nan
    ratios = ratios[np.isfinite(ratios)]
    point = float(va.mean() / vb.mean()) if vb.mean() > 0 else float("inf")
    if ratios.size == 0:
        return CI(point, float("nan"), float("nan"))
    lo, hi = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return CI(point, float(lo), float(hi))


def lift(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, CI]:
    """``ratio`` (A over B) and ``diff`` (A − B) of per-user metric means with paired bootstrap CIs."""
    return {"ratio": paired_ratio_ci(a, b, n_boot=n_boot, seed=seed),
            "diff": paired_bootstrap_diff(a, b, n_boot=n_boot, seed=seed)}


def history_bins(n_history: np.ndarray, edges: Sequence[int] = (5, 10, 20, 50)) -> np.ndarray:
    """Labels ``"5-9"``, ``"10-19"``, ..., ``">=50"`` for history lengths (below ``edges[0]``: ``"<5"``)."""
    h = np.asarray(n_history)
    labels = np.empty(h.shape, dtype=object)
    labels[h < edges[0]] = f"<{edges[0]}"
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        labels[(h >= lo) & (h < hi)] = f"{lo}-{hi - 1}"
    labels[h >= edges[-1]] = f">={edges[-1]}"
    return labels


def top_decile(propensity: np.ndarray, returned: np.ndarray, fraction: float = 0.1) -> dict[str, float]:
    """Return rate among the top ``fraction`` by propensity vs the base rate (ties broken by position).

    ``{"n", "n_top", "base_rate", "top_rate", "lift"}``; ``lift = top_rate / base_rate``.
    """
    p = np.asarray(propensity, np.float64)
    y = np.asarray(returned, bool)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"propensity and returned must be equal-length and non-empty, got {p.shape}, "
                         f"{y.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_top = max(1, int(round(fraction * p.size)))
    top = np.argsort(-p, kind="stable")[:n_top]
    base = float(y.mean())
    rate = float(y[top].mean())
    return {"n": int(p.size), "n_top": n_top, "base_rate": base, "top_rate": rate,
            "lift": rate / base if base > 0 else float("inf")}


# ------------------------------------------------------------------------------------ rolling cut dates
def rolling_cuts(interactions: pd.DataFrame, start: int, stop: int, step_days: float) -> list[int]:
    """Cut dates ``start, start + step, ...`` up to ``stop`` (inclusive), each validated to lie inside
    the data's time range (Unix seconds)."""
    _require(interactions, "interactions")
    if step_days <= 0:
        raise ValueError(f"rolling_cuts: step_days must be > 0, got {step_days!r}")
    lo, hi = int(interactions["timestamp"].min()), int(interactions["timestamp"].max())
    if not lo < start <= stop <= hi:
        raise ValueError(f"rolling_cuts: need {lo} < start <= stop <= {hi} (the data's time range), got "
                         f"start={start}, stop={stop}")
    return [int(t) for t in np.arange(start, stop + 1, step_days * DAY)]


@dataclass
class PooledCases:
    """Dormant-customer cases pooled over several cuts: case ``j`` is customer ``users[j]`` at cut
    ``cuts[j]`` (a customer dormant at several cuts is one case per cut) with relevant set
    ``relevant[j]``; ``setups`` are the per-cut setups the cases come from, in cut order."""

    cuts: np.ndarray
    users: np.ndarray
    relevant: list[set[object]]
    setups: list[RetentionSetup]

    @property
    def n_customers(self) -> int:
        return len(pd.unique(pd.Series(self.users, dtype=object)))

    def summary(self) -> dict[str, object]:
        return {"n_cuts": len(self.setups), "n_cases": len(self.users), "n_customers": self.n_customers,
                "n_dormant": int(sum(len(s.dormant) for s in self.setups)),
                "cases_per_cut": [len(s.eval_users) for s in self.setups]}


def pooled_setups(interactions: pd.DataFrame, cuts: Sequence[int], inactive_days: float = 30.0,
                  min_history: int = 5, horizon_days: float | None = None) -> PooledCases:
    """:func:`retention_setup` at every cut, the evaluated dormant customers pooled (module docstring)."""
    if not len(cuts):
        raise ValueError("pooled_setups: give at least one cut date")
    if sorted(set(cuts)) != list(cuts):
        raise ValueError(f"pooled_setups: cut dates must be increasing and distinct, got {list(cuts)}")
    setups = [retention_setup(interactions, int(t), inactive_days, min_history, horizon_days) for t in cuts]
    users = np.concatenate([s.eval_users for s in setups]) if setups else np.zeros(0, dtype=object)
    if not len(users):
        raise ValueError(f"pooled_setups: no dormant customer returned with a new item at any of the "
                         f"{len(cuts)} cut(s); widen the cuts or the horizon")
    at = np.concatenate([np.full(len(s.eval_users), s.cut_ts, dtype=np.int64) for s in setups])
    relevant = [r for s in setups for r in s.relevant]
    return PooledCases(at, users, relevant, setups)


def _cluster_index(customers: np.ndarray) -> tuple[np.ndarray, int]:
    codes, uniq = pd.factorize(pd.Series(np.asarray(customers, dtype=object)), sort=True)
    return np.asarray(codes, dtype=np.int64), len(uniq)


def customer_bootstrap(values: np.ndarray, customers: np.ndarray, other: np.ndarray | None = None,
                       n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> CI:
    """Percentile CI of the mean over cases of ``values`` (minus ``other``'s: the paired difference),
    resampling **customers** with replacement (all of a customer's cases together), so a customer
    dormant at several cuts does not count as independent evidence."""
    v = np.asarray(values, np.float64)
    o = None if other is None else np.asarray(other, np.float64)
    if v.ndim != 1 or v.size == 0 or len(customers) != v.size or (o is not None and o.shape != v.shape):
        raise ValueError(f"customer_bootstrap: values, customers (and other) must be equal-length non-empty "
                         f"1-D arrays, got {v.shape}, {len(customers)}, {None if o is None else o.shape}")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"customer_bootstrap: need n_boot >= 1 and alpha in (0, 1), got {n_boot}, {alpha}")
    d = v if o is None else v - o
    codes, n_c = _cluster_index(customers)
    sums = np.bincount(codes, weights=d, minlength=n_c)
    counts = np.bincount(codes, minlength=n_c).astype(np.float64)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for j in range(n_boot):
        pick = np.bincount(rng.integers(0, n_c, n_c), minlength=n_c)
        boots[j] = (pick @ sums) / (pick @ counts)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return CI(float(d.mean()), float(lo), float(hi))
