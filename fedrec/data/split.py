"""Reproducible train/test splits of an interaction table.

Every function takes a DataFrame with at least ``user_id, item_id, timestamp`` (``random_split`` and
``validation_split`` need no particular column) and returns ``(train, test)`` DataFrames with a fresh
``RangeIndex``. Nothing depends on the input's index; results depend on the input's row order only where
stated (``random_split``/``validation_split`` permute rows by position).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _require(df: pd.DataFrame, columns: Sequence[str], fn: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{fn}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{fn}: missing column(s) {missing}; found {list(df.columns)}")


def _fraction(value: float, name: str, fn: str) -> None:
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{fn}: {name} must be in (0, 1), got {value!r}")


def random_split(df: pd.DataFrame, test_fraction: float = 0.1, seed: int = 0,
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle all rows and cut: exactly

    ``perm = numpy.random.default_rng(seed).permutation(len(df))``; with
    ``n_test = round(test_fraction * len(df))`` the first ``len(df) - n_test`` rows of ``df.iloc[perm]``
    are train and the last ``n_test`` are test. Both keep the permuted order.
    """
    _require(df, [], "random_split")
    _fraction(test_fraction, "test_fraction", "random_split")
    perm = np.random.default_rng(seed).permutation(len(df))
    n_test = int(round(test_fraction * len(df)))
    shuffled = df.iloc[perm]
    n_train = len(df) - n_test
    return shuffled.iloc[:n_train].reset_index(drop=True), shuffled.iloc[n_train:].reset_index(drop=True)


def validation_split(train: pd.DataFrame, fraction: float = 0.1, seed: int = 0,
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random validation split of a training table: the :func:`random_split` procedure."""
    return random_split(train, test_fraction=fraction, seed=seed)


def _time_order(df: pd.DataFrame) -> np.ndarray:
    """Row positions sorted by (user_id, timestamp, item_id): ties in time broken by item id, then by
    row position (a stable sort), so the order does not depend on the index."""
    keys = pd.DataFrame({"u": df["user_id"].to_numpy(), "t": df["timestamp"].to_numpy(),
                         "i": df["item_id"].to_numpy(), "p": np.arange(len(df))})
    return keys.sort_values(["u", "t", "i", "p"], kind="stable")["p"].to_numpy()


def leave_last_out(df: pd.DataFrame, n: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the ``n`` latest interactions (by timestamp, ties by item id) go to test.

    Users with ``n`` or fewer interactions stay entirely in train (each test user keeps at least one
    train interaction). Both parts are ordered by (user, timestamp, item).
    """
    _require(df, ["user_id", "item_id", "timestamp"], "leave_last_out")
    if int(n) < 1:
        raise ValueError(f"leave_last_out: n must be >= 1, got {n!r}")
    ordered = df.iloc[_time_order(df)]
    users = ordered["user_id"]
    from_end = users.groupby(users, sort=False).cumcount(ascending=False).to_numpy()
    size = users.map(users.value_counts()).to_numpy()
    test = (from_end < n) & (size > n)
    return ordered.loc[~test].reset_index(drop=True), ordered.loc[test].reset_index(drop=True)


def time_split(df: pd.DataFrame, cut_ts: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Global time cut: train = ``timestamp < cut_ts``, test = ``timestamp >= cut_ts`` (input order)."""
    _require(df, ["timestamp"], "time_split")
    after = (df["timestamp"] >= cut_ts).to_numpy()
    return df.loc[~after].reset_index(drop=True), df.loc[after].reset_index(drop=True)


def quantile_time(df: pd.DataFrame, q: float) -> int:
    """The timestamp below which a fraction ``q`` of the interactions fall (``numpy.quantile``,
    method ``"lower"``, so the result is an observed timestamp)."""
    _require(df, ["timestamp"], "quantile_time")
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"quantile_time: q must be in [0, 1], got {q!r}")
    if len(df) == 0:
        raise ValueError("quantile_time: empty table")
    return int(np.quantile(df["timestamp"].to_numpy(), q, method="lower"))


def pseudo_new_user_split(df: pd.DataFrame, user_fraction: float = 0.1, keep_first: int = 5, seed: int = 0,
                          min_ratings: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out "new" users: keep only their first ``keep_first`` interactions in the first part.

    Eligible users have at least ``min_ratings`` (default ``keep_first + 1``) interactions. From the
    eligible users sorted by id, ``round(user_fraction * n_eligible)`` (at least 1) are chosen with
    ``numpy.random.default_rng(seed).choice(..., replace=False)``. The first part holds every interaction
    of the other users plus the first ``keep_first`` (by timestamp, ties by item id) of the chosen ones;
    the second part holds the chosen users' remaining interactions. Used for MovieLens' new-user test and
    for cold-aware validation. Both parts are ordered by (user, timestamp, item).
    """
    _require(df, ["user_id", "item_id", "timestamp"], "pseudo_new_user_split")
    _fraction(user_fraction, "user_fraction", "pseudo_new_user_split")
    if int(keep_first) < 0:
        raise ValueError(f"pseudo_new_user_split: keep_first must be >= 0, got {keep_first!r}")
    min_ratings = keep_first + 1 if min_ratings is None else int(min_ratings)
    if min_ratings <= keep_first:
        raise ValueError(f"pseudo_new_user_split: min_ratings ({min_ratings}) must exceed keep_first "
                         f"({keep_first}) so that every chosen user has a held-out interaction")
    counts = df["user_id"].value_counts()
    eligible = np.sort(counts.index[counts >= min_ratings].to_numpy())
    if len(eligible) == 0:
        raise ValueError(f"pseudo_new_user_split: no user has >= {min_ratings} interactions")
    n_chosen = max(1, int(round(user_fraction * len(eligible))))
    chosen = np.random.default_rng(seed).choice(eligible, size=n_chosen, replace=False)
    ordered = df.iloc[_time_order(df)]
    rank = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    held = ordered["user_id"].isin(chosen).to_numpy() & (rank >= keep_first)
    return ordered.loc[~held].reset_index(drop=True), ordered.loc[held].reset_index(drop=True)


def cold_users(train: pd.DataFrame, max_ratings: int = 5) -> set[object]:
    """The users with at most ``max_ratings`` interactions in ``train``."""
    _require(train, ["user_id"], "cold_users")
    counts = train["user_id"].value_counts()
    return set(counts.index[counts <= max_ratings].tolist())
