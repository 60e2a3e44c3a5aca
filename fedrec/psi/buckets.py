"""Bucketed PSI: both parties cut their ids into the same ``B`` buckets by a salted hash agreed in a
handshake, and run the ECDH PSI of :func:`fedrec.psi.protocol.run_psi` bucket pair by bucket pair, so a
party's memory is one bucket's, not the whole set's (100M ids: 6.4 GB of double-blinded values at once
without buckets).

::

    G <-> H   BucketHello(role, set_size, bucket_target, salt half, n_buckets)   step "psi/buckets"
              (:class:`fedrec.psi.messages.BucketHello`, with the other PSI messages)
              salt = SHA-256("fedrec-psi-buckets" || guest half || host half); B = n_buckets when the
              parties fix it (``fedrec psi --buckets``: both the same, else both stop), else
              ceil(max(|X|, |Y|) / min(targets)); bucket(x) = BLAKE2b-64(x, key=salt) mod B
    for b in 0 .. B-1:
    G <-> H   run_psi over bucket b of each party, padded (below) to S(n, B) ids  (its own Hello, salts)

The intersection is the concatenation of the buckets' intersections in bucket order; the aligned order
is therefore shared by both parties, as for one session. An id common to both sets is in the same
bucket on both sides (same salted hash), so the result is exactly the unbucketed intersection (tests
compare).

**What bucket sizes would reveal, and why they are padded.** Each per-bucket session announces its set
size. Unpadded, a party would learn the histogram of the peer's ids over the ``B`` buckets under a salt
it knows: a deterministic function of the peer's set, enough to tell apart two candidate sets that
differ by a single id outside the intersection. So every bucket is padded with dummy ids (fresh random
32-byte values under a reserved prefix, which match nothing) to ``S(n, B) = ceil(n/B + 8 sqrt(n/B) + 8)``,
a function of the party's set size ``n`` (already revealed by PSI) and ``B`` only; a bucket beyond ``S``
(probability below 1e-14 per bucket: 8 standard deviations) is padded to the next multiple of ``S/8``
and logged, the one case where a bucket size says more than ``n``. The cost: ``8 sqrt(n/B)`` dummies
per bucket, 0.8% at 1M ids per bucket. Dummies are dropped from the result (they can only match an
equal dummy of the peer's: probability 2^-256).

Bounded memory: the party's ids and their bucket numbers (8 bytes each), plus one bucket's session
(``32 (S_own + S_peer)`` bytes of blinded values and the chunks in flight). Parallelism: the blinding
inside each bucket session runs on the engine's thread pool (all cores of the machine); bucket pairs
run one after another on the one channel.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.psi.group import DEFAULT_CURVE, SALT_BYTES, Engine
from fedrec.psi.ids import dedupe
from fedrec.psi.messages import MAX_BUCKETS, ROLES, BucketHello, Hello
from fedrec.psi.protocol import DEFAULT_CHUNK, PsiPeerError, PsiResult, run_psi

if TYPE_CHECKING:
    from fedrec.transport.channel import Channel

__all__ = ["BucketHello", "BucketPlan", "BucketedResult", "bucket_of", "padded_size", "run_bucketed_psi"]

log = logging.getLogger(__name__)

BUCKET_STEP = "psi/buckets"
DEFAULT_BUCKET = 1 << 20  # ids per bucket: 64 MB of blinded values per party and bucket
DUMMY_PREFIX = b"\x00fedrec-psi-dummy\x00"


@dataclass(frozen=True)
class BucketPlan:
    """What both parties derive from the two :class:`BucketHello`: the salt and the number of buckets."""

    salt: bytes
    n_buckets: int

    @classmethod
    def agree(cls, guest: BucketHello, host: BucketHello) -> BucketPlan:
        """The plan; ``ValueError`` when the parties were told different numbers of buckets."""
        salt = hashlib.sha256(b"fedrec-psi-buckets\x00" + guest.salt + host.salt).digest()
        if guest.n_buckets != host.n_buckets:
            raise ValueError(f"the guest asks for {guest.n_buckets or 'derived'} buckets, the host for "
                             f"{host.n_buckets or 'derived'}: both parties must use the same --buckets "
                             "(fedrec psi) or [psi] buckets (fedrec train)")
        if guest.n_buckets:
            return cls(salt, guest.n_buckets)
        n = max(guest.set_size, host.set_size)
        b = max(1, math.ceil(n / min(guest.bucket_target, host.bucket_target)))
        return cls(salt, min(b, MAX_BUCKETS))


def bucket_of(ids: Sequence[bytes], salt: bytes, n_buckets: int) -> np.ndarray:
    """The bucket of each id: ``BLAKE2b-64(id, key=salt) mod n_buckets`` (int64)."""
    out = np.empty(len(ids), dtype=np.int64)
    key = salt[:32]
    for j, x in enumerate(ids):
        out[j] = int.from_bytes(hashlib.blake2b(x, key=key, digest_size=8).digest(), "little") % n_buckets
    return out


def padded_size(n: int, n_buckets: int) -> int:
    """``S(n, B)``: the size every bucket of a party with ``n`` ids is padded to (module docstring)."""
    if n_buckets == 1:
        return n
    mean = n / n_buckets
    return math.ceil(mean + 8 * math.sqrt(mean) + 8)


@dataclass
class BucketedResult:
    """One party's output, as :class:`~fedrec.psi.protocol.PsiResult` plus the plan and per-bucket stats."""

    ids: list[bytes]
    rows: np.ndarray
    n_input: int
    n_unique: int
    peer_size: int
    n_buckets: int
    bucket_size: int  # S(n_own, B)
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def intersection_size(self) -> int:
        return len(self.ids)


def _handshake(channel: Channel, peer: str, me: BucketHello, timeout: float) -> BucketHello:
    channel.wait_for_peers([peer], timeout=timeout)
    channel.send(peer, me, step=BUCKET_STEP, timeout=timeout)
    # the peer's first message: its BucketHello, or the Hello of one session (it was not told to bucket)
    got = channel.recv_any((BucketHello, Hello), peers=[peer], timeout=timeout).msg
    if not isinstance(got, BucketHello):
        raise PsiPeerError(peer, BUCKET_STEP, f"the peer runs one PSI session, this party a bucketed one "
                                              f"({me.n_buckets or 'derived'} buckets): both parties must "
                                              "use the same --buckets")
    other = got
    if other.role == me.role:
        raise PsiPeerError(peer, BUCKET_STEP, f"the peer also plays {me.role!r}; one party must be guest, "
                                              "the other host")
    return other


def run_bucketed_psi(channel: Channel, peer: str, ids: Sequence[bytes], *, role: str,
                     bucket_size: int = DEFAULT_BUCKET, chunk_size: int = DEFAULT_CHUNK,
                     workers: int | None = None, timeout: float = 300.0, engine: Engine | None = None,
                     curve: str | None = None, pad: bool = True, n_buckets: int = 0,
                     run_timeout: float | None = None) -> BucketedResult:
    """Bucketed PSI with ``peer`` (module docstring); the same arguments as :func:`run_psi` plus the
    wanted ``bucket_size`` (the smaller of the two parties' is used), or ``n_buckets`` fixed (both
    parties must pass the same; :class:`PsiPeerError` on both sides otherwise). ``run_timeout`` bounds
    each bucket's session. ``pad=False`` skips the dummies (each bucket's size is then revealed:
    benchmarks of the padding's cost only)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    if not 0 <= n_buckets <= MAX_BUCKETS:
        raise ValueError(f"n_buckets must be in [1, {MAX_BUCKETS}] (0: derived), got {n_buckets}")
    start = time.perf_counter()
    unique = dedupe(ids, source=f"psi {role} ids")
    me = BucketHello(role=role, set_size=len(unique.ids), bucket_target=bucket_size,
                     salt=secrets.token_bytes(SALT_BYTES), n_buckets=n_buckets)
    other = _handshake(channel, peer, me, timeout)
    try:
        plan = BucketPlan.agree(*((me, other) if role == "guest" else (other, me)))
    except ValueError as exc:
        raise PsiPeerError(peer, BUCKET_STEP, str(exc)) from exc
    buckets = bucket_of(unique.ids, plan.salt, plan.n_buckets)
    order = np.argsort(buckets, kind="stable")  # ids of bucket b: order[bounds[b]:bounds[b + 1]]
    bounds = np.searchsorted(buckets[order], np.arange(plan.n_buckets + 1))
    s_own = padded_size(len(unique.ids), plan.n_buckets) if pad else 0
    s_peer = padded_size(other.set_size, plan.n_buckets) if pad else 0
    own_engine = engine is None
    eng = Engine(workers, curve or DEFAULT_CURVE) if engine is None else engine
    out_ids: list[bytes] = []
    out_rows: list[np.ndarray] = []
    overflow = 0
    try:
        for b in range(plan.n_buckets):
            members = order[bounds[b]:bounds[b + 1]]
            real = [unique.ids[i] for i in members]
            size = len(real)
            if pad and size > s_own:
                overflow += 1
                step = max(s_own // 8, 1)
                size_to = -(-size // step) * step
                log.warning("psi bucket %d holds %d ids, more than the padded size %d: padded to %d (this "
                            "bucket's size tells the peer more than the set size)", b, size, s_own, size_to)
            else:
                size_to = s_own if pad else size
            dummies = [DUMMY_PREFIX + secrets.token_bytes(32) for _ in range(size_to - size)]
            res: PsiResult = run_psi(channel, peer, real + dummies, role=role, chunk_size=chunk_size,
                                     timeout=timeout, engine=eng, run_timeout=run_timeout)
            if pad and res.peer_size < s_peer:
                raise PsiPeerError(peer, BUCKET_STEP, f"bucket {b}: the peer sent {res.peer_size} ids, "
                                                      f"fewer than the padded size {s_peer} of its "
                                                      f"{other.set_size}")
            keep = res.rows < len(real)
            out_ids.extend(x for x, k in zip(res.ids, keep.tolist(), strict=True) if k)
            out_rows.append(unique.rows[members[res.rows[keep]]])
            log.info("psi bucket %d/%d: %d ids (%d padded), %d common", b + 1, plan.n_buckets, len(real),
                     size_to, int(keep.sum()))
    finally:
        if own_engine:
            eng.close(wait=False)
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, dtype=np.int64)
    return BucketedResult(out_ids, rows, unique.n_input, len(unique.ids), other.set_size, plan.n_buckets,
                          s_own, time.perf_counter() - start,
                          {"overflowing_buckets": overflow, "peer_bucket_size": s_peer,
                           "dummies": plan.n_buckets * s_own - len(unique.ids) if pad else 0})
