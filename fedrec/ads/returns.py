"""Conversions returned to the ad platform under differential privacy: event-level and aggregate.

**Event-level** (:class:`EventReturn`): the platform gets every click of the campaign with a randomized
conversion bit, so converters are mixed with the other clickers. Unit: the label of one click (replace
one label); a user with ``m`` returned clicks has ``m ε`` (reported as ``epsilon_user``).

* Randomized response (:func:`return_randomized`): the true bit ``y`` is flipped with probability
  ``q = 1 / (1 + e^ε)``. ε-DP: ``P(r | y) / P(r | 1 - y) ∈ {(1 - q)/q, q/(1 - q)} = {e^ε, e^-ε}``.
  Debiasing (:func:`rr_debias`): ``ŷ = (r - q) / (1 - 2q)`` has ``E[ŷ | y] = y``, so means of ``ŷ`` are
  unbiased conversion rates (:func:`rr_rate`) and losses linear in ``y`` (log-loss) are unbiased.
* Randomized response with a prior (RRWithPrior, Ghazi, Golowich, Kumar, Manurangsi, Zhang, "Deep
  Learning with Label Differential Privacy", NeurIPS 2021, Algorithm 2). Given a prior ``p`` over the
  ``K`` labels and ``Y_k`` its ``k`` most likely labels, take
  ``k* = argmax_k  (sum_{y in Y_k} p_y) · e^ε / (e^ε + k - 1)`` (the probability of a correct output)
  and run RR on ``Y_{k*}`` (RRTop-k, Algorithm 1): a label in ``Y_k`` is kept w.p. ``e^ε / (e^ε + k - 1)``
  and otherwise one of the other ``k - 1`` is output uniformly; a label outside ``Y_k`` gives a uniform
  element of ``Y_k``. ε-DP for every prior that does not depend on the label: for an output ``o`` of
  positive probability, ``P(o | y) ∈ {e^ε/(e^ε+k-1), 1/(e^ε+k-1), 1/k}`` and the largest over the
  smallest is at most ``e^ε`` (``k ≤ e^ε + k - 1``, ``e^ε + k - 1 ≤ k e^ε``); ``k* = 1`` outputs the
  prior's top label whatever ``y`` is (0-DP). For a binary conversion: the top label deterministically
  when the prior's confidence exceeds ``e^ε / (1 + e^ε)``, plain RR otherwise.

  *The prior must not depend on the labels being returned* - not merely on the click's own label: a
  prior fitted on other returned clicks' true labels would leak those. Two ways are supported:
  a prior from a model of a *previous period* (or any fold that is not part of this return; that
  model's own training labels are then not covered by this ε) passed to :func:`return_with_prior`, or
  the multi-stage protocol of the paper (LP-MST, :func:`return_staged_with_prior`): the clicks are split at
  random into stages; stage 1 gets plain RR; the prior for stage ``t`` is fitted on the *randomized*
  outputs of the earlier stages (post-processing). Every click is randomized once on disjoint stages, so
  the whole return is ε-DP per click label (parallel composition).

**Aggregate** (:class:`AggregateReport`, in the style of the Attribution Reporting API's summary
reports): conversions summed over cells of the platform's dimensions (``campaign``, ``channel``,
``day``, ``hour``...). Unit: a user (add/remove all of one user's conversions). Contribution bounding: a
user's conversions count in time order until their total reaches ``cap`` (values clipped to
``value_cap``), so one user moves the cell vector by at most ``cap`` in L1 (and in L2). Noise on every
cell the platform has clicks in (a data-independent domain: the platform logged those clicks)::

    Laplace   count + Lap(cap / ε)                        ε-DP
    Gaussian  count + N(0, (z · cap)²)                    z from the RDP accountant (ε, δ) for the reports

Several reports split the budget: Laplace ``ε / m`` each (basic composition), Gaussian one common
``z`` such that the ``m`` releases compose to ``(ε, δ)`` under RDP. Every release is charged to a
:class:`~fedrec.ads.budget.PrivacyBudget` (when given) *before* its noise is drawn; a release beyond the
budget is refused. ``ε = inf`` returns the exact values (no DP, logged as a warning; never charged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedrec.ads.budget import PrivacyBudget, Release
from fedrec.ads.data import ClickLog
from fedrec.crypto.dp import PrivacyAccountant, gaussian_mechanism, laplace_mechanism, noise_multiplier_for
from fedrec.crypto.masks import secure_rng

log = logging.getLogger(__name__)

__all__ = ["AggregateReport", "EventReturn", "PriorModel", "aggregate_report", "aggregate_reports",
           "bound_contributions", "report_cells", "return_randomized", "return_staged_with_prior",
           "return_with_prior", "rr_debias", "rr_flip_probability", "rr_prior_k", "rr_prior_table", "rr_rate",
           "rr_with_prior"]


def _epsilon(epsilon: float) -> float:
    e = float(epsilon)
    if not e > 0 or math.isnan(e):
        raise ValueError(f"epsilon must be > 0 (math.inf: no DP), got {epsilon!r}")
    if math.isinf(e):
        log.warning("epsilon = inf: the exact conversions are returned (no differential privacy)")
    return e


# --------------------------------------------------------------------------------------------- RR
def rr_flip_probability(epsilon: float) -> float:
    """``q = 1 / (1 + e^ε)`` (0 for ``ε = inf``)."""
    e = float(epsilon)
    return 0.0 if math.isinf(e) else 1.0 / (1.0 + math.exp(e))


def rr_debias(reports: np.ndarray, epsilon: float) -> np.ndarray:
    """Per-click unbiased labels ``(r - q) / (1 - 2q)`` of binary RR reports."""
    q = rr_flip_probability(_epsilon(epsilon))
    return (np.asarray(reports, dtype=np.float64) - q) / (1.0 - 2.0 * q)


def rr_rate(reports: np.ndarray, epsilon: float) -> tuple[float, float]:
    """The unbiased conversion rate of a group of RR reports and its standard error,
    ``sqrt(m (1 - m) / n) / (1 - 2q)`` with ``m`` the mean report."""
    r = np.asarray(reports, dtype=np.float64)
    if r.size == 0:
        raise ValueError("rr_rate: no reports")
    q = rr_flip_probability(_epsilon(epsilon))
    m = float(r.mean())
    return (m - q) / (1 - 2 * q), math.sqrt(m * (1 - m) / r.size) / (1 - 2 * q)


def _prior(prior: np.ndarray, n: int | None = None) -> np.ndarray:
    """``(n, K)`` probabilities; a 1-D prior is ``p(y = 1)`` of a binary label."""
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] < 2 or (n is not None and p.shape[0] != n):
        raise ValueError(f"prior: expected ({n if n is not None else 'n'}, K >= 2) probabilities or n values "
                         f"p(y=1), got shape {np.shape(prior)}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("prior: every row must be finite, non-negative and sum to 1")
    return p


def rr_prior_k(prior: np.ndarray, epsilon: float) -> np.ndarray:
    """RRWithPrior's ``k*`` per row: ``argmax_k (sum of the top-k prior) e^ε / (e^ε + k - 1)`` (the
    smallest such ``k`` on ties)."""
    p = _prior(prior)
    e = math.exp(_epsilon(epsilon)) if not math.isinf(epsilon) else math.inf
    if math.isinf(e):
        return np.full(p.shape[0], p.shape[1], dtype=np.int64)
    top = np.cumsum(-np.sort(-p, axis=1), axis=1)
    k = np.arange(1, p.shape[1] + 1)
    return (np.argmax(top * (e / (e + k - 1)), axis=1) + 1).astype(np.int64)


def rr_prior_table(prior: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """``(P, k*)``: ``P[i, y, o]`` = probability that RRWithPrior outputs ``o`` for true label ``y`` under
    row ``i``'s prior (module docstring); ``k*`` per row. Exact labels for ``ε = inf``."""
    p = _prior(prior)
    n, K = p.shape
    k = rr_prior_k(p, epsilon)
    if math.isinf(float(epsilon)):
        return np.broadcast_to(np.eye(K), (n, K, K)).copy(), k
    e = math.exp(float(epsilon))
    rank = np.empty_like(p, dtype=np.int64)
    np.put_along_axis(rank, np.argsort(-p, axis=1, kind="stable"), np.arange(K)[None, :].repeat(n, 0), axis=1)
    in_top = rank < k[:, None]  # (n, K): label in Y_k*
    keep, other = e / (e + k - 1), 1.0 / (e + k - 1)
    P = np.where(in_top[:, None, :], other[:, None, None], 0.0)  # y in Y_k: others of Y_k at 1/(e^ε+k-1)
    eye = np.eye(K, dtype=bool)[None]
    P = np.where(eye & in_top[:, None, :], keep[:, None, None], P)
    outside = np.where(in_top, 1.0 / k[:, None], 0.0)  # y not in Y_k: uniform over Y_k
    P = np.where(~in_top[:, :, None], outside[:, None, :], P)
    return P, k


def rr_with_prior(labels: np.ndarray, prior: np.ndarray, epsilon: float,
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample RRWithPrior for integer ``labels`` in ``0..K-1``; returns ``(outputs, k*)``."""
    y = np.asarray(labels)
    p = _prior(prior, len(y))
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"rr_with_prior: labels must be integers in 0..{p.shape[1] - 1}")
    P, k = rr_prior_table(p, epsilon)
    probs = P[np.arange(len(y)), y]
    u = (rng or secure_rng()).random(len(y))
    out = np.minimum((np.cumsum(probs, axis=1) < u[:, None]).sum(axis=1), p.shape[1] - 1)
    return out.astype(np.int64), k


# --------------------------------------------------------------------------------------------- returns
@dataclass(frozen=True)
class EventReturn:
    """An event-level return: per click ``returned`` (the randomized bit), and for RRWithPrior the size
    ``k`` of the click's top-k set (1: the prior's label, no information on the click) and the ``stage``
    (0: plain RR; 1..: a prior stage). ``epsilon`` is per click label; :meth:`frame` is what is sent."""

    click_ids: np.ndarray
    returned: np.ndarray
    mechanism: str
    epsilon: float
    max_clicks_per_user: int
    k: np.ndarray | None = None
    stage: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def epsilon_user(self) -> float:
        """ε for all the returned clicks of one user (basic composition over their clicks)."""
        return self.epsilon * self.max_clicks_per_user

    def frame(self) -> pd.DataFrame:
        """What is sent to the platform: the bit per click id and, for a staged return, the stage (drawn at
        random, independent of the data). ``k`` stays with the advertiser: it is a function of the prior,
        which a previous period's model would leak through."""
        out = pd.DataFrame({"returned": self.returned.astype(np.int8)},
                           index=pd.Index(self.click_ids, name="click_id"))
        if self.stage is not None:
            out["stage"] = self.stage
        return out

    def summary(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "clicks": len(self.click_ids), "returned_positive":
                int(self.returned.sum()), "epsilon_click": self.epsilon, "epsilon_user": self.epsilon_user,
                "max_clicks_per_user": self.max_clicks_per_user, **self.details}


def _release(name: str, kind: str, eps_click: float, eps_user: float, details: dict[str, Any]) -> Release:
    return Release(name, kind, {"click": eps_click, "user": eps_user}, {}, details)


def _charge(budget: PrivacyBudget | None, release: Callable[[], Release], epsilon: float) -> None:
    if budget is not None and not math.isinf(epsilon):
        budget.charge(release())


def _labels(log_: ClickLog) -> tuple[np.ndarray, int]:
    if log_.labels == "none":
        raise ValueError(f"{log_.source}: no conversion labels to return (attribute conversions first)")
    y = log_.frame["converted"].to_numpy(dtype=np.int64)
    m = int(log_.frame["user_id"].value_counts().max()) if len(y) else 0
    return y, m


def return_randomized(log_: ClickLog, epsilon: float, *, budget: PrivacyBudget | None = None,
                      rng: np.random.Generator | None = None, name: str = "rr") -> EventReturn:
    """Every click with its conversion bit under randomized response at ``epsilon`` (module docstring)."""
    eps = _epsilon(epsilon)
    y, m = _labels(log_)
    _charge(budget, lambda: _release(name, "rr", eps, eps * m, {"clicks": len(y)}), eps)
    q = rr_flip_probability(eps)
    flip = (rng or secure_rng()).random(len(y)) < q
    return EventReturn(log_.frame.index.to_numpy(), np.where(flip, 1 - y, y), "rr" if q else "exact", eps, m,
                       details={"flip_probability": q})


def return_with_prior(log_: ClickLog, prior: np.ndarray, epsilon: float, *,
                      budget: PrivacyBudget | None = None, rng: np.random.Generator | None = None,
                      name: str = "rr_prior") -> EventReturn:
    """RRWithPrior with a given prior ``p(y = 1)`` per click (or ``(n, 2)``), which must not depend on the
    labels of this return (e.g. a previous period's model; module docstring)."""
    eps = _epsilon(epsilon)
    y, m = _labels(log_)
    p = _prior(prior, len(y))
    _charge(budget, lambda: _release(name, "rr_prior", eps, eps * m, {"clicks": len(y)}), eps)
    out, k = rr_with_prior(y, p, eps, rng)
    return EventReturn(log_.frame.index.to_numpy(), out, "rr_prior", eps, m, k=k,
                       details={"deterministic_share": float(np.mean(k == 1)) if len(k) else 0.0})


#: ``prior_model(features of returned clicks, their randomized bits (plain-RR outputs only), features of
#: the next stage's clicks) -> p(y = 1)`` for the next stage's clicks
PriorModel = Callable[[pd.DataFrame, np.ndarray, pd.DataFrame], np.ndarray]


def return_staged_with_prior(log_: ClickLog, epsilon: float, prior_model: PriorModel, *,
                             features: pd.DataFrame | None = None, shares: Sequence[float] = (0.5, 0.5),
                             budget: PrivacyBudget | None = None, rng: np.random.Generator | None = None,
                             name: str = "rr_prior_staged") -> EventReturn:
    """RRWithPrior over stages (LP-MST, module docstring): stage 0, a random ``shares[0]`` of the clicks,
    gets plain RR; the prior of stage ``t`` is ``prior_model`` fitted on the clicks already returned by
    plain RR (those with ``k = 2``: their bit is an RR output) - only features and randomized bits reach
    it, never a label. ``features``: the columns the prior model may use, indexed by click id (default:
    campaign, advertiser and platform columns). One release of ``epsilon`` per click label."""
    eps = _epsilon(epsilon)
    y, m = _labels(log_)
    w = np.asarray(shares, dtype=np.float64)
    if w.ndim != 1 or len(w) < 2 or (w <= 0).any():
        raise ValueError(f"return_staged_with_prior: shares must be >= 2 positive numbers, got {shares!r}")
    feats = features if features is not None else log_.frame.loc[
        :, ["campaign", *log_.advertiser_columns, *log_.platform_columns]]
    if len(feats) != len(y) or not feats.index.equals(log_.frame.index):
        raise ValueError("return_staged_with_prior: features must be indexed by the log's click ids")
    _charge(budget, lambda: _release(name, "rr_prior", eps, eps * m, {"clicks": len(y), "stages": len(w)}),
            eps)
    g = rng or secure_rng()
    stage = np.minimum(np.searchsorted(np.cumsum(w / w.sum()), g.random(len(y)), side="right"), len(w) - 1)
    out, k = np.zeros(len(y), np.int64), np.zeros(len(y), np.int64)
    for t in range(len(w)):
        idx = np.flatnonzero(stage == t)
        if not len(idx):
            continue
        if t == 0:
            prior = np.full(len(idx), 0.5)
        else:
            done = np.flatnonzero((stage < t) & (k == 2))
            prior = np.asarray(prior_model(feats.iloc[done], out[done], feats.iloc[idx]), dtype=np.float64)
            if prior.shape != (len(idx),):
                raise ValueError(f"prior_model returned shape {prior.shape}, expected ({len(idx)},)")
        out[idx], k[idx] = rr_with_prior(y[idx], prior, eps, g)
    return EventReturn(log_.frame.index.to_numpy(), out, "rr_prior_staged", eps, m, k=k, stage=stage,
                       details={"shares": w.tolist(), "deterministic_share":
                                float(np.mean(k[stage > 0] == 1)) if (stage > 0).any() else 0.0})


# --------------------------------------------------------------------------------------------- aggregate
def report_cells(log_: ClickLog, dims: Sequence[str]) -> pd.Series:
    """The report cell of every click (``"213|h09"``); ``day`` (UTC date) is derived from the click time
    when the log has no such column."""
    from fedrec.ads.platform_model import group_key

    f = log_.frame
    cols = {}
    for d in dims:
        if d in f.columns:
            cols[d] = f[d]
        elif d == "day" and log_.timed:
            cols[d] = f["time"].dt.strftime("%Y-%m-%d")
        else:
            raise KeyError(f"report dimension {d!r}: not a column of {log_.source} ({list(f.columns)})")
    return group_key(pd.DataFrame(cols, index=f.index), tuple(dims) if len(dims) > 1 else dims[0])


def _raw_contributions(log_: ClickLog, value: str | None, value_cap: float | None) -> np.ndarray:
    v = log_.frame["converted"].to_numpy(dtype=np.float64)
    if value is None:
        return v
    if value_cap is None or not value_cap > 0:
        raise ValueError("bound_contributions: a value report needs value_cap > 0")
    return v * np.clip(log_.frame[value].to_numpy(dtype=np.float64), 0.0, value_cap)


def bound_contributions(log_: ClickLog, cap: float, *, value: str | None = None,
                        value_cap: float | None = None) -> pd.Series:
    """Per click its contribution to a report: its conversion (or ``value`` clipped to ``[0, value_cap]``),
    each user's contributions taken in click-time order until their total reaches ``cap`` (the last one
    cut to fit). Every user's total is then ``<= cap``."""
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"contribution cap must be a positive number, got {cap!r}")
    f = log_.frame
    v = _raw_contributions(log_, value, value_cap)
    user_code = pd.factorize(f["user_id"])[0]
    order = np.lexsort((f.index.to_numpy(), pd.DatetimeIndex(f["time"]).asi8, user_code))
    vs = v[order]
    before = pd.Series(vs).groupby(user_code[order]).cumsum().to_numpy() - vs
    kept = np.empty_like(v)
    kept[order] = np.clip(cap - before, 0.0, vs)
    return pd.Series(kept, index=f.index)


@dataclass(frozen=True)
class AggregateReport:
    """One DP conversion report: ``table`` indexed by cell, ``clicks`` (the platform's own exact count)
    and ``conversions`` (noisy); the noise ``scale`` (Laplace b or Gaussian σ) and this report's ε."""

    name: str
    dims: tuple[str, ...]
    table: pd.DataFrame
    mechanism: str
    epsilon: float
    delta: float
    scale: float
    cap: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str | tuple[str, ...]:
        return self.dims[0] if len(self.dims) == 1 else self.dims

    def stats(self) -> pd.Series:
        """Noisy conversions per cell (for :meth:`fedrec.ads.platform_model.PlatformLogit.fit_stats`)."""
        return self.table["conversions"]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "dims": list(self.dims), "mechanism": self.mechanism,
                "epsilon": self.epsilon, "delta": self.delta, "scale": self.scale, "cap": self.cap,
                **self.details}


def _gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """ε at ``delta`` of one Gaussian release of this noise multiplier (RDP accountant)."""
    acc = PrivacyAccountant("add_remove")
    acc.gaussian(noise_multiplier)
    return acc.epsilon(delta)


def aggregate_report(log_: ClickLog, dims: Sequence[str], *, mechanism: str, epsilon: float,
                     delta: float = 1e-5, noise_multiplier: float | None = None, cap: float = 1.0,
                     value: str | None = None, value_cap: float | None = None,
                     budget: PrivacyBudget | None = None, rng: np.random.Generator | None = None,
                     name: str | None = None) -> AggregateReport:
    """One report of (bounded) conversions per cell of ``dims`` with ``"laplace"`` noise ``Lap(cap / ε)``
    or ``"gaussian"`` noise ``N(0, (z cap)²)``, ``z`` = ``noise_multiplier`` or the RDP calibration of
    ``(ε, δ)`` for one release (module docstring); the report's ``epsilon`` is then that release's own ε at
    ``delta``. Charged to ``budget`` before the noise is drawn."""
    if mechanism not in ("laplace", "gaussian"):
        raise ValueError(f"aggregate_report: mechanism must be 'laplace' or 'gaussian', got {mechanism!r}")
    if log_.labels == "none":
        raise ValueError(f"{log_.source}: no conversion labels to report (attribute conversions first)")
    eps = _epsilon(epsilon)
    dims = tuple(dims)
    report_name = name or f"{mechanism}:{'×'.join(dims)}"
    contrib = bound_contributions(log_, cap, value=value, value_cap=value_cap)
    cells = report_cells(log_, dims)
    exact = contrib.groupby(cells.to_numpy()).sum()
    clicks = cells.value_counts().reindex(exact.index)
    raw = pd.Series(_raw_contributions(log_, value, value_cap), index=log_.frame.index)
    per_user = raw.groupby(log_.frame["user_id"].to_numpy()).sum()
    details = {"cells": len(exact), "value": value, "value_cap": value_cap, "sensitivity_l1": cap,
               "sensitivity_l2": cap, "users_clipped": int((per_user > cap + 1e-12).sum()),
               "contribution_dropped": float(raw.sum() - contrib.sum())}
    if math.isinf(eps):
        z, scale, rel = 0.0, 0.0, None
    elif mechanism == "laplace":
        scale = cap / eps
        rel = Release(report_name, "laplace", {"click": eps, "user": eps}, {},
                      {"dims": list(dims), "b": scale})
    else:
        z = noise_multiplier if noise_multiplier is not None else noise_multiplier_for(eps, delta, 1)
        scale = z * cap
        eps = _gaussian_epsilon(z, delta)
        rel = Release(report_name, "gaussian", {}, {"click": z, "user": z},
                      {"dims": list(dims), "sigma": scale, "delta": delta})
    if budget is not None and rel is not None:
        budget.charge(rel)
    g = rng or secure_rng()
    if math.isinf(eps):
        noisy = exact.to_numpy(dtype=np.float64)
    elif mechanism == "laplace":
        noisy = laplace_mechanism(exact.to_numpy(), eps, cap, g)
    else:
        noisy = gaussian_mechanism(exact.to_numpy(), z, cap, g)
    table = pd.DataFrame({"clicks": clicks.to_numpy(dtype=np.int64), "conversions": noisy}, index=exact.index)
    table.index.name = "cell"
    return AggregateReport(report_name, dims, table, mechanism if not math.isinf(eps) else "exact", eps,
                           delta if mechanism == "gaussian" else 0.0, scale, cap,
                           {**details, **({"noise_multiplier": z} if mechanism == "gaussian" else {})})


def aggregate_reports(log_: ClickLog, dims_list: Sequence[Sequence[str]], *, mechanism: str, epsilon: float,
                      delta: float = 1e-5, cap: float = 1.0, budget: PrivacyBudget | None = None,
                      rng: np.random.Generator | None = None) -> list[AggregateReport]:
    """``m`` reports sharing a total ``epsilon``: Laplace at ``ε / m`` each; Gaussian with one noise
    multiplier whose ``m`` releases compose to ``(ε, δ)`` under RDP (module docstring)."""
    m = len(dims_list)
    if m == 0:
        raise ValueError("aggregate_reports: no report dimensions")
    eps = _epsilon(epsilon)
    z = None
    if mechanism == "gaussian" and not math.isinf(eps):
        z = noise_multiplier_for(eps, delta, m)
    each = eps / m if mechanism == "laplace" else eps
    g = rng or secure_rng()
    return [aggregate_report(log_, dims, mechanism=mechanism, epsilon=each, delta=delta, noise_multiplier=z,
                             cap=cap, budget=budget, rng=g) for dims in dims_list]
