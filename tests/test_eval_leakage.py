"""The leakage suite on known-answer data: a real small vertical-FM training (plain backend, in-memory
twin) where every user is one click with a unique host id, so each batch user has a singleton column.
Without protection the batch-singleton attack finds the labels; with strong guest label DP no attack
does; ``evaluate`` refuses malformed input and reports no fake AUC."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from fedrec.eval.leakage import ATTACKS, AttackScores, HostParams, evaluate, run_attacks, user_truth
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.protocols.hetero_fm.config import HOST_FIELD
from fedrec.protocols.hetero_fm.transcript import BatchRelease, HostTranscript
from fedrec.transport import MemoryNetwork, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

N_CLICKS = 800


def _clicks(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One click per user: 15 items, a unique host id, groups of 4 users and a numeric host feature;
    the label depends on the item only (about 30% positives). No host feature predicts it, so an
    attack AUC off 0.5 is leakage: with label-correlated host features, any random direction of the
    host's parameters (e.g. trained on pure DP noise) would move the AUC either way by chance."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i}" for i in range(N_CLICKS)]
    item = rng.integers(0, 15, N_CLICKS)
    grp = rng.permutation(N_CLICKS) // 4
    age = rng.normal(size=N_CLICKS)
    logit = -1.0 + rng.normal(0, 1.0, 15)[item]
    y = (rng.random(N_CLICKS) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    inter = pd.DataFrame({"user_id": ids, "item_id": [f"i{j}" for j in item], "rating": y,
                          "timestamp": np.arange(N_CLICKS, dtype=np.int64)})
    feats = pd.DataFrame({"hid": [f"h{i}" for i in range(N_CLICKS)], "grp": [f"g{g}" for g in grp],
                          "age": age}, index=pd.Index(ids, name="user_id"))
    return inter, feats


def _train(noise: float, validation: str) -> tuple[HeteroFMHost, pd.DataFrame]:
    inter, feats = _clicks()
    cfg = HeteroFMConfig(objective="logistic", n_factors=4, batch_size=64, lr=0.05, epochs=3, backend="plain",
                         timeout=30, validation=validation, validation_fraction=0.1,
                         dp_guest_noise_multiplier=noise, label_dp="on" if noise else "off")
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg, transcript=HostTranscript())
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    run_parties({"host": lambda: host.serve(feats),
                 "guest": lambda: guest.fit(inter).close()}, timeout=120)
    return host, inter


@pytest.fixture(scope="module")
def unprotected() -> tuple[HeteroFMHost, pd.DataFrame]:
    return _train(0.0, "random")


@pytest.fixture(scope="module")
def protected() -> tuple[HeteroFMHost, pd.DataFrame]:
    # label DP does not cover the early-stopping bits (label_dp.py): its full guarantee needs no validation
    return _train(50.0, "none")


def _evaluate(run: tuple[HeteroFMHost, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    host, inter = run
    assert host.transcript is not None
    truth = user_truth(inter, host.transcript.aligned)
    attacks = run_attacks(host.transcript, host.aligned_design(), host_params=HostParams.from_host(host))
    assert list(attacks) == list(ATTACKS)
    return evaluate(attacks, truth, n_boot=200)


def test_replayed_host_parameters_are_the_hosts(unprotected: tuple[HeteroFMHost, pd.DataFrame]) -> None:
    host, _ = unprotected
    assert host.transcript is not None and host.params is not None
    c = host.config
    replayed = HostParams.replay(host.transcript, host.initial_state[f"w.{HOST_FIELD}"].numpy(),
                                 host.initial_state[f"v.{HOST_FIELD}"].numpy(), optimizer=c.optimizer,
                                 lr=c.lr, l2_linear=c.l2_linear, l2_factors=c.l2_host_factors)
    np.testing.assert_allclose(replayed.w_final, host.params.w[HOST_FIELD].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(replayed.v_final, host.params.v[HOST_FIELD].detach().numpy(), atol=1e-6)
    assert len(replayed.before) == len(host.transcript.releases)


def test_without_protection_the_singleton_attack_finds_the_labels(
        unprotected: tuple[HeteroFMHost, pd.DataFrame]) -> None:
    res = _evaluate(unprotected)
    single = res["singleton"]
    assert single["auc"] is not None and single["auc"]["point"] > 0.95
    assert single["coverage"] > 0.85  # every training user (the validation users are never in a batch)
    inv = res["inversion"]["auc"]
    assert inv is not None and inv["point"] > 0.95
    # the trained host half knows the labels; the same host without the guest does not
    lifted, base = res["completion"]["auc"], res["completion_baseline"]["auc"]
    assert lifted is not None and base is not None
    assert lifted["low"] > 0.8 and base["high"] < 0.65 and lifted["low"] > base["high"]


def test_with_strong_label_dp_no_attack_beats_chance(protected: tuple[HeteroFMHost, pd.DataFrame]) -> None:
    res = _evaluate(protected)
    assert res["early_stopping"]["coverage"] == 0.0  # validation="none": no early-stopping bit
    for name, r in res.items():
        ci = r["auc"]
        if ci is None:  # no opinion: nothing learned
            assert r["coverage"] == 0.0 or "one class" in str(r.get("reason")), name
            continue
        assert ci["low"] <= 0.5 <= ci["high"] or ci["high"] < 0.65, (name, ci)


def test_evaluate_refuses_mismatched_lengths_and_unscorable_truth() -> None:
    truth = np.array([0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="'a' scores 3 users but truth has 4"):
        evaluate({"a": np.array([0.1, 0.2, 0.3])}, truth)
    with pytest.raises(ValueError, match="no scorable user"):
        evaluate({"a": np.arange(4.0)}, np.full(4, np.nan))
    with pytest.raises(ValueError, match="must be 0/1"):
        evaluate({"a": np.arange(4.0)}, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="infinite"):
        evaluate({"a": np.array([0.0, np.inf, 1.0, 2.0])}, truth)


def test_an_attack_without_opinion_reports_coverage_zero_not_an_auc() -> None:
    truth = np.array([0.0, 1.0, 0.0, 1.0, np.nan])
    silent = AttackScores(np.full(5, np.nan), ("nothing",), "none")
    res = evaluate({"silent": silent, "half": np.array([np.nan, np.nan, 0.1, 0.9, 5.0])}, truth, n_boot=50)
    assert res["silent"]["auc"] is None and res["silent"]["coverage"] == 0.0 and res["silent"]["n"] == 0
    assert res["half"]["coverage"] == pytest.approx(0.5) and res["half"]["n"] == 2
    assert res["half"]["auc"]["point"] == pytest.approx(1.0)


def test_attacks_needing_host_parameters_have_no_opinion_without_them(
        unprotected: tuple[HeteroFMHost, pd.DataFrame]) -> None:
    host, inter = unprotected
    assert host.transcript is not None
    attacks = run_attacks(host.transcript, host.aligned_design(),
                          attacks=["singleton", "completion", "early_stopping"])
    res = evaluate(attacks, user_truth(inter, host.transcript.aligned), n_boot=50)
    assert res["completion"]["coverage"] == 0.0 and res["completion"]["auc"] is None
    assert res["early_stopping"]["coverage"] == 0.0
    # one stop epoch and one result epoch, at the end (no per-epoch improvement bit is sent)
    n = len(host.transcript.epoch_ends)
    assert attacks["early_stopping"].info["bits_revealed"] == pytest.approx(2 * math.log2(n + 1))
    assert res["singleton"]["auc"]["point"] > 0.95  # L2 taken as 0: still there


# ------------------------------------------------------------------ known answers on a handcrafted transcript
# users 0..6 over columns 0..5 (u1 has x = 2 on column 1; u5 and u6 have identical rows)
_ROWS = {0: {0: 1.0, 2: 1.0}, 1: {0: 1.0, 1: 2.0}, 2: {1: 1.0, 2: 1.0}, 3: {3: 1.0, 4: 1.0}, 4: {3: 1.0},
         5: {5: 1.0}, 6: {5: 1.0}}
_R = np.array([0.5, -0.7, 0.2, 0.3, -0.4, 0.6, -0.9])  # r_u, the same in every release
_BATCHES = [[0, 1, 2, 5, 6], [3, 4], [5]]  # dense 3x3 system + unidentifiable pair; peeling; a singleton
L2_W, L2_V, K = 0.01, 0.1, 2


def _handcrafted() -> tuple[HostTranscript, sp.csr_matrix, HostParams, np.ndarray]:
    """Releases built from the gradient algebra (c_u = 1, N_s = batch users) with known r_u, per-user
    ``G_u = N_s ∂L/∂e_H(u)`` and host parameters, L2 terms included."""
    rng = np.random.default_rng(3)
    x = sp.lil_matrix((7, 6))
    for u, row in _ROWS.items():
        for j, val in row.items():
            x[u, j] = val
    x = x.tocsr()
    w, v, g_e = rng.normal(size=6), rng.normal(size=(6, K)), rng.normal(size=(7, K))
    e_h = np.asarray(x @ v)
    t = HostTranscript(aligned=[f"u{i}" for i in range(7)])
    before = []
    for b, users in enumerate(_BATCHES):
        xb = x[users].toarray()
        cols = np.flatnonzero(np.abs(xb).sum(axis=0) > 0)
        xb = xb[:, cols]
        q_hat = g_e[users] + _R[users, None] * e_h[users]  # N_s Σ δ (e_G + e_H)
        n_s = len(users)
        sq = (xb ** 2).sum(axis=0)
        g_w = (xb.T @ _R[users] + 2 * L2_W * w[cols] * sq) / n_s
        g_v = (xb.T @ q_hat + v[cols] * ((xb ** 2).T @ (2 * L2_V - _R[users]))[:, None]) / n_s
        t.record_release(BatchRelease(0, b, np.array(users), cols, n_s, g_v, g_w))
        before.append((w[cols], v[cols]))
    hp = HostParams(w, v, w, v, L2_W, L2_V, tuple(before))
    return t, x, hp, g_e


def test_inversion_solves_identifiable_users_and_leaves_the_others() -> None:
    t, x, hp, _ = _handcrafted()
    got = run_attacks(t, x, host_params=hp, attacks=["singleton", "inversion", "differencing"])
    expect = -_R.copy()
    expect[6] = np.nan  # u5/u6 share their only column in the batch where both appear
    np.testing.assert_allclose(got["inversion"].scores, expect, atol=1e-9)
    single = np.full(7, np.nan)
    single[[3, 5]] = -_R[[3, 5]]  # column 4 (u3 alone) and the one-user batch of u5
    np.testing.assert_allclose(got["singleton"].scores, single, atol=1e-12)
    diff = np.full(7, np.nan)
    diff[6] = -_R[6]  # column 5 with {u5, u6} minus column 5 with {u5}
    np.testing.assert_allclose(got["differencing"].scores, diff, atol=1e-12)


def test_without_host_parameters_the_l2_term_stays_in_the_estimate() -> None:
    t, x, hp, _ = _handcrafted()
    got = run_attacks(t, x, attacks=["singleton"])["singleton"].scores
    w4 = hp.w_init[4]
    assert got[3] == pytest.approx(-(_R[3] + 2 * L2_W * w4), abs=1e-12)


def test_li_norm_scores_the_gradient_of_the_host_outputs() -> None:
    t, x, hp, g_e = _handcrafted()
    norm = run_attacks(t, x, host_params=hp, attacks=["norm"])["norm"].scores
    for u in (3, 5):  # γ_u = [r_u, G_u]
        assert norm[u] == pytest.approx(np.sqrt(_R[u] ** 2 + np.sum(g_e[u] ** 2)), abs=1e-9)
    assert np.isnan(norm[[0, 1, 2, 4, 6]]).all()


def test_run_attacks_refuses_a_design_of_another_host() -> None:
    t, x, hp, _ = _handcrafted()
    with pytest.raises(ValueError, match="X has 6 rows but the transcript has 7 aligned users"):
        run_attacks(t, x[:6])
    with pytest.raises(ValueError, match="unknown attack"):
        run_attacks(t, x, attacks=["mind_reading"])


def test_pooled_recovers_every_user_from_batches_without_a_singleton() -> None:
    """Coarse host features (3 one-hot columns of 4 users each: no column is ever one user's) and
    users entering and leaving batches: no per-release attack has an opinion, the pooled solve recovers
    every user's constant residual per sample (c_u = 1 each)."""
    rng = np.random.default_rng(5)
    n, groups = 12, np.arange(12) % 3
    x = sp.csr_matrix((np.ones(n), (np.arange(n), groups)), shape=(n, 3))
    r = rng.normal(size=n)
    t = HostTranscript(aligned=[f"u{i}" for i in range(n)])
    for b in range(60):
        users = np.sort(rng.choice(n, 8, replace=False))
        xb = x[users].toarray()
        cols = np.flatnonzero(xb.sum(axis=0) > 0)
        if (xb[:, cols].sum(axis=0) < 2).any():
            continue
        t.record_release(BatchRelease(0, b, users, cols, len(users), np.zeros((len(cols), 2)),
                                      xb[:, cols].T @ r[users] / len(users)))
    got = run_attacks(t, x, attacks=["singleton", "inversion", "pooled"], pooled_damp=1e-6)
    assert got["singleton"].coverage == 0.0 and got["inversion"].coverage == 0.0
    assert got["pooled"].coverage == 1.0 and got["pooled"].info["users"] == n
    np.testing.assert_allclose(got["pooled"].scores, -r, atol=1e-4)
