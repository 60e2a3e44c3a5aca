"""The clients' shared CKKS key, how it reaches them through the server, and the ciphertexts' wire form.

Key set-up (DESIGN §4.3). The *key holder* (the first client of the roster, by name) makes a fresh CKKS
context (:func:`new_backend`) and seals its *secret* context (:func:`secret_context`: parameters,
public and secret key) to every other client ``c`` of the roster the server relays (names and X25519
public keys: the CURVE keys the server authenticated them with; generated pairs in the in-memory
simulation), by hybrid sealing built from :func:`fedrec.crypto.sealed.seal` only
(:func:`seal_secret_context`): the context is sealed once to a fresh envelope key pair ``E`` (context
``("fedrec/fedmf/secret-context", run id, SHA-256(public context))``), and ``E``'s secret to each
``c`` (context ``(..., run id, c, SHA-256(public context), SHA-256(sealed context))``). The server
relays the boxes and keeps only the public context: it can encrypt and add, never decrypt (its backend
has no secret key; tested). ``c`` opens its box only with its secret key, for this run, this recipient,
this public context and this sealed context (:func:`open_secret_context`), and the opened context must
produce exactly the public context the server announced. What sealing does not give: authentication
of the roster. A server that substitutes its own key for a client's in the roster gets that client's
box (the victim refuses the roster, but too late); clients that know the roster out of band pin it
(``roster_sha256``, :func:`roster_digest`), which the key holder checks before sealing anything.

Wire form of a ciphertext (:func:`encrypt_for_wire`, :func:`read_ciphertext`). CKKS ciphertexts travel
and are stored at the **last level** of the modulus chain (n8192: primes of 60 + 43 bits instead of
60 + 43 + 55): the protocol never multiplies a ciphertext, so the last level is enough (the room left
there is ``2^46``, :meth:`CKKSBackend.max_plain_magnitude`, far above ``model_bound`` and the masks).
Every encryption here is a key holder's (a client's), so it is made directly at that level
(:meth:`CryptoBackend.encrypt_at`: symmetric, two primes, and sent in SEAL's seeded form: ``c0`` and a
seed instead of ``c1``): 0.85 MB instead of 2.55 MB (level 0) or 1.69 MB (mod-switched, as before)
for the ML-100K model of 1682 × 17 values. Sums the server forms are full ciphertexts (a sum of seeded
ciphertexts has no seed). The plain backend keeps level 0.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedrec.crypto.backend import (
    CryptoBackend,
    CryptoError,
    EncryptedVector,
    KeyPin,
    load_public,
    make_backend,
)
from fedrec.protocols.fedmf.config import FedMFConfig

__all__ = ["encrypt_for_wire", "new_backend", "open_secret_context", "read_ciphertext", "roster_digest",
           "seal_secret_context", "secret_context", "wire_level"]

logger = logging.getLogger(__name__)

_SECRET_TAG = b"fedmf-sk"


def new_backend(config: FedMFConfig) -> CryptoBackend:
    """A fresh key-holder backend of the configured kind."""
    if config.backend == "ckks":
        return make_backend("ckks", preset=config.ckks_preset)
    return make_backend("plain")


def secret_context(backend: CryptoBackend) -> bytes:
    """The key holder's whole context (parameters, public key, **secret key**): only ever sealed."""
    if not backend.has_secret_key:
        raise CryptoError("secret_context: this backend holds no secret key")
    if backend.name == "plain":
        return _SECRET_TAG + backend.public_bytes()
    from fedrec.crypto.ckks import CKKSBackend

    assert isinstance(backend, CKKSBackend)
    body = backend.ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                 save_relin_keys=False)
    return _SECRET_TAG + backend.public_bytes()[:25] + body


def load_secret_context(data: bytes, public_sha256: str, config: FedMFConfig,
                        cache: dict[str, CryptoBackend] | None = None) -> CryptoBackend:
    """A backend with the secret key from :func:`secret_context` bytes; it must be of the configured
    kind and preset and produce exactly the public context whose SHA-256 is ``public_sha256``.

    ``cache`` (in-process simulations only, where every client is in one process and holds the same
    key anyway): contexts already loaded, by the SHA-256 of ``data``, shared instead of loaded again
    (a TenSEAL context with its keys and tables is megabytes; a thousand of them would not fit)."""
    key = hashlib.sha256(data).hexdigest()
    if cache is not None and key in cache:
        return cache[key]
    backend = _load_secret_context(data, public_sha256, config)
    if cache is not None:
        cache[key] = backend
    return backend


def _load_secret_context(data: bytes, public_sha256: str, config: FedMFConfig) -> CryptoBackend:
    if not data.startswith(_SECRET_TAG):
        raise CryptoError("secret context: missing the fedmf header")
    data = data[len(_SECRET_TAG):]
    backend: CryptoBackend
    if config.backend == "plain":
        backend = load_public(data, KeyPin(public_sha256, peer="key holder"))
    else:
        import tenseal as ts

        from fedrec.crypto.ckks import PRESETS, CKKSBackend

        name = data[8:24].rstrip(b"\0").decode("ascii", "replace")
        if data[:8].rstrip(b"\0") != b"ckks" or name != config.ckks_preset or len(data) < 26 or data[24] != 0:
            raise CryptoError(f"secret context: expected a CKKS {config.ckks_preset} context without "
                              f"rotations, got header {data[:25]!r}")
        try:
            ctx = ts.context_from(data[25:])
        except Exception as exc:
            raise CryptoError(f"secret context: TenSEAL refused it: {exc}") from exc
        if not ctx.is_private():
            raise CryptoError("secret context: no secret key in it")
        backend = CKKSBackend(ctx, PRESETS[name], False)
    digest = hashlib.sha256(backend.public_bytes()).hexdigest()
    if digest != public_sha256:
        raise CryptoError(f"secret context: its public part has sha256 {digest[:16]}..., the server "
                          f"announced {public_sha256[:16]}...; refusing a key that does not match")
    if backend.name != config.backend:
        raise CryptoError(f"secret context: backend {backend.name!r}, config says {config.backend!r}")
    return backend


def _context_box(run_id: str, public_sha256: str) -> bytes:
    from fedrec.crypto.sealed import context_bytes

    return context_bytes("fedrec/fedmf/secret-context", run_id, public_sha256)


def _key_box(run_id: str, recipient: str, public_sha256: str, sealed_context: bytes) -> bytes:
    from fedrec.crypto.sealed import context_bytes

    return context_bytes("fedrec/fedmf/envelope-key", run_id, recipient, public_sha256,
                         hashlib.sha256(sealed_context).hexdigest())


def seal_secret_context(secret: bytes, recipients: Sequence[tuple[str, bytes]], *, run_id: str,
                        public_sha256: str) -> tuple[bytes, list[bytes]]:
    """``(sealed context, one sealed envelope key per recipient)``: the secret context sealed ONCE to a
    fresh envelope key pair ``E``, and ``E``'s 32-byte secret sealed to each recipient for this run,
    this recipient, this public context and this sealed context. One large box and ``n`` boxes of
    112 bytes instead of ``n`` copies of the context (0.75 MB each for n8192: 700 MB for 943 clients)."""
    from fedrec.crypto.sealed import X25519Keys, seal

    envelope = X25519Keys.generate()
    sealed_context = seal(envelope.public, secret, context=_context_box(run_id, public_sha256))
    keys = [seal(pk, envelope.secret, context=_key_box(run_id, name, public_sha256, sealed_context))
            for name, pk in recipients]
    return sealed_context, keys


def open_secret_context(sealed_context: bytes, sealed_key: bytes, secret_key: bytes, public_key: bytes, *,
                        run_id: str, me: str, public_sha256: str) -> bytes:
    """The secret context from :func:`seal_secret_context`'s boxes addressed to ``me`` (``CryptoError``
    if anything was sealed to another key, run, recipient, public context or sealed context)."""
    from fedrec.crypto.sealed import open_sealed
    from fedrec.crypto.sealed import public_key as x25519_public

    env = open_sealed(secret_key, public_key, sealed_key,
                      context=_key_box(run_id, me, public_sha256, sealed_context))
    return open_sealed(env, x25519_public(env), sealed_context, context=_context_box(run_id, public_sha256))


def roster_digest(names: Sequence[str], public_keys: Sequence[bytes]) -> str:
    """SHA-256 of the roster ``name NUL hex(key) LF`` per client, in the given order."""
    h = hashlib.sha256()
    for name, key in zip(names, public_keys, strict=True):
        h.update(name.encode() + b"\0" + bytes(key).hex().encode() + b"\n")
    return h.hexdigest()


def wire_level(backend: CryptoBackend) -> int:
    """The level every ciphertext of the protocol lives at (CKKS: the last one; plain: 0)."""
    return backend.max_level if backend.name == "ckks" else 0


def encrypt_for_wire(backend: CryptoBackend, values: npt.ArrayLike) -> bytes:
    """``values`` encrypted directly at the wire level (:meth:`CryptoBackend.encrypt_at`), serialized: a
    client's CKKS upload is a symmetric encryption in SEAL's seeded form (half the bytes)."""
    return backend.serialize(backend.encrypt_at(np.asarray(values, dtype=np.float64), wire_level(backend)))


def read_ciphertext(backend: CryptoBackend, blob: bytes, size: int) -> EncryptedVector:
    """Validate and load a ciphertext of ``size`` values at the wire level (``CryptoError`` otherwise)."""
    return backend.deserialize(blob, size, wire_level(backend))
