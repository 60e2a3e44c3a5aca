"""Masks hide values; DP mechanisms have the documented noise scales; the accountant's numbers."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import ks_2samp

from fedrec.crypto.backend import CryptoError
from fedrec.crypto.ckks import CKKSBackend
from fedrec.crypto.dp import (
    GaussianMechanism,
    PrivacyAccountant,
    gaussian_delta,
    gaussian_mechanism,
    gaussian_rdp,
    gaussian_sigma,
    laplace_mechanism,
    randomized_response,
    rr_keep_probability,
    rr_unbiased_mean,
)
from fedrec.crypto.masks import MaskSpec, check_mask_fits, draw_mask
from fedrec.crypto.plain import PlainBackend

RNG = np.random.default_rng(2024)


def test_mask_range_and_distance():
    spec = MaskSpec(value_bound=4.0, hiding_bits=20)
    assert spec.mask_range == 4.0 * 2 ** 20
    assert spec.statistical_distance() == pytest.approx(2.0 ** -21)
    m = draw_mask(10_000, spec)
    assert np.all(np.abs(m) <= spec.mask_range) and np.std(m) > 0.5 * spec.mask_range


def test_masks_hide_the_true_value():
    """Masked extreme values (-V vs +V) are indistinguishable by a two-sample KS test."""
    spec = MaskSpec(value_bound=1.0, hiding_bits=20)
    a = -1.0 + draw_mask(20_000, spec)
    b = 1.0 + draw_mask(20_000, spec)
    assert ks_2samp(a, b).statistic < 0.03


def test_masks_are_fresh():
    spec = MaskSpec(value_bound=1.0)
    assert not np.array_equal(draw_mask(8, spec), draw_mask(8, spec))


def test_mask_too_large_for_ckks_refused():
    ckks = CKKSBackend.keygen("n4096", rotations=False)
    with pytest.raises(CryptoError, match="exceeds"):
        check_mask_fits(ckks, MaskSpec(value_bound=1.0, hiding_bits=20), level=1, precision=1e-3)
    check_mask_fits(ckks, MaskSpec(value_bound=1.0, hiding_bits=6), level=1, precision=1e-3)


def test_mask_beyond_float64_precision_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = PlainBackend()
    with pytest.raises(CryptoError, match="float64"):
        check_mask_fits(plain, MaskSpec(value_bound=2.0 ** 20, hiding_bits=30), level=1, precision=1e-6)


def test_plain_backend_warns():
    with pytest.warns(UserWarning, match="NO encryption"):
        PlainBackend()


def test_gaussian_mechanism_scale():
    out = gaussian_mechanism(np.zeros(50_000), noise_multiplier=2.0, sensitivity=0.5, rng=RNG)
    assert np.std(out) == pytest.approx(1.0, rel=0.03)


def test_laplace_mechanism_scale():
    out = laplace_mechanism(np.zeros(50_000), epsilon=0.5, sensitivity=1.0, rng=RNG)
    assert np.mean(np.abs(out)) == pytest.approx(2.0, rel=0.03)  # E|Lap(b)| = b = Δ/ε


def test_randomized_response_rate_and_unbiasing():
    labels = (RNG.random(100_000) < 0.3).astype(np.int64)
    rep = randomized_response(labels, epsilon=1.0, rng=RNG)
    p = rr_keep_probability(1.0)
    assert p == pytest.approx(math.e / (math.e + 1))
    assert np.mean(rep == labels) == pytest.approx(p, abs=0.01)
    assert rr_unbiased_mean(rep, 1.0) == pytest.approx(0.3, abs=0.02)


def test_analytic_gaussian_known_value():
    """Balle & Wang 2018: ε = 1, δ = 1e-5 needs σ ≈ 3.73 (the classical bound says 4.84)."""
    sigma = gaussian_sigma(1.0, 1e-5)
    assert sigma == pytest.approx(3.7306, abs=2e-3)
    assert gaussian_delta(1.0, sigma) == pytest.approx(1e-5, rel=1e-6)
    assert sigma < math.sqrt(2 * math.log(1.25 / 1e-5))


def test_accountant_gaussian_between_exact_and_classical_rdp():
    z, delta = 2.0, 1e-5
    acc = PrivacyAccountant()
    acc.gaussian(z)
    eps = acc.epsilon(delta)
    orders = np.linspace(1.5, 200, 4000)
    classical = float(np.min(gaussian_rdp(z, orders) + math.log(1 / delta) / (orders - 1)))
    exact = float(__import__("scipy").optimize.brentq(lambda e: gaussian_delta(e, z) - delta, 1e-6, 50))
    assert exact <= eps <= classical + 1e-9


def test_accountant_dp_sgd_known_value():
    """DP-SGD on MNIST (Abadi et al. setting): z = 1.1, q = 256/60000, 60 epochs, δ = 1e-5 → ε ≈ 2.6."""
    acc = PrivacyAccountant()
    acc.gaussian(1.1, count=60 * 60000 // 256, sampling_rate=256 / 60000)
    assert acc.epsilon(1e-5) == pytest.approx(2.6, abs=0.1)


def test_accountant_composition_grows():
    one, many = PrivacyAccountant(), PrivacyAccountant()
    one.laplace(0.5)
    many.laplace(0.5, count=10)
    assert one.epsilon(1e-6) == pytest.approx(0.5, abs=0.02)
    assert many.epsilon(1e-6) > 2 * one.epsilon(1e-6)


def test_accountant_randomized_response():
    acc = PrivacyAccountant("replace")
    acc.randomized_response(1.0)
    assert acc.epsilon(1e-6) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(CryptoError, match="cannot account"):
        PrivacyAccountant().randomized_response(1.0)


def test_gaussian_mechanism_clips_each_row_to_the_l2_bound():
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])
    clipped, n = GaussianMechanism(1.0, clip=2.0).clip_rows(rows)
    assert n == 2
    np.testing.assert_allclose(np.linalg.norm(clipped, axis=1), [2.0, 0.5, 0.0, 2.0], atol=1e-12)
    np.testing.assert_array_equal(clipped[1:3], rows[1:3])  # rows within the bound are untouched
    np.testing.assert_allclose(clipped[[0, 3]], rows[[0, 3]] / [[2.5], [5.0]], atol=1e-12)


def test_gaussian_mechanism_known_answer_with_a_seeded_generator():
    """clip_and_noise = rows / max(‖row‖/C, 1) + N(0, (z·C)²): the host's per-request partial DP."""
    rows = np.random.default_rng(3).normal(size=(50, 5))
    noised, n = GaussianMechanism(1.5, 0.5, rng=np.random.default_rng(7)).clip_and_noise(rows)
    norm = np.maximum(np.linalg.norm(rows, axis=1, keepdims=True) / 0.5, 1.0)
    expect = rows / norm + np.random.default_rng(7).normal(0.0, 1.5 * 0.5, rows.shape)
    np.testing.assert_allclose(noised, expect, rtol=0, atol=1e-15)
    assert n == int(np.sum(norm > 1.0))


def test_gaussian_mechanism_noise_has_sigma_z_times_clip():
    mech = GaussianMechanism(2.0, 0.25, rng=RNG)
    assert mech.sigma == 0.5
    assert np.std(mech.noise(np.zeros(50_000))) == pytest.approx(0.5, rel=0.03)


def test_gaussian_mechanism_accounts_one_gaussian_event_per_call():
    mech = GaussianMechanism(1.1, 1.0, accountant=PrivacyAccountant("replace"))
    for _ in range(3):
        mech.clip_and_noise(np.ones((4, 2)))
    assert mech.releases == 3 and mech.accountant.events == [("gaussian", 1.1, 1.0, 1)] * 3
    reference = PrivacyAccountant("replace")
    reference.gaussian(1.1, count=3)
    assert mech.accountant.epsilon(1e-5) == pytest.approx(reference.epsilon(1e-5), rel=1e-12)


def test_gaussian_mechanism_rejects_bad_parameters_and_rows():
    with pytest.raises(CryptoError, match="clip"):
        GaussianMechanism(1.0, 0.0)
    with pytest.raises(CryptoError, match="noise_multiplier"):
        GaussianMechanism(-1.0, 1.0)
    mech = GaussianMechanism(1.0, 1.0)
    with pytest.raises(CryptoError, match="2-D"):
        mech.clip_and_noise(np.ones(3))
    with pytest.raises(CryptoError, match="NaN or inf"):
        mech.clip_and_noise(np.array([[1.0, np.nan]]))
    assert mech.releases == 0 and mech.accountant.events == []  # refused rows are not accounted


@pytest.mark.parametrize("relation", ["add_remove", "replace"])
def test_accountant_json_roundtrip_keeps_epsilon(relation):
    acc = PrivacyAccountant(relation)
    acc.gaussian(2.0)
    acc.laplace(0.5, count=2)
    if relation == "add_remove":
        acc.gaussian(1.1, count=40, sampling_rate=0.01)  # Poisson sampling: add/remove only
    else:
        acc.randomized_response(1.0, k=3, count=2)       # randomized response: replace only
    restored = PrivacyAccountant.from_json(json.loads(json.dumps(acc.to_json())))
    assert restored == acc
    assert restored.epsilon(1e-5) == acc.epsilon(1e-5)


def test_accountant_from_json_rejects_malformed_events():
    for bad in ({"relation": "add_remove"}, {"relation": "nope", "events": []},
                {"relation": "add_remove", "events": [["gaussian", 1.0, 1.0]]},
                {"relation": "add_remove", "events": [["gaussian", 1.0, 1.0, 1.5]]},
                {"relation": "add_remove", "events": [["gaussian", 1.0, 2.0, 1]]},
                {"relation": "add_remove", "events": [["exp", 1.0, 1.0, 1]]},
                {"relation": "replace", "events": [["rr", 1.0, 2.5, 1]]},
                {"relation": "add_remove", "events": [["laplace", 1.0, 1.0, 0]]}):
        with pytest.raises(CryptoError):
            PrivacyAccountant.from_json(bad)
