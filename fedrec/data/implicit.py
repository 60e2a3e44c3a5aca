"""Implicit feedback: event logs (no ``rating``) into weighted positives for the ranking models.

A bank's product events (card used, app opened, product bought) have no rating: every
``(user, item)`` that happened is a positive, and how often and how recently it happened says how
much it counts. :func:`implicit_interactions` turns an event table ``user_id, item_id, timestamp``
(any other columns are ignored) into one row per pair::

    user_id, item_id, timestamp = the pair's last event, n_events, rating = 1, weight

with ``weight`` (fed to the FM's weighted loss with ``weight_column="weight"``)::

    "none":    1
    "count":   1 + log(n_events)                                   (log damping, as in implicit's BM25/ALS)
    "recency": Σ_events 2^{−(T − t)/h}  (T the reference time, default the latest event; h in days)

Any ranking model also takes the event table directly (``fit`` without a ``rating`` column: every
row a positive, unweighted).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

WEIGHTINGS = ("none", "count", "recency")
DAY = 86400.0


def implicit_interactions(events: pd.DataFrame, weighting: str = "count", *, half_life_days: float = 30.0,
                          reference_time: int | None = None) -> pd.DataFrame:
    """One weighted positive per ``(user_id, item_id)`` of ``events`` (module docstring)."""
    if not isinstance(events, pd.DataFrame):
        raise TypeError(f"implicit_interactions: events must be a DataFrame, got {type(events).__name__}")
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in events.columns]
    if missing:
        raise ValueError(f"implicit_interactions: events lack column(s) {missing}; they have "
                         f"{list(events.columns)}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"implicit_interactions: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if half_life_days <= 0:
        raise ValueError(f"implicit_interactions: half_life_days must be > 0, got {half_life_days!r}")
    if len(events) == 0:
        raise ValueError("implicit_interactions: events is empty")
    ts = pd.to_numeric(events["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(ts).all():
        row = int(np.flatnonzero(~np.isfinite(ts))[0])
        raise ValueError(f"implicit_interactions: column 'timestamp' row {row} is "
                         f"{events['timestamp'].iloc[row]!r}, not a finite number")
    for col in ("user_id", "item_id"):
        if events[col].isna().any():
            row = int(np.flatnonzero(events[col].isna().to_numpy())[0])
            raise ValueError(f"implicit_interactions: column {col!r} has a missing id at row {row}")
    ref = float(ts.max()) if reference_time is None else float(reference_time)
    frame = pd.DataFrame({"user_id": events["user_id"].to_numpy(), "item_id": events["item_id"].to_numpy(),
                          "timestamp": ts.astype(np.int64),
                          "decay": np.exp2(-np.maximum(ref - ts, 0.0) / (half_life_days * DAY))})
    g = frame.groupby(["user_id", "item_id"], sort=True)
    out = g.agg(timestamp=("timestamp", "max"), n_events=("timestamp", "size"),
                decay=("decay", "sum")).reset_index()
    if weighting == "none":
        out["weight"] = 1.0
    elif weighting == "count":
        out["weight"] = 1.0 + np.log(out["n_events"].to_numpy(dtype=np.float64))
    else:
        out["weight"] = out["decay"].to_numpy()
    out["rating"] = 1.0
    logger.info("implicit_interactions: %d events -> %d positives (%s weights)", len(events), len(out),
                weighting)
    return out[["user_id", "item_id", "timestamp", "rating", "n_events", "weight"]]
