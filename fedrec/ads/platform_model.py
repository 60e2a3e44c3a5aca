"""The ad platform's conversion model on its own click features, trained on what the advertiser returns.

A logistic regression on one-hot *feature groups* of the platform's columns (a group is one column, e.g.
``channel``, or a cross of columns, e.g. ``("channel", "hour")``; numeric columns are standardized)::

    p(x_i) = sigmoid(b + x_i . w)
    L(w, b) = sum_i log(1 + exp(b + x_i . w)) - (s . w + s_0 b) + (l2 / 2) |w|^2,
    s = sum_i t_i x_i,  s_0 = sum_i t_i

The data enter the loss only through the *sufficient statistics* ``s`` (per one-hot level: the number of
conversions among the clicks with that level) and ``s_0`` (all conversions). So one fitter serves every
form of returned conversions:

* exact or randomized labels ``t_i = y_i`` / ``t_i = r_i`` (:meth:`PlatformLogit.fit`);
* debiased randomized-response labels ``t_i = (r_i - q) / (1 - 2q)`` (unbiased for ``y_i``, hence an
  unbiased loss, since the loss is linear in ``t``);
* noisy aggregate reports: a report by the dimensions of a group *is* that group's ``s`` (conversions per
  cell), plus noise (:meth:`PlatformLogit.fit_stats`).

Noisy statistics are projected onto what they estimate before fitting (post-processing, free under DP):
a cell's conversions lie in ``[0, n_j]`` (``n_j`` = the platform's own click count of the cell), which also
keeps the problem bounded (a negative ``s_j`` would push ``w_j`` to ``-inf``). ``l2`` shrinks small cells to
the global rate. Minimised by Newton-CG with exact Hessian-vector products
``H v = X^T (p (1 - p) * X v) + l2 v`` (the loss is convex); the intercept is not penalised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import minimize

if TYPE_CHECKING:
    from fedrec.ads.returns import AggregateReport, EventReturn, PriorModel

log = logging.getLogger(__name__)

Group = str | tuple[str, ...]

__all__ = ["Group", "OneHotGroups", "PlatformLogit", "fit_on_event_return", "fit_on_reports", "group_key",
           "group_name", "rr_prior_model"]


def group_name(group: Group) -> str:
    """``"channel"`` or ``"channel×hour"``."""
    return group if isinstance(group, str) else "×".join(group)


def group_key(frame: pd.DataFrame, group: Group) -> pd.Series:
    """The cell of every row in ``group`` as a string (``"213"``, ``"213|h09"`` for a cross)."""
    cols = [group] if isinstance(group, str) else list(group)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise KeyError(f"group {group_name(group)!r}: column(s) {missing} not in {list(frame.columns)}")
    key = frame[cols[0]].astype("str")
    for c in cols[1:]:
        key = key + "|" + frame[c].astype("str")
    return key.rename(group_name(group))


@dataclass
class _Block:
    name: str
    levels: pd.Index | None  # categorical: the training levels; None: numeric
    mean: float = 0.0
    sd: float = 1.0


class OneHotGroups:
    """One-hot encoding of categorical groups (levels seen in :meth:`fit`; an unseen level encodes to
    zeros, i.e. the global rate) and standardized numeric columns."""

    def __init__(self, groups: Sequence[Group], numeric: Sequence[str] = ()) -> None:
        if not groups and not numeric:
            raise ValueError("OneHotGroups: no feature group")
        self.groups = list(groups)
        self.numeric = list(numeric)
        self.blocks: list[_Block] = []
        self.offsets: dict[str, int] = {}
        self.n_features = 0

    def fit(self, frame: pd.DataFrame) -> OneHotGroups:
        self.blocks, self.offsets, off = [], {}, 0
        for g in self.groups:
            levels = pd.Index(pd.unique(group_key(frame, g))).sort_values()
            self.blocks.append(_Block(group_name(g), levels))
            self.offsets[group_name(g)] = off
            off += len(levels)
        for c in self.numeric:
            v = frame[c].to_numpy(dtype=np.float64)
            sd = float(v.std())
            self.blocks.append(_Block(c, None, float(v.mean()), sd if sd > 0 else 1.0))
            self.offsets[c] = off
            off += 1
        self.n_features = off
        return self

    def level_index(self, group: Group, cells: Sequence[str] | pd.Index) -> np.ndarray:
        """Feature indices of ``cells`` of a categorical group (``-1`` for a cell unseen in :meth:`fit`)."""
        name = group_name(group)
        block = next((b for b in self.blocks if b.name == name and b.levels is not None), None)
        if block is None or block.levels is None:
            raise KeyError(f"no categorical group {name!r} in this encoding")
        pos = block.levels.get_indexer(pd.Index(list(map(str, cells))))
        return np.where(pos >= 0, pos + self.offsets[name], -1)

    def transform(self, frame: pd.DataFrame) -> sp.csr_matrix:
        if not self.blocks:
            raise RuntimeError("OneHotGroups: call fit() first")
        n = len(frame)
        rows, cols, vals = [], [], []
        for g, block in zip(self.groups, self.blocks, strict=False):
            assert block.levels is not None
            pos = block.levels.get_indexer(pd.Index(group_key(frame, g)))
            ok = pos >= 0
            rows.append(np.flatnonzero(ok))
            cols.append(pos[ok] + self.offsets[block.name])
            vals.append(np.ones(int(ok.sum())))
        for block in self.blocks[len(self.groups):]:
            rows.append(np.arange(n))
            cols.append(np.full(n, self.offsets[block.name]))
            vals.append((frame[block.name].to_numpy(dtype=np.float64) - block.mean) / block.sd)
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n, self.n_features))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class PlatformLogit:
    """L2-regularised logistic regression on :class:`OneHotGroups`, fitted from sufficient statistics
    (see the module docstring). ``l2`` is the penalty on the *summed* loss (scikit-learn's ``1 / C``)."""

    def __init__(self, groups: Sequence[Group], numeric: Sequence[str] = (), *, l2: float = 1.0,
                 max_iter: int = 500) -> None:
        if not l2 > 0:
            raise ValueError(f"PlatformLogit: l2 must be > 0, got {l2!r}")
        self.encoder = OneHotGroups(groups, numeric)
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0

    def fit(self, frame: pd.DataFrame, targets: np.ndarray, *, clip_stats: bool = False) -> PlatformLogit:
        """Fit on per-click targets ``t`` (0/1 labels, randomized labels or debiased soft labels).
        ``clip_stats``: project every level's ``s_j`` onto ``[0, n_j]`` and ``s_0`` onto ``[0, n]`` (for
        debiased labels, whose sums can leave that range)."""
        t = np.asarray(targets, dtype=np.float64)
        if t.shape != (len(frame),) or not np.isfinite(t).all():
            raise ValueError(f"PlatformLogit.fit: targets must be {len(frame)} finite numbers, got shape "
                             f"{t.shape}")
        X = self.encoder.fit(frame).transform(frame)
        s, s0 = np.asarray(X.T @ t).ravel(), float(t.sum())
        if clip_stats:
            s, s0 = self._clip(X, s, s0)
        return self._solve(X, s, s0)

    def fit_stats(self, frame: pd.DataFrame, stats: Mapping[str, pd.Series], total: float | None = None,
                  ) -> PlatformLogit:
        """Fit on the platform's clicks ``frame`` and conversion counts per cell: ``stats[group name]`` is a
        Series indexed by cell key (:func:`group_key`), e.g. one noisy aggregate report per group. Cells
        absent from a report count 0. ``total``: the number of conversions (default: the mean over the
        reports of their sums). Every statistic is clipped to ``[0, n_j]`` first."""
        X = self.encoder.fit(frame).transform(frame)
        s = np.zeros(self.encoder.n_features)
        sums = []
        for g in self.encoder.groups:
            name = group_name(g)
            if name not in stats:
                raise KeyError(f"PlatformLogit.fit_stats: no statistics for group {name!r}; have "
                               f"{sorted(stats)}")
            rep = stats[name]
            idx = self.encoder.level_index(g, rep.index.astype("str"))
            known = idx >= 0
            s[idx[known]] = rep.to_numpy(dtype=np.float64)[known]
            sums.append(float(rep.sum()))
        if self.encoder.numeric:
            raise ValueError("PlatformLogit.fit_stats: numeric columns have no per-cell statistics")
        s0 = float(np.mean(sums)) if total is None else float(total)
        s, s0 = self._clip(X, s, s0)
        return self._solve(X, s, s0)

    @staticmethod
    def _clip(X: sp.csr_matrix, s: np.ndarray, s0: float) -> tuple[np.ndarray, float]:
        n_j = np.asarray(X.sum(axis=0)).ravel()
        onehot = np.asarray((X != 0).sum(axis=0)).ravel() == n_j  # numeric columns are not counts
        s = np.where(onehot, np.clip(s, 0.0, n_j), s)
        return s, float(np.clip(s0, 0.0, X.shape[0]))

    def _solve(self, X: sp.csr_matrix, s: np.ndarray, s0: float) -> PlatformLogit:
        d = X.shape[1]
        Xt = X.T.tocsr()

        scale = 1.0 / max(X.shape[0], 1)  # the mean loss: tolerances independent of n

        def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:d], theta[d]
            z = X @ w + b
            loss = float(np.logaddexp(0.0, z).sum() - s @ w - s0 * b + 0.5 * self.l2 * w @ w)
            p = _sigmoid(z)
            grad = np.empty(d + 1)
            grad[:d] = Xt @ p - s + self.l2 * w
            grad[d] = p.sum() - s0
            return loss * scale, grad * scale

        def hessp(theta: np.ndarray, v: np.ndarray) -> np.ndarray:
            p = _sigmoid(X @ theta[:d] + theta[d])
            r = p * (1.0 - p) * (X @ v[:d] + v[d])
            out = np.empty(d + 1)
            out[:d] = Xt @ r + self.l2 * v[:d]
            out[d] = r.sum()
            return out * scale

        rate = min(max(s0 / max(X.shape[0], 1), 1e-6), 1 - 1e-6)
        theta0 = np.zeros(d + 1)
        theta0[d] = np.log(rate / (1 - rate))
        res = minimize(f, theta0, jac=True, hessp=hessp, method="Newton-CG",
                       options={"maxiter": self.max_iter, "xtol": 1e-6})
        if not res.success:
            log.info("PlatformLogit: Newton-CG stopped after %d iterations: %s", res.nit, res.message)
        self.coef_, self.intercept_ = res.x[:d], float(res.x[d])
        return self

    def decision_function(self, frame: pd.DataFrame) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError("PlatformLogit: call fit() or fit_stats() first")
        return np.asarray(self.encoder.transform(frame) @ self.coef_ + self.intercept_, dtype=np.float64)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """P(conversion | the platform's features) per click of ``frame``."""
        return _sigmoid(self.decision_function(frame))


# --------------------------------------------------------------------------------------------- returned forms
def fit_on_event_return(features: pd.DataFrame, ret: EventReturn, groups: Sequence[Group],
                        numeric: Sequence[str] = (), *, l2: float = 1.0, debias: bool = False
                        ) -> PlatformLogit:
    """The platform's model on an event-level return: ``features`` (the platform's columns, indexed by click
    id) of the returned clicks, target = the returned bit. ``debias``: plain-RR bits debiased
    (``(r - q) / (1 - 2q)``, statistics clipped). For a staged RRWithPrior return only the prior stages'
    clicks are used (the first stage's plain-RR bits served to build the prior)."""
    from fedrec.ads.returns import rr_debias

    keep = np.ones(len(ret.click_ids), dtype=bool) if ret.stage is None else ret.stage > 0
    X = features.loc[ret.click_ids[keep]]
    t = ret.returned[keep].astype(np.float64)
    model = PlatformLogit(groups, numeric, l2=l2)
    if debias and ret.mechanism == "rr":
        return model.fit(X, rr_debias(t, ret.epsilon), clip_stats=True)
    return model.fit(X, t)


def fit_on_reports(features: pd.DataFrame, reports: Sequence[AggregateReport], *, l2: float = 1.0,
                   shrink: bool = False) -> PlatformLogit:
    """The platform's model on aggregate reports: one one-hot group per report (its dimensions), fitted on
    the platform's clicks ``features`` (which must hold the report dimensions, e.g. from
    :func:`fedrec.ads.returns.report_cells`) with each report's noisy conversions as that group's
    statistics (clipped to ``[0, clicks]``).

    ``shrink``: post-processing against the noise (no privacy cost: it uses only the public noise
    scale). The L2 penalty, which pulls each cell's log-odds towards the common intercept, becomes
    ``l2 + Σ_reports Var(noise per cell)`` (Laplace ``2 b²``, Gaussian ``σ²``), so that a cell whose count
    is mostly noise is pulled in as hard as its noise deserves: on TalkingData by channel at ε = 1 it
    lowers the AUC cost against exact reports (``benchmarks/results/ads.md``, "post-processing")."""
    if not reports:
        raise ValueError("fit_on_reports: no report")
    groups = [r.group for r in reports]
    stats = {group_name(r.group): r.stats() for r in reports}
    if shrink:
        l2 = l2 + sum((2.0 if r.mechanism == "laplace" else 1.0) * r.scale ** 2 for r in reports)
    return PlatformLogit(groups, l2=l2).fit_stats(features, stats)


def rr_prior_model(groups: Sequence[Group], numeric: Sequence[str] = (), *, epsilon: float,
                   l2: float = 1.0) -> PriorModel:
    """A prior model for :func:`fedrec.ads.returns.return_staged_with_prior`: a :class:`PlatformLogit` on
    ``groups`` of the features fitted on the plain-RR bits as they are (it estimates
    ``P(r = 1 | x) = q + (1 - 2q) p(y = 1 | x)``), then the RR channel inverted:
    ``p(y = 1 | x) = clip((P(r = 1 | x) - q) / (1 - 2q), 0, 1)``. (Fitting on debiased bits instead was
    tried: with clipped statistics it is calibrated far too low on rare conversions, and every click
    then gets the deterministic 0.)"""
    from fedrec.ads.returns import rr_flip_probability

    q = rr_flip_probability(epsilon)

    def prior(done: pd.DataFrame, bits: np.ndarray, todo: pd.DataFrame) -> np.ndarray:
        if len(done) == 0:
            return np.full(len(todo), 0.5)
        model = PlatformLogit(groups, numeric, l2=l2).fit(done, np.asarray(bits, dtype=np.float64))
        return np.clip((model.predict_proba(todo) - q) / (1.0 - 2.0 * q), 0.0, 1.0)

    return prior
