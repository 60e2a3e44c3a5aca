"""CKKS batches over an :class:`~fedrec.compute.executor.Executor`: encryption, homomorphic products
(``Σ_t ct_t ⊙ p_t``, :meth:`~fedrec.crypto.ckks.CKKSBackend.dot_plain`) and decryption of many vectors.

TenSEAL objects cannot be pickled, so a task gets the context and the ciphertexts as bytes
(:meth:`~fedrec.crypto.ckks.CKKSBackend.public_bytes`, :meth:`~fedrec.crypto.ckks.CKKSBackend.serialize`)
and returns bytes, which the caller loads through :meth:`~fedrec.crypto.ckks.CKKSBackend.deserialize`
(the same checks as a peer's ciphertext). A worker loads a context once and keeps it (keyed by its
SHA-256) for the next tasks. Each task carries :data:`BATCH` (32) vectors or more: one CKKS operation
costs 1-3 ms, a Ray task ~0.5 ms plus the (de)serialization of its ciphertexts.

Decryption needs the secret key in the workers: :func:`decrypt_many` ships the secret context to the
party's **own** workers (through Ray's object store, or the pool's pipes). On a multi-node Ray
cluster that crosses the party's network: run it inside one trust domain, with Ray's TLS
(``RAY_USE_TLS=1``) between nodes. Encryption and products need only the public context.

Results equal the serial path's: encryption is randomized (equal in distribution, decrypting within
the preset's error bound), products and decryption are deterministic functions of their inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.compute.executor import Executor, LocalExecutor
from fedrec.crypto.backend import EncryptedVector
from fedrec.crypto.ckks import CKKSBackend, CKKSCiphertext

#: vectors per task (the amortization threshold measured for Ray: ~0.5 ms per task vs 1-3 ms per op)
BATCH = 32

_CONTEXTS: dict[str, CKKSBackend] = {}


def secret_bytes(backend: CKKSBackend) -> bytes:
    """The context with its secret key, for the party's own workers (see the module docstring)."""
    if not backend.has_secret_key:
        raise ValueError("decrypt_many: this CKKS context holds no secret key")
    body = backend.ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                 save_relin_keys=False)
    return backend.preset.name.encode().ljust(16, b"\0") + body


def _context(data: bytes) -> CKKSBackend:
    """A worker's backend for a public (:meth:`CKKSBackend.public_bytes`) or secret (:func:`secret_bytes`)
    context, loaded once per worker process."""
    key = hashlib.sha256(data).hexdigest()
    backend = _CONTEXTS.get(key)
    if backend is None:
        if data[:8].rstrip(b"\0") == b"ckks":
            backend = CKKSBackend.from_public_bytes(data)
        else:
            import tenseal as ts

            from fedrec.crypto.ckks import PRESETS

            preset = PRESETS[data[:16].rstrip(b"\0").decode()]
            backend = CKKSBackend(ts.context_from(data[16:]), preset, False)
        if len(_CONTEXTS) >= 2:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = backend
    return backend


# -------------------------------------------------------------------------------------------- tasks
def _encrypt_task(context: bytes, rows: np.ndarray) -> list[bytes]:
    be = _context(context)
    return [be.serialize(be.encrypt(r)) for r in rows]


def _dot_task(context: bytes, item: tuple[list[list[bytes]], np.ndarray, int, int]) -> list[bytes]:
    groups, plains, size, level = item
    be = _context(context)
    return [be.serialize(be.dot_plain([be.deserialize(b, size, level) for b in g], list(p)))
            for g, p in zip(groups, plains, strict=True)]


def _decrypt_task(context: bytes, item: tuple[list[bytes], int, int, float | None]) -> np.ndarray:
    blobs, size, level, bound = item
    be = _context(context)
    return np.stack([be.decrypt(be.deserialize(b, size, level), bound) for b in blobs])


# -------------------------------------------------------------------------------------------- driver side
def _ckks(backend: Any, op: str) -> CKKSBackend:
    if not isinstance(backend, CKKSBackend):
        raise TypeError(f"{op}: expected a CKKSBackend, got {type(backend).__name__}")
    return backend


def encrypt_many(backend: CKKSBackend, rows: npt.ArrayLike, executor: Executor | None = None, *,
                 batch: int = BATCH, as_bytes: bool = False) -> list[Any]:
    """``[backend.encrypt(r) for r in rows]`` (``rows``: ``(n, size)``), ``batch`` rows per task.

    ``as_bytes=True``: the serialized ciphertexts (what goes on the wire), not loaded by the driver.
    Loading a ciphertext costs about as much as encrypting it (measured: benchmarks/ray_scaling.py),
    so a driver that only forwards ciphertexts to a peer should take the bytes: it stays off the
    critical path and the speed-up is the workers'."""
    be = _ckks(backend, "encrypt_many")
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"encrypt_many: rows must be 2-D (n, size), got shape {arr.shape}")
    ex = executor or LocalExecutor()
    if ex.engine == "local":
        cts = [be.encrypt(r) for r in arr]
        return [be.serialize(c) for c in cts] if as_bytes else cts
    items = [arr[i:i + batch] for i in range(0, len(arr), batch)]
    out = ex.map(_encrypt_task, items, shared=be.public_bytes())
    if as_bytes:
        return [b for part in out for b in part]
    return [be.deserialize(b, arr.shape[1], 0) for part in out for b in part]


def dot_many(backend: CKKSBackend, groups: Sequence[Sequence[EncryptedVector]], plains: npt.ArrayLike,
             executor: Executor | None = None, *, batch: int = BATCH, as_bytes: bool = False) -> list[Any]:
    """``[backend.dot_plain(g, p) for g, p in zip(groups, plains)]``: ``groups[j]`` are ``T`` ciphertexts
    (same size and level), ``plains[j]`` a ``(T, size)`` array; ``batch`` groups per task.
    ``as_bytes``: the serialized results (see :func:`encrypt_many`)."""
    be = _ckks(backend, "dot_many")
    ps = np.asarray(plains, dtype=np.float64)
    if ps.ndim != 3 or ps.shape[0] != len(groups):
        raise ValueError(f"dot_many: plains must be (n_groups={len(groups)}, T, size), got shape {ps.shape}")
    ex = executor or LocalExecutor()
    if ex.engine == "local" or not groups:
        res = [be.dot_plain(list(g), list(p)) for g, p in zip(groups, ps, strict=True)]
        return [be.serialize(c) for c in res] if as_bytes else res
    first = groups[0][0]
    assert isinstance(first, CKKSCiphertext)
    size, level = first.size, first.level
    ser = [[be.serialize(c) for c in g] for g in groups]
    items = [(list(ser[i:i + batch]), ps[i:i + batch], size, level) for i in range(0, len(ser), batch)]
    out = ex.map(_dot_task, items, shared=be.public_bytes())
    if as_bytes:
        return [b for part in out for b in part]
    return [be.deserialize(b, size, level + 1) for part in out for b in part]


def decrypt_many(backend: CKKSBackend, cts: Sequence[EncryptedVector], executor: Executor | None = None, *,
                 bound: float | None = None, batch: int = BATCH) -> np.ndarray:
    """``np.stack([backend.decrypt(c, bound) for c in cts])`` (same size and level); ``batch`` per task.
    Ships the secret context to the workers (module docstring)."""
    be = _ckks(backend, "decrypt_many")
    ex = executor or LocalExecutor()
    if ex.engine == "local" or not cts:
        return np.stack([be.decrypt(c, bound) for c in cts]) if cts else np.zeros((0, 0))
    first = cts[0]
    assert isinstance(first, CKKSCiphertext)
    size, level = first.size, first.level
    ser = [be.serialize(c) for c in cts]
    items = [(ser[i:i + batch], size, level, bound) for i in range(0, len(ser), batch)]
    return np.concatenate(ex.map(_decrypt_task, items, shared=secret_bytes(be)))
