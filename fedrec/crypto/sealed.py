"""X25519 keys and sealed boxes bound to a context: how a secret (a CKKS secret key, Shamir shares) reaches
one party through a relay that must not read it (DESIGN §4.3 key set-up, Bonawitz share exchange).

``seal(pk, m, context=c)`` is libsodium's ``crypto_box_seal`` of ``tag(c) || m`` to the recipient's X25519
public key ``pk``, with ``tag(c) = SHA-256("fedrec/sealed/v1\\0" || c)``::

    epk, esk  = fresh X25519 key pair (per box)
    k         = crypto_box_beforenm(pk, esk)            (X25519 + HSalsa20)
    nonce     = BLAKE2b-192(epk || pk)
    sealed    = epk || XSalsa20-Poly1305_k,nonce(tag(c) || m)     (48 + 32 + |m| bytes)

:func:`open_sealed` decrypts with the recipient's secret key, verifies the Poly1305 tag and then the context
tag (constant-time compare): a flipped bit, a box for another key, or a box sealed for another ``context``
(another job, round, purpose or recipient id) raises :class:`CryptoError`. Contexts should name everything
the blob must not be replayed into; :func:`context_bytes` encodes such a tuple unambiguously.

What sealing does not do: a sealed box is *anonymous* (anyone holding ``pk`` can make one), so it
authenticates nobody. Whoever relays the public keys (the server) can substitute its own key for a
client's or seal a key of its own choosing; the protocol is secure against a server that follows it
(semi-honest) and against passive relays, not against an active server, unless the parties' public keys
reach each other authentically (e.g. out of band, as CURVE allow-lists are).

Keys are 32 raw bytes. A ZeroMQ CURVE key pair *is* an X25519 key pair (libzmq makes it with
``crypto_box_keypair``), z85-encoded: :func:`raw_key` decodes it (ZeroMQ RFC 32) without importing zmq,
so a party's transport key can also receive sealed boxes. Secrets live in Python ``bytes``, which cannot be
wiped; they are never logged and never appear in a ``repr``.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Self

from fedrec.crypto.backend import CryptoError
from fedrec.psi.group import _sodium

KEY_BYTES = 32
SEAL_OVERHEAD = 48  # crypto_box_SEALBYTES: ephemeral public key (32) + Poly1305 tag (16)
TAG_BYTES = 32
_TAG_DOMAIN = b"fedrec/sealed/v1\x00"
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}
_Z85_KEY_CHARS = 40


@dataclass(frozen=True)
class _Box:
    seal: Any
    seal_open: Any
    scalarmult: Any
    scalarmult_base: Any
    random_bytes: Any


@lru_cache(maxsize=1)
def _box() -> _Box:
    lib = _sodium().lib  # the libsodium handle of fedrec.psi.group (rbcl's bundled build)
    vp, ull = ctypes.c_void_p, ctypes.c_ulonglong
    lib.crypto_box_seal.argtypes = [vp, vp, ull, vp]
    lib.crypto_box_seal.restype = ctypes.c_int
    lib.crypto_box_seal_open.argtypes = [vp, vp, ull, vp, vp]
    lib.crypto_box_seal_open.restype = ctypes.c_int
    lib.crypto_scalarmult_curve25519.argtypes = [vp, vp, vp]
    lib.crypto_scalarmult_curve25519.restype = ctypes.c_int
    lib.crypto_scalarmult_curve25519_base.argtypes = [vp, vp]
    lib.crypto_scalarmult_curve25519_base.restype = ctypes.c_int
    lib.randombytes_buf.argtypes = [vp, ctypes.c_size_t]
    lib.randombytes_buf.restype = None
    if lib.crypto_box_sealbytes() != SEAL_OVERHEAD:  # pragma: no cover - a libsodium that changed format
        raise CryptoError(f"libsodium crypto_box_SEALBYTES is {lib.crypto_box_sealbytes()}, expected 48")
    return _Box(lib.crypto_box_seal, lib.crypto_box_seal_open, lib.crypto_scalarmult_curve25519,
                lib.crypto_scalarmult_curve25519_base, lib.randombytes_buf)


def _bytes(value: object, name: str, length: int | None = None) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise CryptoError(f"{name}: expected bytes, got {type(value).__name__}")
    data = bytes(value)
    if length is not None and len(data) != length:
        raise CryptoError(f"{name}: expected {length} bytes, got {len(data)}")
    return data


def random_bytes(n: int) -> bytes:
    """``n`` bytes from libsodium's CSPRNG (``randombytes_buf``)."""
    if not isinstance(n, int) or n < 0:
        raise CryptoError(f"random_bytes: n must be a non-negative int, got {n!r}")
    buf = ctypes.create_string_buffer(n)
    _box().random_bytes(buf, n)
    return buf.raw


def public_key(secret: bytes) -> bytes:
    """The X25519 public key ``X25519(secret, 9)`` of a 32-byte secret (libsodium clamps it)."""
    sk = _bytes(secret, "secret key", KEY_BYTES)
    out = ctypes.create_string_buffer(KEY_BYTES)
    if _box().scalarmult_base(out, sk) != 0:  # pragma: no cover - only for an all-zero clamped result
        raise CryptoError("secret key gives the identity as public key")
    return out.raw


def shared_secret(secret: bytes, their_public: bytes) -> bytes:
    """Raw X25519 ``X25519(secret, their_public)``; a small-order public key (all-zero result) is refused.

    Hash it before use (:func:`fedrec.crypto.secagg.agree` does)."""
    sk = _bytes(secret, "secret key", KEY_BYTES)
    pk = _bytes(their_public, "public key", KEY_BYTES)
    out = ctypes.create_string_buffer(KEY_BYTES)
    if _box().scalarmult(out, sk, pk) != 0:
        raise CryptoError("public key is a small-order point (X25519 gives all zeros); refusing it")
    return out.raw


@dataclass(frozen=True)
class X25519Keys:
    """A raw X25519 key pair (32 + 32 bytes); the secret never appears in ``repr``."""

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _bytes(self.public, "X25519Keys.public", KEY_BYTES)
        if not hmac.compare_digest(public_key(self.secret), self.public):
            raise CryptoError("X25519Keys: public key does not belong to the secret key")

    @classmethod
    def generate(cls) -> Self:
        """A fresh key pair from libsodium's CSPRNG."""
        secret = random_bytes(KEY_BYTES)
        return cls(public_key(secret), secret)

    @classmethod
    def from_secret(cls, secret: bytes) -> Self:
        return cls(public_key(secret), bytes(secret))


def context_bytes(*parts: str | bytes | int) -> bytes:
    """An unambiguous encoding of a tuple of parts (type byte, 4-byte length, bytes per part), for the
    ``context`` of :func:`seal` and of the mask derivations, e.g. ``context_bytes("fedmf/shares", job_id,
    round_id, sender, recipient)``. ``bool`` is refused (it is an ``int`` by accident too often)."""
    out = []
    for i, p in enumerate(parts):
        if isinstance(p, bool) or not isinstance(p, str | bytes | int):
            raise CryptoError(f"context_bytes: part {i} must be str, bytes or int, got {type(p).__name__}")
        if isinstance(p, str):
            kind, raw = b"s", p.encode("utf-8")
        elif isinstance(p, int):
            kind, raw = b"i", str(p).encode("ascii")
        else:
            kind, raw = b"b", p
        out.append(kind + struct.pack("<I", len(raw)) + raw)
    return b"".join(out)


def _context_tag(context: bytes) -> bytes:
    ctx = _bytes(context, "context")
    if not ctx:
        raise CryptoError("context must be non-empty: name the job and purpose the blob is for")
    return hashlib.sha256(_TAG_DOMAIN + ctx).digest()


def seal(recipient_public: bytes, plaintext: bytes, *, context: bytes) -> bytes:
    """Seal ``plaintext`` to ``recipient_public`` for ``context``; ``48 + 32 + len(plaintext)`` bytes."""
    pk = _bytes(recipient_public, "recipient_public", KEY_BYTES)
    message = _context_tag(context) + _bytes(plaintext, "plaintext")
    out = ctypes.create_string_buffer(len(message) + SEAL_OVERHEAD)
    if _box().seal(out, message, len(message), pk) != 0:
        raise CryptoError("seal: libsodium refused the recipient public key (small-order point?)")
    return out.raw


def open_sealed(recipient_secret: bytes, recipient_public: bytes, sealed: bytes, *, context: bytes) -> bytes:
    """Open a box made by :func:`seal`; :class:`CryptoError` if it was tampered with, sealed to another key
    or for another ``context``, or if the key pair does not match."""
    sk = _bytes(recipient_secret, "recipient_secret", KEY_BYTES)
    pk = _bytes(recipient_public, "recipient_public", KEY_BYTES)
    blob = _bytes(sealed, "sealed")
    tag = _context_tag(context)
    if not hmac.compare_digest(public_key(sk), pk):
        raise CryptoError("open_sealed: recipient_public does not belong to recipient_secret")
    if len(blob) < SEAL_OVERHEAD + TAG_BYTES:
        raise CryptoError(f"open_sealed: {len(blob)} bytes, a sealed box is at least "
                          f"{SEAL_OVERHEAD + TAG_BYTES}")
    out = ctypes.create_string_buffer(len(blob) - SEAL_OVERHEAD)
    if _box().seal_open(out, blob, len(blob), pk, sk) != 0:
        raise CryptoError("open_sealed: authentication failed (tampered, truncated or sealed to another key)")
    message = out.raw
    if not hmac.compare_digest(message[:TAG_BYTES], tag):
        raise CryptoError("open_sealed: the box was sealed for another context (job, round or purpose)")
    return message[TAG_BYTES:]


def raw_key(z85: str) -> bytes:
    """The 32 raw bytes of a z85-encoded CURVE key (40 characters, ZeroMQ RFC 32)."""
    if not isinstance(z85, str) or len(z85) != _Z85_KEY_CHARS:
        raise CryptoError(f"raw_key: expected a 40-character z85 string, got {type(z85).__name__} of "
                          f"length {len(z85) if isinstance(z85, str) else '?'}")
    out = bytearray()
    for i in range(0, _Z85_KEY_CHARS, 5):
        value = 0
        for c in z85[i:i + 5]:
            digit = _Z85_INDEX.get(c)
            if digit is None:
                raise CryptoError(f"raw_key: {c!r} at position {z85.index(c)} is not a z85 character")
            value = value * 85 + digit
        if value >= 1 << 32:
            raise CryptoError(f"raw_key: characters {i}..{i + 4} encode {value}, more than 32 bits")
        out += value.to_bytes(4, "big")
    return bytes(out)


def z85_key(raw: bytes) -> str:
    """The z85 (40-character) form of a 32-byte key, as ZeroMQ writes it."""
    data = _bytes(raw, "raw key", KEY_BYTES)
    chars: list[str] = []
    for i in range(0, KEY_BYTES, 4):
        value = int.from_bytes(data[i:i + 4], "big")
        group = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            group.append(_Z85[digit])
        chars.extend(reversed(group))
    return "".join(chars)
