"""Split properties: sizes, disjointness, reproducibility, per-user time order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.data.split import (
    cold_users,
    leave_last_out,
    pseudo_new_user_split,
    quantile_time,
    random_split,
    time_split,
    validation_split,
)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n_per_user = rng.integers(1, 30, size=60)
    users = np.repeat(np.arange(60), n_per_user)
    items = np.concatenate([rng.choice(200, size=k, replace=False) for k in n_per_user])
    ts = rng.integers(0, 1000, size=len(users))  # many ties in time
    df = pd.DataFrame({"user_id": users, "item_id": items, "rating": rng.integers(1, 6, len(users)) * 1.0,
                       "timestamp": ts.astype(np.int64)})
    return df.sample(frac=1.0, random_state=3).set_index(np.arange(len(df)) * 10)  # a non-trivial index


def keys(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user_id"], df["item_id"], strict=True))


def test_random_split_is_exactly_permute_then_cut(table: pd.DataFrame) -> None:
    train, test = random_split(table, test_fraction=0.1, seed=5)
    perm = np.random.default_rng(5).permutation(len(table))
    n_test = round(0.1 * len(table))
    expected = table.iloc[perm].reset_index(drop=True)
    pd.testing.assert_frame_equal(train, expected.iloc[: len(table) - n_test].reset_index(drop=True))
    pd.testing.assert_frame_equal(test, expected.iloc[len(table) - n_test:].reset_index(drop=True))
    assert isinstance(test.index, pd.RangeIndex)


def test_random_split_seed_changes_the_split(table: pd.DataFrame) -> None:
    a, _ = random_split(table, seed=0)
    b, _ = random_split(table, seed=1)
    assert not a.equals(b)


def test_validation_split_is_the_random_procedure(table: pd.DataFrame) -> None:
    _, valid = validation_split(table, 0.2, seed=3)
    pd.testing.assert_frame_equal(valid, random_split(table, 0.2, seed=3)[1])


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_fractions_must_be_in_the_open_interval(table: pd.DataFrame, bad: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        random_split(table, test_fraction=bad)


def test_leave_last_out_takes_each_users_latest(table: pd.DataFrame) -> None:
    train, test = leave_last_out(table, n=2)
    counts = table["user_id"].value_counts()
    assert set(test["user_id"]) == set(counts.index[counts > 2])
    assert (test["user_id"].value_counts() == 2).all() and len(train) + len(test) == len(table)
    assert not keys(train) & keys(test)
    last_train = train.groupby("user_id")["timestamp"].max()
    first_test = test.groupby("user_id")["timestamp"].min()
    assert (last_train.loc[first_test.index] <= first_test).all()


def test_leave_last_out_breaks_time_ties_by_item_id() -> None:
    df = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [9, 3, 5], "rating": [1.0, 2.0, 3.0],
                       "timestamp": [7, 7, 7]})
    _, test = leave_last_out(df)
    _, test_reversed = leave_last_out(df.iloc[::-1])
    assert test["item_id"].tolist() == test_reversed["item_id"].tolist() == [9]


def test_time_split_and_quantile(table: pd.DataFrame) -> None:
    cut = quantile_time(table, 0.8)
    train, test = time_split(table, cut)
    assert (train["timestamp"] < cut).all() and (test["timestamp"] >= cut).all()
    assert len(train) + len(test) == len(table) and cut in set(table["timestamp"])
    assert len(train) == pytest.approx(0.8 * len(table), abs=0.02 * len(table))


def test_quantile_time_checks_q(table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="q must be"):
        quantile_time(table, 1.5)


def test_pseudo_new_users_keep_exactly_their_first_five(table: pd.DataFrame) -> None:
    first, held = pseudo_new_user_split(table, user_fraction=0.3, keep_first=5, seed=2)
    chosen = set(held["user_id"])
    eligible = (table["user_id"].value_counts() >= 6).sum()
    assert len(chosen) == round(0.3 * eligible)
    assert len(first) + len(held) == len(table) and not keys(first) & keys(held)
    ordered = table.sort_values(["user_id", "timestamp", "item_id"])
    for u in chosen:
        mine = ordered[ordered["user_id"] == u]
        assert keys(first[first["user_id"] == u]) == keys(mine.iloc[:5])
        assert keys(held[held["user_id"] == u]) == keys(mine.iloc[5:])


def test_pseudo_new_user_split_is_reproducible(table: pd.DataFrame) -> None:
    a = pseudo_new_user_split(table, seed=4)[1]
    b = pseudo_new_user_split(table.iloc[::-1], seed=4)[1]
    c = pseudo_new_user_split(table, seed=5)[1]
    pd.testing.assert_frame_equal(a, b)
    assert set(a["user_id"]) != set(c["user_id"])


def test_pseudo_new_user_split_requires_a_held_out_rating(table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="min_ratings"):
        pseudo_new_user_split(table, keep_first=5, min_ratings=5)


def test_cold_users(table: pd.DataFrame) -> None:
    counts = table["user_id"].value_counts()
    assert cold_users(table, max_ratings=5) == set(counts.index[counts <= 5])


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match=r"leave_last_out: missing column\(s\) \['timestamp'\]"):
        leave_last_out(pd.DataFrame({"user_id": [1], "item_id": [2]}))
