"""The AVX-512 IFMA backend of X25519 for ECDH-PSI: 8 points per instruction, one scalar for all.

``x25519_ifma.c`` (beside this file) computes exactly RFC 7748's ``X25519(k, u)`` for a whole batch (and
``X25519(k, elligator2(r))`` for the hash-to-curve step of :mod:`fedrec.psi.curve25519`), about 4x the
scalar multiplications per CPU second of libsodium's ``crypto_scalarmult_curve25519`` on this project's
machines (``benchmarks/psi.py``). The outputs are bit-identical to libsodium's, so the group, the wire
format and the protocol do not change: a party on this backend runs PSI with a party on libsodium
(``tests/test_psi_ifma.py`` checks both, and the known-answer vectors of RFC 7748).

It is optional. :func:`load` compiles the C file with the system C compiler on first use (about 2 s) into a
private cache folder and loads it with ``ctypes``; it returns ``None`` (and the engine falls back to
libsodium, with identical results) when the processor lacks AVX-512 IFMA, when no compiler is found,
when the build fails, when the built library fails its self-test against RFC 7748 and libsodium, or when
``FEDREC_PSI_BACKEND=sodium`` is set. Nothing is built at install time and no new dependency is needed.

Cache folder: ``$FEDREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedrec``, else ``~/.cache/fedrec``; it must
belong to this user and not be writable by others (a shared library is loaded from it), otherwise a
fresh private temporary folder is used for this process. The file name carries a hash of the source,
the flags and the compiler, so a changed source is rebuilt; the build writes a temporary file and
renames it into place, so concurrent first uses (two PSI parties on one machine) are safe.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("x25519_ifma.c")
CFLAGS = ("-O3", "-shared", "-fPIC", "-fvisibility=default")
BACKEND_ENV = "FEDREC_PSI_BACKEND"
BACKENDS = ("auto", "ifma", "sodium")
BUILD_TIMEOUT = 120.0
# RFC 7748, section 5.2: the two single-multiplication test vectors (scalar, u, X25519(scalar, u))
RFC7748_VECTORS = (
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
)


class BackendUnavailableError(RuntimeError):
    """``backend="ifma"`` was asked for but cannot be used here (the message says why)."""


@dataclass(frozen=True)
class IfmaLib:
    """The loaded library: ``batch(out, k, points, n)`` and ``hash_batch(out, k, digests, n)`` return ``n``
    when every output is non-zero, else the index of the first zero (small-order) output."""

    path: str
    batch: Any
    hash_batch: Any
    elligator2: Any


def _cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("FEDREC_CACHE_DIR"):
        dirs.append(Path(os.environ["FEDREC_CACHE_DIR"]))
    if os.environ.get("XDG_CACHE_HOME"):
        dirs.append(Path(os.environ["XDG_CACHE_HOME"]) / "fedrec")
    dirs.append(Path.home() / ".cache" / "fedrec")
    return dirs


def _private_dir(path: Path) -> bool:
    """Create ``path`` (0700) if needed; True when it is ours and not writable by group or others."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return False
    private = st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return private and os.access(path, os.W_OK)


def _compiler() -> str | None:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str, out: Path) -> None:
    """Compile ``SOURCE`` to ``out`` atomically (a temporary file in the same folder, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise OSError(f"{cc} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        os.chmod(tmp, 0o700)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _library_path() -> Path:
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler found (looked for $CC, cc, gcc, clang)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout.splitlines()[:1]
    key = hashlib.sha256(SOURCE.read_bytes() + repr((CFLAGS, cc, version)).encode()).hexdigest()[:16]
    name = f"x25519_ifma-{key}.so"
    folder = next((d for d in _cache_dirs() if _private_dir(d)), None)
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="fedrec-ifma-"))
    path = folder / name
    if not path.is_file():
        log.info("building the X25519 IFMA backend: %s -> %s", SOURCE.name, path)
        _build(cc, path)
    return path


def _self_test(lib: IfmaLib) -> None:
    """RFC 7748 vectors, and a batch of 20 random points (with a small-order one) against libsodium."""
    for k_hex, u_hex, want in RFC7748_VECTORS:
        out = ctypes.create_string_buffer(32)
        if lib.batch(out, bytes.fromhex(k_hex), bytes.fromhex(u_hex), 1) != 1 or out.raw.hex() != want:
            raise OSError(f"the built library fails RFC 7748's vector for u={u_hex[:16]}...")
    from fedrec.psi.curve25519 import _x25519

    sodium = _x25519().scalarmult
    k = os.urandom(32)
    points = [os.urandom(31) + bytes([b & 0x7F]) for b in os.urandom(19)] + [bytes(32)]
    out = ctypes.create_string_buffer(32 * len(points))
    if lib.batch(out, k, b"".join(points), len(points)) != len(points) - 1:
        raise OSError("the built library does not report the small-order point of its self-test")
    for i, u in enumerate(points[:-1]):
        ref = ctypes.create_string_buffer(32)
        if sodium(ref, k, u) != 0 or ref.raw != out.raw[32 * i:32 * i + 32]:
            raise OSError("the built library disagrees with libsodium on a random point")


@lru_cache(maxsize=1)
def _load() -> IfmaLib | str:
    """The library, or why it cannot be used (a string)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or os.name != "posix":
        return f"AVX-512 IFMA needs an x86-64 POSIX system, this is {platform.system()} {platform.machine()}"
    try:
        path = _library_path()
        cdll = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as err:
        return f"could not build or load {SOURCE.name}: {err}"
    if not cdll.fedrec_x25519_ifma_supported():
        return "this processor has no AVX-512 IFMA (avx512f, avx512dq and avx512ifma are needed)"
    vp, size = ctypes.c_void_p, ctypes.c_size_t
    for fn in (cdll.fedrec_x25519_ifma_batch, cdll.fedrec_x25519_ifma_hash_batch):
        fn.argtypes = [vp, vp, vp, size]
        fn.restype = ctypes.c_longlong
    cdll.fedrec_elligator2_ifma.argtypes = [vp, vp, size]
    cdll.fedrec_elligator2_ifma.restype = None
    lib = IfmaLib(str(path), cdll.fedrec_x25519_ifma_batch, cdll.fedrec_x25519_ifma_hash_batch,
                  cdll.fedrec_elligator2_ifma)
    try:
        _self_test(lib)
    except OSError as err:
        return str(err)
    return lib


def load() -> IfmaLib | None:
    """The IFMA library, or None when it cannot be used here (:func:`unavailable_reason` says why)."""
    lib = _load()
    return lib if isinstance(lib, IfmaLib) else None


def unavailable_reason() -> str | None:
    lib = _load()
    return lib if isinstance(lib, str) else None


def resolve_backend(curve: str, backend: str | None = None) -> str:
    """The X25519 backend an engine of ``curve`` uses: ``backend`` (default ``$FEDREC_PSI_BACKEND``, else
    ``"auto"``); ``auto`` is ``ifma`` where it works and ``sodium`` elsewhere. ristretto255 is always
    ``sodium``. Raises :class:`BackendUnavailableError` for an explicit ``ifma`` that cannot be used."""
    chosen = backend or os.environ.get(BACKEND_ENV) or "auto"
    if chosen not in BACKENDS:
        where = f"${BACKEND_ENV}" if not backend else "backend"
        raise ValueError(f"{where} must be one of {BACKENDS}, got {chosen!r}")
    if curve != "x25519":
        if chosen == "ifma":
            raise BackendUnavailableError(f"the ifma backend implements x25519 only, not {curve}")
        return "sodium"
    if chosen == "sodium":
        return "sodium"
    reason = unavailable_reason()
    if reason is None:
        return "ifma"
    if chosen == "ifma":
        raise BackendUnavailableError(f"X25519 backend 'ifma' unavailable: {reason}")
    log.info("X25519 backend: libsodium (%s)", reason)
    return "sodium"
