"""The crypto backend interface shared by ``ckks`` (default), ``paillier`` and ``plain``.

The consumers are the vertical FM of DESIGN §4.2 and the horizontal MF of §4.3. One party (the *key
holder*: the guest in §4.2, the clients in §4.3) creates a backend with a secret key and sends
:meth:`CryptoBackend.public_bytes` to the other party, which loads it with :func:`load_public` and a
:class:`KeyPin`. The other party computes on ciphertexts with::

    add(a, b)            a + b                 (same size, same level)
    add_plain(a, p)      a + p                 (p a plaintext vector or scalar)
    mul_plain(a, p)      a ⊙ p                 (level + 1)
    drop_level(a, l)     a at level l          (no product: CKKS modulus switching, smaller ciphertexts)
    dot_plain(cts, ps)   Σ_t cts[t] ⊙ ps[t]    (level + 1; CKKS: one rescale for the whole sum; the ps may
                                               be encoded ahead by prepare_plain)
    add_mask(a, r, R)    a + Enc(r)            (fresh randomness; unused SIMD slots padded in [-R, R]; or
                                               add(a, encrypt_mask(r, R, level)) made ahead)

Slot-wise operations only, no rotations: ``dot_plain`` is the primitive behind the host gradient
``Σ_u M_j(u) ⊙ R_u`` (the layout is :mod:`fedrec.protocols.hetero_fm.packing`). The *level* of a
ciphertext counts the plaintext multiplications it went through; a receiver always states the size and
level it expects in :meth:`CryptoBackend.deserialize`, which validates bytes before any homomorphic
operation touches them.

Released decryptions (:meth:`CryptoBackend.decrypt_for_release`) are range-checked, noise-flooded and
rounded according to a :class:`ReleasePolicy`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Wire envelope of every serialized ciphertext: magic, backend tag, version, size, level, n_parts.
_ENVELOPE = struct.Struct("<4s8sHIHI")
_MAGIC = b"FRCT"
_VERSION = 1
_PART_LEN = struct.Struct("<I")


class CryptoError(ValueError):
    """Invalid key material, ciphertext bytes, decryption or operation; the message says which and why."""


@dataclass(frozen=True)
class ReleasePolicy:
    """How a key holder releases a decryption to the party that built the ciphertext.

    ``released = round((x + η) / precision) · precision`` with ``η ~ N(0, flood_sigma²)`` i.i.d. per
    value, after checking ``|x| ≤ bound`` for every value (decrypting garbage — a corrupted or
    foreign-key ciphertext — gives values near ``q/Δ``, far above any sane bound).
    """

    bound: float
    flood_sigma: float
    precision: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.bound) and self.bound > 0):
            raise CryptoError(f"ReleasePolicy.bound must be a positive finite number, got {self.bound!r}")
        if not (np.isfinite(self.flood_sigma) and self.flood_sigma >= 0):
            raise CryptoError(f"ReleasePolicy.flood_sigma must be >= 0 and finite, got {self.flood_sigma!r}")
        if not (np.isfinite(self.precision) and self.precision > 0):
            raise CryptoError(f"ReleasePolicy.precision must be > 0 and finite, got {self.precision!r}")


class KeyPin:
    """Trust-on-first-use pin of a peer's public key material (SHA-256 of its bytes).

    ``KeyPin()`` accepts the first digest it sees and refuses any other later;
    ``KeyPin(expected)`` only ever accepts ``expected`` (hex), e.g. a digest compared out of band.
    """

    def __init__(self, expected_sha256: str | None = None, peer: str = "peer") -> None:
        if expected_sha256 is not None and len(expected_sha256) != 64:
            raise CryptoError(f"KeyPin: expected a 64-hex-digit SHA-256, got {expected_sha256!r}")
        self._digest = expected_sha256.lower() if expected_sha256 else None
        self.peer = peer

    @property
    def digest(self) -> str | None:
        return self._digest

    def check(self, data: bytes) -> str:
        """Return the digest of ``data`` if it matches the pin (pinning it on first use)."""
        digest = hashlib.sha256(data).hexdigest()
        if self._digest is None:
            self._digest = digest
            logger.info("pinned public key material of %s: sha256=%s", self.peer, digest)
        elif not hmac.compare_digest(digest, self._digest):
            raise CryptoError(f"public key material from {self.peer} has sha256={digest}, but "
                              f"{self._digest} is pinned; refusing a different key/context")
        return digest


class EncryptedVector(ABC):
    """An encrypted float vector of ``size`` values that went through ``level`` plaintext products."""

    size: int
    level: int


def as_vector(values: npt.ArrayLike, name: str, size: int | None = None) -> FloatArray:
    """Validate a plaintext operand: 1-D, finite float64, of ``size`` values when given."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise CryptoError(f"{name}: expected a 1-D vector, got shape {arr.shape}")
    if arr.size == 0:
        raise CryptoError(f"{name}: expected a non-empty vector")
    if size is not None and arr.size != size:
        raise CryptoError(f"{name}: expected {size} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise CryptoError(f"{name}: contains NaN or inf at index {int(np.argmin(np.isfinite(arr)))}")
    return arr


def pack_envelope(tag: str, size: int, level: int, parts: list[bytes]) -> bytes:
    """``FRCT`` envelope: fixed header, then ``len || bytes`` per part (one part per ciphertext)."""
    head = _ENVELOPE.pack(_MAGIC, tag.encode().ljust(8, b"\0"), _VERSION, size, level, len(parts))
    return head + b"".join(_PART_LEN.pack(len(p)) + p for p in parts)


def unpack_envelope(data: bytes, tag: str, size: int, level: int, n_parts: int,
                    part_len: tuple[int, int]) -> list[bytes]:
    """Parse and check an envelope against what the receiver expects; return the parts' bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CryptoError(f"{tag} ciphertext: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    lo, hi = part_len
    max_total = _ENVELOPE.size + n_parts * (_PART_LEN.size + hi)
    if not _ENVELOPE.size <= len(data) <= max_total:
        raise CryptoError(f"{tag} ciphertext: {len(data)} bytes, expected between {_ENVELOPE.size} and "
                          f"{max_total} for {n_parts} part(s)")
    magic, got_tag, version, got_size, got_level, got_parts = _ENVELOPE.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise CryptoError(f"{tag} ciphertext: bad magic/version {magic!r}/{version}")
    if got_tag.rstrip(b"\0") != tag.encode():
        raise CryptoError(f"ciphertext is for backend {got_tag.rstrip(bytes(1))!r}, expected {tag!r}")
    if (got_size, got_level, got_parts) != (size, level, n_parts):
        raise CryptoError(f"{tag} ciphertext: size/level/parts = {got_size}/{got_level}/{got_parts}, "
                          f"expected {size}/{level}/{n_parts}")
    parts, pos = [], _ENVELOPE.size
    for i in range(n_parts):
        if pos + _PART_LEN.size > len(data):
            raise CryptoError(f"{tag} ciphertext: truncated before part {i}")
        (length,) = _PART_LEN.unpack_from(data, pos)
        pos += _PART_LEN.size
        if not lo <= length <= hi or pos + length > len(data):
            raise CryptoError(f"{tag} ciphertext: part {i} claims {length} bytes, expected {lo}..{hi} "
                              f"within the {len(data)} received")
        parts.append(data[pos:pos + length])
        pos += length
    if pos != len(data):
        raise CryptoError(f"{tag} ciphertext: {len(data) - pos} trailing bytes")
    return parts


def flood_and_round(values: FloatArray, policy: ReleasePolicy, what: str) -> FloatArray:
    """Range check, Gaussian flooding (fresh OS-seeded randomness), rounding to the policy's grid."""
    bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > policy.bound))
    if bad.size:
        i = int(bad[0])
        raise CryptoError(f"{what}: decrypted value {values[i]!r} at index {i} exceeds the bound "
                          f"{policy.bound} ({bad.size} of {values.size} values); the ciphertext is corrupt, "
                          f"under another key, or the bound is wrong")
    from fedrec.crypto.masks import secure_rng

    noisy = values + secure_rng().normal(0.0, policy.flood_sigma, size=values.shape) \
        if policy.flood_sigma > 0 else values
    return np.round(noisy / policy.precision) * policy.precision


class CryptoBackend(ABC):
    """Additively homomorphic vector encryption with plaintext products (see module docstring)."""

    name: ClassVar[str]
    #: values per ciphertext (SIMD slots for CKKS, 1 for Paillier, unbounded for plain)
    slots: int
    #: plaintext multiplications a ciphertext can go through
    max_level: int

    @property
    @abstractmethod
    def has_secret_key(self) -> bool: ...

    @abstractmethod
    def public_bytes(self) -> bytes:
        """Public key material (no secret key) for :func:`load_public` on the other side."""

    @abstractmethod
    def encrypt(self, values: npt.ArrayLike) -> EncryptedVector: ...

    def encrypt_at(self, values: npt.ArrayLike, level: int) -> EncryptedVector:
        """A fresh encryption at ``level`` (for ciphertexts that only go through additions from there:
        CKKS encrypts directly with fewer primes). Default: :meth:`encrypt` then :meth:`drop_level`."""
        return self.drop_level(self.encrypt(values), level)

    def drop_level(self, ct: EncryptedVector, level: int) -> EncryptedVector:
        """``ct`` moved down to ``level >= ct.level`` without changing its values (CKKS: modulus
        switching, smaller ciphertexts; the plain backend relabels). Default: products with ``1``."""
        if not ct.level <= level <= self.max_level:
            raise CryptoError(f"{self.name}.drop_level: from level {ct.level} to {level}; allowed "
                              f"{ct.level}..{self.max_level}")
        while ct.level < level:
            ct = self.mul_plain(ct, 1.0)
        return ct

    @abstractmethod
    def decrypt(self, ct: EncryptedVector, bound: float | None = None) -> FloatArray:
        """Exact-as-possible decryption for the key holder's *own* use; never send it back.

        With ``bound``, every value must satisfy ``|x| <= bound`` (corruption check).
        """

    def decrypt_for_release(self, ct: EncryptedVector, policy: ReleasePolicy | None = None) -> FloatArray:
        """Decrypt a ciphertext built by the other party and make the result safe to hand back.

        Checks ``|x| <= policy.bound``, adds ``N(0, flood_sigma²)`` and rounds to ``precision``.
        """
        policy = policy or self.release_policy()
        return flood_and_round(self.decrypt(ct), policy, f"{self.name} release")

    @abstractmethod
    def release_policy(self, bound: float = 2.0 ** 30, plain_bound: float = 1.0,
                       terms: int = 1, level: int = 1, value_bound: float = 1.0) -> ReleasePolicy:
        """The default release policy for masked values of magnitude ``<= bound`` computed at ``level``
        from encrypted values ``|x| <= value_bound`` times plaintexts ``|w| <= plain_bound`` summed over
        ``terms`` products."""

    @abstractmethod
    def error_bound(self, level: int = 0, plain_bound: float = 1.0, terms: int = 1,
                    value_bound: float = 1.0) -> float:
        """High-probability bound on ``|decrypt(ct) - exact|`` for a ciphertext at ``level`` built as
        in :meth:`release_policy` (0 for exact schemes)."""

    @abstractmethod
    def max_plain_magnitude(self, level: int) -> float:
        """Largest ``|x|`` a ciphertext at ``level`` can hold without wrapping around its modulus."""

    @abstractmethod
    def add(self, a: EncryptedVector, b: EncryptedVector) -> EncryptedVector: ...

    @abstractmethod
    def add_mask(self, a: EncryptedVector, mask: npt.ArrayLike, pad_range: float) -> EncryptedVector:
        """``a + Enc(mask)`` with fresh encryption randomness; unused SIMD slots get fresh uniform
        values in ``[-pad_range, pad_range]`` so that nothing but masked values reaches the key holder."""

    @abstractmethod
    def add_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> EncryptedVector: ...

    @abstractmethod
    def mul_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> EncryptedVector: ...

    def prepare_plain(self, values: npt.ArrayLike, level: int) -> object:
        """``values`` made ready to multiply ciphertexts at ``level`` in :meth:`dot_plain` (CKKS: encoded
        once, ahead of the ciphertexts; the expensive half of a product). Default: the checked vector."""
        return as_vector(values, f"{self.name}.prepare_plain values")

    def encrypt_mask(self, mask: npt.ArrayLike, pad_range: float, level: int) -> EncryptedVector:
        """A fresh encryption of ``mask`` at ``level`` (public key suffices) whose unused SIMD slots hold
        fresh uniform values in ``[-pad_range, pad_range]``: ``add(a, encrypt_mask(m, R, a.level))`` is
        :meth:`add_mask` with the encryption made ahead of ``a``. Default: :meth:`encrypt_at`."""
        return self.encrypt_at(mask, level)

    def dot_plain(self, cts: Sequence[EncryptedVector], plains: Sequence[Any]) -> EncryptedVector:
        """``Σ_t cts[t] ⊙ plains[t]`` (same size and level for all, result at level + 1).

        The host gradient's inner loop; CKKS overrides it with a single rescale of the sum."""
        if not cts or len(cts) != len(plains):
            raise CryptoError(f"{self.name}.dot_plain: {len(cts)} ciphertexts and {len(plains)} plaintexts")
        acc = self.mul_plain(cts[0], plains[0])
        for ct, p in zip(cts[1:], plains[1:], strict=True):
            acc = self.add(acc, self.mul_plain(ct, p))
        return acc

    @abstractmethod
    def serialize(self, ct: EncryptedVector) -> bytes: ...

    @abstractmethod
    def deserialize(self, data: bytes, size: int, level: int) -> EncryptedVector:
        """Validate ``data`` fully (lengths, structure, key/parameter binding, level) and load it."""

    def check_pair(self, a: EncryptedVector, b: EncryptedVector, op: str) -> None:
        if a.size != b.size or a.level != b.level:
            raise CryptoError(f"{self.name}.{op}: operands have size/level {a.size}/{a.level} and "
                              f"{b.size}/{b.level}; they must match")

    def check_level(self, a: EncryptedVector, op: str) -> None:
        if a.level >= self.max_level:
            raise CryptoError(f"{self.name}.{op}: ciphertext is at level {a.level}; this backend allows "
                              f"{self.max_level} plaintext multiplication(s)")


def load_public(data: bytes, pin: KeyPin) -> CryptoBackend:
    """Load a peer's public backend from :meth:`CryptoBackend.public_bytes`, checking ``pin`` first."""
    pin.check(data)
    tag = bytes(data[:8]).rstrip(b"\0")
    if tag == b"ckks":
        from fedrec.crypto.ckks import CKKSBackend
        return CKKSBackend.from_public_bytes(data)
    if tag == b"paillier":
        from fedrec.crypto.paillier import PaillierBackend
        return PaillierBackend.from_public_bytes(data)
    if tag == b"plain":
        from fedrec.crypto.plain import PlainBackend
        return PlainBackend.from_public_bytes(data)
    raise CryptoError(f"public key material from {pin.peer}: unknown backend tag {tag[:8]!r}")


def make_backend(name: str, **options: object) -> CryptoBackend:
    """A fresh key-holder backend: ``ckks`` (options: preset, rotations), ``paillier`` (key_bits,
    precision_bits) or ``plain``. Fresh keys every call: use one per training job."""
    if name == "ckks":
        from fedrec.crypto.ckks import CKKSBackend
        return CKKSBackend.keygen(**options)  # type: ignore[arg-type]
    if name == "paillier":
        from fedrec.crypto.paillier import PaillierBackend
        return PaillierBackend.keygen(**options)  # type: ignore[arg-type]
    if name == "plain":
        from fedrec.crypto.plain import PlainBackend
        return PlainBackend(**options)
    raise CryptoError(f"unknown crypto backend {name!r}; expected 'ckks', 'paillier' or 'plain'")
