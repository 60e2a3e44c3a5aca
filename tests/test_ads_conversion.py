"""The conversion model's data (delay handling), scoring new clicks, the campaign card and the
platform-side acquisition ranking (fedrec.ads.conversion, fedrec.ads.acquisition)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.ads import attribute, read_click_log, synthetic_funnel
from fedrec.ads.acquisition import campaign_card, rank_candidates, read_card, training_clicks, write_card
from fedrec.ads.conversion import conversion_model, score_clicks, split_for_training
from fedrec.artifacts import ArtifactError
from fedrec.data import generate
from fedrec.data.schema import DataValidationError
from fedrec.models.vertical import HostPartials

HEADER = "click_id,user_id,time,campaign,converted,conversion_time,channel"
# cut-off 2024-03-10, window 2 days: clicks 3 (converted) and 4 (not yet) are recent; 5 is after the cut-off
ROWS = [
    "1,u1,2024-03-01T10:00:00Z,c1,0,,ch1",
    "2,u2,2024-03-02T10:00:00Z,c1,1,2024-03-02T12:00:00Z,ch2",
    "3,u3,2024-03-09T10:00:00Z,c2,1,2024-03-09T11:00:00Z,ch1",
    "4,u4,2024-03-09T12:00:00Z,c2,0,,ch2",
    "5,u5,2024-03-11T10:00:00Z,c1,0,,ch1",
]


def _log(tmp_path: Path, rows: list[str] = ROWS) -> Any:
    path = tmp_path / "clicks.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return read_click_log(path)


@pytest.mark.parametrize(("recent", "train_ids", "labels", "holdout"), [
    ("drop", [1, 2], [0, 1], []),
    ("holdout", [1, 2], [0, 1], [3, 4]),
    ("keep_positives", [1, 2, 3], [0, 1, 1], []),
])
def test_recent_clicks_are_never_negatives(tmp_path: Path, recent: str, train_ids: list[int],
                                           labels: list[int], holdout: list[int]) -> None:
    s = split_for_training(_log(tmp_path), cutoff="2024-03-10", window="2D", recent=recent)  # type: ignore[arg-type]
    g = s.advertiser.interactions
    assert g["user_id"].tolist() == train_ids and g["rating"].tolist() == labels
    assert s.holdout["user_id"].tolist() == holdout
    assert set(s.platform.user_features.index) == {1, 2, 3, 4, 5}  # the platform logged every click
    assert s.delay is not None and s.delay.after_cutoff == 1


def test_without_a_cutoff_every_labelled_click_trains(tmp_path: Path) -> None:
    s = split_for_training(_log(tmp_path))
    assert len(s.advertiser.interactions) == 5 and s.delay is None and s.holdout.empty


def test_unlabelled_clicks_and_a_cutoff_before_any_full_window_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text("click_id,user_id,time,campaign,channel\n1,u1,2024-03-01T10:00:00Z,c1,ch1\n")
    with pytest.raises(ValueError, match="attribute the conversions first"):
        split_for_training(read_click_log(path))
    with pytest.raises(ValueError, match="no click is old enough"):
        split_for_training(_log(tmp_path), cutoff="2024-03-01T11:00:00Z", window="2D")
    with pytest.raises(ValueError, match="recent must be one of"):
        split_for_training(_log(tmp_path), recent="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model field"):
        conversion_model(n_factor=3)


def test_a_malformed_parquet_click_log_names_file_row_and_column(tmp_path: Path) -> None:
    df = pd.DataFrame({"click_id": [1, 2], "user_id": ["a", "b"], "time": ["2024-01-01T00:00:00", "later"],
                       "campaign": ["x", "y"], "channel": ["c1", "c2"]})
    df.to_parquet(tmp_path / "c.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"c\.parquet, row 1, column 'time'"):
        read_click_log(tmp_path / "c.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        read_click_log(tmp_path / "bad.parquet")


# --- a trained model (the protocol over the in-memory twin, plain backend) ------------------------------

@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, TransportConfig, run_parties

    clicks, events = synthetic_funnel(generate(n_users=400, impressions_per_user=20.0, seed=3))
    labelled, _ = attribute(clicks, events, window="7D")
    split = split_for_training(labelled)
    cfg = HeteroFMConfig(**conversion_model(backend="plain", epochs=1, batch_size=512, seed=0))
    net = MemoryNetwork(TransportConfig(max_message_bytes=2**30))
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    inter, feats = split.advertiser.interactions, split.platform.user_features

    def play() -> None:
        try:
            guest.fit(inter, item_features=split.advertiser.item_features, aligned_users=feats.index)
        finally:
            guest.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_parties({"guest": play, "host": lambda: host.serve(feats)}, timeout=300)
    return {"guest": guest.local, "host": host, "inter": inter, "feats": feats, "run_id": host.run_id}


def test_scoring_new_clicks_joins_the_platforms_partials(trained: dict[str, Any]) -> None:
    guest, host, inter = trained["guest"], trained["host"], trained["inter"]
    pairs = inter.iloc[:50]
    parts = HostPartials.from_frame(host.export_partials(pairs["user_id"].tolist()), guest.config.n_factors)
    p = score_clicks(guest, pairs, parts)
    terms = guest.party_terms(pairs)["guest"]
    z = terms.z + parts.z_h + np.sum(terms.e * parts.e_h, axis=1)
    assert p == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-12)
    none = HostPartials.from_frame(host.export_partials([]), guest.config.n_factors)
    assert score_clicks(guest, pairs, none) == pytest.approx(guest.finish(terms.z), abs=1e-12)


def test_acquisition_scores_are_the_conversion_models_probabilities(trained: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    guest, host, inter, feats = trained["guest"], trained["host"], trained["inter"], trained["feats"]
    card = read_card(write_card(campaign_card(guest, run_id=trained["run_id"], clicks=training_clicks(inter),
                                              min_clicks=1), tmp_path / "card.json"))
    campaign = inter["item_id"].iloc[0]
    cand = feats.iloc[:40]
    exclude = cand.index[:5].tolist()
    ranked, counts = rank_candidates(card, campaign, host, cand, exclude=exclude, n=None)
    assert counts == {"candidates": 40, "excluded": 5, "scored": 35}
    assert not set(ranked["user_id"]) & set(exclude)
    assert ranked["rank"].tolist() == list(range(1, 36)) and ranked["score"].is_monotonic_decreasing
    # the same candidate as a click of that campaign, scored by the conversion model
    pairs = pd.DataFrame({"user_id": ranked["user_id"], "item_id": campaign, "timestamp": 0})
    parts = HostPartials.from_frame(host.export_partials(pairs["user_id"].tolist()), guest.config.n_factors)
    assert ranked["score"].to_numpy() == pytest.approx(score_clicks(guest, pairs, parts), abs=1e-9)
    top, _ = rank_candidates(card, campaign, host, cand, n=3)
    assert len(top) == 3


def test_a_card_of_another_run_a_tampered_card_and_an_unknown_campaign_are_refused(
        trained: dict[str, Any], tmp_path: Path) -> None:
    guest, host, feats = trained["guest"], trained["host"], trained["feats"]
    clicks = training_clicks(trained["inter"])
    card = campaign_card(guest, run_id="another-run", clicks=clicks, min_clicks=1)
    with pytest.raises(ValueError, match="not the same model"):
        rank_candidates(card, card.campaigns[0], host, feats.iloc[:5])
    with pytest.raises(KeyError, match="not on the card"):
        rank_candidates(campaign_card(guest, run_id=trained["run_id"], clicks=clicks, min_clicks=1),
                        "no-such", host, feats.iloc[:5])
    path = write_card(card, tmp_path / "card.json")
    doc = json.loads(path.read_text())
    doc["campaigns"][card.campaigns[0]]["e_G"] = ["x"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"card\.json: not a campaign card \(campaign"):
        read_card(path)
    path.write_text(json.dumps({**doc, "format": "something"}))
    with pytest.raises(ArtifactError, match="format"):
        read_card(path)


def test_a_campaign_card_needs_a_minimum_of_training_clicks_per_campaign(trained: dict[str, Any]) -> None:
    guest, inter = trained["guest"], trained["inter"]
    clicks = training_clicks(inter)
    small, big = str(clicks.index[-1]), str(clicks.index[0])
    floor = int(clicks.iloc[-1]) + 1  # the smallest campaign falls below it, the largest does not
    assert int(clicks.iloc[0]) >= floor
    with pytest.raises(ValueError, match=rf"fewer than {floor} training clicks.*{small!r} \({floor - 1}\)"):
        campaign_card(guest, [small], clicks=clicks, min_clicks=floor)
    # every campaign: those below the minimum are left out, the others carded
    card = campaign_card(guest, clicks=clicks, min_clicks=floor)
    assert big in card.campaigns and small not in card.campaigns
    assert set(card.campaigns) == {str(c) for c, n in clicks.items() if n >= floor}
    with pytest.raises(ValueError, match="no campaign has"):
        campaign_card(guest, clicks=clicks, min_clicks=int(clicks.iloc[0]) + 1)
    with pytest.raises(ValueError, match="min_clicks must be an integer >= 1"):
        campaign_card(guest, clicks=clicks, min_clicks=0)
    with pytest.raises(ValueError, match="'item_id'"):
        training_clicks(inter.drop(columns="item_id"))


# --- label DP for binary labels: each sample scaled by a label-free factor (label_dp.clip_scaled) ---------

@pytest.mark.parametrize("layout", ["compact", "hiding"])
def test_a_label_free_clip_factor_moves_the_release_by_at_most_one_clip(layout: str) -> None:
    """The bound of label_dp.py ("Clipping by a label-free factor") on the packing's own algebra: replace
    one sample's 0/1 label in a batch, recompute every touched column's release, compare with Δ₂ = C
    (residual clipping needs 2C)."""
    from fedrec.protocols.hetero_fm import packing
    from fedrec.protocols.hetero_fm.label_dp import RowBounds, clip_scaled, sample_factor, sensitivity

    rng = np.random.default_rng(5)
    k, n, n_cols, d, clip, p_bound = 4, 40, 12, 3, 0.7, 4.0
    x = np.zeros((n, n_cols))
    for u in range(n):
        x[u, rng.choice(n_cols, d, replace=False)] = rng.uniform(-1.5, 1.5, d)
    rows = RowBounds(d, float(np.abs(x).max()), float((x ** 2).sum(1).max()), float((x ** 4).sum(1).max()))
    v = rng.uniform(-1, 1, (n_cols, k)) * np.minimum(1.0, p_bound / np.maximum(x ** 2, 1e-9).max(0))[:, None]
    w, e = rng.normal(size=n_cols), rng.normal(size=(n, k))

    def release(delta: np.ndarray) -> np.ndarray:
        r, _ = packing.residual_rows(n * delta[:, None] * e, n * delta, np.ones(n), 0.1, 1e6, layout)
        return packing.fold(np.einsum("juw,uw->jw", packing.column_multipliers(x, v, w, 0.05, layout), r), k,
                            layout)

    p = rng.uniform(0.001, 0.999, n)
    y = (rng.random(n) < 0.1).astype(np.float64)
    assert sensitivity(clip, "label") == clip == sensitivity(clip) / 2
    worst = 0.0
    for s in range(n):
        y1 = y.copy()
        y1[s] = 1.0 - y[s]
        d0 = clip_scaled((p - y) / n, e, n, clip, layout=layout, rows=rows, plain_bound=p_bound)
        d1 = clip_scaled((p - y1) / n, e, n, clip, layout=layout, rows=rows, plain_bound=p_bound)
        moved = float(np.linalg.norm(release(d0) - release(d1)))
        assert moved <= clip + 1e-9
        worst = max(worst, moved / clip)
    assert worst > 0.3  # not vacuous
    # every sample's residual scaled by min(1, C / a(s)), whatever its label: the gradient's direction kept
    a = sample_factor(e, layout, rows, p_bound)
    out = clip_scaled((p - y) / n, e, n, clip, layout=layout, rows=rows, plain_bound=p_bound)
    np.testing.assert_allclose(n * out, (p - y) * np.minimum(1.0, clip / a), rtol=1e-12)
    assert (a > clip).any()  # some samples are scaled


def test_label_clipping_halves_sigma_for_the_same_epsilon_and_is_logistic_only() -> None:
    from fedrec.protocols.hetero_fm import HeteroFMConfig
    from fedrec.protocols.hetero_fm.label_dp import LabelDP

    residual, label = LabelDP(3.0, 1.0, 1e-5), LabelDP(3.0, 1.0, 1e-5, "label")
    assert label.sigma == pytest.approx(residual.sigma / 2)
    assert conversion_model()["dp_guest_clip_part"] == "label"
    HeteroFMConfig(**conversion_model(backend="plain"))  # the conversion model's default is valid
    with pytest.raises(ValueError, match="dp_guest_clip_part"):
        HeteroFMConfig(objective="regression", backend="plain", dp_guest_clip_part="label")
    with pytest.raises(ValueError, match="dp_guest_clip_part"):
        HeteroFMConfig(backend="plain", dp_guest_clip_part="labels")


def test_platform_features_pool_rare_values_and_count_the_identity_column() -> None:
    from fedrec.ads.conversion import RARE, platform_features

    f = pd.DataFrame({"ip": ["a"] * 5 + ["b"] * 2 + ["c"], "os": ["1"] * 4 + ["2"] * 4,
                      "age": np.arange(8.0)}, index=pd.Index(range(10, 18), name="user_id"))
    out = platform_features(f, min_clicks=3, count_columns=["ip"])
    assert out["ip"].tolist() == ["a"] * 5 + [RARE] * 3
    assert out["ip_clicks"].tolist() == ["2^2"] * 5 + [RARE] * 3  # 2^1 (b) and 2^0 (c) seen on < 3 rows
    assert out["os"].tolist() == f["os"].tolist() and out["age"].tolist() == f["age"].tolist()
    assert out.index.equals(f.index)
    same = platform_features(f, min_clicks=1)
    pd.testing.assert_frame_equal(same, f)
    with pytest.raises(ValueError, match="not platform columns"):
        platform_features(f, count_columns=["user"])
    with pytest.raises(ValueError, match="numeric"):
        platform_features(f, count_columns=["age"])
    with pytest.raises(ValueError, match="min_clicks"):
        platform_features(f, min_clicks=0)
