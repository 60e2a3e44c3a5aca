"""The synthetic generator: determinism, schema, feature signal, churn and return, the ad funnel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.data.schema import validate_interactions, validate_side_table
from fedrec.data.synthetic import DAY, SyntheticConfig, SyntheticData, generate


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(SyntheticConfig(seed=11))


def one_hot(features: pd.DataFrame) -> np.ndarray:
    return pd.get_dummies(features, dtype=float).to_numpy()


def heldout_r2(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> float:
    """Ridge regression fitted on the first 75% of rows, R^2 on the rest."""
    n_fit = int(0.75 * len(x))
    x = np.hstack([(x - x[:n_fit].mean(0)) / (x[:n_fit].std(0) + 1e-9), np.ones((len(x), 1))])
    a, b = x[:n_fit], y[:n_fit]
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ b)
    resid = y[n_fit:] - x[n_fit:] @ w
    return float(1 - (resid**2).sum() / ((y[n_fit:] - y[n_fit:].mean(0)) ** 2).sum())


def test_same_seed_gives_identical_frames() -> None:
    cfg = SyntheticConfig(n_users=300, n_items=80, seed=3)
    a, b = generate(cfg), generate(cfg)
    pd.testing.assert_frame_equal(a.dataset.interactions, b.dataset.interactions)
    pd.testing.assert_frame_equal(a.dataset.user_features, b.dataset.user_features)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(a.dataset.item_features, b.dataset.item_features)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(a.ads, b.ads)
    np.testing.assert_array_equal(a.truth.user_factors, b.truth.user_factors)


def test_different_seed_gives_different_data() -> None:
    a = generate(SyntheticConfig(n_users=300, n_items=80, seed=3))
    b = generate(SyntheticConfig(n_users=300, n_items=80, seed=4))
    assert not a.dataset.interactions.equals(b.dataset.interactions)
    assert not a.ads.equals(b.ads)


def test_ad_parameters_do_not_change_the_ratings() -> None:
    a = generate(SyntheticConfig(n_users=300, n_items=80, seed=3))
    b = generate(SyntheticConfig(n_users=300, n_items=80, seed=3, click_rate=0.2, n_campaigns=5))
    pd.testing.assert_frame_equal(a.dataset.interactions, b.dataset.interactions)


def test_tables_pass_validation_and_follow_the_conventions(data: SyntheticData) -> None:
    ds = data.dataset
    inter, report = validate_interactions(ds.interactions, rating_scale=ds.rating_scale)
    assert report.n_dropped == 0 and len(inter) == 60_000
    assert ds.interactions.dtypes.tolist() == [np.int64, np.int64, np.float64, np.int64]
    assert np.all(np.mod(ds.interactions["rating"] * 2, 1) == 0)  # multiples of 0.5
    ts = ds.interactions["timestamp"]
    assert ts.min() >= data.config.start_ts and ts.max() < ds.meta["horizon_end_ts"]  # type: ignore[operator]
    assert ds.user_features is not None and ds.item_features is not None
    validate_side_table(ds.user_features, id_column="user_id", known_ids=ds.interactions["user_id"])
    validate_side_table(ds.item_features, id_column="item_id", known_ids=ds.interactions["item_id"],
                        unknown="keep")
    assert pd.api.types.is_string_dtype(ds.item_features["category"].dtype)
    assert ds.item_features["release_ts"].dtype == np.int64
    kinds = {c: pd.api.types.is_numeric_dtype(t) for c, t in ds.user_features.dtypes.items()}
    assert kinds == {"region": False, "segment": False, "device": False, "channel": False, "age": True,
                     "income_k": True, "tenure_years": True}


def test_long_tail_of_ratings_per_user(data: SyntheticData) -> None:
    counts = data.dataset.interactions["user_id"].value_counts()
    assert (counts <= 5).mean() > 0.15 and counts.max() > 10 * counts.median()


def test_exact_rating_count_and_minimum() -> None:
    cfg = SyntheticConfig(n_users=200, n_items=150, n_ratings=9_999, min_ratings_per_user=20,
                          mean_ratings_per_user=50, rating_step=1.0)
    inter = generate(cfg).dataset.interactions
    assert len(inter) == 9_999 and inter["user_id"].value_counts().min() >= 20
    assert set(inter["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_every_item_is_rated() -> None:
    cfg = SyntheticConfig(n_users=100, n_items=300, mean_ratings_per_user=8, popularity_sd=2.0, seed=1)
    inter = generate(cfg).dataset.interactions
    assert inter["item_id"].nunique() == 300 and not inter.duplicated(["user_id", "item_id"]).any()


def test_ml1m_shape_preset() -> None:
    cfg = SyntheticConfig.ml1m_shape(seed=2)
    assert (cfg.n_users, cfg.n_items, cfg.n_ratings, cfg.min_ratings_per_user, cfg.seed) == (
        6040, 3706, 1_000_209, 20, 2)


def test_host_features_explain_the_user_latents(data: SyntheticData) -> None:
    x = one_hot(data.dataset.user_features)  # type: ignore[arg-type]
    assert heldout_r2(x, data.truth.user_bias) > 0.5
    assert heldout_r2(x, data.truth.user_factors) > 0.5


def test_without_feature_signal_features_explain_nothing() -> None:
    d = generate(SyntheticConfig(feature_signal=0.0, seed=11))
    assert heldout_r2(one_hot(d.dataset.user_features), d.truth.user_factors) < 0.05  # type: ignore[arg-type]


def test_ratings_follow_the_known_model(data: SyntheticData) -> None:
    inter = data.dataset.interactions
    expected = data.truth.expected_rating(inter["user_id"].to_numpy(), inter["item_id"].to_numpy())
    assert np.corrcoef(expected, inter["rating"])[0, 1] > 0.75


def test_churn_produces_dormant_users_and_returns(data: SyntheticData) -> None:
    tr, inter = data.truth, data.dataset.interactions
    cut, dormant_days = data.dataset.meta["retention_cut_ts"], data.dataset.meta["dormant_days"]
    before = inter[inter["timestamp"] < cut].groupby("user_id")["timestamp"].max()
    dormant = set(before.index[before < cut - dormant_days * DAY])  # type: ignore[operator]
    back = dormant & set(inter.loc[inter["timestamp"] >= cut, "user_id"])
    assert len(dormant) > 500 and len(back) > 200
    assert tr.churned.sum() > 0.4 * len(tr.churned) and tr.returned.sum() > 0.15 * len(tr.churned)


def test_ratings_respect_the_activity_periods(data: SyntheticData) -> None:
    tr, inter = data.truth, data.dataset.interactions
    pos = inter["user_id"].to_numpy() - 1  # synthetic raw user ids are 1..n in truth order
    ts = inter["timestamp"].to_numpy()
    churned, returned = tr.churned[pos], tr.returned[pos]
    in_gap = churned & (ts >= tr.churn_ts[pos]) & (~returned | (ts < tr.return_ts[pos]))
    assert not in_gap.any()
    late = returned & (ts >= tr.return_ts[pos])
    assert set(inter["user_id"][late]) == set(tr.user_ids[tr.returned])


def test_return_is_predictable_from_host_features(data: SyntheticData) -> None:
    x = one_hot(data.dataset.user_features)[data.truth.churned]  # type: ignore[arg-type]
    assert heldout_r2(x, data.truth.p_return[data.truth.churned]) > 0.9
    y = data.truth.returned[data.truth.churned]
    score = x @ np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0][:-1]
    ranks = pd.Series(score).rank().to_numpy()
    auc = (ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())
    assert auc > 0.65


def test_returning_users_return_to_items_they_like(data: SyntheticData) -> None:
    tr, inter = data.truth, data.dataset.interactions
    pos = inter["user_id"].to_numpy() - 1
    late = inter[tr.returned[pos] & (inter["timestamp"].to_numpy() >= tr.return_ts[pos])]
    chosen = tr.expected_rating(late["user_id"].to_numpy(), late["item_id"].to_numpy()).mean()
    rng = np.random.default_rng(0)
    random_items = rng.choice(tr.item_ids, size=len(late))
    baseline = tr.expected_rating(late["user_id"].to_numpy(), random_items).mean()
    assert chosen > baseline + 0.2


def test_ad_funnel_rates_and_delays(data: SyntheticData) -> None:
    ads, cfg = data.ads, data.config
    assert len(ads) == cfg.impressions_per_user * cfg.n_users
    assert ads["click"].mean() == pytest.approx(cfg.click_rate, abs=0.01)
    assert ads.loc[ads["click"] == 1, "conversion"].mean() == pytest.approx(cfg.conversion_rate, abs=0.04)
    assert not ((ads["conversion"] == 1) & (ads["click"] == 0)).any()
    conv = ads[ads["conversion"] == 1]
    assert (conv["conversion_ts"].astype("int64") > conv["impression_ts"]).all()
    assert ads.loc[ads["conversion"] == 0, "conversion_ts"].isna().all()
    assert ads["impression_ts"].is_monotonic_increasing


def test_click_and_conversion_depend_on_different_parties(data: SyntheticData) -> None:
    ads, tr = data.ads, data.truth
    host_x = one_hot(data.dataset.user_features)[ads["user_id"].to_numpy() - 1]  # type: ignore[arg-type]
    by_host_click = heldout_r2(host_x, np.log(tr.ad_click_p))
    by_host_conv = heldout_r2(host_x, np.log(tr.ad_conversion_p))
    assert by_host_click > 0.3 and by_host_conv < by_host_click - 0.1


@pytest.mark.parametrize(("field", "value", "match"), [
    ("feature_signal", 1.5, "feature_signal"), ("n_items", 1, "n_items"),
    ("user_categorical_levels", (1,), "levels"), ("n_ratings", 10, "n_ratings"),
])
def test_config_is_validated(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**{field: value})  # type: ignore[arg-type]
