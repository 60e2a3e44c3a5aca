"""select_hyperparameters: picks the better grid point, cold vs warm validation users, input checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.models import FactorizationMachine, Popularity, Recommender
from fedrec.models.selection import select_hyperparameters

torch.set_num_threads(1)

N_USERS, N_ITEMS = 40, 30


@pytest.fixture(scope="module")
def item_effect() -> pd.DataFrame:
    """Ratings = a strong per-item effect (spread 1.5) + noise 0.1: item means beat the global mean."""
    rng = np.random.default_rng(0)
    item_bias = rng.normal(3.0, 1.5, N_ITEMS)
    rows, cols = np.nonzero(rng.random((N_USERS, N_ITEMS)) < 0.6)
    return pd.DataFrame({"user_id": [f"u{r}" for r in rows], "item_id": cols,
                         "rating": item_bias[cols] + rng.normal(0, 0.1, len(rows)),
                         "timestamp": rng.integers(0, 10**6, len(rows))})


def make_popularity(**params: Any) -> Recommender:
    return Popularity(**params)


def make_fm(**params: Any) -> Recommender:
    return FactorizationMachine(use_history=False, use_history_length=False, use_item_age=False,
                                n_factors=2, epochs=5, batch_size=64, **params)


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_chooses_item_means_over_global_mean(item_effect: pd.DataFrame, mode: str) -> None:
    grid = [{"rating": "global_mean"}, {"rating": "item_mean"}]
    sel = select_hyperparameters(make_popularity, grid, item_effect, mode=mode, seed=0)
    assert sel.best_params == {"rating": "item_mean"}
    assert [r.params for r in sel.table] == grid
    assert sel.table[1].val_rmse < 0.5 * sel.table[0].val_rmse


def test_fm_with_a_learning_rate_that_learns_beats_a_frozen_one(item_effect: pd.DataFrame) -> None:
    grid = [{"lr": 1e-8}, {"lr": 0.05}]
    sel = select_hyperparameters(make_fm, grid, item_effect, mode="cold", seed=0)
    assert sel.best_params == {"lr": 0.05}
    assert sel.table[1].val_rmse < sel.table[0].val_rmse - 0.3
    assert isinstance(sel.best_model, FactorizationMachine) and sel.best_model.config.lr == 0.05


def test_cold_and_warm_modes_validate_on_different_users(item_effect: pd.DataFrame) -> None:
    grid = [{"rating": "item_mean"}]
    cold = select_hyperparameters(make_popularity, grid, item_effect, mode="cold", seed=0)
    warm = select_hyperparameters(make_popularity, grid, item_effect, mode="warm", seed=0)
    # cold: 10% of the 40 users (all have > 5 ratings) hold out every rating after their first 5
    assert len(cold.validation_users) == 4
    assert cold.n_validation == len(item_effect) - cold.n_fit
    counts = item_effect["user_id"].value_counts()
    assert cold.n_validation == int(counts[cold.validation_users].sum()) - 4 * 5
    # warm: a random 10% of the rows, spread over most users
    assert warm.n_validation == round(0.1 * len(item_effect))
    assert len(warm.validation_users) > 4 * len(cold.validation_users)
    assert set(cold.validation_users) != set(warm.validation_users)


def test_rejects_an_empty_grid(item_effect: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="grid is empty"):
        select_hyperparameters(make_popularity, [], item_effect)


def test_rejects_an_unknown_mode(item_effect: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        select_hyperparameters(make_popularity, [{}], item_effect, mode="test")
