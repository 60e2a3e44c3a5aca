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

A peer's ciphertexts go to the workers as the bytes the wire layer parsed (never a pickled object of
the peer's): :func:`host_products_many` (the vertical FM host's ragged products, masks and
serialization), :func:`decrypt_blobs` (the guest's decryption of the host's answer) and
:func:`sum_blobs` (the FedMF server's sum of uploads) load them in the worker with
:meth:`~fedrec.crypto.ckks.CKKSBackend.deserialize`, the same checks as the serial path; a bad one is
the same :class:`~fedrec.crypto.backend.CryptoError` as there (re-raised in the driver), so the
protocol refuses it as it always did. The driver does not load ciphertexts it only forwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.compute.executor import Executor, ExecutorError, LocalExecutor, is_parallel
from fedrec.crypto.backend import CryptoBackend, CryptoError, EncryptedVector
from fedrec.crypto.ckks import CKKSBackend, CKKSCiphertext

#: vectors per task (the amortization threshold measured for Ray: ~0.5 ms per task vs 1-3 ms per op)
BATCH = 32

_CONTEXTS: dict[str, CKKSBackend] = {}

__all__ = ["BATCH", "decrypt_blobs", "decrypt_many", "dot_many", "encrypt_many", "encrypt_masks_many",
           "host_products_many", "is_parallel", "per_task", "ragged_products_many", "secret_bytes",
           "sum_blobs"]


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


def per_task(n: int, executor: Executor, minimum: int = 4, cap: int = BATCH) -> int:
    """Items per task for ``n`` items: enough tasks for every worker (two each, for balance), at least
    ``minimum`` items each (a task's fixed cost), at most ``cap`` (the driver's memory in flight)."""
    return max(1, min(cap, max(minimum, -(-n // (2 * max(executor.workers, 1))))))


def _crypto(exc: ExecutorError) -> BaseException:
    """The worker's :class:`CryptoError` behind ``exc`` (re-raised as the serial path raises it), else
    ``exc``."""
    cause = exc.__cause__
    return CryptoError(str(cause)) if isinstance(cause, CryptoError) else exc


def _map(ex: Executor, fn: Any, items: list[Any], shared: Any) -> list[Any]:
    try:
        return ex.map(fn, items, shared=shared)
    except ExecutorError as exc:
        err = _crypto(exc)
        if err is exc:
            raise
        raise err from exc


# -------------------------------------------------------------------------------------------- tasks
def _encrypt_task(context: bytes, rows: np.ndarray) -> list[bytes]:
    be = _context(context)
    return [be.serialize(be.encrypt(r)) for r in rows]


def _terms_of(terms: Any) -> list[list[tuple[int, Any]]]:
    """A task's terms: given, or ``(builder, args)``: built in the worker by ``builder(*args)`` (a
    module-level function of the party's own code; e.g. from sparse multipliers, far fewer bytes)."""
    if isinstance(terms, tuple):
        fn, args = terms
        return list(fn(*args))
    return list(terms)


def _host_task(context: bytes, item: tuple[dict[int, bytes], int, Any, list[Any], float]) -> list[bytes]:
    """One slice of the vertical FM host's results: the chunks it needs loaded with the serial path's
    checks (plus any chunk no result uses, so every chunk the peer sent is checked once), ragged products
    ``Σ_t chunk_t ⊙ p_t`` (one rescale each), the masks added (encrypted ahead: bytes at level 1; or drawn:
    arrays, encrypted here with fresh randomness), serialized."""
    chunks, size, terms, masks, pad_range = item
    be = _context(context)
    loaded = {t: be.deserialize(b, size, 0) for t, b in chunks.items()}
    out = []
    for res, mask in zip(_terms_of(terms), masks, strict=True):
        ct = be.dot_plain([loaded[t] for t, _ in res], [p for _, p in res])
        if isinstance(mask, bytes):
            ct = be.add(ct, be.deserialize(mask, size, 1))
        else:
            ct = be.add_mask(ct, mask, pad_range)
        out.append(be.serialize(ct))
    return out


def _mask_task(context: bytes, item: tuple[np.ndarray, float, int]) -> list[bytes]:
    masks, pad_range, level = item
    be = _context(context)
    return [be.serialize(be.encrypt_mask(m, pad_range, level)) for m in masks]


def _decrypt_blobs_task(context: bytes, item: tuple[list[bytes], int, int, float | None]) -> np.ndarray:
    blobs, size, level, bound = item
    be = _context(context)
    return np.stack([be.decrypt(be.deserialize(b, size, level), bound) for b in blobs])


def _sum_task(context: bytes, item: tuple[list[bytes], int, int]) -> tuple[bytes | None, dict[int, str]]:
    """The sum of the valid blobs of a slice (``None`` if none is) and why each other one was refused."""
    blobs, size, level = item
    be = _context(context)
    acc: Any = None
    bad: dict[int, str] = {}
    for i, b in enumerate(blobs):
        try:
            ct = be.deserialize(b, size, level)
        except CryptoError as exc:
            bad[i] = str(exc)
            continue
        acc = ct if acc is None else be.add(acc, ct)
    return (None if acc is None else be.serialize(acc)), bad


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


def encrypt_many(backend: CryptoBackend, rows: npt.ArrayLike, executor: Executor | None = None, *,
                 batch: int = BATCH, as_bytes: bool = False, secret: bool = False) -> list[Any]:
    """``[backend.encrypt(r) for r in rows]`` (``rows``: ``(n, size)``), ``batch`` rows per task.

    ``as_bytes=True``: the serialized ciphertexts (what goes on the wire), not loaded by the driver.
    Loading a ciphertext costs about as much as encrypting it (measured: benchmarks/ray_scaling.py),
    so a driver that only forwards ciphertexts to a peer should take the bytes: it stays off the
    critical path and the speed-up is the workers'.

    ``secret=True`` (a key holder): the workers encrypt with the secret key, as ``backend.encrypt`` of a
    key holder does (symmetric, SEAL's seeded form: half the bytes on the wire); ships the secret
    context to the party's own workers (module docstring). Default: the public context (public-key
    encryptions, full size)."""
    be = _ckks(backend, "encrypt_many")
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"encrypt_many: rows must be 2-D (n, size), got shape {arr.shape}")
    ex = executor or LocalExecutor()
    if ex.engine == "local":
        cts = [be.encrypt(r) for r in arr]
        return [be.serialize(c) for c in cts] if as_bytes else cts
    items = [arr[i:i + batch] for i in range(0, len(arr), batch)]
    out = ex.map(_encrypt_task, items, shared=secret_bytes(be) if secret else be.public_bytes())
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


def decrypt_blobs(backend: CryptoBackend, blobs: Sequence[bytes], size: int, level: int,
                  executor: Executor | None = None, *, bound: float | None = None,
                  batch: int | None = None) -> np.ndarray:
    """``np.stack([backend.decrypt(backend.deserialize(b, size, level), bound) for b in blobs])``: a
    peer's serialized ciphertexts loaded (the serial path's checks; a bad one raises its
    :class:`CryptoError`) and decrypted in the workers. Ships the secret context (module docstring)."""
    be = _ckks(backend, "decrypt_blobs")
    ex = executor or LocalExecutor()
    if not blobs:
        return np.zeros((0, size))
    if ex.engine == "local":
        return np.stack([be.decrypt(be.deserialize(b, size, level), bound) for b in blobs])
    step = batch or per_task(len(blobs), ex)
    items = [(list(blobs[i:i + step]), size, level, bound) for i in range(0, len(blobs), step)]
    return np.concatenate(_map(ex, _decrypt_blobs_task, items, secret_bytes(be)))


def encrypt_masks_many(backend: CryptoBackend, masks: Sequence[np.ndarray], pad_range: float, level: int,
                       executor: Executor, *, batch: int | None = None) -> list[bytes]:
    """``[serialize(backend.encrypt_mask(m, pad_range, level)) for m in masks]`` on the workers (public
    context; fresh randomness in each worker)."""
    be = _ckks(backend, "encrypt_masks_many")
    if not masks:
        return []
    step = batch or per_task(len(masks), executor)
    items = [(np.stack(masks[i:i + step]), pad_range, level) for i in range(0, len(masks), step)]
    return [b for part in _map(executor, _mask_task, items, be.public_bytes()) for b in part]


def host_products_many(backend: CryptoBackend, chunks: Sequence[bytes], size: int,
                       terms: Sequence[Sequence[tuple[int, np.ndarray]]], masks: Sequence[Any],
                       executor: Executor, *, pad_range: float = 0.0, min_products: int = 32) -> list[bytes]:
    """The vertical FM host's results, serialized: for result ``r``,
    ``Σ_{(t, p) in terms[r]} chunk_t ⊙ p`` plus ``masks[r]`` (bytes: a mask encrypted ahead at level 1,
    :func:`encrypt_masks_many`; an array: added with :meth:`CKKSBackend.add_mask` and ``pad_range``).
    :func:`ragged_products_many` with the terms given (shipped to the workers as arrays)."""
    if len(masks) != len(terms):
        raise ValueError(f"host_products_many: {len(terms)} results but {len(masks)} masks")
    uses = [sorted({t for t, _ in r}) for r in terms]
    return ragged_products_many(backend, chunks, size, [len(r) for r in terms], uses,
                                lambda a, b: [list(r) for r in terms[a:b]], masks, executor,
                                pad_range=pad_range, min_products=min_products)


def ragged_products_many(backend: CryptoBackend, chunks: Sequence[bytes], size: int, counts: Sequence[int],
                         uses: Sequence[Sequence[int]], terms_of: Callable[[int, int], Any],
                         masks: Sequence[Any], executor: Executor, *, pad_range: float = 0.0,
                         min_products: int = 32) -> list[bytes]:
    """Ragged products of many results on the workers: result ``r`` has ``counts[r]`` terms using the
    chunks ``uses[r]``; ``terms_of(a, b)`` gives a task the terms of results ``a..b-1`` (a list, or
    ``(builder, args)`` the worker calls: :func:`_terms_of`); masks as :func:`host_products_many`.

    ``chunks`` are the peer's serialized level-0 ciphertexts of ``size`` slots, as the wire layer parsed
    them: every worker loads the ones its results use with the serial path's checks (each chunk is
    checked by some task, used or not), so the driver never loads them. Results are cut into
    consecutive slices of about equal numbers of products, at least ``min_products`` each, one slice per
    worker."""
    be = _ckks(backend, "ragged_products_many")
    n = len(counts)
    if len(masks) != n or len(uses) != n:
        raise ValueError(f"ragged_products_many: {n} results, {len(uses)} chunk lists, {len(masks)} masks")
    if not n:
        return []
    c = np.asarray(counts, dtype=np.int64)
    # one slice per worker: every slice loads the chunks its results use (most of them, as results span all
    # users), and loading a chunk costs about an encryption, so more slices than workers cost more loads
    n_tasks = int(max(1, min(n, max(executor.workers, 1), c.sum() // max(min_products, 1))))
    # consecutive slices with about equal products: cut the running total into n_tasks equal spans
    cuts = np.searchsorted(np.cumsum(c), c.sum() * np.arange(1, n_tasks) / n_tasks, side="left") + 1
    bounds = [0, *sorted({int(x) for x in cuts if 0 < x < n}), n]
    loads: list[dict[int, bytes]] = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        loads.append({t: chunks[t] for t in sorted({int(t) for u in uses[a:b] for t in u})})
    used = set().union(*loads)
    # a chunk no result uses is still the peer's: checked like the others (by the first task)
    loads[0].update({t: chunks[t] for t in range(len(chunks)) if t not in used})
    items = [(load, size, terms_of(a, b), list(masks[a:b]), pad_range)
             for load, a, b in zip(loads, bounds[:-1], bounds[1:], strict=True)]
    out = _map(executor, _host_task, items, be.public_bytes())
    return [b for part in out for b in part]


def sum_blobs(backend: CryptoBackend, blobs: Sequence[bytes], size: int, level: int, executor: Executor, *,
              batch: int | None = None) -> tuple[EncryptedVector | None, dict[int, str]]:
    """``Σ deserialize(b)`` over the valid ``blobs`` (a tree of one level: each task sums a slice and
    returns its sum as bytes; the driver adds the partial sums), and ``{index: why}`` for each blob the
    serial path's checks refuse. Ciphertext addition is exact (mod q), so the sum is the serial loop's,
    bit for bit, whatever the order. ``(None, ...)`` when no blob is valid."""
    be = _ckks(backend, "sum_blobs")
    if not blobs:
        return None, {}
    step = batch or per_task(len(blobs), executor)
    starts = list(range(0, len(blobs), step))
    items = [(list(blobs[s:s + step]), size, level) for s in starts]
    out = _map(executor, _sum_task, items, be.public_bytes())
    acc: Any = None
    bad: dict[int, str] = {}
    for s, (part, refused) in zip(starts, out, strict=True):
        bad.update({s + i: why for i, why in refused.items()})
        if part is not None:
            ct = be.deserialize(part, size, level)  # our own worker's bytes, still checked
            acc = ct if acc is None else be.add(acc, ct)
    return acc, bad
