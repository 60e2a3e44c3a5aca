"""Vertical (guest/host views) and horizontal (clients by user) partitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.data.dataset import Dataset
from fedrec.data.partition import horizontal_split, vertical_split


def dataset(user_ids: list[object]) -> Dataset:
    n = len(user_ids)
    inter = pd.DataFrame({"user_id": np.repeat(np.asarray(user_ids, dtype=object), 3),
                          "item_id": np.tile([1, 2, 3], n), "rating": 3.0,
                          "timestamp": np.arange(3 * n, dtype=np.int64)})
    if all(isinstance(u, int) for u in user_ids):
        inter["user_id"] = inter["user_id"].astype(np.int64)
    users = pd.DataFrame({"age": np.arange(n) + 20, "city": [f"c{k % 3}" for k in range(n)]},
                         index=pd.Index(user_ids, name="user_id"))
    items = pd.DataFrame({"genre": ["a", "b", "a"]}, index=pd.Index([1, 2, 3], name="item_id"))
    return Dataset("toy", inter, users, items)


def test_vertical_split_gives_each_party_only_its_columns() -> None:
    ds = dataset(list(range(1, 21)))
    guest, host = vertical_split(ds)
    assert guest.interactions is ds.interactions and guest.item_features is ds.item_features
    assert not hasattr(guest, "user_features") and not hasattr(host, "interactions")
    pd.testing.assert_frame_equal(host.user_features, ds.user_features)


def test_vertical_split_partial_overlap_and_host_only_users() -> None:
    ds = dataset(list(range(1, 101)))
    guest, host = vertical_split(ds, host_user_fraction=0.7, n_host_only_users=15, seed=1)
    shared = set(guest.user_ids) & set(host.user_ids)
    host_only = set(host.user_ids) - set(guest.user_ids)
    assert len(shared) == 70 and len(host_only) == 15 and len(host.user_ids) == 85
    assert min(host_only) > 100 and host.user_features.index.is_unique  # type: ignore[type-var]
    # host-only rows are copies of real feature rows
    feats = ds.user_features
    assert feats is not None
    rows = {tuple(r) for r in feats.itertuples(index=False)}
    assert all(tuple(r) in rows for r in host.user_features.loc[list(host_only)].itertuples(index=False))


def test_vertical_split_string_ids_get_fresh_string_ids() -> None:
    _, host = vertical_split(dataset([f"u{k}" for k in range(10)]), n_host_only_users=3)
    assert {"host-only-0", "host-only-1", "host-only-2"} <= set(host.user_ids)


def test_vertical_split_is_reproducible() -> None:
    ds = dataset(list(range(1, 51)))
    a = vertical_split(ds, host_user_fraction=0.5, seed=3)[1].user_ids
    b = vertical_split(ds, host_user_fraction=0.5, seed=3)[1].user_ids
    c = vertical_split(ds, host_user_fraction=0.5, seed=4)[1].user_ids
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_vertical_split_checks_its_input() -> None:
    ds = dataset([1, 2])
    with pytest.raises(ValueError, match="no user_features"):
        vertical_split(Dataset("bare", ds.interactions))
    with pytest.raises(ValueError, match="host_user_fraction"):
        vertical_split(ds, host_user_fraction=0.0)


def test_horizontal_split_puts_each_user_in_one_client() -> None:
    inter = dataset(list(range(1, 23))).interactions
    clients = horizontal_split(inter, n_clients=5, seed=0)
    user_sets = [set(c["user_id"]) for c in clients]
    assert sum(len(s) for s in user_sets) == 22 and len(set().union(*user_sets)) == 22
    assert sorted(len(s) for s in user_sets) == [4, 4, 4, 5, 5]
    assert sum(len(c) for c in clients) == len(inter)
    pd.testing.assert_frame_equal(pd.concat(clients).sort_values("timestamp").reset_index(drop=True), inter)


def test_horizontal_split_one_client_per_user_and_reproducibility() -> None:
    inter = dataset(list(range(1, 11))).interactions
    clients = horizontal_split(inter, n_clients=10, seed=1)
    assert all(c["user_id"].nunique() == 1 for c in clients)
    again = horizontal_split(inter, n_clients=10, seed=1)
    assert all(a.equals(b) for a, b in zip(clients, again, strict=True))


@pytest.mark.parametrize("n", [0, 11])
def test_horizontal_split_checks_n_clients(n: int) -> None:
    with pytest.raises(ValueError, match=r"n_clients must be in \[1, 10\]"):
        horizontal_split(dataset(list(range(10))).interactions, n_clients=n)
