"""Batched ristretto255 operations for ECDH-PSI, over the libsodium that ``rbcl`` bundles.

:mod:`fedrec.psi.curve25519` has the same primitives on X25519 u-coordinates (``curve="x25519"``, about
twice as fast, and the default since ristretto255 cannot do 1M x 1M in 2 minutes on 2 cores even with zero
overhead: ``benchmarks/psi.py``). :class:`Engine` runs either one.

The group is ristretto255 (prime order ``L = 2^252 + 27742317777372353535851937790883648493``), so every
valid non-identity element generates the whole group and scalar multiplication commutes:
``(P^a)^b = (P^b)^a = P^(ab)``. Three primitives are used:

* hash to group: ``H(x) = from_hash(SHA-512(domain || x))`` where ``domain`` is a fixed-length
  per-session tag (:func:`session_domain`), so ``H`` is injective on id bytes and unrelated across sessions;
* blinding: ``P -> P^k`` with ``crypto_scalarmult_ristretto255``; libsodium returns -1 when ``P`` is not a
  canonical encoding of a group element or when the result is the identity, which for a non-zero scalar
  happens exactly when ``P`` is the identity. Both are reported as :class:`InvalidPointError`;
* validation of points that are only compared, never multiplied: canonical encoding
  (``crypto_core_ristretto255_is_valid_point``) and not the identity (the all-zero encoding).

The cost is the scalar multiplication (~50-80 us on one core of the development machine, see
``benchmarks/psi.py``), so the Python overhead per point is kept to one ctypes call on a preallocated
buffer. ctypes releases the GIL during the call, so a thread pool (:class:`Engine`) scales over cores
without processes, pickling or copies. rbcl's own wrappers allocate and validate per call; we load the same
shared object through a second ``ctypes.CDLL`` handle with explicit ``argtypes`` instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

POINT_BYTES = 32
SCALAR_BYTES = 32
HASH_BYTES = 64
SALT_BYTES = 32
DOMAIN_PREFIX = b"fedrec/psi/v1/ristretto255/sha512\x00"
CURVES = ("ristretto255", "x25519")
DEFAULT_CURVE = "x25519"  # of the engine, the protocol and the CLI (see benchmarks/psi.py)
MIN_BATCH = 1024  # below this, splitting a chunk over threads costs more than it saves


class InvalidPointError(ValueError):
    """A received point is not a canonical encoding, or is the identity (or of small order, for X25519)."""

    def __init__(self, index: int, what: str = "point") -> None:
        super().__init__(f"{what} {index} is not a canonical encoding of a valid non-identity point")
        self.index = index
        self.what = what


def _check_curve(curve: str) -> str:
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    return curve


@dataclass(frozen=True)
class _Sodium:
    lib: ctypes.CDLL
    from_hash: Callable[..., int]
    scalarmult: Callable[..., int]
    is_valid_point: Callable[..., int]
    scalar_random: Callable[..., None]


@lru_cache(maxsize=1)
def _sodium() -> _Sodium:
    import rbcl  # noqa: F401  (importing rbcl runs sodium_init())
    from rbcl._sodium import _sodium as rbcl_handle

    lib = ctypes.CDLL(rbcl_handle._name)
    # rbcl writes its bundled libsodium to a fresh temp file at every import and never removes it
    # (2.8 MB per process). The library is mapped now, so the file can go.
    if os.path.basename(rbcl_handle._name).startswith("tmp") and os.path.dirname(rbcl_handle._name) == \
            tempfile.gettempdir():
        try:
            os.unlink(rbcl_handle._name)
        except OSError as err:  # pragma: no cover - already gone or not ours to remove
            log.debug("could not remove rbcl's temporary libsodium copy %s: %s", rbcl_handle._name, err)
    vp = ctypes.c_void_p
    lib.crypto_core_ristretto255_from_hash.argtypes = [vp, vp]
    lib.crypto_core_ristretto255_from_hash.restype = ctypes.c_int
    lib.crypto_scalarmult_ristretto255.argtypes = [vp, vp, vp]
    lib.crypto_scalarmult_ristretto255.restype = ctypes.c_int
    lib.crypto_core_ristretto255_is_valid_point.argtypes = [vp]
    lib.crypto_core_ristretto255_is_valid_point.restype = ctypes.c_int
    lib.crypto_core_ristretto255_scalar_random.argtypes = [vp]
    lib.crypto_core_ristretto255_scalar_random.restype = None
    return _Sodium(
        lib=lib,
        from_hash=lib.crypto_core_ristretto255_from_hash,
        scalarmult=lib.crypto_scalarmult_ristretto255,
        is_valid_point=lib.crypto_core_ristretto255_is_valid_point,
        scalar_random=lib.crypto_core_ristretto255_scalar_random,
    )


class SecretScalar:
    """A fresh secret scalar for ``curve``, kept in a ctypes buffer that :meth:`wipe` zeroes.

    ristretto255: uniformly random and non-zero mod ``L``. x25519: 32 random bytes that libsodium clamps
    at every use. The value is never exposed as ``bytes`` by the public API and ``repr`` hides it.
    """

    def __init__(self, curve: str = "ristretto255") -> None:
        self.curve = _check_curve(curve)
        self._buf = ctypes.create_string_buffer(SCALAR_BYTES)
        self.address = ctypes.addressof(self._buf)
        if curve == "x25519":
            from fedrec.psi.curve25519 import random_secret

            random_secret(self.address)  # clamping makes every value a valid non-zero scalar
            return
        sodium = _sodium()
        while True:  # scalar_random returns a value in [0, L); zero has probability 2^-252
            sodium.scalar_random(self.address)
            if any(self._buf.raw):
                break

    def wipe(self) -> None:
        ctypes.memset(self._buf, 0, SCALAR_BYTES)

    def __repr__(self) -> str:
        return "SecretScalar(<hidden>)"


def session_domain(salt: bytes, curve: str = "ristretto255") -> bytes:
    """Fixed-length hash-to-group domain for one session: ``prefix(curve) || salt`` (salt is 32 bytes)."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"session salt must be {SALT_BYTES} bytes, got {len(salt)}")
    if _check_curve(curve) == "x25519":
        from fedrec.psi.curve25519 import DOMAIN_PREFIX as X25519_PREFIX

        return X25519_PREFIX + salt
    return DOMAIN_PREFIX + salt


def _ptr(arr: np.ndarray) -> int:
    return int(arr.ctypes.data)


def _points_view(points: np.ndarray, what: str) -> np.ndarray:
    if points.dtype != np.uint8 or points.ndim != 2 or points.shape[1] != POINT_BYTES:
        raise ValueError(f"{what}: expected a uint8 array of shape (n, {POINT_BYTES}), got "
                         f"{points.dtype} {points.shape}")
    return np.ascontiguousarray(points)


def hash_and_blind_into(out: np.ndarray, ids: Sequence[bytes], domain: bytes, scalar: SecretScalar) -> None:
    """``out[i] = H(ids[i])^k``; ``out`` is a preallocated ``(len(ids), 32)`` uint8 C-contiguous array."""
    n = len(ids)
    if out.shape != (n, POINT_BYTES) or not out.flags.c_contiguous:
        raise ValueError(f"output buffer must be C-contiguous of shape ({n}, {POINT_BYTES})")
    digests = np.frombuffer(b"".join([hashlib.sha512(domain + x).digest() for x in ids]), dtype=np.uint8)
    tmp = np.empty(POINT_BYTES, dtype=np.uint8)
    sodium = _sodium()
    from_hash, mult = sodium.from_hash, sodium.scalarmult
    t, k, o, h = _ptr(tmp), scalar.address, _ptr(out), _ptr(digests) if n else 0
    for i in range(n):
        from_hash(t, h + HASH_BYTES * i)
        if mult(o + POINT_BYTES * i, k, t) != 0:  # impossible for from_hash output; never ignore it
            raise InvalidPointError(i, "hashed id")


def blind_into(out: np.ndarray, points: np.ndarray, scalar: SecretScalar) -> None:
    """``out[i] = points[i]^k``; raises :class:`InvalidPointError` at the first invalid or identity input."""
    n = len(points)
    if out.shape != (n, POINT_BYTES) or not out.flags.c_contiguous or not points.flags.c_contiguous:
        raise ValueError(f"buffers must be C-contiguous of shape ({n}, {POINT_BYTES})")
    mult = _sodium().scalarmult
    k, o, p = scalar.address, _ptr(out), _ptr(points)
    for i in range(0, POINT_BYTES * n, POINT_BYTES):
        if mult(o + i, k, p + i) != 0:
            raise InvalidPointError(i // POINT_BYTES)


def check_points(points: np.ndarray) -> None:
    """Raise :class:`InvalidPointError` at the first non-canonical or identity encoding in ``points``."""
    points = _points_view(points, "check_points")
    zero = ~points.any(axis=1)
    if zero.any():
        raise InvalidPointError(int(np.argmax(zero)))
    valid = _sodium().is_valid_point
    p = _ptr(points)
    for i in range(0, POINT_BYTES * len(points), POINT_BYTES):
        if valid(p + i) != 1:
            raise InvalidPointError(i // POINT_BYTES)


def default_workers() -> int:
    """Cores this process may use (``sched_getaffinity`` respects taskset/cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(eq=False)
class Job:
    """One chunk of work split into per-thread batches; ``result()`` is the output array once all are done."""

    out: np.ndarray
    futures: list[Future[None]] = field(default_factory=list)
    tag: tuple[str, int] = ("", 0)  # what the caller submitted it for, e.g. ("double", chunk index)

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self) -> np.ndarray:
        """The output array; re-raises the first failing batch's error (index within the whole chunk)."""
        for f in self.futures:
            f.result()
        return self.out


class Engine:
    """A thread pool that runs the three batched primitives of ``curve`` over chunks, split across
    ``workers`` threads.

    ``backend`` (x25519 only): ``"ifma"`` (AVX-512 IFMA, 8 points per instruction,
    :mod:`fedrec.psi.x25519_ifma`), ``"sodium"`` (libsodium, one point per call) or ``"auto"`` (ifma where
    it works); default ``$FEDREC_PSI_BACKEND``, else ``auto``. Both give the same bytes, so the peer's
    backend does not matter. :attr:`backend` is the one in use.

    Use as a context manager. Each ``submit_*`` returns a :class:`Job` at once; jobs run in submission order.
    Scalars passed to it must come from :meth:`new_scalar` (same curve).
    """

    def __init__(self, workers: int | None = None, curve: str = DEFAULT_CURVE,
                 backend: str | None = None) -> None:
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.curve = _check_curve(curve)
        _sodium()  # load before threads race for it
        from fedrec.psi.x25519_ifma import resolve_backend

        self.backend = resolve_backend(self.curve, backend)
        if curve == "x25519":
            from fedrec.psi import curve25519 as prims

            prims._x25519()
            if self.backend == "ifma":
                self._hash_blind, self._blind = prims.hash_and_blind_into_ifma, prims.blind_into_ifma
            else:
                self._hash_blind, self._blind = prims.hash_and_blind_into, prims.blind_into
            self._check = prims.check_points
        else:
            self._hash_blind, self._blind, self._check = hash_and_blind_into, blind_into, check_points
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="psi-blind")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, wait: bool = True) -> None:
        """Cancel the batches not started; ``wait``: until the running ones have ended."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def new_scalar(self) -> SecretScalar:
        return SecretScalar(self.curve)

    def domain(self, salt: bytes) -> bytes:
        return session_domain(salt, self.curve)

    def _scalar(self, scalar: SecretScalar) -> SecretScalar:
        if scalar.curve != self.curve:
            raise ValueError(f"a {scalar.curve} scalar cannot be used by a {self.curve} engine")
        return scalar

    def _split(self, n: int) -> list[tuple[int, int]]:
        parts = max(1, min(self.workers, n // MIN_BATCH))
        bounds = np.linspace(0, n, parts + 1).astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def submit_hash_blind(self, ids: Sequence[bytes], domain: bytes, scalar: SecretScalar,
                          tag: tuple[str, int] = ("", 0)) -> Job:
        job = Job(np.empty((len(ids), POINT_BYTES), dtype=np.uint8), tag=tag)
        scalar = self._scalar(scalar)
        for a, b in self._split(len(ids)):
            job.futures.append(self._pool.submit(_offset_errors(self._hash_blind, a), job.out[a:b], ids[a:b],
                                                 domain, scalar))
        return job

    def submit_blind(self, points: np.ndarray, scalar: SecretScalar, tag: tuple[str, int] = ("", 0)) -> Job:
        points = _points_view(points, "submit_blind")
        job = Job(np.empty_like(points), tag=tag)
        scalar = self._scalar(scalar)
        for a, b in self._split(len(points)):
            job.futures.append(self._pool.submit(_offset_errors(self._blind, a), job.out[a:b], points[a:b],
                                                 scalar))
        return job

    def submit_check(self, points: np.ndarray, tag: tuple[str, int] = ("", 0)) -> Job:
        points = _points_view(points, "submit_check")
        job = Job(points, tag=tag)
        for a, b in self._split(len(points)):
            job.futures.append(self._pool.submit(_offset_errors(self._check, a), points[a:b]))
        return job


def _offset_errors(fn: Callable[..., None], offset: int) -> Callable[..., None]:
    """Wrap ``fn`` so an :class:`InvalidPointError` reports its index within the whole chunk."""

    def run(*args: object) -> None:
        try:
            fn(*args)
        except InvalidPointError as err:
            raise InvalidPointError(err.index + offset, err.what) from None

    return run
