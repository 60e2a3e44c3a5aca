"""One on-disk format for everything fedrec writes and reads back: models, serving bundles, the host's
half of a vertical model, and protocol checkpoints.

An artifact is a directory::

    arrays.npz      numeric arrays (``numpy.savez``; read with ``allow_pickle=False``: never unpickled)
    <meta>.json     {"format": NAME, "format_version": V, "arrays": {name: {"shape", "dtype"}},
                     "content_sha256": sha256(arrays.npz), ...the writer's own JSON fields}
    <extra>.json    optional further JSON documents written in the same step

Files are private at rest: every file fedrec writes through this module is created with mode 0600 and
every artifact directory with 0700 (models, host partials, aligned ids, checkpoints hold one party's
data or what it learned).

Writes are atomic: everything goes to a hidden sibling directory, each file is fsynced, then the
directory is renamed into place (``os.rename``; an existing artifact is moved aside first and removed
after), and the parent directory is fsynced. A reader sees a complete artifact or none, never a half
written one; a crash between the two renames of a replacement leaves the previous version in
``.<name>.old-*`` beside it, which :func:`read_artifact` names in its error.

Reading checks, before any field is used: the format name and an accepted version, that every listed
array exists with the listed shape and dtype and nothing else is there, that arrays are numeric, and
that ``arrays.npz`` hashes to ``content_sha256``. Every error is an :class:`ArtifactError` naming the
file and the field. :func:`atomic_file` gives the same guarantee to a single file written by another
library (CSV, Parquet, JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ARRAYS_FILE", "Artifact", "ArtifactError", "atomic_file", "file_sha256", "fsync_path",
           "fsync_tree", "read_artifact", "replace_path", "write_artifact", "write_json_atomic"]

ARRAYS_FILE = "arrays.npz"
RESERVED = ("format", "format_version", "arrays", "content_sha256")


class ArtifactError(ValueError):
    """An artifact is missing, incomplete, tampered with or of another format; names file and field."""


@dataclass(frozen=True)
class Artifact:
    """What :func:`read_artifact` returns: the arrays, the writer's JSON fields and the version read."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    format_version: int
    content_sha256: str
    path: Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (its entries: a rename into it is durable after this). Errors
    propagate: a full disk or a failing device fails here, before anyone is told the data is written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path``, deepest first, then ``path`` itself."""
    for p in [*sorted(path.rglob("*"), reverse=True), path]:
        fsync_path(p)


FILE_MODE = 0o600
DIR_MODE = 0o700


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: int = FILE_MODE) -> Iterator[Path]:
    """``with atomic_file(p) as tmp: write tmp`` -> ``p`` appears complete (fsync + rename) or not at all,
    with permissions ``mode`` (default 0600: private to this user).

    The temporary file is a hidden sibling with the same suffix (so libraries that look at the suffix
    keep working), created empty with ``mode`` before the block writes it (a library that opens it for
    writing truncates it and keeps the mode: what it writes is never readable by others, not even while
    it is written); it is removed if the block raises."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.stem}.tmp-{secrets.token_hex(4)}{final.suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits
    finally:
        os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_json_default), encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def replace_path(tmp: Path, final: Path, *, sync: bool = True) -> None:
    """Put the written file or directory ``tmp`` in place at ``final`` (same file system). A file
    replaces a file in one ``os.replace``; a directory replaces a directory by moving the old one aside
    (``.<name>.old-*``, removed after; :func:`read_artifact` names it if a crash leaves it), then renaming.
    ``sync``: fsync ``final``'s parent after (a caller placing several entries syncs once at the end)."""
    old: Path | None = None
    if tmp.is_dir() and (final.exists() or final.is_symlink()):
        if not (final.is_dir() or final.is_symlink()):
            raise ArtifactError(f"{final}: exists and is not a directory; refusing to replace it")
        old = final.parent / f".{final.name}.old-{secrets.token_hex(4)}"
        os.rename(final, old)  # a symlink is moved aside itself, never what it points to
    elif final.is_dir() and not final.is_symlink():
        raise ArtifactError(f"{final}: is a directory; refusing to replace it with the file {tmp.name}")
    os.replace(tmp, final)
    if sync:
        _fsync_dir(final.parent)
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def write_artifact(directory: str | Path, fmt: str, version: int, arrays: Mapping[str, np.ndarray],
                   meta: Mapping[str, Any], *, meta_file: str = "meta.json",
                   extra_json: Mapping[str, Any] | None = None) -> str:
    """Write an artifact atomically (replacing any previous one at ``directory``); returns its
    ``content_sha256``. ``meta`` must be JSON-safe and must not use the reserved keys
    ``format``, ``format_version``, ``arrays``, ``content_sha256``."""
    final = Path(directory)
    clash = sorted(set(meta) & set(RESERVED))
    if clash:
        raise ValueError(f"write_artifact: meta uses reserved key(s) {clash}")
    arrs = {k: np.asarray(v) for k, v in arrays.items()}
    for name, arr in arrs.items():
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(f"write_artifact: array {name!r} has dtype {arr.dtype}; only numeric arrays are "
                            f"saved")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(mode=DIR_MODE)
    try:
        np.savez(tmp / ARRAYS_FILE, **arrs)  # type: ignore[arg-type]
        os.chmod(tmp / ARRAYS_FILE, FILE_MODE)
        fsync_path(tmp / ARRAYS_FILE)
        digest = file_sha256(tmp / ARRAYS_FILE)
        doc = {"format": fmt, "format_version": int(version),
               "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrs.items()},
               "content_sha256": digest, **meta}
        docs = {meta_file: doc, **dict(extra_json or {})}
        for name, obj in docs.items():
            (tmp / name).write_text(json.dumps(obj, indent=1, default=_json_default), encoding="utf-8")
            os.chmod(tmp / name, FILE_MODE)
            fsync_path(tmp / name)
        _fsync_dir(tmp)
        replace_path(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def _interrupted_hint(path: Path) -> str:
    olds = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    return f" (an interrupted replacement left the previous version in {olds[-1]})" if olds else ""


def read_json(path: Path, what: str = "JSON document") -> dict[str, Any]:
    """A JSON object from ``path``; :class:`ArtifactError` naming the file otherwise."""
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found ({what}){_interrupted_hint(path.parent)}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: top level must be a JSON object")
    return obj


def check_format(doc: Mapping[str, Any], path: Path, fmt: str, versions: Iterable[int], *,
                 what: str = "") -> int:
    """``doc``'s ``format_version``, after checking that its ``format`` is ``fmt`` and the version one of
    ``versions``; :class:`ArtifactError` naming ``path`` and the field otherwise (``what``: the kind of
    document, e.g. ``"campaign card"``, said as "not a campaign card (...)")."""
    kind, end = (f"not a {what} (", ")") if what else ("", "")
    if doc.get("format") != fmt:
        raise ArtifactError(f"{path}: {kind}field 'format' is {doc.get('format')!r}, expected {fmt!r}{end}")
    accepted = sorted(set(versions))
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in accepted:
        raise ArtifactError(f"{path}: {kind}field 'format_version' is {version!r}; this fedrec reads "
                            f"version(s) {accepted}{end}")
    return version


def read_artifact(directory: str | Path, fmt: str, versions: Iterable[int], *, meta_file: str = "meta.json",
                  require_digest: bool = True, required: Iterable[str] = ()) -> Artifact:
    """Read and verify an artifact written by :func:`write_artifact` (see the module docstring).

    ``required``: writer fields that must be present. ``require_digest=False`` accepts artifacts
    written before digests existed (models and bundles of fedrec <= 0.1); a present digest is always
    checked."""
    path = Path(directory)
    meta_path = path / meta_file
    meta = read_json(meta_path, f"metadata of a {fmt!r} artifact")
    version = check_format(meta, meta_path, fmt, versions)
    for key in ("arrays", *required):
        if key not in meta:
            raise ArtifactError(f"{meta_path}: field {key!r} is missing")
    listed = meta["arrays"]
    if not isinstance(listed, dict):
        raise ArtifactError(f"{meta_path}: field 'arrays' must be an object")
    npz_path = path / ARRAYS_FILE
    if not npz_path.is_file():
        raise ArtifactError(f"{npz_path}: file not found")
    digest = meta.get("content_sha256")
    actual = file_sha256(npz_path)
    if digest is None:
        if require_digest:
            raise ArtifactError(f"{meta_path}: field 'content_sha256' is missing")
    elif digest != actual:
        raise ArtifactError(f"{npz_path}: content sha256 {actual[:16]}… does not match field "
                            f"'content_sha256' {str(digest)[:16]}… of {meta_path.name} (modified or "
                            f"truncated)")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{npz_path}: cannot read arrays ({exc})") from exc
    for name, desc in listed.items():
        if name not in arrays:
            raise ArtifactError(f"{npz_path}: array {name!r} listed in {meta_path.name} is missing")
        arr = arrays[name]
        if not isinstance(desc, dict) or desc.get("shape") != list(arr.shape) or desc.get("dtype") != str(
                arr.dtype):
            raise ArtifactError(f"{npz_path}: array {name!r} is {arr.dtype}{list(arr.shape)}, "
                                f"{meta_path.name} field 'arrays.{name}' says {desc!r}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ArtifactError(f"{npz_path}: array {name!r} has non-numeric dtype {arr.dtype}")
    extra = sorted(set(arrays) - set(listed))
    if extra:
        raise ArtifactError(f"{npz_path}: arrays {extra} are not listed in {meta_path.name}")
    user_meta = {k: v for k, v in meta.items() if k not in RESERVED}
    return Artifact(arrays, user_meta, version, actual, path)
