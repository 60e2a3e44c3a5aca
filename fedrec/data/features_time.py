"""Time-aware features a bank (the guest) computes from its own interactions before a reference time.

They are what makes "recent popularity" a strong reactivation baseline, given to a model as fields so
it can use the same signal and more (:class:`~fedrec.models.fm.FactorizationMachine` with
``use_recent_popularity`` / ``use_recent_items``). Both are **entity-level** (item side or user side),
so the FM's decompositions still hold: the score stays ``a_u + b_i + <p_u, q_i>`` and, because the
guest owns them, the vertical FM's host never sees them (``z = z_G + z_H + <e_G, e_H>``).

Per item ``i``, window ``D`` and time ``t``::

    pop_D(i, t) = log1p( #{training rows of i with t − D <= t' < t} )     (ItemEvents.window_counts)

is a *context* feature: a training sample at time ``t`` sees the item's popularity just before ``t``
(never counting its own row), so the model learns "what was popular then is chosen then"; at
recommendation time ``T`` it is the popularity over the last ``D`` days and joins ``q_i`` (the item side)
like the item's age. :func:`recent_item_popularity` is its value at one time for every item. With ``T``
the reference time (the latest training timestamp), per user ``u`` with training rows ``(i_j, t_j)`` sorted by
time, newest first, the last ``n`` distinct items carry recency weights::

    w_j = 2^{−(T − t_j) / h} / sqrt(Σ_{l<n} 4^{−(T − t_l) / h})   (recency_history: ‖w_u‖ = 1)

``h`` the half-life in days: a bag of the customer's last items, newest weighted most (as the
"history" field weights every item ``|N(u)|^{-1/2}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DAY = 86400.0


def _check(items: np.ndarray, ts: np.ndarray, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    items, ts = np.asarray(items, dtype=np.int64), np.asarray(ts, dtype=np.int64)
    if items.shape != ts.shape or items.ndim != 1:
        raise ValueError(f"{what}: ids and timestamps must be equal-length 1-D arrays, got {items.shape} "
                         f"and {ts.shape}")
    if items.size and (items.min() < 0 or items.max() >= n):
        raise ValueError(f"{what}: inner ids must lie in [0, {n}), got [{items.min()}, {items.max()}]")
    return items, ts


_SPAN = 2 ** 33  # timestamps (seconds) must lie in [0, 2^33): until the year 2242


class ItemEvents:
    """The training timestamps of every item, sorted: ``keys = item · 2^33 + t`` (one array, so a window
    count for many (item, time) pairs is two ``searchsorted`` calls)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.asarray(keys, dtype=np.int64)
        if self.keys.ndim != 1 or (self.keys.size and np.any(np.diff(self.keys) < 0)):
            raise ValueError("ItemEvents: keys must be a sorted 1-D array")

    @classmethod
    def build(cls, items: np.ndarray, ts: np.ndarray, n_items: int) -> ItemEvents:
        items, ts = _check(items, ts, n_items, "ItemEvents")
        if ts.size and (ts.min() < 0 or ts.max() >= _SPAN):
            raise ValueError(f"ItemEvents: timestamps must be Unix seconds in [0, 2^33), got "
                             f"[{ts.min()}, {ts.max()}]")
        return cls(np.sort(items * _SPAN + ts))

    def window_counts(self, items: np.ndarray, ts: np.ndarray, days: float) -> np.ndarray:
        """``#{rows of items[s] with ts[s] − days <= t < ts[s]}`` (unknown item ``-1``: 0)."""
        items, ts = np.asarray(items, dtype=np.int64), np.asarray(ts, dtype=np.int64)
        known = items >= 0
        base = np.maximum(items, 0) * _SPAN
        hi = np.searchsorted(self.keys, base + np.clip(ts, 0, _SPAN - 1), side="left")
        lo = np.searchsorted(self.keys, base + np.clip(ts - int(days * DAY), 0, _SPAN - 1), side="left")
        return np.where(known, hi - lo, 0)


def recent_item_popularity(items: np.ndarray, ts: np.ndarray, n_items: int, reference_time: int,
                           windows_days: Sequence[float]) -> np.ndarray:
    """``[n_items, len(windows_days)]``: ``log1p`` of each item's rows in ``(T − D, T]`` per window ``D``."""
    items, ts = _check(items, ts, n_items, "recent_item_popularity")
    if not windows_days or any(d <= 0 for d in windows_days):
        raise ValueError(f"recent_item_popularity: windows_days must be day counts > 0, got {windows_days!r}")
    out = np.zeros((n_items, len(windows_days)))
    for j, d in enumerate(windows_days):
        inside = (ts > reference_time - d * DAY) & (ts <= reference_time)
        out[:, j] = np.log1p(np.bincount(items[inside], minlength=n_items))
    return out


def recency_history(users: np.ndarray, items: np.ndarray, ts: np.ndarray, n_users: int,
                    reference_time: int, last_n: int = 10, half_life_days: float = 30.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates ``(rows, cols, values)`` of each user's last ``last_n`` distinct items (module
    docstring); ties in time are broken by item id (largest first), so the result does not depend on
    the order of the rows."""
    users, ts = _check(users, ts, n_users, "recency_history")
    items = np.asarray(items, dtype=np.int64)
    if last_n < 1 or half_life_days <= 0:
        raise ValueError(f"recency_history: need last_n >= 1 and half_life_days > 0, got {last_n}, "
                         f"{half_life_days}")
    if users.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    # newest row of every (user, item), then per user newest first
    order = np.lexsort((-items, -ts, users))
    u, i, t = users[order], items[order], ts[order]
    _, first = np.unique(u * (int(items.max()) + 1) + i, return_index=True)  # first = newest of a pair
    u, i, t = u[first], i[first], t[first]
    order = np.lexsort((-i, -t, u))
    u, i, t = u[order], i[order], t[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(u)) + 1])
    rank = np.arange(len(u)) - np.repeat(starts, np.diff(np.concatenate([starts, [len(u)]])))
    keep = rank < last_n
    u, i, t = u[keep], i[keep], t[keep]
    age_days = np.maximum(reference_time - t, 0) / DAY
    w = np.exp2(-age_days / half_life_days)
    norm = np.sqrt(np.bincount(u, weights=w * w, minlength=n_users))
    return u, i, w / np.maximum(norm[u], 1e-12)
