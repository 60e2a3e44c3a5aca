"""Contract suite: every crypto backend (plain, ckks, paillier) behaves the same within its tolerance.

Tolerances come from each backend's ``error_bound`` (for CKKS derived from the scale Δ and N).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedrec.crypto.backend import CryptoBackend, CryptoError, KeyPin, load_public, make_backend
from fedrec.crypto.masks import MaskSpec, mask_ciphertext

N = 8  # values per vector: small, Paillier-2048 costs milliseconds per value


@pytest.fixture(scope="module", params=["plain", "ckks", "paillier"])
def pair(request: pytest.FixtureRequest) -> tuple[CryptoBackend, CryptoBackend]:
    """(key holder, public twin loaded through bytes and a pin)."""
    opts = {"ckks": {"preset": "n8192"}}.get(request.param, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        guest = make_backend(request.param, **opts)
        host = load_public(guest.public_bytes(), KeyPin(peer="guest"))
    return guest, host


def _x(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, n)


def test_encrypt_decrypt_within_error_bound(pair):
    guest, _ = pair
    x = _x(1)
    assert np.max(np.abs(guest.decrypt(guest.encrypt(x)) - x)) <= guest.error_bound(0)


def test_public_twin_cannot_decrypt(pair):
    guest, host = pair
    if guest.name == "plain":
        pytest.skip("plain has no keys by design")
    assert not host.has_secret_key
    with pytest.raises(CryptoError):
        host.decrypt(host.encrypt(_x(2)))


def test_serialize_roundtrip_through_public_twin(pair):
    guest, host = pair
    x = _x(3)
    ct = host.deserialize(guest.serialize(guest.encrypt(x)), N, 0)
    back = guest.deserialize(host.serialize(ct), N, 0)
    assert np.max(np.abs(guest.decrypt(back) - x)) <= guest.error_bound(0)


def test_add_and_add_plain(pair):
    guest, host = pair
    x, y, p = _x(4), _x(5), _x(6)
    got = guest.decrypt(host.add_plain(host.add(host.encrypt(x), host.encrypt(y)), p))
    assert np.max(np.abs(got - (x + y + p))) <= 3 * guest.error_bound(0)


def test_mul_plain_consumes_a_level(pair):
    guest, host = pair
    x, w = _x(7), _x(8)
    ct = host.mul_plain(guest.encrypt(x), w)
    assert ct.level == 1
    assert np.max(np.abs(guest.decrypt(ct) - x * w)) <= guest.error_bound(1)


def test_size_and_level_mismatch_rejected(pair):
    guest, host = pair
    with pytest.raises(CryptoError):
        host.add(host.encrypt(_x(12)), host.encrypt(_x(13, 4)))
    data = guest.serialize(guest.encrypt(_x(14)))
    with pytest.raises(CryptoError):
        host.deserialize(data, N + 1, 0)
    with pytest.raises(CryptoError):
        host.deserialize(data, N, 1)


def test_plaintext_operand_validated(pair):
    _, host = pair
    ct = host.encrypt(_x(15))
    with pytest.raises(CryptoError, match="NaN or inf"):
        host.mul_plain(ct, np.full(N, np.nan))
    with pytest.raises(CryptoError, match="expected 8 values"):
        host.add_plain(ct, np.ones(3))


def test_masked_release_roundtrip(pair):
    """§4.2 step 4 on any backend: the host computes ``Σ_t x_t ⊙ w_t``, masks every slot, the key holder
    releases (range check, flooding, rounding) and the host subtracts its mask."""
    guest, host = pair
    xs, ws = [_x(60 + t) for t in range(3)], [_x(70 + t) for t in range(3)]
    cts = [host.deserialize(guest.serialize(guest.encrypt(x)), N, 0) for x in xs]
    spec = MaskSpec(value_bound=4.0, hiding_bits=12)
    masked, mask = mask_ciphertext(host, host.dot_plain(cts, ws), spec)
    policy = guest.release_policy(bound=spec.masked_bound, terms=3)
    released = guest.decrypt_for_release(guest.deserialize(host.serialize(masked), N, 1), policy)
    exact = sum(x * w for x, w in zip(xs, ws, strict=True))
    tol = 6 * policy.flood_sigma + policy.precision + spec.masked_bound * 2.0 ** -50
    assert np.max(np.abs(released - mask - exact)) <= tol


def test_dot_plain_is_the_sum_of_products_and_survives_the_wire(pair):
    guest, host = pair
    xs, ws = [_x(40 + t) for t in range(3)], [_x(50 + t) * 4 for t in range(3)]
    cts = [host.deserialize(guest.serialize(guest.encrypt(x)), N, 0) for x in xs]
    out = guest.deserialize(host.serialize(host.dot_plain(cts, ws)), N, 1)
    exact = sum(x * w for x, w in zip(xs, ws, strict=True))
    assert np.max(np.abs(guest.decrypt(out) - exact)) <= guest.error_bound(1, 4.0, 3)
    with pytest.raises(CryptoError):
        host.dot_plain(cts, ws[:2])


def test_encrypt_at_and_drop_level_keep_the_values_and_refuse_going_up(pair):
    key, pub = pair
    x = np.linspace(-3, 3, N)
    top = key.max_level
    own = key.deserialize(key.serialize(key.encrypt_at(x, top)), N, top)
    assert own.level == top
    np.testing.assert_allclose(key.decrypt(own), x, atol=1e-3)
    dropped = pub.drop_level(pub.deserialize(key.serialize(key.encrypt(x)), N, 0), top)
    assert dropped.level == top
    back = key.decrypt(key.deserialize(pub.serialize(dropped), N, top))
    np.testing.assert_allclose(back, x, atol=1e-3)
    with pytest.raises(CryptoError, match="drop_level"):
        pub.drop_level(dropped, 0)
    with pytest.raises(CryptoError, match="drop_level"):
        pub.drop_level(dropped, top + 1)
