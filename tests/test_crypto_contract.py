"""Contract suite: every crypto backend (plain, ckks, paillier) behaves the same within its tolerance.

Tolerances come from each backend's ``error_bound`` (for CKKS derived from the scale Δ and N).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedrec.crypto.backend import CryptoBackend, CryptoError, KeyPin, load_public, make_backend
from fedrec.crypto.masks import MaskSpec, mask_ciphertext
from fedrec.crypto.packing import (
    deserialize_rows,
    outer_sum,
    pack_rows,
    serialize_rows,
    sum_rows,
    unpack_outer,
)

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


def test_sum(pair):
    guest, host = pair
    x = _x(9)
    got = guest.decrypt(host.sum(guest.encrypt(x)))
    # rotations add key-switching noise comparable to a product: bound as N products by 1
    assert got[0] == pytest.approx(x.sum(), abs=guest.error_bound(1, 1.0, N))


def test_block_dot(pair):
    guest, host = pair
    x, w = _x(10), _x(11, 4)
    ct = host.block_dot(guest.encrypt(x), w, 2)
    assert (ct.size, ct.level) == (2, 1)
    expect = w @ x.reshape(4, 2)
    assert np.max(np.abs(guest.decrypt(ct) - expect)) <= guest.error_bound(1, 1.0, 4)


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


def test_masked_gradient_roundtrip(pair):
    """§4.2 step 4: host computes Xᵀ R on ciphertexts, masks, guest releases, host unmasks."""
    guest, host = pair
    rng = np.random.default_rng(16)
    rows, feats = rng.normal(size=(6, 3)), rng.uniform(-1, 1, size=(6, 2))
    packed = deserialize_rows(host, serialize_rows(guest, pack_rows(guest, rows)), 6, 3)
    spec = MaskSpec(value_bound=64.0, hiding_bits=12)
    masked = [mask_ciphertext(host, ct, spec) for ct in outer_sum(host, feats, packed)]
    policy = guest.release_policy(bound=spec.masked_bound, terms=packed.layout.rows_per_ct, value_bound=3)
    size = masked[0][0].size
    received = [guest.deserialize(host.serialize(c), size, 1) for c, _ in masked]
    released = [guest.decrypt_for_release(c, policy) for c in received]
    grad = unpack_outer([r - m for r, (_, m) in zip(released, masked, strict=True)], 3)
    tol = 6 * policy.flood_sigma + policy.precision + spec.masked_bound * 2.0 ** -50
    assert np.max(np.abs(grad - feats.T @ rows)) <= tol


def test_sum_rows(pair):
    guest, host = pair
    rows = np.random.default_rng(17).normal(size=(5, 3))
    got = guest.decrypt(sum_rows(host, pack_rows(guest, rows)))[:3]
    assert np.max(np.abs(got - rows.sum(axis=0))) <= guest.error_bound(1, 1.0, 5, 3.0)


def test_dot_plain_is_the_sum_of_products_and_survives_the_wire(pair):
    guest, host = pair
    xs, ws = [_x(40 + t) for t in range(3)], [_x(50 + t) * 4 for t in range(3)]
    cts = [host.deserialize(guest.serialize(guest.encrypt(x)), N, 0) for x in xs]
    out = guest.deserialize(host.serialize(host.dot_plain(cts, ws)), N, 1)
    exact = sum(x * w for x, w in zip(xs, ws, strict=True))
    assert np.max(np.abs(guest.decrypt(out) - exact)) <= guest.error_bound(1, 4.0, 3)
    with pytest.raises(CryptoError):
        host.dot_plain(cts, ws[:2])
