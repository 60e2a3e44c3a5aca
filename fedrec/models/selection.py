"""Hyperparameter selection on validation data carved out of the training set, warm or cold-aware.

A grid point ``p`` (a dict of constructor overrides) is scored by fitting ``make_model(**p)`` on
``train \\ V`` with early stopping on ``V`` and taking the validation RMSE

    RMSE_V(p) = sqrt( mean_{(u, i, r) ∈ V} (ŷ_p(u, i) − r)² )

and the selected point is ``argmin_p RMSE_V(p)`` (ties: the earlier grid point). ``V`` depends on
``mode``:

* ``"cold"``: pseudo-new users of the training set
  (:func:`fedrec.data.split.pseudo_new_user_split` with ``user_fraction``, ``keep_first``, ``seed``):
  a fraction of the users keep only their first ``keep_first`` ratings (by time) in the fitting
  part; ``V`` is their other ratings. This scores the grid the way the new-user test scores the model.
* ``"warm"``: a random ``warm_fraction`` of the training rows
  (:func:`fedrec.data.split.validation_split` with ``seed``); ``V``'s users are mostly heavy users
  already well represented in the fitting part.

The test set is never seen. Like the models' own early stopping, the returned ``best_model`` is the
fit on ``train \\ V`` (no refit on all rows: a refit would need an epoch count without validation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedrec.data.split import pseudo_new_user_split, validation_split
from fedrec.models.base import Recommender
from fedrec.progress import progress_bar

logger = logging.getLogger(__name__)

MODES = ("cold", "warm")


@dataclass
class GridRow:
    """One grid point: its overrides, validation RMSE, best epoch (0 if the model has none), seconds."""

    params: dict[str, Any]
    val_rmse: float
    best_epoch: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "val_rmse": self.val_rmse, "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 1)}


@dataclass
class SelectionResult:
    """The selected overrides, the model fitted with them, the scored grid and the validation split."""

    best_params: dict[str, Any]
    best_model: Recommender
    table: list[GridRow]
    mode: str
    validation_users: np.ndarray
    n_fit: int
    n_validation: int

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "best_params": self.best_params, "n_fit": self.n_fit,
                "n_validation": self.n_validation, "n_validation_users": int(len(self.validation_users)),
                "grid": [r.to_json() for r in self.table]}


def carve_validation(train: pd.DataFrame, mode: str, seed: int, *, user_fraction: float = 0.1,
                     keep_first: int = 5, warm_fraction: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(fit part, validation part)`` of ``train`` for ``mode`` (see the module docstring)."""
    if mode == "cold":
        return pseudo_new_user_split(train, user_fraction=user_fraction, keep_first=keep_first, seed=seed)
    if mode == "warm":
        return validation_split(train, fraction=warm_fraction, seed=seed)
    raise ValueError(f"select_hyperparameters: mode must be one of {MODES}, got {mode!r}")


def select_hyperparameters(make_model: Callable[..., Recommender], grid: Sequence[Mapping[str, Any]],
                           train: pd.DataFrame, user_features: pd.DataFrame | None = None,
                           item_features: pd.DataFrame | None = None, *, mode: str = "cold", seed: int = 0,
                           user_fraction: float = 0.1, keep_first: int = 5, warm_fraction: float = 0.1,
                           show_progress: bool = False) -> SelectionResult:
    """Fit ``make_model(**point)`` for each grid point on ``train \\ V``, early-stop and score on ``V``.

    ``make_model`` must accept the grid's keys as keyword arguments and return an unfitted
    :class:`~fedrec.models.base.Recommender` whose ``fit`` takes ``validation=DataFrame``.
    Returns the lowest-RMSE point (see the module docstring for ``V``).
    """
    if mode not in MODES:
        raise ValueError(f"select_hyperparameters: mode must be one of {MODES}, got {mode!r}")
    points = [dict(p) for p in grid]
    if not points:
        raise ValueError("select_hyperparameters: grid is empty; give at least one dict of overrides "
                         "(use [{}] for the model's defaults)")
    for k, p in enumerate(points):
        if not all(isinstance(key, str) for key in p):
            raise TypeError(f"select_hyperparameters: grid[{k}] keys must be parameter names (str), "
                            f"got {p!r}")
    if not isinstance(train, pd.DataFrame) or "rating" not in train.columns:
        raise ValueError("select_hyperparameters: train must be a DataFrame with a 'rating' column")
    fit_part, val = carve_validation(train, mode, seed, user_fraction=user_fraction, keep_first=keep_first,
                                     warm_fraction=warm_fraction)
    y = val["rating"].to_numpy(dtype=np.float64)
    table: list[GridRow] = []
    best: tuple[float, int, Recommender] | None = None
    for k, point in enumerate(progress_bar(points, desc=f"select[{mode}]", disable=not show_progress)):
        t0 = time.perf_counter()
        model = make_model(**point).fit(fit_part, user_features, item_features, validation=val)
        err = float(np.sqrt(np.mean((model.predict(val) - y) ** 2)))
        epoch = int(getattr(getattr(model, "history", None), "best_epoch", 0) or 0)
        table.append(GridRow(point, err, epoch, time.perf_counter() - t0))
        logger.info("select[%s] %d/%d %s: val RMSE %.5f (best epoch %d, %.1fs)", mode, k + 1, len(points),
                    point, err, epoch, table[-1].seconds)
        if not np.isfinite(err):
            logger.warning("select[%s]: grid point %s gave a non-finite validation RMSE; skipped",
                           mode, point)
            continue
        if best is None or err < best[0]:
            best = (err, k, model)
    if best is None:
        raise RuntimeError(f"select_hyperparameters: every grid point gave a non-finite validation RMSE "
                           f"({mode} mode, {len(val)} validation rows)")
    return SelectionResult(best_params=points[best[1]], best_model=best[2], table=table, mode=mode,
                           validation_users=np.unique(val["user_id"].to_numpy()), n_fit=len(fit_part),
                           n_validation=len(val))
