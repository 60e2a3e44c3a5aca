"""The in-memory dataset every fedrec component exchanges.

* ``interactions``: a DataFrame with columns ``user_id, item_id, rating, timestamp``
  (raw ids; ``rating`` float64 — an explicit rating, or 1.0 for implicit feedback, or a 0/1 label;
  ``timestamp`` int64 Unix seconds).
* ``user_features``: host-side user features, indexed by raw ``user_id`` (one row per user).
* ``item_features``: guest-side item features, indexed by raw ``item_id`` (one row per item).

Feature column convention (used by the FM field encoder): ``object``/``string``/``category`` columns are
categorical (one-hot field); ``bool``/integer/float columns are numeric (one feature, value = the number).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "rating", "timestamp")


@dataclass(frozen=True)
class Dataset:
    name: str
    interactions: pd.DataFrame
    user_features: pd.DataFrame | None = None
    item_features: pd.DataFrame | None = None
    rating_scale: tuple[float, float] = (1.0, 5.0)
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.interactions["item_id"].nunique())

    def with_interactions(self, interactions: pd.DataFrame, name: str | None = None) -> Dataset:
        """The same side tables with another interaction table (e.g. a train split)."""
        return Dataset(name or self.name, interactions, self.user_features, self.item_features,
                       self.rating_scale, dict(self.meta))
