"""Batched X25519 operations for ECDH-PSI (``engine="x25519"``), over the libsodium that ``rbcl`` bundles.

The same three primitives as :mod:`fedrec.psi.group`, on Montgomery u-coordinates of curve25519
(``v^2 = u^3 + 486662 u^2 + u`` over ``GF(p)``, ``p = 2^255 - 19``), about twice as fast per scalar
multiplication as ristretto255 in the same libsodium (a Montgomery ladder on ``u`` only):

* hash to curve: ``H(x) = elligator2(SHA-512(domain || x)[:32])``, the Montgomery u-coordinate of a point
  ``P`` of curve25519 (:func:`elligator2`, the map of libsodium's ``crypto_core_ed25519_from_uniform``
  before its cofactor clearing and Edwards encoding). The cofactor is cleared by the blinding instead:
  clamped scalars are multiples of 8, so ``X25519(k, H(x)) = u([k/8] [8] P)`` lies in the prime-order
  subgroup and equals what ``from_uniform`` + ``crypto_sign_ed25519_pk_to_curve25519`` + blinding with
  ``k/8`` would give. Computed with GMP over a whole batch (one shared field inversion, one Legendre
  symbol per id): ~7 us per id instead of ~30 us for ``from_uniform`` and ~75 us for
  ``pk_to_curve25519``, whose subgroup check is a multiplication by ``L``;
* blinding: ``u -> X25519(k, u)`` (``crypto_scalarmult_curve25519``). The 32 secret bytes are clamped by
  libsodium: bit 254 set, bits 0-2 and 255 clear, so ``k = 8 k'`` with ``k'`` uniform in a range of
  size ``2^251``. x-only multiplication commutes: ``X25519(b, X25519(a, u(P))) = u([ab] P) =
  X25519(a, X25519(b, u(P)))``. libsodium returns -1 when the result is all zero, i.e. the input has
  small order (0, 1, -1 and the other points of order 2, 4, 8): reported as :class:`InvalidPointError`;
* validation of points only compared (never multiplied) and of points received before blinding: a
  canonical encoding (top bit clear, ``u < p``) that is not the u of a small-order point
  (:data:`SMALL_ORDER_U`).

x-only and twist considerations (semi-honest model, as the protocol module states). A u-coordinate
stands for ``+P`` and ``-P`` alike; since ``u([k]P) = u([k](-P))``, equality of double-blinded values means
``H(x) = +-H(y)``, which for distinct ids of an honest party happens with negligible probability (random
oracle), so the intersection is exact. Half of all u values are not on curve25519 but on its quadratic
twist; an honest peer never sends one (``H`` and X25519 keep points on the curve), and a dishonest one
gains nothing from it: the twist's order is ``4 * p'`` with ``p'`` a 253-bit prime, clamped scalars are
multiples of 8 and kill any small-order component (the ``-1`` above), so what comes back is ``[k]Q`` in a
group where discrete logarithms are as hard as on the curve (curve25519's twist security). Points of the
curve's own small subgroup are rejected by libsodium's all-zero check. Non-canonical encodings (top bit
set, ``u >= p``) are refused before use so that one value has one encoding on the wire.

DDH in the prime-order subgroup of curve25519 is the same assumption as for ristretto255 (which is built
on it); the difference is only the x-only encoding, which is why the ``H(x)`` = ``+-H(y)`` remark matters.

Two backends compute these bytes: libsodium, one ctypes call per point (:func:`hash_and_blind_into`,
:func:`blind_into`), and :mod:`fedrec.psi.x25519_ifma`, Elligator2 and X25519 for 8 points per AVX-512
IFMA instruction (:func:`hash_and_blind_into_ifma`, :func:`blind_into_ifma`; about 4x the operations per
CPU second). The outputs are identical, so the choice is local to a party (``Engine(backend=)``).
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from fedrec.psi.group import POINT_BYTES, InvalidPointError, _ptr, _sodium

P25519 = (1 << 255) - 19
CURVE_A = 486662
HASH_BYTES = 64
DOMAIN_PREFIX = b"fedrec/psi/v1/x25519/sha512/ell2\x00"
# canonical u-coordinates of the points of order 1, 2, 4 and 8 (libsodium's X25519 blacklist, reduced)
SMALL_ORDER_U = (0, 1, P25519 - 1,
                 325606250916557431795983626356110631294008115727848805560023387167927233504,
                 39382357235489614581723060781553021112529911719440698176882885853963445705823)
CURVE = "x25519"


@dataclass(frozen=True)
class _X25519:
    scalarmult: Any
    random_bytes: Any


@lru_cache(maxsize=1)
def _x25519() -> _X25519:
    lib = _sodium().lib  # the same libsodium handle as the ristretto255 group
    vp = ctypes.c_void_p
    lib.crypto_scalarmult_curve25519.argtypes = [vp, vp, vp]
    lib.crypto_scalarmult_curve25519.restype = ctypes.c_int
    lib.randombytes_buf.argtypes = [vp, ctypes.c_size_t]
    lib.randombytes_buf.restype = None
    return _X25519(lib.crypto_scalarmult_curve25519, lib.randombytes_buf)


def random_secret(address: int) -> None:
    """Write 32 bytes from libsodium's CSPRNG at ``address`` (an X25519 secret; libsodium clamps it)."""
    _x25519().random_bytes(address, 32)


def elligator2(digests: bytes, n: int) -> np.ndarray:
    """Montgomery u of Elligator2 of the first 32 bytes of each 64-byte digest, as ``(n, 32)`` uint8.

    ``r = bytes[0:32]`` (little-endian, top bit cleared) mod ``p``; ``w = -A / (1 + 2 r^2)``;
    ``u = w`` if ``w^3 + A w^2 + w`` is a square mod ``p``, else ``u = -w - A``. So ``u`` is on curve25519
    (2 is not a square mod ``p``, so ``1 + 2 r^2 != 0``), and ``u([8] P)`` equals the u-coordinate of
    libsodium's ``crypto_core_ed25519_from_uniform(r)`` (tested). The ``n`` inversions share one field
    inversion (Montgomery's trick); the Legendre symbols are GMP's.
    """
    p, a = mpz(P25519), mpz(CURVE_A)
    mask = (1 << 255) - 1
    rs = [mpz(int.from_bytes(digests[i:i + POINT_BYTES], "little") & mask)
          for i in range(0, HASH_BYTES * n, HASH_BYTES)]
    dens = [(2 * r * r + 1) % p for r in rs]
    prefix: list[Any] = [None] * n  # prefix[i] = dens[0] * ... * dens[i-1]
    acc = mpz(1)
    for i, d in enumerate(dens):
        prefix[i] = acc
        acc = acc * d % p
    inv = gmpy2.invert(acc, p)  # 1 / (dens[0] * ... * dens[i]) while walking back
    legendre = gmpy2.legendre
    out = [b""] * n
    for i in range(n - 1, -1, -1):
        w = -a * inv * prefix[i] % p
        inv = inv * dens[i] % p
        if legendre(w * (w * (w + a) + 1) % p, p) == -1:
            w = (-w - a) % p
        out[i] = int(w).to_bytes(POINT_BYTES, "little")
    return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(n, POINT_BYTES)


_SMALL = np.frombuffer(b"".join(u.to_bytes(POINT_BYTES, "little") for u in SMALL_ORDER_U),
                       dtype=f"S{POINT_BYTES}")


def noncanonical(points: np.ndarray) -> np.ndarray:
    """Boolean mask of encodings that are not canonical u-coordinates (top bit set or ``u >= p``) or that
    are the u of a small-order point (zero included)."""
    top = points[:, 31]
    ge_p = (top == 0x7F) & (points[:, 1:31] == 0xFF).all(axis=1) & (points[:, 0] >= 0xED)
    small = np.isin(np.ascontiguousarray(points).view(f"S{POINT_BYTES}").ravel(), _SMALL)
    return ((top & 0x80) != 0) | ge_p | small


def _first_bad(points: np.ndarray) -> int | None:
    bad = noncanonical(points)
    return int(np.argmax(bad)) if bad.any() else None


def hash_and_blind_into(out: np.ndarray, ids: Sequence[bytes], domain: bytes, scalar: Any) -> None:
    """``out[i] = X25519(k, H(ids[i]))``; ``out`` is a preallocated ``(len(ids), 32)`` C-contiguous array."""
    n = len(ids)
    if out.shape != (n, POINT_BYTES) or not out.flags.c_contiguous:
        raise ValueError(f"output buffer must be C-contiguous of shape ({n}, {POINT_BYTES})")
    if n == 0:
        return
    us = elligator2(_digests(ids, domain), n)
    mult = _x25519().scalarmult
    k, o, u = scalar.address, _ptr(out), _ptr(us)
    for i in range(0, POINT_BYTES * n, POINT_BYTES):
        if mult(o + i, k, u + i) != 0:  # a small-order H(x): probability ~2^-250; never ignore it
            raise InvalidPointError(i // POINT_BYTES, "hashed id")


def blind_into(out: np.ndarray, points: np.ndarray, scalar: Any) -> None:
    """``out[i] = X25519(k, points[i])``; raises :class:`InvalidPointError` at the first non-canonical,
    zero or small-order input."""
    n = len(points)
    if out.shape != (n, POINT_BYTES) or not out.flags.c_contiguous or not points.flags.c_contiguous:
        raise ValueError(f"buffers must be C-contiguous of shape ({n}, {POINT_BYTES})")
    bad = _first_bad(points)
    if bad is not None:
        raise InvalidPointError(bad)
    mult = _x25519().scalarmult
    k, o, p = scalar.address, _ptr(out), _ptr(points)
    for i in range(0, POINT_BYTES * n, POINT_BYTES):
        if mult(o + i, k, p + i) != 0:
            raise InvalidPointError(i // POINT_BYTES)


def _digests(ids: Sequence[bytes], domain: bytes) -> bytes:
    return b"".join([hashlib.sha512(domain + x).digest() for x in ids])


def hash_and_blind_into_ifma(out: np.ndarray, ids: Sequence[bytes], domain: bytes, scalar: Any) -> None:
    """:func:`hash_and_blind_into` on the AVX-512 IFMA backend (:mod:`fedrec.psi.x25519_ifma`): the same
    bytes, Elligator2 and X25519 in one call over the whole batch."""
    n = len(ids)
    if out.shape != (n, POINT_BYTES) or not out.flags.c_contiguous:
        raise ValueError(f"output buffer must be C-contiguous of shape ({n}, {POINT_BYTES})")
    if n == 0:
        return
    bad = _ifma().hash_batch(_ptr(out), scalar.address, _digests(ids, domain), n)
    if bad != n:
        raise InvalidPointError(int(bad), "hashed id")


def blind_into_ifma(out: np.ndarray, points: np.ndarray, scalar: Any) -> None:
    """:func:`blind_into` on the AVX-512 IFMA backend: the same checks, errors and bytes."""
    n = len(points)
    if out.shape != (n, POINT_BYTES) or not out.flags.c_contiguous or not points.flags.c_contiguous:
        raise ValueError(f"buffers must be C-contiguous of shape ({n}, {POINT_BYTES})")
    bad = _first_bad(points)
    if bad is not None:
        raise InvalidPointError(bad)
    if n == 0:
        return
    zero = _ifma().batch(_ptr(out), scalar.address, _ptr(points), n)
    if zero != n:
        raise InvalidPointError(int(zero))


def _ifma() -> Any:
    from fedrec.psi.x25519_ifma import load, unavailable_reason

    lib = load()
    if lib is None:
        raise RuntimeError(f"the X25519 IFMA backend is unavailable: {unavailable_reason()}")
    return lib


def check_points(points: np.ndarray) -> None:
    """Raise :class:`InvalidPointError` at the first non-canonical or small-order u-coordinate."""
    bad = _first_bad(points)
    if bad is not None:
        raise InvalidPointError(bad)
