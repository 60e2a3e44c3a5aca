"""Splitting a dataset into the views of federated parties.

* Vertical (hetero FM, ads): the *guest* holds the interactions (labels) and the item features, the *host*
  holds user features only. Their user sets need not match: ``host_user_fraction`` keeps only part of
  the guest's users in the host view and ``n_host_only_users`` adds users the guest does not know, so
  PSI and the aligned training see a realistic partial overlap.
* Horizontal (federated MF): the interaction rows are dealt to clients by user, each user's rows entirely
  in one client.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedrec.data.dataset import Dataset


@dataclass(frozen=True)
class GuestView:
    """What the guest holds: interactions (with labels) and item features."""

    name: str
    interactions: pd.DataFrame
    item_features: pd.DataFrame | None
    rating_scale: tuple[float, float] = (1.0, 5.0)

    @property
    def user_ids(self) -> np.ndarray:
        return np.asarray(pd.unique(self.interactions["user_id"]))


@dataclass(frozen=True)
class HostView:
    """What the host holds: user features indexed by ``user_id``; nothing about interactions."""

    name: str
    user_features: pd.DataFrame

    @property
    def user_ids(self) -> np.ndarray:
        return self.user_features.index.to_numpy()


def _new_ids(existing: pd.Index, n: int) -> np.ndarray:
    """``n`` fresh ids of the same kind as ``existing`` (ints above the max, else ``"host-only-<k>"``)."""
    if pd.api.types.is_integer_dtype(existing.dtype):
        start = int(existing.max()) + 1 if len(existing) else 0
        return np.arange(start, start + n, dtype=np.int64)
    taken = set(map(str, existing))
    out: list[str] = []
    k = 0
    while len(out) < n:
        cand = f"host-only-{k}"
        if cand not in taken:
            out.append(cand)
        k += 1
    return np.asarray(out, dtype=object)


def vertical_split(dataset: Dataset, *, host_user_fraction: float = 1.0, n_host_only_users: int = 0,
                   seed: int = 0) -> tuple[GuestView, HostView]:
    """Split ``dataset`` into ``(GuestView, HostView)``.

    The host keeps the feature rows of a ``host_user_fraction`` random share of the users that have
    features (chosen with ``numpy.random.default_rng(seed)``), plus ``n_host_only_users`` new users whose
    feature rows are copies of random existing rows (a bootstrap; their ids never occur in the guest's
    interactions). The guest's interactions and item features are passed through unchanged.
    """
    if dataset.user_features is None:
        raise ValueError(f"vertical_split: dataset {dataset.name!r} has no user_features for the host")
    if not 0.0 < float(host_user_fraction) <= 1.0:
        raise ValueError(f"vertical_split: host_user_fraction must be in (0, 1], got {host_user_fraction!r}")
    if int(n_host_only_users) < 0:
        raise ValueError(f"vertical_split: n_host_only_users must be >= 0, got {n_host_only_users!r}")
    rng = np.random.default_rng(seed)
    feats = dataset.user_features
    n_keep = int(round(host_user_fraction * len(feats)))
    keep = np.sort(rng.choice(len(feats), size=n_keep, replace=False))
    host = feats.iloc[keep]
    if n_host_only_users:
        if len(feats) == 0:
            raise ValueError("vertical_split: cannot make host-only users from an empty feature table")
        extra = feats.iloc[rng.integers(0, len(feats), size=n_host_only_users)].copy()
        ids = _new_ids(pd.Index(pd.unique(np.concatenate(
            [feats.index.to_numpy(), dataset.interactions["user_id"].to_numpy()]))), n_host_only_users)
        extra.index = pd.Index(ids, name=feats.index.name or "user_id")
        host = pd.concat([host, extra])
    guest = GuestView(dataset.name, dataset.interactions, dataset.item_features, dataset.rating_scale)
    return guest, HostView(dataset.name, host)


def horizontal_split(interactions: pd.DataFrame, n_clients: int, seed: int = 0) -> list[pd.DataFrame]:
    """Deal users to ``n_clients`` clients; returns one interaction frame per client (fresh RangeIndex).

    The distinct users (sorted) are permuted with ``numpy.random.default_rng(seed)`` and cut into
    ``n_clients`` groups whose sizes differ by at most one user; each client gets all rows of its users,
    in the input order.
    """
    if "user_id" not in interactions.columns:
        raise ValueError(f"horizontal_split: missing column 'user_id'; found {list(interactions.columns)}")
    users = np.sort(np.asarray(pd.unique(interactions["user_id"])))
    if not 1 <= int(n_clients) <= len(users):
        raise ValueError(f"horizontal_split: n_clients must be in [1, {len(users)}] (the number of users), "
                         f"got {n_clients!r}")
    perm = np.random.default_rng(seed).permutation(users)
    sizes = [len(g) for g in np.array_split(np.arange(len(perm)), n_clients)]
    client_of = pd.Series(np.repeat(np.arange(n_clients), sizes), index=perm)
    assignment = interactions["user_id"].map(client_of).to_numpy()
    return [interactions.loc[assignment == k].reset_index(drop=True) for k in range(n_clients)]
