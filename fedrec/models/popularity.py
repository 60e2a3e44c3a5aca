"""Popularity baselines: what a recommender must beat.

Ranking score of item ``i`` (the same for every user):

* ``kind="count"``: ``n_i``, the number of training rows of ``i``;
* ``kind="recent"``: ``n_i(T − D, T] + n_i / (1 + N)``, the rows in the last ``window_days`` ``D``
  before the reference time ``T`` (default: the latest training timestamp), ties broken by all-time
  count (``N`` = all training rows, so the tie-breaker never outweighs one recent row).

Rating prediction (``rating=``): ``"global_mean"`` -> ``μ``; ``"item_mean"`` ->
``(Σ_u r_ui + s μ) / (n_i + s)`` with shrinkage ``s`` (``0`` = the plain item mean). An unknown item
falls back to ``μ``; users play no role. Equal scores rank by inner item id (first seen in the rows);
``row_order="canonical"`` takes the rows sorted by (user, item, time), so ties do not depend on the
rows' order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from fedrec.data.idmap import IdMap
from fedrec.models.base import Recommender, canonical_order, expect_array

DAY = 86400.0


@dataclass
class PopularityConfig:
    kind: str = "count"
    window_days: float = 30.0
    reference_time: int | None = None
    rating: str = "item_mean"
    shrinkage: float = 0.0
    row_order: str = "input"

    def __post_init__(self) -> None:
        if self.row_order not in ("input", "canonical"):
            raise ValueError(f"Popularity: row_order must be 'input' or 'canonical', got {self.row_order!r}")
        if self.kind not in ("count", "recent"):
            raise ValueError(f"Popularity: kind must be 'count' or 'recent', got {self.kind!r}")
        if self.rating not in ("item_mean", "global_mean"):
            raise ValueError(f"Popularity: rating must be 'item_mean' or 'global_mean', got {self.rating!r}")
        if self.window_days <= 0 or self.shrinkage < 0:
            raise ValueError(f"Popularity: need window_days > 0 and shrinkage >= 0, got "
                             f"{self.window_days}, {self.shrinkage}")


class Popularity(Recommender):
    """Most-popular (all-time or recent-window) ranking and global/item-mean rating prediction."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        names = {f.name for f in fields(PopularityConfig)}
        bad = sorted(set(params) - names)
        if bad:
            raise TypeError(f"Popularity: unknown argument(s) {bad}; allowed: {sorted(names)}")
        self.config = PopularityConfig(**params)
        self.global_mean = 0.0
        self.item_mean = np.zeros(0)
        self.item_score = np.zeros(0)

    def get_params(self) -> dict[str, Any]:
        return asdict(self.config)

    @property
    def implicit_feedback(self) -> bool:
        """Counts need no rating: rows without ``rating`` count as positives (rating 1)."""
        return True

    def _fit(self, interactions: pd.DataFrame, user_features: pd.DataFrame | None,
             item_features: pd.DataFrame | None, validation: object) -> None:
        c = self.config
        if c.row_order == "canonical":  # inner ids (which break ties in the ranking) from sorted rows
            interactions = canonical_order(interactions)
        self.user_map = IdMap.from_raw(interactions["user_id"], kind="user")
        self.item_map = IdMap.from_raw(interactions["item_id"], kind="item")
        items = self.item_map.to_inner(interactions["item_id"])
        y = interactions["rating"].to_numpy(dtype=np.float64)
        ts = interactions["timestamp"].to_numpy(dtype=np.int64)
        n = len(self.item_map)
        counts = np.bincount(items, minlength=n).astype(np.float64)
        sums = np.bincount(items, weights=y, minlength=n)
        self.global_mean = float(y.mean())
        self.item_mean = (sums + c.shrinkage * self.global_mean) / np.maximum(counts + c.shrinkage, 1e-12)
        if c.kind == "count":
            self.item_score = counts
        else:
            ref = int(ts.max()) if c.reference_time is None else int(c.reference_time)
            recent = (ts > ref - c.window_days * DAY) & (ts <= ref)
            self.item_score = np.bincount(items[recent], minlength=n) + counts / (1.0 + len(items))

    def _predict_inner(self, users: np.ndarray, items: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
        if self.config.rating == "global_mean":
            return np.full(len(items), self.global_mean)
        return np.where(items >= 0, self.item_mean[np.maximum(items, 0)], self.global_mean)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_score, (len(users), len(self.item_score)))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"item_mean": self.item_mean, "item_score": self.item_score}, {"global_mean": self.global_mean}

    def _set_state(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        assert self.item_map is not None
        n = len(self.item_map)
        self.item_mean = expect_array(arrays, "item_mean", (n,)).astype(np.float64)
        self.item_score = expect_array(arrays, "item_score", (n,)).astype(np.float64)
        self.global_mean = float(state["global_mean"])
