"""x25519 specifics: Elligator2 agrees with libsodium, small-order and non-canonical u are refused."""

from __future__ import annotations

import ctypes
import hashlib

import numpy as np
import pytest

from fedrec.psi.curve25519 import CURVE_A, P25519, SMALL_ORDER_U, blind_into, check_points, elligator2
from fedrec.psi.group import POINT_BYTES, InvalidPointError, SecretScalar, _sodium


def _double(u: int) -> int:
    """x-only doubling on curve25519: u(2P) = (u^2 - 1)^2 / (4 u (u^2 + A u + 1))."""
    return (u * u - 1) ** 2 * pow(4 * u * (u * u + CURVE_A * u + 1), -1, P25519) % P25519


def _libsodium_u(digest32: bytes) -> int:
    """u-coordinate of libsodium's from_uniform (Elligator2 + cofactor clearing), via pk_to_curve25519."""
    lib = _sodium().lib
    lib.crypto_core_ed25519_from_uniform.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.crypto_sign_ed25519_pk_to_curve25519.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    ed, mont = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
    assert lib.crypto_core_ed25519_from_uniform(ed, digest32) == 0
    assert lib.crypto_sign_ed25519_pk_to_curve25519(mont, ed) == 0
    return int.from_bytes(mont.raw, "little")


def test_elligator2_times_cofactor_is_libsodium_from_uniform() -> None:
    digests = b"".join(hashlib.sha512(b"kat-%d" % i).digest() for i in range(64))
    digests += b"\xff" * 64  # r >= p after masking the top bit: reduced mod p like libsodium
    us = elligator2(digests, 65)
    for i in range(65):
        u = int.from_bytes(us[i].tobytes(), "little")
        assert _double(_double(_double(u))) == _libsodium_u(digests[64 * i:64 * i + 32]), i


def test_elligator2_outputs_are_on_the_curve() -> None:
    digests = b"".join(hashlib.sha512(b"on-%d" % i).digest() for i in range(32))
    for row in elligator2(digests, 32):
        u = int.from_bytes(row.tobytes(), "little")
        assert pow(u * (u * (u + CURVE_A) + 1), (P25519 - 1) // 2, P25519) in (0, 1)


@pytest.mark.parametrize("u", SMALL_ORDER_U)
def test_small_order_u_is_refused_before_blinding(u: int) -> None:
    points = np.zeros((3, POINT_BYTES), np.uint8)
    points[:] = np.frombuffer((9).to_bytes(32, "little"), np.uint8)  # the base point: valid
    points[1] = np.frombuffer(u.to_bytes(32, "little"), np.uint8)
    with pytest.raises(InvalidPointError) as err:
        blind_into(np.empty_like(points), points, SecretScalar("x25519"))
    assert err.value.index == 1


@pytest.mark.parametrize("u", [P25519, P25519 + 1, (1 << 255) - 1, 9 + (1 << 255)])
def test_non_canonical_u_is_refused(u: int) -> None:
    points = np.frombuffer(u.to_bytes(32, "little"), np.uint8).reshape(1, POINT_BYTES).copy()
    with pytest.raises(InvalidPointError, match="point 0 "):
        check_points(points)


def test_twist_point_is_multiplied_not_refused() -> None:
    # u = 2: 2^3 + A 2^2 + 2 is not a square mod p, so u = 2 is on the twist (secure; documented)
    assert pow(8 + 4 * CURVE_A + 2, (P25519 - 1) // 2, P25519) == P25519 - 1
    a, b = SecretScalar("x25519"), SecretScalar("x25519")
    u = np.frombuffer((2).to_bytes(32, "little"), np.uint8).reshape(1, POINT_BYTES).copy()

    def blind(p: np.ndarray, k: SecretScalar) -> np.ndarray:
        out = np.empty_like(p)
        blind_into(out, p, k)
        return out

    assert np.array_equal(blind(blind(u, a), b), blind(blind(u, b), a))
