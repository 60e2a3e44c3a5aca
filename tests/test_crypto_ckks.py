"""CKKS specifics: public contexts, pinning, Galois keys, validation, noise-flooded release."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from fedrec.crypto.backend import CryptoError, KeyPin, ReleasePolicy, load_public
from fedrec.crypto.ckks import FLOOD_RATIO, PRESETS, CKKSBackend


@pytest.fixture(scope="module")
def guest() -> CKKSBackend:
    return CKKSBackend.keygen("n8192")


@pytest.fixture(scope="module")
def host(guest: CKKSBackend) -> CKKSBackend:
    backend = load_public(guest.public_bytes(), KeyPin(peer="guest"))
    assert isinstance(backend, CKKSBackend)
    return backend


def test_presets_within_128_bit_bounds():
    limits = {4096: 109, 8192: 218, 16384: 438}
    for p in PRESETS.values():
        assert sum(p.coeff_mod_bit_sizes) <= limits[p.poly_modulus_degree], p.name


def test_public_context_has_no_secret_key(guest, host):
    raw = ts.context_from(guest.public_bytes()[25:])
    assert raw.is_public() and not raw.is_private()
    with pytest.raises(CryptoError, match="no secret key"):
        host.decrypt(host.encrypt([1.0, 2.0]))


def test_public_bytes_refuse_a_secret_key(guest):
    secret = guest.ctx.serialize(save_secret_key=True)
    with pytest.raises(CryptoError, match="no secret key"):
        CKKSBackend.from_public_bytes(guest.public_bytes()[:25] + secret)


def test_pin_refuses_a_different_context(guest):
    pin = KeyPin(peer="guest")
    load_public(guest.public_bytes(), pin)
    other = CKKSBackend.keygen("n4096", rotations=False)
    with pytest.raises(CryptoError, match="pinned"):
        load_public(other.public_bytes(), pin)
    assert load_public(guest.public_bytes(), pin).name == "ckks"  # the pinned one still loads


def test_galois_keys_only_when_asked():
    """The default public context carries no Galois keys (no operation rotates); ``rotations=True``
    ships them, at more than 5× the size, and the loaded twin says so."""
    small = CKKSBackend.keygen("n4096")
    with_rot = CKKSBackend.keygen("n4096", rotations=True)
    assert len(small.public_bytes()) * 5 < len(with_rot.public_bytes())
    twins = [CKKSBackend.from_public_bytes(b.public_bytes()) for b in (small, with_rot)]
    assert [t.ctx.has_galois_keys() for t in twins] == [False, True]


def test_foreign_key_ciphertext_fails_the_range_check(guest):
    stranger = CKKSBackend.keygen("n8192", rotations=False)
    data = stranger.serialize(stranger.encrypt(np.ones(16)))
    ct = guest.deserialize(data, 16, 0)  # same parameters: loads fine, decrypts to garbage
    with pytest.raises(CryptoError, match="exceeds"):
        guest.decrypt(ct, bound=1e3)


def test_wrong_level_rejected(guest, host):
    lvl1 = host.mul_plain(host.encrypt(np.ones(4)), np.ones(4))
    data = host.serialize(lvl1)
    forged = data[:18] + (0).to_bytes(2, "little") + data[20:]  # envelope claims level 0
    with pytest.raises(CryptoError):
        guest.deserialize(forged, 4, 0)


def test_release_noise_statistics(guest, host):
    x = np.linspace(-1, 1, guest.slots)
    ct = host.mul_plain(guest.encrypt(x), np.ones(guest.slots))
    policy = guest.release_policy(bound=2.0, terms=1)
    assert policy.flood_sigma == pytest.approx(FLOOD_RATIO * guest.error_bound(1, 1.0, 1))
    noise = guest.decrypt_for_release(ct, policy) - x
    # σ well above the CKKS error, rounding grid below σ, empirical std within 10% of σ
    assert policy.flood_sigma >= 1e4 * guest.error_bound(1, 1.0, 1)
    assert policy.precision <= policy.flood_sigma
    expected_std = np.hypot(policy.flood_sigma, policy.precision / np.sqrt(12))
    assert np.std(noise) == pytest.approx(expected_std, rel=0.1)
    assert abs(np.mean(noise)) < 5 * policy.flood_sigma / np.sqrt(noise.size)
    released = guest.decrypt_for_release(ct, policy)
    assert np.allclose(released / policy.precision, np.round(released / policy.precision))


def test_release_is_fresh_each_time(guest, host):
    ct = host.mul_plain(guest.encrypt(np.zeros(64)), np.ones(64))
    policy = guest.release_policy(bound=2.0)
    assert not np.array_equal(guest.decrypt_for_release(ct, policy), guest.decrypt_for_release(ct, policy))


def test_release_default_numbers_documented(guest):
    """The numbers in the module docstring: level 1, |w| <= 1, 256 terms."""
    policy = guest.release_policy(bound=2.0 ** 30, terms=256)
    assert 1e-5 < policy.flood_sigma < 1e-4
    assert guest.error_bound(1, 1.0, 256) < 1e-9


def test_release_bound_beyond_modulus_refused(guest):
    with pytest.raises(CryptoError, match="modulus room"):
        guest.release_policy(bound=2.0 ** 60)


def test_release_range_check(guest, host):
    ct = host.mul_plain(guest.encrypt(np.full(8, 100.0)), np.ones(8))
    with pytest.raises(CryptoError, match="exceeds the bound"):
        guest.decrypt_for_release(ct, ReleasePolicy(bound=10.0, flood_sigma=1e-6, precision=1e-6))


def test_fast_paths_match_tenseal_levels_and_rerandomise(guest, host):
    """SEAL-level products keep TenSEAL's level-1 scale (one rescale for the whole sum), and masking
    adds fresh randomness: the same ciphertext masked twice with the same mask gives different bytes."""
    x, w = np.linspace(-1, 1, 64), np.linspace(2, -2, 64)
    ct = host.deserialize(guest.serialize(guest.encrypt(x)), 64, 0)
    via_seal = host.dot_plain([ct, ct], [w, w])
    via_tenseal = host.add(host.mul_plain(ct, w), host.mul_plain(ct, w))
    for out in (via_seal, via_tenseal):
        loaded = guest.deserialize(host.serialize(out), 64, 1)  # same parms_id/scale checks pass
        np.testing.assert_allclose(guest.decrypt(loaded), 2 * x * w, atol=guest.error_bound(1, 2.0, 2))
    mask = np.full(64, 3.0)
    a, b = host.add_mask(via_seal, mask, 1.0), host.add_mask(via_seal, mask, 1.0)
    assert host.serialize(a) != host.serialize(b)
    np.testing.assert_allclose(guest.decrypt(a), guest.decrypt(b), atol=1e-6)
    np.testing.assert_allclose(guest.decrypt(a), 2 * x * w + 3.0, atol=1e-6)


def test_key_holder_encryptions_travel_seeded_at_half_the_bytes(guest, host):
    x = np.random.default_rng(3).normal(size=5000)  # two ciphertexts
    seeded, full = guest.serialize(guest.encrypt(x)), host.serialize(host.encrypt(x))
    assert 0.45 < len(seeded) / len(full) < 0.55  # c0 + a seed instead of c0 + c1
    loaded = host.deserialize(seeded, 5000, 0)  # the receiver expands c1 from the seed
    out = host.dot_plain([loaded], [np.full(5000, 2.0)])
    back = guest.decrypt(guest.deserialize(host.serialize(out), 5000, 1))
    np.testing.assert_allclose(back, 2 * x, atol=1e-9)
    # the last level directly: two primes and seeded, a third of a level-0 public-key encryption
    low = guest.serialize(guest.encrypt_at(x, 1))
    assert len(low) < 0.4 * len(full)
    np.testing.assert_allclose(guest.decrypt(host.deserialize(low, 5000, 1)), x, atol=1e-9)
    # the key holder's own operations on a seeded ciphertext load it on demand
    np.testing.assert_allclose(guest.decrypt(guest.add(guest.encrypt(x), guest.encrypt(x))), 2 * x, atol=1e-9)
    # a seeded blob cut short is refused before SEAL sees it
    with pytest.raises(CryptoError):
        host.deserialize(seeded[: len(seeded) // 3], 5000, 0)
