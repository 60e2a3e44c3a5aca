"""CURVE key pairs and key files.

Files follow ZeroMQ's certificate layout (the one ``zmq.auth.create_certificates`` writes and
``zmq.auth.load_certificate`` reads), so other ZeroMQ tooling can use them::

    NAME.key          public key, mode 0644 -- hand it to the peers, they put it in their allow-list
    NAME.key_secret   public + secret key, mode 0600 -- never leaves this party

:func:`load_keypair` refuses a secret file that group or others can read (like ssh does).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fedrec.transport.errors import KeyFileError

_Z85 = re.compile(r'^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$')
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_FIELD = re.compile(r'^\s*(public-key|secret-key|name)\s*=\s*"([^"]*)"\s*$')


def is_z85_key(key: str) -> bool:
    """Whether ``key`` looks like a z85-encoded 32-byte CURVE key (40 characters)."""
    return isinstance(key, str) and bool(_Z85.match(key))


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, z85-encoded. The secret never appears in ``repr``."""

    public: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not is_z85_key(self.public) or not is_z85_key(self.secret):
            raise ValueError("KeyPair: keys must be z85-encoded 32-byte CURVE keys (40 characters)")


def fingerprint(key: str | Path) -> str:
    """The fingerprint of a public key (z85 string, or a ``NAME.key`` file) to compare over the phone and
    in logs: the first 16 hex digits of SHA-256 of the z85 key, in groups of 4 (``1a2b:3c4d:5e6f:7a8b``).
    It names a key without spreading it; both parties print the same one for the same key."""
    import hashlib

    z85 = key if isinstance(key, str) and is_z85_key(key) else load_public_key(key)
    digest = hashlib.sha256(z85.encode("ascii")).hexdigest()[:16]
    return ":".join(digest[i:i + 4] for i in range(0, 16, 4))


def generate_keypair() -> KeyPair:
    """A fresh random CURVE key pair (libsodium via libzmq)."""
    from fedrec.transport.zmq_channel import curve_keypair

    public, secret = curve_keypair()
    return KeyPair(public, secret)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeyFileError(f"party name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
                           "and not start with '.' or '-'")


def _render(name: str, keys: KeyPair, with_secret: bool) -> str:
    kind = "Secret" if with_secret else "Public"
    lines = [
        f"#   ****  Generated on {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC by fedrec keys  ****",
        f"#   ZeroMQ CURVE **{kind}** Certificate",
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions." if with_secret
        else "#   Give this file to the parties that must accept connections from this one.",
        "",
        "metadata",
        f'    name = "{name}"',
        "curve",
        f'    public-key = "{keys.public}"',
    ]
    if with_secret:
        lines.append(f'    secret-key = "{keys.secret}"')
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str, mode: int) -> None:
    from fedrec.artifacts import atomic_file  # created with ``mode``, fsynced, renamed, directory fsynced

    with atomic_file(path, mode) as tmp:
        tmp.write_text(text, encoding="ascii")


def write_keypair(directory: str | Path, name: str, keys: KeyPair | None = None,
                  force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0644) and ``NAME.key_secret`` (0600) into ``directory``; returns both paths.

    Refuses to overwrite existing files unless ``force``.
    """
    _check_name(name)
    keys = keys or generate_keypair()
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path, secret_path = out / f"{name}.key", out / f"{name}.key_secret"
    existing = [p for p in (public_path, secret_path) if p.exists()]
    if existing and not force:
        raise KeyFileError(f"{existing[0]} already exists; pass --force (force=True) to replace the key pair")
    _write_atomic(secret_path, _render(name, keys, with_secret=True), 0o600)
    _write_atomic(public_path, _render(name, keys, with_secret=False), 0o644)
    return public_path, secret_path


def _parse(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read key file ({e})") from None
    found: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _FIELD.match(line)
        if m:
            key, value = m.groups()
            if key in found:
                raise KeyFileError(f"{path}:{lineno}: {key} given twice")
            if key != "name" and not is_z85_key(value):
                raise KeyFileError(f"{path}:{lineno}: {key} is not a 40-character z85 CURVE key")
            found[key] = value
    if "public-key" not in found:
        raise KeyFileError(f"{path}: no public-key line (expected ZeroMQ certificate format)")
    return found


def load_keypair(secret_path: str | Path) -> KeyPair:
    """Load this party's key pair from ``NAME.key_secret``, refusing unsafe permissions."""
    path = Path(secret_path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: secret key file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: secret key file is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing to use it. Fix with: chmod 600 {path}")
    fields = _parse(path)
    if "secret-key" not in fields:
        raise KeyFileError(f"{path}: no secret-key line (is this the public NAME.key file?)")
    keys = KeyPair(fields["public-key"], fields["secret-key"])
    from fedrec.transport.zmq_channel import curve_public

    if curve_public(keys.secret) != keys.public:
        raise KeyFileError(f"{path}: public-key does not match secret-key (corrupted or edited file)")
    return keys


def load_public_key(path: str | Path) -> str:
    """The public key in ``NAME.key``. Refuses a file holding a secret key (do not share those)."""
    p = Path(path)
    fields = _parse(p)
    if "secret-key" in fields:
        raise KeyFileError(f"{p}: contains a secret key; peers need only the public NAME.key file")
    return fields["public-key"]


def load_peer_keys(source: str | Path | Iterable[str | Path]) -> dict[str, str]:
    """The allow-list ``{party name: public key}`` from a directory of ``*.key`` files or a list of files.

    The party name is the certificate's ``name`` metadata, else the file name without ``.key``.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        paths = sorted(Path(source).glob("*.key"))
        if not paths:
            raise KeyFileError(f"{source}: no *.key public key files in this directory")
    elif isinstance(source, (str, Path)):
        paths = [Path(source)]
    else:
        paths = [Path(p) for p in source]
    out: dict[str, str] = {}
    for p in paths:
        name = _parse(p).get("name") or p.name.removesuffix(".key")
        _check_name(name)
        key = load_public_key(p)
        if name in out:
            raise KeyFileError(f"{p}: party name {name!r} appears in two key files")
        if key in out.values():
            raise KeyFileError(f"{p}: the same public key is registered for two parties")
        out[name] = key
    return out
