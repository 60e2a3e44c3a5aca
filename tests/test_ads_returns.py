"""Conversions returned to the platform under DP: randomized response (flip rate, debiasing), RRWithPrior
(the exact ε-DP ratio bound on its probability table for every prior, k*, the sampler), the staged prior
never seeing a label, aggregate reports (contribution bounding, Laplace / Gaussian calibration), the
persisted budget (refusal, restart) and the platform's model on exact statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.ads import (
    BudgetError,
    BudgetExceededError,
    ClickLog,
    PlatformLogit,
    PrivacyBudget,
    Release,
    aggregate_report,
    aggregate_reports,
    bound_contributions,
    fit_on_reports,
    return_randomized,
    return_staged_with_prior,
    return_with_prior,
    rr_debias,
    rr_flip_probability,
    rr_prior_table,
    rr_rate,
    rr_with_prior,
)
from fedrec.ads.data import TIME_DTYPE
from fedrec.ads.returns import rr_prior_k
from fedrec.crypto.dp import PrivacyAccountant, noise_multiplier_for

EPSILONS = (0.1, 0.5, 1.0, 2.0, 8.0)


def make_log(n: int, *, rate: float = 0.1, users: int | None = None, cells: int = 5, seed: int = 0
             ) -> ClickLog:
    """``n`` clicks, one per user unless ``users``; channel ``ch<k>`` with ``cells`` levels."""
    rng = np.random.default_rng(seed)
    conv = (rng.random(n) < rate).astype(np.int8)
    time = pd.Series(pd.to_datetime(1_700_000_000 + np.arange(n) * 60, unit="s", utc=True)).astype(TIME_DTYPE)
    ct = time.where(conv == 1) + pd.Timedelta(hours=1)
    frame = pd.DataFrame({"user_id": (np.arange(n) % (users or n)).astype(str), "time": time.array,
                          "campaign": "c1", "converted": conv, "conversion_time": ct.astype(TIME_DTYPE).array,
                          "channel": np.char.add("ch", (np.arange(n) % cells).astype(str))},
                         index=pd.Index(np.arange(1, n + 1), name="click_id"))
    for c in ("user_id", "campaign", "channel"):
        frame[c] = frame[c].astype("str")
    return ClickLog(frame, "test", platform_columns=("channel",))


# --- randomized response ---------------------------------------------------------------------------------

@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0])
def test_rr_flip_rate_matches_theory(epsilon: float) -> None:
    """200k labels: the observed flip rate is within 5 binomial standard errors of 1 / (1 + e^ε)."""
    log = make_log(200_000, rate=0.3)
    ret = return_randomized(log, epsilon, rng=np.random.default_rng(1))
    y = log.frame["converted"].to_numpy()
    q = 1 / (1 + math.exp(epsilon))
    assert rr_flip_probability(epsilon) == pytest.approx(q)
    flips = float(np.mean(ret.returned != y))
    assert abs(flips - q) < 5 * math.sqrt(q * (1 - q) / len(y))
    for label in (0, 1):  # symmetric: both labels flip at q
        m = y == label
        assert abs(np.mean(ret.returned[m] != label) - q) < 5 * math.sqrt(q * (1 - q) / m.sum())


def test_rr_debiasing_is_unbiased() -> None:
    log = make_log(100_000, rate=0.05)
    y = log.frame["converted"].to_numpy()
    ret = return_randomized(log, 1.0, rng=np.random.default_rng(2))
    rate, se = rr_rate(ret.returned, 1.0)
    assert abs(rate - y.mean()) < 4 * se
    assert rr_debias(np.array([0, 1]), 1.0) == pytest.approx(
        [-rr_flip_probability(1.0) / (1 - 2 * rr_flip_probability(1.0)),
         (1 - rr_flip_probability(1.0)) / (1 - 2 * rr_flip_probability(1.0))])
    assert ret.epsilon_user == 1.0  # one click per user


def test_epsilon_inf_returns_the_labels_and_epsilon_must_be_positive() -> None:
    log = make_log(50)
    assert (return_randomized(log, math.inf).returned == log.frame["converted"].to_numpy()).all()
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        return_randomized(log, 0.0)


# --- RR with a prior -------------------------------------------------------------------------------------

def _priors() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    out = [rng.dirichlet(np.full(k, a), size=200) for k in (2, 3, 5) for a in (0.2, 1.0, 5.0)]
    out.append(np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.999, 0.001], [0.731, 0.269]]))
    out.append(np.array([[1 / 3] * 3, [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]]))
    return out


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_rr_with_prior_table_is_epsilon_dp_for_every_prior(epsilon: float) -> None:
    """Exact check on the probability table: for every prior row and output o,
    max_y P(o | y) <= e^ε min_y P(o | y) (outputs of probability 0 for every y allowed)."""
    for prior in _priors():
        P, k = rr_prior_table(prior, epsilon)
        assert np.allclose(P.sum(axis=2), 1.0) and (P >= 0).all()
        hi, lo = P.max(axis=1), P.min(axis=1)
        assert (hi <= math.exp(epsilon) * lo + 1e-12).all()
        assert ((k >= 1) & (k <= prior.shape[1])).all()


def test_rr_prior_k_is_the_argmax_of_the_correct_probability() -> None:
    e = math.exp(1.0)
    # (0.6, 0.3, 0.1): k=1 -> 0.6, k=2 -> 0.9 e/(e+1) = 0.658, k=3 -> e/(e+2) = 0.576
    assert rr_prior_k(np.array([[0.6, 0.3, 0.1]]), 1.0).tolist() == [2]
    rng = np.random.default_rng(4)
    prior = rng.dirichlet(np.ones(4), size=500)
    top = np.cumsum(-np.sort(-prior, axis=1), axis=1)
    brute = [int(np.argmax([top[i, j] * e / (e + j) for j in range(4)])) + 1 for i in range(500)]
    assert rr_prior_k(prior, 1.0).tolist() == brute


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_binary_rr_with_prior_is_the_prior_label_or_plain_rr(epsilon: float) -> None:
    p1 = np.linspace(0.0, 1.0, 101)
    P, k = rr_prior_table(p1, epsilon)
    keep = math.exp(epsilon) / (1 + math.exp(epsilon))
    confident = np.maximum(p1, 1 - p1) > keep
    assert (k == np.where(confident, 1, 2)).all()
    top = (p1 > 0.5).astype(int)
    for i in np.flatnonzero(confident):  # the prior's label whatever y is
        assert P[i, 0, top[i]] == 1.0 and P[i, 1, top[i]] == 1.0
    assert np.allclose(P[~confident], [[keep, 1 - keep], [1 - keep, keep]])


def test_rr_with_prior_sampler_follows_its_table() -> None:
    """100k draws per true label under a fixed 3-label prior: frequencies within 5 standard errors."""
    prior = np.tile([0.5, 0.3, 0.2], (100_000, 1))
    P, _ = rr_prior_table(prior[:1], 1.0)
    for y in range(3):
        out, k = rr_with_prior(np.full(100_000, y), prior, 1.0, np.random.default_rng(5 + y))
        freq = np.bincount(out, minlength=3) / 100_000
        se = np.sqrt(P[0, y] * (1 - P[0, y]) / 100_000)
        assert (np.abs(freq - P[0, y]) <= 5 * se + 1e-12).all() and (k == k[0]).all()


def test_return_with_prior_validates_the_prior() -> None:
    log = make_log(100)
    with pytest.raises(ValueError, match="prior"):
        return_with_prior(log, np.full(99, 0.1), 1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        return_with_prior(log, np.column_stack([np.full(100, 0.5), np.full(100, 0.6)]), 1.0)
    ret = return_with_prior(log, np.full(100, 0.01), 1.0, rng=np.random.default_rng(0))
    assert (ret.k == 1).all() and (ret.returned == 0).all()  # a confident prior: its label, for everyone


def test_staged_prior_sees_features_and_randomized_bits_only(tmp_path: Path) -> None:
    log = make_log(4000, rate=0.2)
    seen: list[tuple[list[str], np.ndarray]] = []

    def prior_model(done: pd.DataFrame, bits: np.ndarray, todo: pd.DataFrame) -> np.ndarray:
        seen.append((list(done.columns), bits.copy()))
        return np.full(len(todo), 0.05)

    budget = PrivacyBudget.create(tmp_path / "b.json", epsilon=1.0, unit="click")
    ret = return_staged_with_prior(log, 1.0, prior_model, shares=(0.5, 0.25, 0.25), budget=budget,
                                   rng=np.random.default_rng(6))
    assert len(seen) == 2
    assert all("converted" not in cols and "conversion_time" not in cols for cols, _ in seen)
    assert (ret.k[ret.stage == 0] == 2).all() and (ret.k[ret.stage > 0] == 1).all()
    assert len(seen[1][1]) == (ret.stage == 0).sum()  # stage 2's prior: only plain-RR bits
    assert budget.spent()["total"] == pytest.approx(1.0)  # disjoint stages: one ε per click label


# --- aggregate reports -----------------------------------------------------------------------------------

def test_contribution_bounding_caps_each_user_in_time_order() -> None:
    log = make_log(12, rate=1.0, users=3)  # users 0, 1, 2 have 4 converted clicks each
    kept = bound_contributions(log, 1.0)
    per_user = kept.groupby(log.frame["user_id"].to_numpy()).sum()
    assert (per_user == 1.0).all()
    assert kept.loc[[1, 2, 3]].tolist() == [1.0, 1.0, 1.0]  # the first click of each user counts
    frame = log.frame.assign(amount=[40.0, 300.0, 5.0, 0.0] * 3)
    vlog = ClickLog(frame, "v", platform_columns=("channel", "amount"))
    kept = bound_contributions(vlog, 150.0, value="amount", value_cap=100.0)
    # user 0: clicks 1, 4, 7, 10 with amounts 40, 0, 5, 300 -> 40, 0, 5, then 100 clipped to the 105 left
    assert kept.loc[[1, 4, 7, 10]].tolist() == [40.0, 0.0, 5.0, 100.0]
    assert (kept.groupby(vlog.frame["user_id"].to_numpy()).sum() <= 150.0).all()
    exact = aggregate_report(log, ["channel"], mechanism="laplace", epsilon=math.inf, cap=2.0)
    assert exact.table["conversions"].sum() == 6.0 and exact.details["users_clipped"] == 3


def _null_log(cells: int) -> ClickLog:
    return make_log(cells, rate=0.0, cells=cells)


def test_laplace_noise_scale_is_cap_over_epsilon() -> None:
    log = _null_log(20_000)  # 20k cells without conversions: the report is pure noise
    rep = aggregate_report(log, ["channel"], mechanism="laplace", epsilon=0.5, cap=2.0,
                           rng=np.random.default_rng(7))
    assert rep.scale == 4.0 and rep.epsilon == 0.5
    sd = rep.table["conversions"].std()
    assert sd == pytest.approx(math.sqrt(2) * 4.0, rel=0.05)  # Laplace(b) has sd sqrt(2) b


def test_gaussian_noise_scale_matches_the_rdp_calibration() -> None:
    log = _null_log(20_000)
    rep = aggregate_report(log, ["channel"], mechanism="gaussian", epsilon=1.0, delta=1e-5, cap=3.0,
                           rng=np.random.default_rng(8))
    z = noise_multiplier_for(1.0, 1e-5, 1)
    assert rep.scale == pytest.approx(3.0 * z)
    assert rep.epsilon == pytest.approx(1.0, abs=0.01) and rep.epsilon <= 1.0
    assert rep.table["conversions"].std() == pytest.approx(3.0 * z, rel=0.05)


def test_several_reports_split_the_budget(tmp_path: Path) -> None:
    log = make_log(500, rate=0.2, cells=4)
    lap = aggregate_reports(log, [["channel"], ["campaign"]], mechanism="laplace", epsilon=1.0,
                            rng=np.random.default_rng(9))
    assert [r.epsilon for r in lap] == [0.5, 0.5] and [r.scale for r in lap] == [2.0, 2.0]
    budget = PrivacyBudget.create(tmp_path / "b.json", epsilon=1.0, delta=1e-5)
    gau = aggregate_reports(log, [["channel"], ["campaign"], ["channel", "campaign"]], mechanism="gaussian",
                            epsilon=1.0, budget=budget, rng=np.random.default_rng(10))
    assert len({r.scale for r in gau}) == 1
    assert budget.spent()["total"] == pytest.approx(1.0, abs=0.01) and budget.spent()["total"] <= 1.0
    assert gau[2].table.index[0] == "ch0|c1"


# --- budget ----------------------------------------------------------------------------------------------

def test_budget_refuses_an_over_budget_report_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    log = make_log(300, rate=0.2)
    budget = PrivacyBudget.create(path, epsilon=1.0, unit="user")
    aggregate_report(log, ["channel"], mechanism="laplace", epsilon=0.6, budget=budget,
                     rng=np.random.default_rng(11))
    before = path.read_text()
    with pytest.raises(BudgetExceededError, match=r"total to ε = 1.1 > the budget 1"):
        aggregate_report(log, ["channel"], mechanism="laplace", epsilon=0.5, budget=budget)
    assert path.read_text() == before  # nothing charged
    reopened = PrivacyBudget.open(path)  # a restart
    assert reopened.spent()["total"] == pytest.approx(0.6) and [r.name for r in reopened.releases] == [
        "laplace:channel"]
    with pytest.raises(BudgetExceededError):
        return_randomized(log, 0.5, budget=reopened)
    aggregate_report(log, ["channel"], mechanism="laplace", epsilon=0.4, budget=reopened)
    assert PrivacyBudget.open(path).remaining() == pytest.approx(0.0)
    with pytest.raises(BudgetError, match="already exists"):
        PrivacyBudget.create(path, epsilon=10.0)


def test_stale_budget_objects_see_each_others_charges(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    a = PrivacyBudget.create(path, epsilon=1.0, unit="click")
    b = PrivacyBudget.open(path)
    a.charge(Release("r1", "rr", {"click": 0.7, "user": 0.7}))
    with pytest.raises(BudgetExceededError):
        b.charge(Release("r2", "rr", {"click": 0.7, "user": 0.7}))


def test_budget_charges_its_unit_and_composes_gaussians_by_rdp(tmp_path: Path) -> None:
    log = make_log(40, users=10)  # 4 clicks per user
    user = PrivacyBudget.create(tmp_path / "u.json", epsilon=3.0, unit="user")
    click = PrivacyBudget.create(tmp_path / "c.json", epsilon=3.0, unit="click")
    assert return_randomized(log, 0.5, budget=click).epsilon_user == 2.0
    return_randomized(log, 0.5, budget=user)
    assert (user.spent()["total"], click.spent()["total"]) == (2.0, 0.5)
    pure = PrivacyBudget.create(tmp_path / "p.json", epsilon=5.0)
    with pytest.raises(BudgetExceededError, match="delta > 0"):
        pure.charge(Release("g", "gaussian", {}, {"click": 5.0, "user": 5.0}))
    g = PrivacyBudget.create(tmp_path / "g.json", epsilon=5.0, delta=1e-5)
    for _ in range(3):
        g.charge(Release("g", "gaussian", {}, {"click": 5.0, "user": 5.0}))
    g.charge(Release("l", "laplace", {"click": 0.25, "user": 0.25}))
    acc = PrivacyAccountant("add_remove")
    acc.gaussian(5.0, count=3)
    assert g.spent()["total"] == pytest.approx(acc.epsilon(1e-5) + 0.25)


def test_malformed_budget_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    PrivacyBudget.create(path, epsilon=1.0)
    doc = json.loads(path.read_text())
    doc["releases"] = [{"name": "x", "kind": "rr", "epsilon": {"click": -1, "user": 1}}]
    path.write_text(json.dumps(doc))
    with pytest.raises(BudgetError, match=r"releases\[0\]"):
        PrivacyBudget.open(path)
    doc["epsilon"] = "lots"
    path.write_text(json.dumps(doc))
    with pytest.raises(BudgetError, match="field 'epsilon'"):
        PrivacyBudget.open(path)


# --- the platform's model --------------------------------------------------------------------------------

def test_reports_without_noise_give_the_model_of_the_labels() -> None:
    """A one-hot logistic regression depends on the labels only through the per-level conversion counts:
    exact reports (ε = inf) by each dimension give the same model as the per-click labels."""
    rng = np.random.default_rng(12)
    log = make_log(3000, cells=6)
    frame = log.frame.assign(hour=rng.choice(["h1", "h2", "h3"], 3000))
    frame["converted"] = (rng.random(3000) < np.where(frame["hour"] == "h1", 0.3, 0.05)).astype(np.int8)
    frame["conversion_time"] = (frame["time"].where(frame["converted"] == 1) + pd.Timedelta(1, "h")).array
    log = ClickLog(frame, "t", platform_columns=("channel", "hour"))
    reports = [aggregate_report(log, [d], mechanism="laplace", epsilon=math.inf) for d in ("channel", "hour")]
    a = fit_on_reports(log.frame, reports)
    b = PlatformLogit(["channel", "hour"]).fit(log.frame, log.frame["converted"].to_numpy())
    assert np.allclose(a.predict_proba(log.frame), b.predict_proba(log.frame), atol=1e-5)


def test_what_is_sent_leaves_the_prior_out() -> None:
    log = make_log(200)
    ret = return_staged_with_prior(log, 1.0, lambda done, bits, todo: np.full(len(todo), 0.05),
                                   rng=np.random.default_rng(13))
    sent = ret.frame()
    assert list(sent.columns) == ["returned", "stage"] and sent.index.name == "click_id"
    assert (sent["returned"].to_numpy() == ret.returned).all()


def test_platform_model_on_debiased_rr_bits_recovers_the_rates() -> None:
    """Per channel (20k clicks each) the debiased fit's rate is within 0.03 of the true rate at ε = 2."""
    from fedrec.ads import fit_on_event_return

    rng = np.random.default_rng(14)
    log = make_log(100_000, cells=5)
    rates = {"ch0": 0.02, "ch1": 0.05, "ch2": 0.1, "ch3": 0.2, "ch4": 0.4}
    conv = (rng.random(100_000) < log.frame["channel"].map(rates).to_numpy()).astype(np.int8)
    frame = log.frame.assign(converted=conv)
    frame["conversion_time"] = (frame["time"].where(frame["converted"] == 1) + pd.Timedelta(1, "h")).array
    log = ClickLog(frame, "t", platform_columns=("channel",))
    ret = return_randomized(log, 2.0, rng=rng)
    model = fit_on_event_return(log.frame, ret, ["channel"], debias=True)
    cells = log.frame.groupby("channel").head(1)
    fitted = dict(zip(cells["channel"], model.predict_proba(cells), strict=True))
    assert all(abs(fitted[c] - r) < 0.03 for c, r in rates.items())


def test_shrinking_noisy_reports_pulls_small_cells_in_and_exact_reports_stay_put() -> None:
    """``shrink`` raises the L2 penalty by the noise variance (post-processing of public numbers): exact
    reports (no noise) give the same model; with Laplace noise a cell's fitted log-odds move towards the
    intercept, never past it."""
    log = make_log(4000, cells=8, seed=15)
    exact = aggregate_report(log, ["channel"], mechanism="laplace", epsilon=math.inf)
    assert np.allclose(fit_on_reports(log.frame, [exact], shrink=True).predict_proba(log.frame),
                       fit_on_reports(log.frame, [exact]).predict_proba(log.frame), atol=1e-12)
    noisy = aggregate_report(log, ["channel"], mechanism="laplace", epsilon=0.2,
                             rng=np.random.default_rng(16))
    plain = fit_on_reports(log.frame, [noisy]).predict_proba(log.frame)
    shrunk = fit_on_reports(log.frame, [noisy], shrink=True).predict_proba(log.frame)
    mid = np.median(shrunk)
    assert np.abs(shrunk - mid).max() < np.abs(plain - np.median(plain)).max()
