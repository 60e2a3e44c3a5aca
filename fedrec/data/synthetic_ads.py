"""The synthetic ad funnel: impressions -> clicks -> delayed conversions.

Parties: the *platform* (host) serves impressions and holds the impression features (``placement``,
``hour``) and the host user features ``x_u``; the *advertiser* (guest, the bank) holds the conversions and
its customers' history (their preferences ``U_u`` shown in their ratings, their activity ``n_u``).

For impression ``j`` of user ``u`` for campaign ``c`` (which promotes item category ``cat_c``, with
taste vector ``w_c = C[cat_c] + 0.5 N(0, I)``)::

    affinity_j = z(<U_u, w_c> / sqrt(k))                                  (z: standardized over impressions)
    click logit      = a_click + placement_eff + 0.3 cos(2 pi (hour - 20) / 24) + quality_c
                       + 0.8 z(x_u . w_click) + 0.4 affinity_j                  (mostly platform-side)
    conversion logit = a_conv + 1.0 affinity_j + 0.6 z(log n_u) + 0.5 z(x_u . w_conv)   (mostly advertiser)

``a_click`` is solved so that the mean click probability is ``click_rate`` and ``a_conv`` so that the
expected conversion rate among clicks, ``sum(p_click p_conv) / sum(p_click)``, is ``conversion_rate``.
A conversion happens ``Exp(20 s) + LogNormal(log(conversion_delay_hours h), 1)`` after the impression;
``conversion_ts`` is ``<NA>`` (nullable Int64) without a conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from fedrec.data.synthetic import SyntheticConfig

PLACEMENTS: tuple[str, ...] = ("feed", "story", "search", "sidebar")
_PLACEMENT_P = (0.45, 0.2, 0.15, 0.2)
_PLACEMENT_EFFECT = np.array([0.2, 0.0, 0.7, -0.6])
ADS_COLUMNS: tuple[str, ...] = ("impression_id", "user_id", "campaign_id", "campaign_category", "placement",
                                "hour", "impression_ts", "click", "conversion", "conversion_ts")


@dataclass(frozen=True)
class AdFunnel:
    frame: pd.DataFrame
    click_p: np.ndarray
    conversion_p: np.ndarray


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def _intercept(logits: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """``a`` with ``average(sigmoid(a + logits), weights) == target`` (bisection; increasing in ``a``)."""
    if len(logits) == 0 or target <= 0.0 or target >= 1.0:
        return -50.0 if target <= 0.0 else 50.0
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.average(1.0 / (1.0 + np.exp(-(mid + logits))), weights=weights) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def generate_ads(rng: np.random.Generator, cfg: SyntheticConfig, *, user_ids: np.ndarray, host_x: np.ndarray,
                 U: np.ndarray, C: np.ndarray, counts: np.ndarray) -> AdFunnel:
    """Impressions for random users over the horizon, sorted by time (see the module docstring)."""
    n = int(round(cfg.impressions_per_user * cfg.n_users))
    k = U.shape[1]
    camp_cat = rng.integers(0, C.shape[0], cfg.n_campaigns)
    camp_vec = C[camp_cat] + 0.5 * rng.standard_normal((cfg.n_campaigns, k))
    quality = 0.3 * rng.standard_normal(cfg.n_campaigns)
    w_click, w_conv = rng.standard_normal(host_x.shape[1]), rng.standard_normal(host_x.shape[1])
    host_click, host_conv = _z(host_x @ w_click), _z(host_x @ w_conv)
    engagement = _z(np.log(counts.astype(float)))

    user = rng.integers(0, cfg.n_users, n)
    campaign = rng.integers(0, cfg.n_campaigns, n)
    placement = rng.choice(len(PLACEMENTS), size=n, p=_PLACEMENT_P)
    ts = cfg.start_ts + np.floor(rng.random(n) * cfg.horizon_days * 86_400).astype(np.int64)
    hour = (ts % 86_400) // 3600
    affinity = _z(np.einsum("nk,nk->n", U[user], camp_vec[campaign]) / np.sqrt(k)) if n else np.zeros(0)

    click_logit = (_PLACEMENT_EFFECT[placement] + 0.3 * np.cos(2 * np.pi * (hour - 20) / 24)
                   + quality[campaign] + 0.8 * host_click[user] + 0.4 * affinity)
    click_p = 1.0 / (1.0 + np.exp(-(_intercept(click_logit, cfg.click_rate) + click_logit)))
    conv_logit = 1.0 * affinity + 0.6 * engagement[user] + 0.5 * host_conv[user]
    a_conv = _intercept(conv_logit, cfg.conversion_rate, weights=click_p)
    conv_p = 1.0 / (1.0 + np.exp(-(a_conv + conv_logit)))
    click = rng.random(n) < click_p
    conversion = click & (rng.random(n) < conv_p)
    delay = 1 + rng.exponential(20.0, n) + rng.lognormal(np.log(cfg.conversion_delay_hours * 3600), 1.0, n)
    conv_ts = pd.array(np.where(conversion, ts + delay.astype(np.int64), 0), dtype="Int64")
    conv_ts[~conversion] = pd.NA

    order = np.lexsort((np.arange(n), ts))
    frame = pd.DataFrame({
        "impression_id": np.arange(1, n + 1, dtype=np.int64),
        "user_id": user_ids[user][order],
        "campaign_id": (campaign + 1).astype(np.int64)[order],
        "campaign_category": pd.Series([f"cat_{c:02d}" for c in camp_cat[campaign][order]], dtype="str"),
        "placement": pd.Series(np.asarray(PLACEMENTS, dtype=object)[placement[order]], dtype="str"),
        "hour": hour[order].astype(np.int64),
        "impression_ts": ts[order],
        "click": click[order].astype(np.int64),
        "conversion": conversion[order].astype(np.int64),
        "conversion_ts": conv_ts[order],
    }, columns=list(ADS_COLUMNS))
    return AdFunnel(frame, click_p[order], conv_p[order])
