"""The advertiser's refit (fedrec.ads.refit): the same model as the one-hot logistic regression it is
built from, a learnt weight on the platform's terms, L2 cross-validated within the training clicks, a file
checked field by field, bad settings refused by name, and a campaign card that scores as the refit does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.ads.acquisition import CampaignCard, read_card, write_card
from fedrec.ads.platform_model import PlatformLogit
from fedrec.ads.refit import L2_GRID, fit_campaign_logit, read_refit, write_refit
from fedrec.artifacts import ArtifactError
from training.config import ConfigError, parse_config


def _clicks(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Campaigns with their own rates and a platform term that carries signal of its own."""
    rng = np.random.default_rng(seed)
    camp = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), size=n, p=[0.4, 0.3, 0.2, 0.1])
    base = pd.Series(camp).map({"a": -3.0, "b": -2.0, "c": -2.5, "d": -1.5}).to_numpy()
    h = rng.normal(0.0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(base + 1.2 * h)))).astype(np.float64)
    return camp, y, h


def test_the_refit_is_the_one_hot_logistic_regression_it_reparametrises() -> None:
    camp, y, h = _clicks()
    frame = pd.DataFrame({"campaign": camp.astype(str), "h": h})
    for with_h in (False, True):
        ref = PlatformLogit(["campaign"], ["h"] if with_h else [], l2=0.1).fit(frame, y)
        fit = fit_campaign_logit(camp, y, h if with_h else None, l2=0.1)
        got = fit.predict_proba(camp, h if with_h else None)
        np.testing.assert_allclose(got, ref.predict_proba(frame), rtol=1e-9, atol=1e-12)
    assert fit.gamma == pytest.approx(1.2, abs=0.2)  # the platform's terms get the weight they deserve
    # an unseen campaign gets the common offset; a click without platform terms h = 0 its campaign's
    unseen = fit.decision_function(np.array(["zzz"], dtype=object), np.zeros(1))
    assert unseen[0] == pytest.approx(fit.default_offset)


def test_auto_l2_is_chosen_within_the_training_clicks_and_recorded(tmp_path: Path) -> None:
    camp, y, h = _clicks()
    fit = fit_campaign_logit(camp, y, h, run_id="run-1")  # l2 = "auto", the default
    choice = fit.l2_choice
    assert choice is not None and choice["grid"] == list(L2_GRID)
    assert len(choice["cv_log_loss"]) == len(L2_GRID)
    assert fit.l2 == L2_GRID[int(np.argmin(choice["cv_log_loss"]))]
    assert fit.training == {"clicks": len(y), "conversions": int(y.sum()), "without_platform_terms": 0}
    back = read_refit(write_refit(fit, tmp_path / "refit.json"))
    np.testing.assert_allclose(back.predict_proba(camp, h), fit.predict_proba(camp, h), rtol=1e-12)
    assert (back.run_id, back.l2, back.l2_choice) == ("run-1", fit.l2, choice)


@pytest.mark.parametrize("l2", [0, -1.0, float("nan"), "fast", True])
def test_a_bad_l2_is_refused(l2: object) -> None:
    camp, y, h = _clicks(400)
    with pytest.raises(ValueError, match="l2 must be a number > 0 or \"auto\""):
        fit_campaign_logit(camp, y, h, l2=l2)  # type: ignore[arg-type]


def test_bad_inputs_are_refused() -> None:
    camp, y, h = _clicks(400)
    with pytest.raises(ValueError, match="labels must be 0/1"):
        fit_campaign_logit(camp, y * 2, h)
    with pytest.raises(ValueError, match="platform terms must be 400 finite"):
        fit_campaign_logit(camp, y, np.full(400, np.nan))
    with pytest.raises(ValueError, match="need conversions and non-conversions"):
        fit_campaign_logit(camp, np.zeros(400), h)


@pytest.mark.parametrize("field,value,message", [
    ("format", "other", "field 'format' is 'other'"), ("gamma", "x", "field 'gamma' 'x'"),
    ("campaigns", {"a": None}, "campaign 'a': offset None")])
def test_a_tampered_refit_file_is_named_with_its_field(tmp_path: Path, field: str, value: object,
                                                        message: str) -> None:
    camp, y, h = _clicks(600)
    path = write_refit(fit_campaign_logit(camp, y, h, l2=1.0), tmp_path / "refit.json")
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=f"refit.json: not a campaign refit.*{message}"):
        read_refit(path)


def test_a_refitted_card_scores_as_the_refit(tmp_path: Path) -> None:
    """``σ(z_G + host_scale·z_H + <e_G, e_H>)`` with the refit's card equals ``σ(o_c + γ h)``."""
    camp, y, h = _clicks(1000)
    fit = fit_campaign_logit(camp, y, h, l2=1.0)
    rng = np.random.default_rng(1)
    e_g, z_h, e_h = rng.normal(size=(1, 3)), rng.normal(size=5), rng.normal(size=(5, 3))
    card = CampaignCard(("b",), fit.offset(["b"]), fit.gamma * e_g, "r", fit.gamma)
    card = read_card(write_card(card, tmp_path / "card.json"))
    z_g, e = card.terms("b")
    via_card = z_g + card.host_scale * z_h + e_h @ e
    np.testing.assert_allclose(via_card, fit.decision_function(["b"] * 5, z_h + e_h @ e_g[0]), rtol=1e-9)
    doc = json.loads((tmp_path / "card.json").read_text())
    doc.pop("host_scale")
    doc["format_version"] = 1  # a card of before the refit: the FM as trained
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    assert read_card(tmp_path / "v1.json").host_scale == 1.0


ADVERTISER = """
[job]
protocol = "hetero_fm"
[party]
role = "{role}"
[network]
key = "keys/a.key_secret"
[peers.p]
endpoint = "tcp://127.0.0.1:7710"
public_key = "keys/p.key"
[data]
{data}
[output]
dir = "out"
[ads]
{ads}
"""


@pytest.mark.parametrize("ads,role,message", [
    ('refit = "logit"', "guest", r"\[ads\] refit must be one of 'campaign', 'off', got 'logit'"),
    ("refit_l2 = -1", "guest", r"\[ads\] refit_l2 must be a number > 0 or \"auto\""),
    ('refit_l2 = "fast"', "guest", r"\[ads\] refit_l2 must be a number > 0 or \"auto\""),
    ('refit = "campaign"', "host", r"\[ads\] is the advertiser's table"),
])
def test_a_bad_refit_setting_is_refused_naming_the_file_and_key(ads: str, role: str, message: str) -> None:
    data = 'interactions = "i.csv"' if role == "guest" else 'user_features = "u.csv"'
    with pytest.raises(ConfigError, match=f"a.toml: {message}"):
        parse_config(ADVERTISER.format(role=role, data=data, ads=ads), "a.toml")


def test_the_refit_setting_is_read() -> None:
    cfg = parse_config(ADVERTISER.format(role="guest", data='interactions = "i.csv"',
                                         ads='refit = "campaign"\nrefit_l2 = 0.5'), "a.toml")
    assert (cfg.ads.refit, cfg.ads.refit_l2) == ("campaign", 0.5)
    plain = parse_config(ADVERTISER.format(role="guest", data='interactions = "i.csv"', ads=""), "a.toml")
    assert (plain.ads.refit, plain.ads.refit_l2) == ("off", "auto")
