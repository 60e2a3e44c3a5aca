"""Scoring a vertical FM from its exported halves: z = z_G + z_H + <e_G, e_H>, explicit fallbacks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.models import FactorizationMachine
from training.vertical_scoring import VerticalScorer


@pytest.fixture(scope="module")
def guest() -> FactorizationMachine:
    rng = np.random.default_rng(0)
    inter = pd.DataFrame({"user_id": rng.integers(0, 30, 400), "item_id": rng.integers(0, 20, 400),
                          "rating": rng.integers(1, 6, 400).astype(float), "timestamp": np.arange(400)})
    inter = inter.drop_duplicates(["user_id", "item_id"])
    return FactorizationMachine(use_user_features=False, n_factors=3, epochs=2, validation="none",
                                clip=False).fit(inter)


def _partials(users: list[object], k: int = 3) -> pd.DataFrame:
    out = pd.DataFrame({"user_id": [str(u) for u in users], "z_H": np.linspace(0.5, 1.0, len(users))})
    for f in range(k):
        out[f"e_H_{f}"] = 0.1 * (f + 1)
    return out


def test_score_adds_host_partials_to_guest_terms(guest: FactorizationMachine) -> None:
    pairs = pd.DataFrame({"user_id": [1, 2, 99], "item_id": [3, 4, 5]})
    scorer = VerticalScorer(guest, _partials([1, 2]))
    g = guest.party_terms(pairs)["guest"]
    e_h = np.array([0.1, 0.2, 0.3])
    want = g.z + np.array([0.5 + g.e[0] @ e_h, 1.0 + g.e[1] @ e_h, 0.0])
    assert scorer.decision_function(pairs) == pytest.approx(want, abs=1e-9)
    assert scorer.last_fallbacks == {"host_partials_users": 1, "host_partials_rows": 1}


def test_partials_with_missing_factor_columns_are_refused(guest: FactorizationMachine) -> None:
    with pytest.raises(ValueError, match=r"p.parquet: missing column\(s\) \['e_H_2'\]; the guest model"):
        VerticalScorer(guest, _partials([1]).drop(columns="e_H_2"), source="p.parquet")


def test_duplicate_users_in_partials_are_refused(guest: FactorizationMachine) -> None:
    with pytest.raises(ValueError, match=r"duplicate user_id '1'"):
        VerticalScorer(guest, _partials([1, "1"]))
