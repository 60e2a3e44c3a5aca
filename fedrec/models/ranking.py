"""Ranking targets and model selection on a ranking metric (issue #12).

A :class:`RankingTarget` holds, for a validation (or test) slice, the users, their relevant items and
the items each was trained on, in a model's inner ids. Scored by *full ranking*: every item the user
was not trained on competes, as in the leave-last-out protocol of the peer libraries::

    HR@K(u)   = 1[ T_u ∩ top_K(u) ≠ ∅ ]
    NDCG@K(u) = Σ_{i ∈ T_u ∩ top_K(u)} 1 / log2(rank_i + 1)  /  Σ_{r ≤ min(|T_u|, K)} 1 / log2(r + 1)

(:func:`fedrec.eval.metrics.ranking_metrics`, the same definitions). The FM's early stopping
(``early_stopping="hr"|"ndcg"``) uses it after every epoch.

:func:`select_ranking` is model selection with a fixed budget: each grid point is fitted on the training
data minus a validation slice carved **by time** (each user's last interaction: :func:`carve_last`),
early-stopped on HR/NDCG@K when the model can (``best_epoch`` recorded), scored on the slice; the best
point is then **refit on all the training data** with its selected epoch count and no validation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.data.split import leave_last_out
from fedrec.eval.metrics import ranking_metrics
from fedrec.models.base import Recommender, SeenItems, top_k

logger = logging.getLogger(__name__)

METRICS = ("hr", "ndcg")


def carve_last(train: pd.DataFrame, n: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(fit part, validation)``: each user's last ``n`` rows by time (ties by item id) are held out;
    users with ``n`` rows or fewer stay whole (:func:`fedrec.data.split.leave_last_out`)."""
    fit_part, val = leave_last_out(train, n)
    if len(val) == 0:
        raise ValueError(f"carve_last: no user has more than {n} interaction(s); nothing to validate on")
    return fit_part, val


@dataclass
class RankingTarget:
    """Users (inner ids, unique), their relevant inner items and a seen-item filter (``None``: none)."""

    users: np.ndarray
    relevant: list[np.ndarray]
    seen: SeenItems | None

    @classmethod
    def build(cls, model: Recommender, held_out: pd.DataFrame, seen: SeenItems | None) -> RankingTarget:
        """The target of ``held_out`` rows for a model's id maps; rows with an id the model does not
        know are dropped (an unknown item cannot be ranked; an unknown user has no personal scores)."""
        assert model.user_map is not None and model.item_map is not None
        u = model.user_map.to_inner(held_out["user_id"], unknown="mask")
        i = model.item_map.to_inner(held_out["item_id"], unknown="mask")
        keep = (u >= 0) & (i >= 0)
        if not keep.any():
            raise ValueError("RankingTarget: no held-out row has a user and an item known to the model")
        u, i = u[keep], i[keep]
        order = np.lexsort((i, u))
        u, i = u[order], i[order]
        users, starts = np.unique(u, return_index=True)
        return cls(users, np.split(i, starts[1:]), seen)

    def metrics(self, score_rows: Callable[[np.ndarray], np.ndarray], k: int, chunk: int = 512
                ) -> dict[str, np.ndarray]:
        """Per-user ``hr``, ``ndcg``, ``recall`` at ``k``; ``score_rows(users) -> [n, n_items]``."""
        tops = []
        for s in range(0, len(self.users), chunk):
            part = self.users[s:s + chunk]
            scores = np.array(score_rows(part), dtype=np.float64, copy=True)
            if self.seen is not None:
                for r, u in enumerate(part):
                    scores[r, self.seen.row(int(u))] = -np.inf
            tops.append(top_k(torch.from_numpy(scores), min(k, scores.shape[1]))[0].numpy())
        rec = np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)
        return ranking_metrics(rec, [r.tolist() for r in self.relevant], min(k, rec.shape[1]))


@dataclass
class RankingGridRow:
    """One grid point: overrides, validation metric, best epoch (0: the model has none), seconds."""

    params: dict[str, Any]
    hr: float
    ndcg: float
    best_epoch: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "hr": self.hr, "ndcg": self.ndcg, "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 1)}


@dataclass
class RankingSelection:
    """The chosen overrides, the model refit on all training rows, and the scored grid."""

    best_params: dict[str, Any]
    model: Recommender
    table: list[RankingGridRow] = field(default_factory=list)
    metric: str = "ndcg"
    k: int = 10
    refit_params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"metric": f"{self.metric}@{self.k}", "best_params": self.best_params,
                "refit_params": self.refit_params, "grid": [r.to_json() for r in self.table]}


def validation_metrics(model: Recommender, fit_part: pd.DataFrame, val: pd.DataFrame, k: int
                       ) -> dict[str, float]:
    """Mean HR/NDCG@k of a fitted model on ``val``, every item not in ``fit_part`` ranked."""
    target = RankingTarget.build(model, val, model.seen)
    per = target.metrics(model._score_users, k)
    return {"hr": float(per["hr"].mean()), "ndcg": float(per["ndcg"].mean())}


def select_ranking(make_model: Callable[..., Recommender], grid: Sequence[Mapping[str, Any]],
                   train: pd.DataFrame, user_features: pd.DataFrame | None = None,
                   item_features: pd.DataFrame | None = None, *, k: int = 10, metric: str = "ndcg",
                   early_stopping: bool = True, refit: bool = True) -> RankingSelection:
    """Tune ``make_model(**point)`` over ``grid`` on a time-carved validation slice, refit the best.

    With ``early_stopping`` the model gets ``validation=<the slice>`` (FMs given
    ``early_stopping="hr"|"ndcg"`` stop on it; their ``best_epoch`` is the refit's ``epochs``);
    otherwise it is fitted on the fit part as configured. ``refit``: the chosen point is fitted again
    on all of ``train`` with ``epochs=best_epoch`` (when known) and ``validation="none"``; else the
    model fitted on the fit part is returned.
    """
    if metric not in METRICS:
        raise ValueError(f"select_ranking: metric must be one of {METRICS}, got {metric!r}")
    points = [dict(p) for p in grid]
    if not points:
        raise ValueError("select_ranking: grid is empty; give at least one dict of overrides "
                         "([{}]: the defaults)")
    fit_part, val = carve_last(train)
    names = set(make_model(**points[0]).get_params())
    no_refit = {"refit": False} if "refit" in names else {}  # the model's own refit would redo the fit part
    table: list[RankingGridRow] = []
    best: tuple[float, int, Recommender] | None = None
    for j, point in enumerate(points):
        t0 = time.perf_counter()
        model = make_model(**{**point, **no_refit})
        args: dict[str, Any] = {"validation": val} if early_stopping else {}
        model.fit(fit_part, user_features, item_features, **args)
        scores = validation_metrics(model, fit_part, val, k)
        epoch = int(getattr(getattr(model, "history", None), "best_epoch", 0) or 0)
        table.append(RankingGridRow(point, scores["hr"], scores["ndcg"], epoch, time.perf_counter() - t0))
        logger.info("select_ranking %d/%d %s: HR@%d %.4f NDCG@%d %.4f (best epoch %d, %.1fs)", j + 1,
                    len(points), point, k, scores["hr"], k, scores["ndcg"], epoch, table[-1].seconds)
        if best is None or scores[metric] > best[0]:
            best = (scores[metric], j, model)
    assert best is not None
    chosen = points[best[1]]
    if not refit:
        return RankingSelection(chosen, best[2], table, metric, k)
    refit_params = dict(chosen)
    epoch = table[best[1]].best_epoch
    if epoch and "epochs" in names:
        refit_params["epochs"] = epoch
    if "validation" in names:
        refit_params["validation"] = "none"
    if "refit" in names:
        refit_params["refit"] = False
    model = make_model(**refit_params).fit(train, user_features, item_features)
    return RankingSelection(chosen, model, table, metric, k, refit_params)
