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
from fedrec.ads.acquisition import campaign_card, rank_candidates, read_card, write_card
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
    card = read_card(write_card(campaign_card(guest, run_id=trained["run_id"]), tmp_path / "card.json"))
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
    card = campaign_card(guest, run_id="another-run")
    with pytest.raises(ValueError, match="not the same model"):
        rank_candidates(card, card.campaigns[0], host, feats.iloc[:5])
    with pytest.raises(KeyError, match="not on the card"):
        rank_candidates(campaign_card(guest, run_id=trained["run_id"]), "no-such", host, feats.iloc[:5])
    path = write_card(card, tmp_path / "card.json")
    doc = json.loads(path.read_text())
    doc["campaigns"][card.campaigns[0]]["e_G"] = ["x"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"card\.json: not a campaign card \(campaign"):
        read_card(path)
    path.write_text(json.dumps({**doc, "format": "something"}))
    with pytest.raises(ArtifactError, match="format"):
        read_card(path)
