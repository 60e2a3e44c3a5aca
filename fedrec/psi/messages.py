"""The whole PSI conversation, as typed messages (both parties send every type; roles are symmetric).

::

    both  -> peer   Hello(role, set_size, chunk_size, salt, curve, peer_salt)  step "psi/hello"
    both  -> peer   BlindedChunk(stage="single", index, points, run)  step "psi/chunks"  H(x)^k, own set
    both  -> peer   BlindedChunk(stage="double", index, points, run)  step "psi/chunks"  (H(y)^j)^k,
                                                                                      peer's chunk back
    both  -> peer   Finish(guest_salt, host_salt, intersection_size, check)  step "psi/finish"

A run is bound to both salts. ``Hello.peer_salt`` echoes the salt of the peer's Hello this party
answers (empty: none yet); a party starts only once the peer echoed its own salt and it has sent the
echo of the peer's, so both run with the same two salts even when Hellos of earlier runs (a timed-out
run, a restart) are still queued. Every chunk carries ``run`` (:func:`run_id` of the two salts): chunks
of another run still queued are skipped, never used. ``Finish`` names both salts and its ``check``
hashes the whole transcript (both Hellos and the common values), so two parties that did not run the
same session fail loudly instead of agreeing on an empty intersection.

Bucketed PSI (:mod:`fedrec.psi.buckets`) opens with one more exchange, then runs one session as above
per bucket pair::

    both  -> peer   BucketHello(role, set_size, bucket_target, salt)  step "psi/buckets"

Before a session, a job that kept the alignment of an earlier run may ask whether the peer kept the
same one (both then skip PSI)::

    guest -> host   AlignmentQuery(digest)                         step "psi/reuse"   request
    host  -> guest  AlignmentAnswer(digest, reuse)                 step "psi/reuse"   its reply

``digest`` is SHA-256 over the aligned ids in aligned order (empty: none held, or this party's input
changed since). Both parties learnt that list in the earlier session, so the digest tells the peer
nothing new; a party's own input digest never leaves it.

Chunk ``index`` covers rows ``[index * chunk_size, min((index + 1) * chunk_size, set_size))`` of the
sender's (shuffled) set for ``single``, and of the receiver's set for ``double``; the protocol checks this.
Points are ``(n, 32)`` uint8 encodings (ristretto255, or X25519 u-coordinates; both parties announce
the curve in ``Hello`` and must agree); their validity is checked by the protocol (it needs
libsodium), their shape and count here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedrec.psi.group import CURVES, DEFAULT_CURVE, POINT_BYTES, SALT_BYTES
from fedrec.transport.wire import Message, WireReader, WireWriter, register_message

PSI_VERSION = 3  # 2: Hello carries the curve; 3: runs bound to both salts (peer_salt, run, Finish)
MAX_CHUNK = 65536  # points per message: 2 MiB
MAX_SET_SIZE = 1 << 40
MAX_BUCKETS = 1 << 20  # buckets of a bucketed PSI (fedrec.psi.buckets)
ROLES = ("guest", "host")
STAGES = ("single", "double")
DIGEST_BYTES = 32
RUN_BYTES = 16


def run_id(guest_salt: bytes, host_salt: bytes) -> bytes:
    """The id of the run of these two salt halves, carried by every chunk (public, like the salts)."""
    return hashlib.sha256(b"fedrec-psi-run\x00" + guest_salt + host_salt).digest()[:RUN_BYTES]


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


@register_message
@dataclass(frozen=True)
class Hello(Message):
    """Opens a session: who I am, how many unique ids I hold, my chunking and my half of the session salt.

    The hash-to-group salt is ``SHA-256("fedrec-psi-salt" || guest salt || host salt)``, so neither
    party chooses it alone. ``curve`` is the group both must use (``ristretto255`` or ``x25519``).
    ``peer_salt`` is the salt of the peer's Hello this one answers (empty: none received yet).
    """

    TYPE: ClassVar[str] = "psi.Hello"
    role: str
    set_size: int
    chunk_size: int
    salt: bytes
    curve: str = DEFAULT_CURVE
    peer_salt: bytes = b""
    version: int = PSI_VERSION

    def __post_init__(self) -> None:
        _check(self.role in ROLES, f"role must be one of {ROLES}, got {self.role!r}")
        _check(len(self.peer_salt) in (0, SALT_BYTES),
               f"peer_salt must be empty or {SALT_BYTES} bytes, got {len(self.peer_salt)}")
        _check(0 <= self.set_size <= MAX_SET_SIZE, f"set_size {self.set_size} outside [0, {MAX_SET_SIZE}]")
        _check(1 <= self.chunk_size <= MAX_CHUNK, f"chunk_size {self.chunk_size} outside [1, {MAX_CHUNK}]")
        _check(len(self.salt) == SALT_BYTES, f"salt must be {SALT_BYTES} bytes, got {len(self.salt)}")
        _check(self.curve in CURVES, f"curve must be one of {CURVES}, got {self.curve!r}")
        _check(self.version == PSI_VERSION, f"PSI version {self.version}, this side speaks {PSI_VERSION}")

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("version", self.version)
        w.put_str("role", self.role)
        w.put_int("set_size", self.set_size)
        w.put_int("chunk_size", self.chunk_size)
        w.put_bytes("salt", self.salt)
        w.put_str("curve", self.curve)
        w.put_bytes("peer_salt", self.peer_salt)

    @classmethod
    def from_wire(cls, r: WireReader) -> Hello:
        return cls(
            version=r.get_int("version", lo=PSI_VERSION, hi=PSI_VERSION),
            role=r.get_str("role", max_len=8, choices=ROLES),
            set_size=r.get_int("set_size", lo=0, hi=MAX_SET_SIZE),
            chunk_size=r.get_int("chunk_size", lo=1, hi=MAX_CHUNK),
            salt=r.get_bytes("salt", max_len=SALT_BYTES),
            curve=r.get_str("curve", max_len=16, choices=CURVES),
            peer_salt=r.get_bytes("peer_salt", max_len=SALT_BYTES),
        )

    @property
    def n_chunks(self) -> int:
        return -(-self.set_size // self.chunk_size)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of this party's set covered by chunk ``index``."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.set_size)


@register_message
@dataclass(frozen=True)
class BlindedChunk(Message):
    """A chunk of blinded points: the sender's own ids once blinded, or the receiver's ids blinded twice."""

    TYPE: ClassVar[str] = "psi.BlindedChunk"
    stage: str
    index: int
    points: np.ndarray  # (n, 32) uint8
    run: bytes  # run_id(guest salt, host salt) of the run the chunk belongs to

    def __post_init__(self) -> None:
        _check(len(self.run) == RUN_BYTES, f"run must be {RUN_BYTES} bytes, got {len(self.run)}")
        _check(self.stage in STAGES, f"stage must be one of {STAGES}, got {self.stage!r}")
        _check(0 <= self.index < MAX_SET_SIZE, f"chunk index {self.index} is negative or too large")
        p = self.points
        _check(isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.ndim == 2
               and p.shape[1] == POINT_BYTES, f"points must be a uint8 array of shape (n, {POINT_BYTES})")
        _check(1 <= len(p) <= MAX_CHUNK, f"a chunk holds 1..{MAX_CHUNK} points, got {len(p)}")

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("stage", self.stage)
        w.put_int("index", self.index)
        w.put_array("points", self.points)
        w.put_bytes("run", self.run)

    @classmethod
    def from_wire(cls, r: WireReader) -> BlindedChunk:
        return cls(
            stage=r.get_str("stage", max_len=8, choices=STAGES),
            index=r.get_int("index", lo=0, hi=MAX_SET_SIZE),
            points=r.get_array("points", np.uint8, shape=(None, POINT_BYTES),
                               max_elems=MAX_CHUNK * POINT_BYTES),
            run=r.get_bytes("run", max_len=RUN_BYTES),
        )


@register_message
@dataclass(frozen=True)
class Finish(Message):
    """Closes a session: the two salts this party ran with, its intersection size and ``check``, SHA-256
    of the transcript (both Hellos) and the sorted double-blinded common values (``protocol.finish_check``).

    Both sides hold the same values, so ``check`` reveals nothing new; a Finish naming other salts, or a
    different ``check``, means the two parties did not run the same session or would align different
    rows, and both stop with an error instead.
    """

    TYPE: ClassVar[str] = "psi.Finish"
    guest_salt: bytes
    host_salt: bytes
    intersection_size: int
    check: bytes

    def __post_init__(self) -> None:
        for name in ("guest_salt", "host_salt"):
            n = len(getattr(self, name))
            _check(n == SALT_BYTES, f"{name} must be {SALT_BYTES} bytes, got {n}")
        _check(0 <= self.intersection_size <= MAX_SET_SIZE, f"intersection_size {self.intersection_size} "
                                                            "is negative or too large")
        _check(len(self.check) == DIGEST_BYTES, f"check must be {DIGEST_BYTES} bytes, got {len(self.check)}")

    def to_wire(self, w: WireWriter) -> None:
        w.put_bytes("guest_salt", self.guest_salt)
        w.put_bytes("host_salt", self.host_salt)
        w.put_int("intersection_size", self.intersection_size)
        w.put_bytes("check", self.check)

    @classmethod
    def from_wire(cls, r: WireReader) -> Finish:
        return cls(
            guest_salt=r.get_bytes("guest_salt", max_len=SALT_BYTES),
            host_salt=r.get_bytes("host_salt", max_len=SALT_BYTES),
            intersection_size=r.get_int("intersection_size", lo=0, hi=MAX_SET_SIZE),
            check=r.get_bytes("check", max_len=DIGEST_BYTES),
        )


@register_message
@dataclass(frozen=True)
class BucketHello(Message):
    """Opens a bucketed PSI: set size, the bucket size this party wants, its half of the bucket salt and
    the number of buckets it was told to use (``fedrec psi --buckets``; 0: derived from the targets).
    :class:`fedrec.psi.buckets.BucketPlan` derives the salt and the number of buckets from both."""

    TYPE: ClassVar[str] = "psi.BucketHello"
    role: str
    set_size: int
    bucket_target: int
    salt: bytes
    n_buckets: int = 0

    def __post_init__(self) -> None:
        _check(self.role in ROLES, f"role must be one of {ROLES}, got {self.role!r}")
        _check(0 <= self.set_size <= MAX_SET_SIZE, f"set_size {self.set_size} outside [0, {MAX_SET_SIZE}]")
        _check(1 <= self.bucket_target <= MAX_SET_SIZE,
               f"bucket_target {self.bucket_target} outside [1, {MAX_SET_SIZE}]")
        _check(len(self.salt) == SALT_BYTES, f"salt must be {SALT_BYTES} bytes, got {len(self.salt)}")
        _check(0 <= self.n_buckets <= MAX_BUCKETS, f"n_buckets {self.n_buckets} outside [0, {MAX_BUCKETS}]")

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("role", self.role)
        w.put_int("set_size", self.set_size)
        w.put_int("bucket_target", self.bucket_target)
        w.put_bytes("salt", self.salt)
        w.put_int("n_buckets", self.n_buckets)

    @classmethod
    def from_wire(cls, r: WireReader) -> BucketHello:
        return cls(role=r.get_str("role", max_len=8, choices=ROLES),
                   set_size=r.get_int("set_size", lo=0, hi=MAX_SET_SIZE),
                   bucket_target=r.get_int("bucket_target", lo=1, hi=MAX_SET_SIZE),
                   salt=r.get_bytes("salt", max_len=SALT_BYTES),
                   n_buckets=r.get_int("n_buckets", lo=0, hi=MAX_BUCKETS))


def _check_digest(digest: bytes) -> None:
    _check(len(digest) in (0, DIGEST_BYTES),
           f"digest must be empty or {DIGEST_BYTES} bytes, got {len(digest)}")


@register_message
@dataclass(frozen=True)
class AlignmentQuery(Message):
    """Do you still hold the alignment whose aligned ids hash to ``digest``? (empty: I hold none)"""

    TYPE: ClassVar[str] = "psi.AlignmentQuery"
    digest: bytes

    def __post_init__(self) -> None:
        _check_digest(self.digest)

    def to_wire(self, w: WireWriter) -> None:
        w.put_bytes("digest", self.digest)

    @classmethod
    def from_wire(cls, r: WireReader) -> AlignmentQuery:
        return cls(digest=r.get_bytes("digest", max_len=DIGEST_BYTES))


@register_message
@dataclass(frozen=True)
class AlignmentAnswer(Message):
    """The answer to :class:`AlignmentQuery`: the answering party's own digest (empty: none held) and
    whether both are present and equal, i.e. both parties skip PSI and reuse the stored alignment."""

    TYPE: ClassVar[str] = "psi.AlignmentAnswer"
    digest: bytes
    reuse: bool

    def __post_init__(self) -> None:
        _check_digest(self.digest)
        _check(not self.reuse or len(self.digest) == DIGEST_BYTES, "reuse needs a digest")

    def to_wire(self, w: WireWriter) -> None:
        w.put_bytes("digest", self.digest)
        w.put_bool("reuse", self.reuse)

    @classmethod
    def from_wire(cls, r: WireReader) -> AlignmentAnswer:
        return cls(digest=r.get_bytes("digest", max_len=DIGEST_BYTES), reuse=r.get_bool("reuse"))


@register_message
@dataclass(frozen=True)
class Committed(Message):
    """After PSI, each party of ``fedrec psi`` says whether its output is written (fsynced, not yet in
    place); both put it in place only when both are: the parties agree on success, never one exit 0
    beside the other's exit 1 (issue #9)."""

    TYPE: ClassVar[str] = "psi.Committed"
    ok: bool
    detail: str = ""

    def to_wire(self, w: WireWriter) -> None:
        w.put_bool("ok", self.ok)
        w.put_str("detail", self.detail[:500])

    @classmethod
    def from_wire(cls, r: WireReader) -> Committed:
        return cls(r.get_bool("ok"), r.get_str("detail", max_len=500))


#: the message types of PSI (bucketed too), of the alignment-reuse check and of ``fedrec psi``'s commit
#: (``fedrec.transport.open_channel(messages=)``)
MESSAGES: tuple[type[Message], ...] = (Hello, BlindedChunk, Finish, BucketHello, AlignmentQuery,
                                       AlignmentAnswer, Committed)
