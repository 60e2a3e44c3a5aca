"""Paillier backend (python-paillier ``phe`` + gmpy2): the FATE-style baseline, same interface as CKKS.

Encoding: fixed point, ``m = round(x · 2^p) mod n`` (``p = precision_bits``, default 40); a ciphertext at
level ``l`` carries scale ``2^{p(l+1)}`` (each plaintext product multiplies the scale by ``2^p``), decoded
with the signed lift ``m > n/2 ⇒ m - n``. Encryption ``c = (1 + m n) · r^n mod n²`` with fresh
``r ∈ Z_n^*``; addition is ``c1 · c2``, plaintext product ``c^k`` (``c^{-1}`` to the power ``|k|`` for
negative ``k``). One value per ciphertext: no SIMD (``slots = 1``), so a sum over users is a product
of ciphertexts. Decryption is exact (no CKKS-style key leakage), so the release policy only rounds.
Serialization: each ciphertext as a fixed-length big-endian integer (never pickled), checked to be a
unit of ``Z_{n²}`` on the way in.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

import gmpy2
import numpy as np
import numpy.typing as npt
from phe import paillier

from fedrec.crypto.backend import (
    CryptoBackend,
    CryptoError,
    EncryptedVector,
    FloatArray,
    ReleasePolicy,
    as_vector,
    pack_envelope,
    unpack_envelope,
)

TAG = "paillier"
MIN_KEY_BITS = 2048
MAX_LEVEL = 2


@dataclass
class PaillierCiphertext(EncryptedVector):
    cts: list[gmpy2.mpz]
    size: int
    level: int


class PaillierBackend(CryptoBackend):
    name = TAG
    slots = 1
    max_level = MAX_LEVEL

    def __init__(self, n: int, precision_bits: int, private_key: paillier.PaillierPrivateKey | None = None):
        if n.bit_length() < MIN_KEY_BITS or n % 2 == 0:
            raise CryptoError(f"paillier: modulus of {n.bit_length()} bits; need an odd n of "
                              f">= {MIN_KEY_BITS} bits")
        if not 16 <= precision_bits <= 60:
            raise CryptoError(f"paillier: precision_bits must be in 16..60, got {precision_bits}")
        self.n = gmpy2.mpz(n)
        self.n2 = self.n * self.n
        self.precision_bits = precision_bits
        self._sk = private_key
        self._ct_bytes = (int(self.n2).bit_length() + 7) // 8

    @classmethod
    def keygen(cls, key_bits: int = 2048, precision_bits: int = 40) -> PaillierBackend:
        pk, sk = paillier.generate_paillier_keypair(n_length=key_bits)
        return cls(pk.n, precision_bits, sk)

    @property
    def has_secret_key(self) -> bool:
        return self._sk is not None

    def public_bytes(self) -> bytes:
        nb = int(self.n).to_bytes((int(self.n).bit_length() + 7) // 8, "big")
        return TAG.encode().ljust(8, b"\0") + struct.pack("<HH", self.precision_bits, len(nb)) + nb

    @classmethod
    def from_public_bytes(cls, data: bytes) -> PaillierBackend:
        data = bytes(data)
        if len(data) < 12 or data[:8].rstrip(b"\0") != TAG.encode():
            raise CryptoError("paillier public key: missing 'paillier' header")
        precision, length = struct.unpack_from("<HH", data, 8)
        if len(data) != 12 + length or length > 1024:
            raise CryptoError(f"paillier public key: {len(data)} bytes for a declared {length}-byte modulus")
        return cls(int.from_bytes(data[12:], "big"), precision)

    # -- numbers ------------------------------------------------------------------------------------
    def _scale(self, level: int) -> gmpy2.mpz:
        return gmpy2.mpz(1) << (self.precision_bits * (level + 1))

    def max_plain_magnitude(self, level: int) -> float:
        return float(2.0 ** min(1000, int(self.n).bit_length() - 2 - self.precision_bits * (level + 1)))

    def error_bound(self, level: int = 0, plain_bound: float = 1.0, terms: int = 1,
                    value_bound: float = 1.0) -> float:
        ulp = 2.0 ** -self.precision_bits
        e = ulp / 2
        for _ in range(level):
            e = terms * (plain_bound * e + max(1.0, value_bound) * ulp / 2)
        return e

    def release_policy(self, bound: float = 2.0 ** 30, plain_bound: float = 1.0,
                       terms: int = 1, level: int = 1, value_bound: float = 1.0) -> ReleasePolicy:
        """Exact decryption: no flooding needed; round to the fixed-point grid of level 0."""
        return ReleasePolicy(bound=bound, flood_sigma=0.0, precision=2.0 ** -self.precision_bits)

    # -- encoding -----------------------------------------------------------------------------------
    def _encode(self, x: float, level: int = 0) -> gmpy2.mpz:
        return gmpy2.mpz(round(x * float(self._scale(level)))) % self.n

    def _enc_int(self, m: gmpy2.mpz) -> gmpy2.mpz:
        r = gmpy2.mpz(secrets.randbelow(int(self.n) - 1) + 1)
        return ((1 + m * self.n) * gmpy2.powmod(r, self.n, self.n2)) % self.n2

    def _check(self, ct: EncryptedVector, op: str) -> PaillierCiphertext:
        if not isinstance(ct, PaillierCiphertext):
            raise CryptoError(f"paillier.{op}: expected a PaillierCiphertext, got {type(ct).__name__}")
        return ct

    def _pow(self, c: gmpy2.mpz, k: int) -> gmpy2.mpz:
        if k < 0:
            return gmpy2.powmod(gmpy2.invert(c, self.n2), -k, self.n2)
        return gmpy2.powmod(c, k, self.n2)

    def _operand(self, x: PaillierCiphertext, values: npt.ArrayLike, op: str) -> FloatArray:
        arr = np.asarray(values, dtype=np.float64)
        full = np.full(x.size, float(arr)) if arr.ndim == 0 else arr
        return as_vector(full, f"paillier.{op} values", x.size)

    def _plain_ints(self, x: PaillierCiphertext, values: npt.ArrayLike, op: str) -> list[int]:
        p = self._operand(x, values, op)
        return [round(v * 2.0 ** self.precision_bits) for v in p]

    # -- operations ---------------------------------------------------------------------------------
    def encrypt(self, values: npt.ArrayLike) -> PaillierCiphertext:
        arr = as_vector(values, "paillier.encrypt values")
        return PaillierCiphertext([self._enc_int(self._encode(v)) for v in arr], arr.size, 0)

    def decrypt(self, ct: EncryptedVector, bound: float | None = None) -> FloatArray:
        c = self._check(ct, "decrypt")
        if self._sk is None:
            raise CryptoError("paillier.decrypt: this backend holds only the public key")
        half, scale = self.n // 2, float(self._scale(c.level))
        out = np.empty(c.size)
        for i, v in enumerate(c.cts):
            m = gmpy2.mpz(self._sk.raw_decrypt(int(v)))
            signed = m - self.n if m > half else m
            out[i] = float(signed) / scale if int(signed).bit_length() < 1000 else np.inf
        if bound is not None and not np.all(np.abs(out) <= bound):
            i = int(np.argmax(np.abs(out)))
            raise CryptoError(f"paillier.decrypt: value {out[i]!r} at index {i} exceeds {bound}")
        return out

    def add(self, a: EncryptedVector, b: EncryptedVector) -> PaillierCiphertext:
        x, y = self._check(a, "add"), self._check(b, "add")
        self.check_pair(x, y, "add")
        cts = [u * v % self.n2 for u, v in zip(x.cts, y.cts, strict=True)]
        return PaillierCiphertext(cts, x.size, x.level)

    def add_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> PaillierCiphertext:
        x = self._check(a, "add_plain")
        p = self._operand(x, values, "add_plain")
        return PaillierCiphertext([c * (1 + self._encode(v, x.level) * self.n) % self.n2
                                   for c, v in zip(x.cts, p, strict=True)], x.size, x.level)

    def add_mask(self, a: EncryptedVector, mask: npt.ArrayLike, pad_range: float) -> PaillierCiphertext:
        x = self._check(a, "add_mask")
        m = as_vector(mask, "paillier.add_mask mask", x.size)
        return PaillierCiphertext([c * self._enc_int(self._encode(v, x.level)) % self.n2
                                   for c, v in zip(x.cts, m, strict=True)], x.size, x.level)

    def mul_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> PaillierCiphertext:
        x = self._check(a, "mul_plain")
        self.check_level(x, "mul_plain")
        ks = self._plain_ints(x, values, "mul_plain")
        cts = [self._pow(c, k) for c, k in zip(x.cts, ks, strict=True)]
        return PaillierCiphertext(cts, x.size, x.level + 1)

    def serialize(self, ct: EncryptedVector) -> bytes:
        c = self._check(ct, "serialize")
        blob = b"".join(int(v).to_bytes(self._ct_bytes, "big") for v in c.cts)
        return pack_envelope(TAG, c.size, c.level, [blob])

    def deserialize(self, data: bytes, size: int, level: int) -> PaillierCiphertext:
        if not 1 <= size <= 1 << 20 or not 0 <= level <= self.max_level:
            raise CryptoError(f"paillier.deserialize: size {size} / level {level} out of range")
        total = size * self._ct_bytes
        (blob,) = unpack_envelope(data, TAG, size, level, 1, (total, total))
        cts = []
        for i in range(size):
            v = gmpy2.mpz(int.from_bytes(blob[i * self._ct_bytes:(i + 1) * self._ct_bytes], "big"))
            if not 0 < v < self.n2 or gmpy2.gcd(v, self.n) != 1:
                raise CryptoError(f"paillier.deserialize: value {i} is not a unit modulo n²")
            cts.append(v)
        return PaillierCiphertext(cts, size, level)
