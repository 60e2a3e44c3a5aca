"""Plaintext backend: no encryption, same interface. The debugging mode and the speed limit.

NOT SECURE: every "ciphertext" is the float64 vector itself. Creating one warns (a ``UserWarning``,
which fedrec's command line shows as one WARNING log line), so it cannot end up in a deployment
silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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

TAG = "plain"
MAX_SIZE = 1 << 24


@dataclass
class PlainVector(EncryptedVector):
    values: FloatArray
    size: int
    level: int


class PlainBackend(CryptoBackend):
    name = TAG
    slots = MAX_SIZE
    max_level = 8

    def __init__(self) -> None:
        msg = "crypto backend 'plain' performs NO encryption: every value travels in the clear (debug only)"
        # one warning, not a warning and a log line with the same text (issue #13): fedrec's command line
        # shows warnings as log lines (training.logging_setup), a library user sees Python's warning
        warnings.warn(msg, UserWarning, stacklevel=2)

    @property
    def has_secret_key(self) -> bool:
        return True

    def public_bytes(self) -> bytes:
        return TAG.encode().ljust(8, b"\0")

    @classmethod
    def from_public_bytes(cls, data: bytes) -> PlainBackend:
        if bytes(data) != TAG.encode().ljust(8, b"\0"):
            raise CryptoError("plain public key material: expected exactly the 'plain' tag")
        return cls()

    def max_plain_magnitude(self, level: int) -> float:
        return float(np.finfo(np.float64).max) / 4

    def error_bound(self, level: int = 0, plain_bound: float = 1.0, terms: int = 1,
                    value_bound: float = 1.0) -> float:
        eps = float(np.finfo(np.float64).eps)
        return eps * terms * max(1.0, value_bound) * max(1.0, plain_bound) ** level

    def release_policy(self, bound: float = 2.0 ** 30, plain_bound: float = 1.0,
                       terms: int = 1, level: int = 1, value_bound: float = 1.0) -> ReleasePolicy:
        return ReleasePolicy(bound=bound, flood_sigma=0.0, precision=bound * 2.0 ** -50)

    def _check(self, ct: EncryptedVector, op: str) -> PlainVector:
        if not isinstance(ct, PlainVector):
            raise CryptoError(f"plain.{op}: expected a PlainVector, got {type(ct).__name__}")
        return ct

    def _operand(self, x: PlainVector, values: npt.ArrayLike, op: str) -> FloatArray:
        arr = np.asarray(values, dtype=np.float64)
        return as_vector(np.full(x.size, float(arr)) if arr.ndim == 0 else arr, f"plain.{op} values", x.size)

    def encrypt(self, values: npt.ArrayLike) -> PlainVector:
        arr = as_vector(values, "plain.encrypt values").copy()
        if arr.size > MAX_SIZE:
            raise CryptoError(f"plain.encrypt: {arr.size} values, at most {MAX_SIZE}")
        return PlainVector(arr, arr.size, 0)

    def decrypt(self, ct: EncryptedVector, bound: float | None = None) -> FloatArray:
        c = self._check(ct, "decrypt")
        if bound is not None and not np.all(np.abs(c.values) <= bound):
            i = int(np.argmax(np.abs(c.values)))
            raise CryptoError(f"plain.decrypt: value {c.values[i]!r} at index {i} exceeds {bound}")
        return c.values.copy()

    def add(self, a: EncryptedVector, b: EncryptedVector) -> PlainVector:
        x, y = self._check(a, "add"), self._check(b, "add")
        self.check_pair(x, y, "add")
        return PlainVector(x.values + y.values, x.size, x.level)

    def add_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> PlainVector:
        x = self._check(a, "add_plain")
        return PlainVector(x.values + self._operand(x, values, "add_plain"), x.size, x.level)

    def add_mask(self, a: EncryptedVector, mask: npt.ArrayLike, pad_range: float) -> PlainVector:
        x = self._check(a, "add_mask")
        return PlainVector(x.values + as_vector(mask, "plain.add_mask mask", x.size), x.size, x.level)

    def mul_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> PlainVector:
        x = self._check(a, "mul_plain")
        self.check_level(x, "mul_plain")
        return PlainVector(x.values * self._operand(x, values, "mul_plain"), x.size, x.level + 1)

    def drop_level(self, ct: EncryptedVector, level: int) -> PlainVector:
        x = self._check(ct, "drop_level")
        if not x.level <= level <= self.max_level:
            raise CryptoError(f"plain.drop_level: from level {x.level} to {level}; allowed "
                              f"{x.level}..{self.max_level}")
        return PlainVector(x.values.copy(), x.size, level)

    def serialize(self, ct: EncryptedVector) -> bytes:
        c = self._check(ct, "serialize")
        return pack_envelope(TAG, c.size, c.level, [c.values.astype("<f8").tobytes()])

    def deserialize(self, data: bytes, size: int, level: int) -> PlainVector:
        if not 1 <= size <= MAX_SIZE or not 0 <= level <= self.max_level:
            raise CryptoError(f"plain.deserialize: size {size} / level {level} out of range")
        (blob,) = unpack_envelope(data, TAG, size, level, 1, (8 * size, 8 * size))
        values = np.frombuffer(blob, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise CryptoError("plain.deserialize: NaN or inf value")
        return PlainVector(values, size, level)
