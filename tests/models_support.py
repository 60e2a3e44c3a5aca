"""Planted synthetic data shared by the ``test_models_*`` suites (no tests in this module)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Planted:
    interactions: pd.DataFrame
    user_features: pd.DataFrame
    item_features: pd.DataFrame
    test: pd.DataFrame
    scores: np.ndarray  # true score matrix [n_users, n_items] (raw ids: u{r}, 100 + c)


def planted(n_users: int = 60, n_items: int = 40, k: int = 3, density: float = 0.5, noise: float = 0.1,
            seed: int = 0) -> Planted:
    """Ratings ``3 + s_{segment(u)}·t_i + u·v`` (low rank + a segment effect carried by the host
    feature ``segment``), with raw user ids ``"u0".."`` (str) and raw item ids ``100..`` (int)."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 3, n_users)
    seg_vec = rng.normal(0, 1.0, (3, k))
    u = seg_vec[seg] + rng.normal(0, 0.4, (n_users, k))
    v = rng.normal(0, 0.5, (n_items, k))
    scores = 3.0 + u @ v.T
    mask = rng.random((n_users, n_items)) < density
    rows, cols = np.nonzero(mask)
    r = scores[rows, cols] + rng.normal(0, noise, len(rows))
    df = pd.DataFrame({"user_id": [f"u{x}" for x in rows], "item_id": cols + 100, "rating": r,
                       "timestamp": rng.integers(1_000_000, 1_000_000 + 100 * 86400, len(rows))})
    perm = rng.permutation(len(df))
    n_test = len(df) // 10
    test, train = df.iloc[perm[:n_test]], df.iloc[perm[n_test:]]
    uf = pd.DataFrame({"segment": [f"s{s}" for s in seg], "age": rng.integers(18, 70, n_users)},
                      index=pd.Index([f"u{x}" for x in range(n_users)], name="user_id"))
    itf = pd.DataFrame({"genre": [f"g{x % 4}" for x in range(n_items)],
                        "year": 1990 + np.arange(n_items) % 7},
                       index=pd.Index(np.arange(n_items) + 100, name="item_id"))
    return Planted(train.reset_index(drop=True), uf, itf, test.reset_index(drop=True), scores)
