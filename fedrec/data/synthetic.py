"""The built-in synthetic dataset: deterministic, seeded, with known generating parameters.

Model (``k = n_factors``; ``s = feature_signal``; ``c = category_signal``)::

    host features     x_u = (one-hot of the categorical columns, standardized numeric z-scores)
    user factors      U_u = sqrt(s) * std(W x_u) + sqrt(1 - s) * eps_u,        eps_u ~ N(0, I_k)
    user bias         b_u = user_bias_sd * (sqrt(s) * std(a . x_u) + sqrt(1 - s) * eta_u)
    item factors      V_i = sqrt(c) * C[category_i] + sqrt(1 - c) * xi_i,       C, xi ~ N(0, I_k)
    item bias         b_i = item_bias_sd * N(0, 1)
    score             r*_ui = global_mean + b_u + b_i + (interaction_sd / sqrt(k)) * <U_u, V_i>
    rating            r_ui = clip(rating_step * round((r*_ui + noise * N(0, 1)) / rating_step), 1, 5)

``std(.)`` standardizes each dimension over users, so a share ``s`` of the variance of every user factor
and of the user bias is a function of the host's features: a model that sees them beats one that does not,
above all for users with few ratings. ``W``, ``a`` hold one random N(0, 1) vector per category level and
per numeric column.

Which items a user rates: ``n_u = min_ratings_per_user + floor(LogNormal)`` (a long tail: with the
defaults about a third of the users have <= 5 ratings), then the ``n_u`` items with the largest
``log_popularity_i + preference_selection * z(r*_ui) + Gumbel`` (sampling without replacement, weights
``popularity * exp(preference_selection * z(r*_ui))``), so users rate what they are likely to like; an
item nobody picked then takes over one rating of a user who has not rated it, so every item is rated.
``n_u`` is capped at ``ratings_cap`` (half the catalogue by default).

Time, churn and return (``H = horizon_days``): every user starts at ``start_ts + U(0, 0.3) H``. A user
churns with probability ``sigmoid(logit(churn_rate) + churn_feature_strength * g_u)`` and then stops at
``U(churn_window) H`` (at least 7 days after the start); a churner returns with probability
``p_return = sigmoid(logit(return_rate) + return_feature_strength * h_u)`` after a dormant gap of
``dormant_days_min + Exp(dormant_days_mean)`` days and stays active for 14-120 days; ``g_u, h_u`` are
standardized linear functions of the host features. A returning user's ratings are split at random,
``return_share`` of them after the return; those are items the user prefers, like all others.
Non-churners stay active to the end. ``meta["retention_cut_ts"]`` is a time cut at which many churners
are dormant and a good part of them return afterwards.

Everything comes from ``numpy.random.default_rng(seed)`` via independent child streams (users, items,
ratings, time, ads), so e.g. changing the ad parameters leaves the ratings unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from fedrec.data.dataset import Dataset
from fedrec.data.synthetic_ads import AdFunnel, generate_ads
from fedrec.progress import progress_bar

log = logging.getLogger(__name__)

DAY = 86_400
_CAT_NAMES = ("region", "segment", "device", "channel", "education", "household")
_NUM_NAMES = ("age", "income_k", "tenure_years", "credit_score", "visits_per_month")


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :func:`generate` (see the module docstring for the model)."""

    n_users: int = 2000
    n_items: int = 500
    n_factors: int = 8
    user_categorical_levels: tuple[int, ...] = (8, 6, 3, 5)
    n_user_numeric: int = 3
    feature_signal: float = 0.7
    n_categories: int = 12
    category_signal: float = 0.6
    mean_ratings_per_user: float = 30.0
    min_ratings_per_user: int = 1
    max_ratings_per_user: int | None = None  # None: half the catalogue (at least min_ratings_per_user)
    activity_sigma: float = 1.5
    n_ratings: int | None = None
    popularity_sd: float = 1.0
    preference_selection: float = 1.0
    global_mean: float = 3.2
    user_bias_sd: float = 0.35
    item_bias_sd: float = 0.35
    interaction_sd: float = 0.8
    noise: float = 0.5
    rating_step: float = 0.5
    start_ts: int = 1_577_836_800  # 2020-01-01 UTC
    horizon_days: int = 365
    churn_rate: float = 0.55
    churn_feature_strength: float = 0.8
    churn_window: tuple[float, float] = (0.2, 0.5)
    return_rate: float = 0.45
    return_feature_strength: float = 1.5
    dormant_days_min: float = 30.0
    dormant_days_mean: float = 75.0
    return_share: float = 0.3
    n_campaigns: int = 20
    impressions_per_user: float = 10.0
    click_rate: float = 0.05
    conversion_rate: float = 0.15
    conversion_delay_hours: float = 24.0
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticConfig: {what}")

        need(self.n_users >= 1 and self.n_items >= 2, f"n_users >= 1 and n_items >= 2, got "
             f"{self.n_users}, {self.n_items}")
        need(self.n_factors >= 1, f"n_factors >= 1, got {self.n_factors}")
        need(len(self.user_categorical_levels) + self.n_user_numeric >= 1, "at least one user feature")
        need(all(n >= 2 for n in self.user_categorical_levels),
             f"every categorical feature needs >= 2 levels, got {self.user_categorical_levels}")
        need(self.n_categories >= 1, f"n_categories >= 1, got {self.n_categories}")
        for name in ("feature_signal", "category_signal", "churn_rate", "return_rate", "return_share",
                     "click_rate", "conversion_rate"):
            v = getattr(self, name)
            need(0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v}")
        need(1 <= self.min_ratings_per_user <= self.n_items,
             f"min_ratings_per_user in [1, n_items], got {self.min_ratings_per_user}")
        need(self.mean_ratings_per_user >= self.min_ratings_per_user,
             f"mean_ratings_per_user ({self.mean_ratings_per_user}) >= min_ratings_per_user")
        need(self.min_ratings_per_user <= self.ratings_cap <= self.n_items,
             f"max_ratings_per_user in [min_ratings_per_user, n_items], got {self.max_ratings_per_user}")
        if self.n_ratings is not None:
            lo, hi = self.n_users * self.min_ratings_per_user, self.n_users * self.ratings_cap
            need(lo <= self.n_ratings <= hi,
                 f"n_ratings in [n_users * min_ratings_per_user, n_users * max_ratings_per_user], got "
                 f"{self.n_ratings}")

        need(self.rating_step > 0, f"rating_step > 0, got {self.rating_step}")
        need(0.0 <= self.churn_window[0] < self.churn_window[1] <= 1.0,
             f"churn_window within [0, 1] and increasing, got {self.churn_window}")
        need(self.horizon_days >= 30, f"horizon_days >= 30, got {self.horizon_days}")
        need(self.noise >= 0 and self.activity_sigma >= 0, "noise and activity_sigma must be >= 0")

    @property
    def ratings_cap(self) -> int:
        """The most ratings one user can have."""
        if self.max_ratings_per_user is not None:
            return self.max_ratings_per_user
        return max(self.min_ratings_per_user, self.n_items // 2)

    @classmethod
    def ml1m_shape(cls, **overrides: object) -> SyntheticConfig:
        """MovieLens-1M shape: 6040 users, 3706 items, exactly 1,000,209 ratings, >= 20 per user, integer
        stars."""
        base = dict(n_users=6040, n_items=3706, n_ratings=1_000_209, min_ratings_per_user=20,
                    mean_ratings_per_user=1_000_209 / 6040, activity_sigma=1.0, rating_step=1.0,
                    impressions_per_user=5.0)
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    @classmethod
    def retention(cls, **overrides: object) -> SyntheticConfig:
        """The retention-benchmark size: 20,000 users x 1,000 items, ~400k ratings, about 10k churners of
        whom several thousand are dormant at ``meta["retention_cut_ts"]`` and return afterwards."""
        base = dict(n_users=20_000, n_items=1000, mean_ratings_per_user=20.0, impressions_per_user=2.0)
        return cls(**{**base, **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class SyntheticTruth:
    """The generating parameters; arrays are in the order of ``user_ids`` / ``item_ids`` (raw ids)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_factors: np.ndarray        # (n_users, k)
    item_factors: np.ndarray        # (n_items, k)
    user_bias: np.ndarray
    item_bias: np.ndarray
    global_mean: float
    interaction_scale: float        # interaction_sd / sqrt(k)
    user_feature_factors: np.ndarray  # the part of user_factors explained by host features
    user_feature_bias: np.ndarray     # the part of user_bias explained by host features
    item_category: np.ndarray       # int category per item
    start_ts: np.ndarray
    churned: np.ndarray             # bool: stopped before the end of the horizon
    churn_ts: np.ndarray            # end of the first active period (-1 if not churned)
    returned: np.ndarray            # bool: came back within the horizon (and has ratings after)
    return_ts: np.ndarray           # -1 if not returned
    p_churn: np.ndarray
    p_return: np.ndarray
    ad_click_p: np.ndarray          # per row of ``SyntheticData.ads``
    ad_conversion_p: np.ndarray     # P(conversion | click) per row of ``ads``

    def expected_rating(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Noise-free, unclipped ``r*_ui`` for raw id pairs."""
        u = pd.Index(self.user_ids).get_indexer(np.asarray(user_ids))
        i = pd.Index(self.item_ids).get_indexer(np.asarray(item_ids))
        if (u < 0).any() or (i < 0).any():
            raise KeyError("expected_rating: unknown user or item id")
        dot = np.einsum("nk,nk->n", self.user_factors[u], self.item_factors[i])
        return self.global_mean + self.user_bias[u] + self.item_bias[i] + self.interaction_scale * dot


@dataclass(frozen=True)
class SyntheticData:
    dataset: Dataset
    ads: pd.DataFrame
    truth: SyntheticTruth
    config: SyntheticConfig


def _standardize(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _user_features(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """Host feature table and its design matrix ``x_u`` (one-hot + numeric z-scores)."""
    n = cfg.n_users
    cols: dict[str, object] = {}
    design = []
    for j, levels in enumerate(cfg.user_categorical_levels):
        name = _CAT_NAMES[j] if j < len(_CAT_NAMES) else f"cat_{j}"
        probs = rng.dirichlet(np.full(levels, 2.0))
        lv = rng.choice(levels, size=n, p=probs)
        cols[name] = pd.Series([f"{name}_{v:02d}" for v in range(levels)], dtype="str").iloc[lv].to_numpy()
        design.append(np.eye(levels)[lv])
    for m in range(cfg.n_user_numeric):
        name = _NUM_NAMES[m] if m < len(_NUM_NAMES) else f"num_{m}"
        z = rng.standard_normal(n)
        if name == "age":
            cols[name] = np.clip(np.round(42 + 13 * z), 18, 90).astype(np.int64)
        elif name == "income_k":
            cols[name] = np.round(np.maximum(5.0, 55 + 20 * z), 1)
        elif name == "tenure_years":
            cols[name] = np.round(np.maximum(0.0, 6 + 3.5 * z), 1)
        else:
            cols[name] = np.round(z, 3)
        design.append(_standardize(np.asarray(cols[name], dtype=float))[:, None])
    ids = np.arange(1, n + 1, dtype=np.int64)
    table = pd.DataFrame(cols, index=pd.Index(ids, name="user_id"))
    for c in table.columns:
        if table[c].dtype == object:
            table[c] = table[c].astype("str")
    return table, np.hstack(design)


def _counts(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Ratings per user: ``lo + floor(s * LogNormal)`` capped at ``n_items``, with the scale ``s`` found
    by bisection so the total is just below the target; the last few ratings go one each to random users."""
    lo, hi = cfg.min_ratings_per_user, cfg.ratings_cap
    extra_mean = max(cfg.mean_ratings_per_user - lo, 0.5)
    mu = np.log(extra_mean) - cfg.activity_sigma**2 / 2
    extra = rng.lognormal(mu, cfg.activity_sigma, size=cfg.n_users)
    total = n_ratings_target(cfg)

    def counts_at(scale: float) -> np.ndarray:
        return np.clip(lo + np.floor(extra * scale), lo, hi).astype(np.int64)

    s_lo, s_hi = 0.0, 1.0
    while counts_at(s_hi).sum() < total and s_hi < 1e12:
        s_hi *= 2
    for _ in range(60):
        mid = (s_lo + s_hi) / 2
        s_lo, s_hi = (mid, s_hi) if counts_at(mid).sum() <= total else (s_lo, mid)
    counts = counts_at(s_lo)
    while (diff := total - int(counts.sum())) > 0:
        room = np.flatnonzero(counts < hi)
        counts[rng.choice(room, size=min(diff, len(room)), replace=False)] += 1
    return counts


def n_ratings_target(cfg: SyntheticConfig) -> int:
    """The exact number of ratings :func:`generate` makes: ``n_ratings`` or
    ``round(mean_ratings_per_user * n_users)`` (at most ``n_users * ratings_cap``)."""
    if cfg.n_ratings is not None:
        return cfg.n_ratings
    return min(int(round(cfg.mean_ratings_per_user * cfg.n_users)), cfg.n_users * cfg.ratings_cap)


def _select_items(rng: np.random.Generator, cfg: SyntheticConfig, U: np.ndarray, V: np.ndarray,
                  user_base: np.ndarray, item_base: np.ndarray, log_pop: np.ndarray, counts: np.ndarray,
                  scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel top-n_u per user (chunked): (user index, item index) of every rating, grouped by user."""
    users, items = [], []
    sd_score = np.sqrt(cfg.user_bias_sd**2 + cfg.item_bias_sd**2 + cfg.interaction_sd**2) or 1.0
    chunk = max(1, 4_000_000 // cfg.n_items)
    starts = range(0, cfg.n_users, chunk)
    for a in progress_bar(starts, desc="synthetic ratings", disable=cfg.n_users * cfg.n_items < 5_000_000):
        b = min(a + chunk, cfg.n_users)
        score = user_base[a:b, None] + item_base[None, :] + scale * (U[a:b] @ V.T)
        keys = log_pop[None, :] + cfg.preference_selection * (score - cfg.global_mean) / sd_score
        keys += rng.gumbel(size=keys.shape)
        n_max = int(counts[a:b].max())
        top = np.argpartition(-keys, n_max - 1, axis=1)[:, :n_max] if n_max < cfg.n_items else \
            np.tile(np.arange(cfg.n_items), (b - a, 1))
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        take = np.arange(n_max)[None, :] < counts[a:b, None]
        rows = np.broadcast_to(np.arange(a, b)[:, None], top.shape)[take]
        cols = top[take]
        users.append(rows)
        items.append(cols)
    return np.concatenate(users), np.concatenate(items)


def _cover_items(rng: np.random.Generator, u: np.ndarray, i: np.ndarray, n_items: int) -> None:
    """Give every item at least one rating (in place): an unrated item takes over a random rating of an
    item that has several, from a user who has not rated it. Touches only a handful of rows."""
    counts = np.bincount(i, minlength=n_items)
    unrated = np.flatnonzero(counts == 0)
    if len(unrated) > 1000:  # a catalogue much larger than the ratings: leave the long tail unrated
        log.info("synthetic: %d items have no rating; not reassigning so many", len(unrated))
        return
    for item in unrated.tolist():
        has_item = np.zeros(u.max() + 1, dtype=bool)
        has_item[u[i == item]] = True
        donors = np.flatnonzero((counts[i] >= 2) & ~has_item[u])
        if len(donors) == 0:
            continue
        row = int(rng.choice(donors))
        counts[i[row]] -= 1
        counts[item] += 1
        i[row] = item


def _timeline(rng: np.random.Generator, cfg: SyntheticConfig, x: np.ndarray,
              counts: np.ndarray) -> dict[str, np.ndarray]:
    n, H = cfg.n_users, cfg.horizon_days * DAY
    t0, t_end = cfg.start_ts, cfg.start_ts + H
    g = _standardize(x @ rng.standard_normal(x.shape[1]))
    h = _standardize(x @ rng.standard_normal(x.shape[1]))
    p_churn = _sigmoid(_logit(cfg.churn_rate) + cfg.churn_feature_strength * g)
    p_return = _sigmoid(_logit(cfg.return_rate) + cfg.return_feature_strength * h)
    start = t0 + (rng.uniform(0, 0.3, n) * H).astype(np.int64)
    churned = rng.random(n) < p_churn
    stop = t0 + (rng.uniform(*cfg.churn_window, n) * H).astype(np.int64)
    stop = np.where(churned, np.maximum(stop, start + 7 * DAY), t_end)
    gap = (cfg.dormant_days_min + rng.exponential(cfg.dormant_days_mean, n)) * DAY
    back = stop + gap.astype(np.int64)
    returned = churned & (rng.random(n) < p_return) & (back < t_end - 7 * DAY) & (counts >= 2)
    end2 = np.minimum(back + (rng.uniform(14, 120, n) * DAY).astype(np.int64), t_end)
    return {"start": start, "stop": stop, "back": np.where(returned, back, -1), "end2": end2,
            "churned": churned, "returned": returned, "p_churn": p_churn, "p_return": p_return}


def _timestamps(rng: np.random.Generator, cfg: SyntheticConfig, tl: dict[str, np.ndarray],
                u: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each rating's time: uniform in its user's first or (for returners) second active period."""
    shuffled_rank = np.empty(len(u), dtype=np.int64)
    order = np.lexsort((rng.random(len(u)), u))
    first_row = np.concatenate([[0], np.cumsum(counts)[:-1]])
    shuffled_rank[order] = np.arange(len(u)) - np.repeat(first_row, counts)
    n_late = np.where(tl["returned"], np.maximum(1, np.round(cfg.return_share * counts)), 0).astype(np.int64)
    late = shuffled_rank >= (counts - n_late)[u]
    lo = np.where(late, tl["back"][u], tl["start"][u])
    hi = np.where(late, tl["end2"][u], tl["stop"][u])
    return lo + np.floor(rng.random(len(u)) * np.maximum(hi - lo, 1)).astype(np.int64)


def retention_cut(cfg: SyntheticConfig) -> int:
    """A suggested retention time cut: just after the latest first-period stop of churners plus two weeks
    (all churners not yet back are then dormant for >= 14 days)."""
    return int(cfg.start_ts + (cfg.churn_window[1] * cfg.horizon_days + 14) * DAY)


def generate(config: SyntheticConfig | None = None, **overrides: object) -> SyntheticData:
    """Generate the synthetic dataset (deterministic in ``config.seed``); ``overrides`` replace fields."""
    cfg = config or SyntheticConfig()
    if overrides:
        cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    ss = np.random.SeedSequence(cfg.seed)
    r_users, r_items, r_ratings, r_time, r_ads = (np.random.default_rng(s) for s in ss.spawn(5))
    k, s = cfg.n_factors, cfg.feature_signal
    user_table, x = _user_features(r_users, cfg)
    feat_U = np.sqrt(s) * _standardize(x @ r_users.standard_normal((x.shape[1], k)))
    U = feat_U + np.sqrt(1 - s) * r_users.standard_normal((cfg.n_users, k))
    feat_b = cfg.user_bias_sd * np.sqrt(s) * _standardize(x @ r_users.standard_normal(x.shape[1]))
    b_u = feat_b + cfg.user_bias_sd * np.sqrt(1 - s) * r_users.standard_normal(cfg.n_users)

    c = cfg.category_signal
    cat_p = r_items.dirichlet(np.full(cfg.n_categories, 1.5))
    category = r_items.choice(cfg.n_categories, size=cfg.n_items, p=cat_p)
    C = r_items.standard_normal((cfg.n_categories, k))
    V = np.sqrt(c) * C[category] + np.sqrt(1 - c) * r_items.standard_normal((cfg.n_items, k))
    b_i = cfg.item_bias_sd * r_items.standard_normal(cfg.n_items)
    age_years = r_items.exponential(4.0, cfg.n_items)
    log_pop = cfg.popularity_sd * r_items.standard_normal(cfg.n_items) - 0.15 * age_years
    release = cfg.start_ts - (age_years * 365.25 * DAY).astype(np.int64)
    item_ids = np.arange(1, cfg.n_items + 1, dtype=np.int64)
    item_table = pd.DataFrame(
        {"category": pd.Series([f"cat_{v:02d}" for v in category], dtype="str").to_numpy(),
         "release_ts": release}, index=pd.Index(item_ids, name="item_id"))
    item_table["category"] = item_table["category"].astype("str")

    scale = cfg.interaction_sd / np.sqrt(k)
    counts = _counts(r_ratings, cfg)
    u, i = _select_items(r_ratings, cfg, U, V, cfg.global_mean + b_u, b_i, log_pop, counts, scale)
    _cover_items(r_ratings, u, i, cfg.n_items)
    score = cfg.global_mean + b_u[u] + b_i[i] + scale * np.einsum("nk,nk->n", U[u], V[i])
    noisy = score + cfg.noise * r_ratings.standard_normal(len(score))
    rating = np.clip(np.round(noisy / cfg.rating_step) * cfg.rating_step, 1.0, 5.0)
    tl = _timeline(r_time, cfg, x, counts)
    ts = _timestamps(r_time, cfg, tl, u, counts)
    user_ids = user_table.index.to_numpy()
    interactions = pd.DataFrame({"user_id": user_ids[u], "item_id": item_ids[i], "rating": rating,
                                 "timestamp": ts})
    interactions = interactions.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    interactions = interactions.reset_index(drop=True)

    funnel: AdFunnel = generate_ads(r_ads, cfg, user_ids=user_ids, host_x=x, U=U, C=C, counts=counts)
    truth = SyntheticTruth(
        user_ids=user_ids, item_ids=item_ids, user_factors=U, item_factors=V, user_bias=b_u, item_bias=b_i,
        global_mean=cfg.global_mean, interaction_scale=float(scale), user_feature_factors=feat_U,
        user_feature_bias=feat_b, item_category=category, start_ts=tl["start"], churned=tl["churned"],
        churn_ts=np.where(tl["churned"], tl["stop"], -1), returned=tl["returned"], return_ts=tl["back"],
        p_churn=tl["p_churn"], p_return=tl["p_return"], ad_click_p=funnel.click_p,
        ad_conversion_p=funnel.conversion_p)
    meta: dict[str, object] = {"config": asdict(cfg), "retention_cut_ts": retention_cut(cfg),
                               "dormant_days": 14,
                               "horizon_end_ts": cfg.start_ts + cfg.horizon_days * DAY}
    ds = Dataset(f"synthetic-{cfg.n_users}x{cfg.n_items}-seed{cfg.seed}", interactions, user_table,
                 item_table, (1.0, 5.0), meta)
    log.info("synthetic: %d users, %d items, %d ratings, %d churned, %d returned, %d impressions",
             cfg.n_users, cfg.n_items, len(interactions), int(tl["churned"].sum()), int(tl["returned"].sum()),
             len(funnel.frame))
    return SyntheticData(ds, funnel.frame, truth, cfg)
