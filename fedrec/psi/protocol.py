"""ECDH private set intersection (ristretto255 or X25519): one function, :func:`run_psi`, run by both parties.

Protocol (semi-honest, symmetric; guest ``G`` holds ``X`` and secret ``a``, host ``H`` holds ``Y``, ``b``)::

    G <-> H   Hello: set sizes, chunk sizes, curve, 32-byte salt halves, echo of the peer's salt half;
              domain = prefix || SHA-256(salts); a party starts once the peer echoed its salt half
    G  -> H   H(x)^a   for x in X, in a secret random order, in chunks          (|X| scalar mults by G)
    H  -> G   H(y)^b   for y in Y, in a secret random order, in chunks          (|Y| scalar mults by H)
    H  -> G   (H(x)^a)^b, each chunk returned in the order received             (|X| scalar mults by H)
    G  -> H   (H(y)^b)^a, likewise                                              (|Y| scalar mults by G)
    G, H      common = own double-blinded values that occur among the peer's; sort them by value
    G <-> H   Finish: both salt halves, |common| and SHA-256 of the transcript (both Hellos) and the
              sorted common values; both must agree

Total ``2(|X| + |Y|)`` scalar multiplications, every one in a thread pool over all cores, and both
directions stream concurrently: a party blinds its own chunks while it re-blinds the peer's. This is the
two-sided variant of the classic protocol (the guest returns ``H(y)^ba`` too), so each party computes the
intersection itself and neither has to trust a list sent by the other.

What each party learns (semi-honest peer, DDH in ristretto255 or in the prime-order subgroup of
curve25519, SHA-512 as a random oracle; see :mod:`fedrec.psi.curve25519` for the x-only encoding): the peer's
number of unique ids, which of its own ids are common, and the aligned order. Nothing about the peer's ids
outside the intersection: they arrive as ``H(y)^b`` and ``H(y)^ba``, pseudorandom without ``b``. Nothing
about the peer's row order: each party shuffles its ids before blinding and the aligned order is the
order of the (pseudorandom) double-blinded values.

Beyond semi-honest: a malicious peer can lie about its set (any PSI of this kind allows it) or return
wrong double-blinded values, which changes what the other party believes is common; the ``Finish``
check catches two honest parties that diverge (a bug, a corrupted chunk, two different runs), not a peer
that lies consistently. It cannot learn the other's secret scalar: points that are not canonical non-identity
encodings (for X25519 also small-order points) are rejected (:class:`PsiPeerError`) before use, and so
are chunks whose index or length does not match the announced set size.

Secrets are fresh per run: a new scalar from libsodium's CSPRNG and a new salt half, so blinded values of
two runs are unrelated.

Runs on one channel. A party that serves one run after another (a host looping sessions) or a peer that
reconnects may leave messages of an earlier run queued: a Hello, chunks, a Finish. A run is therefore
bound to both salt halves (:mod:`fedrec.psi.messages`): the handshake ends only when each party holds
the Hello of the peer's current run and the peer has echoed its own salt; chunks of another run are
skipped; a new Hello from the peer during the run (it started another one) ends this run with
:class:`PsiPeerError`; and ``Finish`` names both salts, so two parties that ran with different salts
fail loudly instead of agreeing on an empty intersection (found by ``benchmarks/fuzz.py``: a guest took
the Hello of the host's earlier, timed-out run while the host ran the next one).

Deadlines. ``timeout`` bounds every wait for the peer: its connection, its Hello, the next chunk
(reset by each valid chunk), its Finish. ``run_timeout`` bounds the whole run, from the call to the end:
a peer that sends one valid chunk just before each ``timeout`` could otherwise keep one run alive for
(number of chunks) x ``timeout``. Its default, :func:`default_run_timeout`, is fixed once the peer's
Hello gives its set size: ``3 timeout`` (the handshake's two waits and Finish) plus ``RUN_SECONDS_PER_ID``
(2 ms) per id of both sets, i.e. at least 1,000 ids per second of the two parties together, 10-50x
below what one core does; the handshake is bounded by its own ``2 timeout`` before then. A run beyond it
ends with :class:`~fedrec.transport.errors.PeerTimeoutError` naming the peer, the step and the progress.
The set size is the peer's word (at most ``max_peer_size``): a serving party that knows a smaller bound
passes ``run_timeout`` or ``max_peer_size``.

The scalar lives in a ctypes buffer that is zeroed when the run ends.

Memory: the party's ids, ``32 (n_own + n_peer)`` bytes of double-blinded values, and the chunks in
flight: at most ``workers + 1`` of its own being blinded, and at most ``WINDOW_BYTES`` (64 MiB) of its
own chunks sent and not yet returned re-blinded (flow control: a party that blinds faster than its peer
re-blinds waits for the peer instead of filling the peer's receive buffer, which the transport bounds
by ``max_buffered_bytes``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.psi.align import DuplicateValueError, align, digest
from fedrec.psi.group import (
    CURVES,
    DEFAULT_CURVE,
    POINT_BYTES,
    SALT_BYTES,
    Engine,
    InvalidPointError,
    Job,
)
from fedrec.psi.ids import UniqueIds, dedupe
from fedrec.psi.messages import MAX_CHUNK, ROLES, BlindedChunk, Finish, Hello, run_id
from fedrec.transport.errors import PeerDiedError, PeerError, PeerTimeoutError

if TYPE_CHECKING:
    from fedrec.transport.channel import Channel

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 16384
HELLO_STEP = "psi/hello"
CHUNK_STEP = "psi/chunks"
FINISH_STEP = "psi/finish"
POLL_SECONDS = 0.02
HELLO_RESEND = 10.0
WINDOW_BYTES = 64 << 20  # own chunks sent and not yet returned by the peer (flow control)
HELLO_LOOK = 1.0  # while chunks flow, how often to look for a Hello of a new run of the peer
RUN_SECONDS_PER_ID = 0.002  # the default run_timeout's allowance per id of both sets (module docstring)


class PsiPeerError(PeerError):
    """The peer sent something the protocol cannot accept (invalid point, wrong chunk, disagreement)."""


@dataclass(frozen=True)
class PsiResult:
    """One party's output: its common ids and their input rows, in the aligned order shared with the peer."""

    ids: list[bytes]
    rows: np.ndarray  # int64: input row (0-based) of ids[k]
    n_input: int
    n_unique: int
    peer_size: int
    seconds: float  # from the call to the end, including the wait for the peer
    stats: dict[str, Any] = field(default_factory=dict)  # handshake_seconds, protocol_seconds,
    # skipped_chunks (chunks of another run still queued), ...

    @property
    def intersection_size(self) -> int:
        return len(self.ids)

    @property
    def n_duplicates(self) -> int:
        return self.n_input - self.n_unique


def default_run_timeout(timeout: float, n_own: int, n_peer: int) -> float:
    """The default ``run_timeout`` of :func:`run_psi` (module docstring, "Deadlines"): ``3 timeout`` for
    the handshake and Finish plus ``RUN_SECONDS_PER_ID`` per id of both sets."""
    return 3 * timeout + RUN_SECONDS_PER_ID * (n_own + n_peer)


def session_salt(guest_half: bytes, host_half: bytes) -> bytes:
    """The hash-to-group salt both parties derive from the two halves exchanged in :class:`Hello`."""
    return hashlib.sha256(b"fedrec-psi-salt\x00" + guest_half + host_half).digest()


def finish_check(guest: Hello, host: Hello, common_values: np.ndarray) -> bytes:
    """``Finish.check``: SHA-256 binding the run's transcript (both Hellos: salts, sizes, chunking,
    curve) to the sorted double-blinded common values."""
    h = hashlib.sha256(b"fedrec-psi-finish\x00")
    for hello in (guest, host):
        h.update(hello.salt)
        h.update(b"%d,%d,%s;" % (hello.set_size, hello.chunk_size, hello.curve.encode()))
    h.update(b"%d;" % len(common_values))
    h.update(digest(common_values))
    return h.digest()


def _short(salt: bytes) -> str:
    return salt[:4].hex()


def _shuffle(n: int) -> np.ndarray:
    return np.random.default_rng(secrets.randbits(128)).permutation(n).astype(np.int64)


class _Session:
    """The state of one run; :meth:`run` is the event loop (single thread for all channel I/O)."""

    def __init__(self, channel: Channel, peer: str, role: str, unique: UniqueIds, chunk_size: int,
                 engine: Engine, timeout: float, progress: bool, max_peer_size: int,
                 run_timeout: float | None = None, started: float | None = None) -> None:
        self.ch, self.peer, self.role = channel, peer, role
        self.started = time.monotonic() if started is None else started
        self.run_timeout = run_timeout  # None: default_run_timeout, fixed once the peer's Hello is known
        self.run_deadline = float("inf") if run_timeout is None else self.started + run_timeout
        self.max_peer_size = max_peer_size
        self.unique, self.engine, self.timeout = unique, engine, timeout
        self.perm = _shuffle(len(unique.ids))
        self.shuffled = [unique.ids[i] for i in self.perm]
        self.me = Hello(role=role, set_size=len(unique.ids), chunk_size=chunk_size,
                        salt=secrets.token_bytes(SALT_BYTES), curve=engine.curve)
        self.scalar = engine.new_scalar()
        self.progress = progress
        self.jobs: list[Job] = []
        self.peer_sid: int | None = None  # the peer's transport session this PSI session runs with
        self.send_deadline = 0.0  # handshake: its Hellos are sent within its deadline (monotonic)

    def fail(self, step: str, detail: str) -> PsiPeerError:
        return PsiPeerError(self.peer, step, detail)

    def until(self, deadline: float) -> float:
        """``deadline`` (monotonic), but no later than the run's."""
        return min(deadline, self.run_deadline)

    def left(self, deadline: float | None = None) -> float:
        """Seconds to ``deadline`` (default: ``timeout`` from now), within the run's; at least one poll
        (a send to a peer that keeps up needs no wait; one that does not fails at once)."""
        end = self.until(time.monotonic() + self.timeout if deadline is None else deadline)
        return max(end - time.monotonic(), POLL_SECONDS)

    def check_run_deadline(self, step: str, progress: str = "") -> None:
        """Raise if the run is past its whole-run deadline (module docstring, "Deadlines")."""
        if time.monotonic() >= self.run_deadline:
            raise self.run_over(step, progress)

    def run_over(self, step: str, progress: str = "") -> PeerTimeoutError:
        spent = time.monotonic() - self.started
        return PeerTimeoutError(self.peer, step, f"the run did not end within run_timeout="
                                                 f"{self.run_timeout:.1f} s ({spent:.1f} s spent; each wait "
                                                 f"is bounded by timeout={self.timeout:g} s, the whole "
                                                 f"run by run_timeout){'; ' + progress if progress else ''}")

    def handshake(self) -> Hello:
        """Exchange Hellos until both parties hold each other's current salt half (module docstring).

        Ours echoes the salt of the latest peer Hello (``peer_salt``); it is sent again whenever that
        changes, every ``HELLO_RESEND`` seconds until the peer's arrives, and once more if the peer
        restarted since we last sent it (a reconnecting peer never waits for a Hello that went to its
        earlier session); a peer that dies meanwhile may come back within ``timeout``. We are done when
        a Hello of the peer echoes our salt and we have sent the echo of its salt."""
        try:
            self.ch.wait_for_peers([self.peer], timeout=min(self.timeout,
                                                            max(self.run_deadline - time.monotonic(), 0.0)))
        except PeerTimeoutError as err:
            self.check_run_deadline(HELLO_STEP, f"the peer did not connect: {err.detail}")
            raise
        deadline = self.until(time.monotonic() + self.timeout)
        self.send_deadline = deadline  # a Hello is sent within the handshake's deadline, not send_timeout
        other: Hello | None = None
        other_sid: int | None = None
        sent_to, echoed = self.ch.peer_session(self.peer), self._send_hello(None)
        stale = 0
        while True:
            left = deadline - time.monotonic()
            try:
                got = self.ch.recv_any(Hello, step=HELLO_STEP, peers=[self.peer],
                                       timeout=max(min(HELLO_RESEND, left), 0.0))
            except (PeerTimeoutError, PeerDiedError) as err:
                if time.monotonic() >= deadline:
                    extra = f" ({stale} Hello(s) of the peer's earlier runs skipped)" if stale else ""
                    self.check_run_deadline(HELLO_STEP, f"no Hello of this run yet{extra}")
                    raise type(err)(self.peer, HELLO_STEP, f"no Hello within {self.timeout:g} s: "
                                                           f"{err.detail}{extra}") from None
                if isinstance(err, PeerDiedError):
                    time.sleep(min(POLL_SECONDS * 10, max(left, 0.0)))
                    continue
                if other is not None and self.ch.peer_session(self.peer) != other_sid:
                    other = None  # the peer restarted: its Hello belonged to the dead session
                try:
                    sent_to, echoed = self.ch.peer_session(self.peer), self._send_hello(other)
                except PeerDiedError:
                    pass
                continue
            if got.session != self.ch.peer_session(self.peer):
                stale += 1
                continue  # a Hello of the peer's earlier transport session, still queued
            self._check_hello(got.msg)
            other, other_sid = got.msg, got.session
            if echoed != other.salt:
                sent_to, echoed = self.ch.peer_session(self.peer), self._send_hello(other)
            if other.peer_salt == self.me.salt:
                break
            if other.peer_salt:
                stale += 1  # it answers a Hello of ours from an earlier run: wait for its answer to this one
        self.peer_sid = other_sid
        if self.ch.peer_session(self.peer) != sent_to:
            self._send_hello(other)
        if self.run_timeout is None:  # the default is fixed now that the peer's set size is known
            self.run_timeout = default_run_timeout(self.timeout, self.me.set_size, other.set_size)
            self.run_deadline = self.started + self.run_timeout
        return other

    def _send_hello(self, other: Hello | None) -> bytes:
        """Send our Hello echoing ``other``'s salt (none: empty); returns the echo sent."""
        echo = other.salt if other is not None else b""
        self.ch.send(self.peer, replace(self.me, peer_salt=echo), step=HELLO_STEP,
                     timeout=max(self.send_deadline - time.monotonic(), POLL_SECONDS))
        return echo

    def _check_hello(self, other: Hello) -> None:
        if other.curve != self.me.curve:
            raise self.fail(HELLO_STEP, f"peer uses curve {other.curve!r}, this party {self.me.curve!r}; "
                                        "both must run with the same curve")
        if other.role == self.role:
            raise self.fail(HELLO_STEP, f"both parties claim role {self.role!r}; one must be guest, one host")
        if other.set_size > self.max_peer_size:
            raise self.fail(HELLO_STEP, f"peer announces {other.set_size} ids, more than max_peer_size="
                                        f"{self.max_peer_size}")

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        """Stream both directions; returns (own double-blinded values, peer double-blinded values)."""
        from fedrec.progress import progress_bar

        other = self.handshake()
        self.connected_at = time.perf_counter()
        guest, host = (self.me, other) if self.role == "guest" else (other, self.me)
        self.domain = self.engine.domain(session_salt(guest.salt, host.salt))
        self.guest_hello, self.host_hello = guest, host
        self.run_tag = run_id(guest.salt, host.salt)
        self.other = other
        self.skipped = 0
        self.own_double = np.zeros((self.me.set_size, POINT_BYTES), dtype=np.uint8)
        self.peer_double = np.zeros((other.set_size, POINT_BYTES), dtype=np.uint8)
        self.seen = {"single": np.zeros(other.n_chunks, bool), "double": np.zeros(self.me.n_chunks, bool)}
        self.todo = {"single": self.me.n_chunks, "double": other.n_chunks, "check": self.me.n_chunks}
        self.next_own = 0
        # progress in scalar multiplications by this party
        self.bar = progress_bar(total=self.me.set_size + other.set_size, unit="mult", desc=f"psi {self.role}",
                        disable=not self.progress, leave=False)
        deadline, next_look = self.until(time.monotonic() + self.timeout), time.monotonic() + HELLO_LOOK
        while True:
            if self._complete_finished():
                deadline = self.until(time.monotonic() + self.timeout)  # progress: the peer is not late yet
            self._feed()  # after completing: a freed slot must be refilled before we block on the peer
            if not any(self.todo.values()):
                break
            if time.monotonic() >= next_look:
                self._check_same_run(CHUNK_STEP)
                next_look = time.monotonic() + HELLO_LOOK
            try:
                wait = POLL_SECONDS if self.jobs else max(0.0, min(deadline, next_look) - time.monotonic())
                got = self.ch.recv(self.peer, BlindedChunk, step=CHUNK_STEP, timeout=wait)
            except PeerTimeoutError as err:
                if time.monotonic() > deadline:
                    self.check_run_deadline(CHUNK_STEP, self._progress())
                    detail = f"{err.detail}; {self._progress()}"
                    raise PeerTimeoutError(self.peer, CHUNK_STEP, detail) from None
                continue
            if self.peer_sid is not None and self.ch.peer_session(self.peer) != self.peer_sid:
                raise self.fail(CHUNK_STEP, "the peer restarted during the session (a new transport session)")
            if got.run != self.run_tag:
                self.skipped += 1  # a chunk of another run still queued (the peer's earlier run)
                log.debug("psi %s: skipped a %s chunk of another run (%d so far)", self.role, got.stage,
                          self.skipped)
                self.check_run_deadline(CHUNK_STEP, self._progress())
                continue
            self.check_run_deadline(CHUNK_STEP, self._progress())  # valid chunks reset only `deadline`
            deadline = self.until(time.monotonic() + self.timeout)
            self._accept(got)
        self.bar.close()
        return self.own_double, self.peer_double

    def _progress(self) -> str:
        me, other = self.me.n_chunks, self.other.n_chunks
        got_peer, got_back = int(self.seen["single"].sum()), int(self.seen["double"].sum())
        skipped = f", {self.skipped} chunk(s) of another run skipped" if self.skipped else ""
        return (f"this party sent {me - self.todo['single']}/{me} own chunks and "
                f"{other - self.todo['double']}/{other} re-blinded peer chunks, received "
                f"{got_peer}/{other} peer chunks and {got_back}/{me} of its own back, "
                f"{len(self.jobs)} job(s) running{skipped}; {self._salts()}")

    def _salts(self) -> str:
        return (f"this run's salts: guest {_short(self.guest_hello.salt)}..., host "
                f"{_short(self.host_hello.salt)}...")

    def _check_same_run(self, step: str) -> None:
        """Raise if the peer has started another run since the handshake (a Hello with a new salt)."""
        while True:
            try:
                got = self.ch.recv_any(Hello, step=HELLO_STEP, peers=[self.peer], timeout=0)
            except (PeerTimeoutError, PeerDiedError):
                return  # none queued (a dead peer is reported by the wait that follows)
            if got.session == self.peer_sid and got.msg.salt != self.other.salt:
                raise self.fail(step, f"the peer started another PSI run (a Hello with salt "
                                      f"{_short(got.msg.salt)}...) during this one; {self._salts()}")

    def _feed(self) -> None:
        """Keep the pool busy with own chunks, but shallow, so the peer's chunks (its critical path) pass."""
        window = max(4, WINDOW_BYTES // (self.me.chunk_size * POINT_BYTES))
        returned = int(self.seen["double"].sum())
        while (self.next_own < self.me.n_chunks and len(self.jobs) <= self.engine.workers
               and self.next_own - returned < window):
            lo, hi = self.me.chunk_bounds(self.next_own)
            self.jobs.append(self.engine.submit_hash_blind(self.shuffled[lo:hi], self.domain, self.scalar,
                                                           tag=("single", self.next_own)))
            self.next_own += 1

    def _complete_finished(self) -> bool:
        """Send the results of finished jobs; returns whether any job finished."""
        flags = [j.done() for j in self.jobs]
        finished = [j for j, f in zip(self.jobs, flags, strict=True) if f]
        self.jobs = [j for j, f in zip(self.jobs, flags, strict=True) if not f]
        for job in finished:
            kind, index = job.tag
            if kind == "single":  # own ids, blinded once
                self.ch.send(self.peer, BlindedChunk("single", index, job.result(), self.run_tag),
                             step=CHUNK_STEP, timeout=self.left())
            elif kind == "double":  # the peer's chunk, blinded twice, goes back to it
                lo, hi = self.other.chunk_bounds(index)
                self.peer_double[lo:hi] = self._result(job, f"single chunk {index}")
                back = BlindedChunk("double", index, self.peer_double[lo:hi], self.run_tag)
                self.ch.send(self.peer, back, step=CHUNK_STEP, timeout=self.left())
            else:  # our own chunk came back; its points were validated
                self._result(job, f"double chunk {index}")
            self.todo[kind] -= 1
            if kind != "check":
                self.bar.update(len(job.out))
        return bool(finished)

    def _accept(self, msg: BlindedChunk) -> None:
        """Validate a chunk's index and length against the Hellos and queue its work."""
        hello = self.other if msg.stage == "single" else self.me
        whose = "its" if msg.stage == "single" else "our"
        seen = self.seen[msg.stage]
        if msg.index >= hello.n_chunks:
            raise self.fail(CHUNK_STEP, f"{msg.stage} chunk index {msg.index} out of range: {whose} set of "
                                        f"{hello.set_size} ids has {hello.n_chunks} chunk(s)")
        if seen[msg.index]:
            raise self.fail(CHUNK_STEP, f"{msg.stage} chunk {msg.index} received twice")
        lo, hi = hello.chunk_bounds(msg.index)
        if len(msg.points) != hi - lo:
            raise self.fail(CHUNK_STEP, f"{msg.stage} chunk {msg.index} has {len(msg.points)} points, "
                                        f"expected {hi - lo}")
        seen[msg.index] = True
        if msg.stage == "single":
            self.jobs.append(self.engine.submit_blind(msg.points, self.scalar, tag=("double", msg.index)))
        else:
            self.own_double[lo:hi] = msg.points
            self.jobs.append(self.engine.submit_check(self.own_double[lo:hi], tag=("check", msg.index)))

    def _result(self, job: Job, what: str) -> np.ndarray:
        try:
            return job.result()
        except InvalidPointError as err:
            raise self.fail(CHUNK_STEP, f"{what}: point {err.index} is not a canonical encoding of a valid "
                                        f"non-identity {self.engine.curve} point") from None

    def finish(self, common_values: np.ndarray) -> None:
        """Exchange both salts, intersection size and transcript check; raise unless the peer ran this
        same run and aligned the same list. A Finish of another run still queued (neither salt ours) is
        skipped."""
        g, h = self.guest_hello.salt, self.host_hello.salt
        check = finish_check(self.guest_hello, self.host_hello, common_values)
        mine = Finish(g, h, len(common_values), check)
        deadline = self.until(time.monotonic() + self.timeout)
        self.check_run_deadline(FINISH_STEP)
        self.ch.send(self.peer, mine, step=FINISH_STEP, timeout=self.left(deadline))
        while True:
            try:
                theirs = self.ch.recv(self.peer, Finish, step=FINISH_STEP,
                                      timeout=max(deadline - time.monotonic(), 0.0))
            except PeerTimeoutError:
                self.check_run_deadline(FINISH_STEP, "no Finish of this run yet")
                raise
            if theirs.guest_salt != g and theirs.host_salt != h:
                log.debug("psi %s: skipped a Finish of another run", self.role)
                continue
            break
        if (theirs.guest_salt, theirs.host_salt) != (g, h):
            raise self.fail(FINISH_STEP, f"the peer finished a different run (salts: guest "
                                         f"{_short(theirs.guest_salt)}..., host "
                                         f"{_short(theirs.host_salt)}...; {self._salts()}): the parties "
                                         "paired different Hellos, nothing is aligned")
        if theirs.intersection_size != mine.intersection_size:
            raise self.fail(FINISH_STEP, f"peer found {theirs.intersection_size} common ids, we found "
                                         f"{mine.intersection_size}")
        if theirs.check != mine.check:
            raise self.fail(FINISH_STEP, "peer's transcript or aligned list differs from ours "
                                         "(check mismatch)")

    def close(self) -> None:
        """Cancel the batches not started and wipe the scalar once no thread reads it: now if no batch
        runs, else when the last running one ends (a callback). Nothing here waits: a batch that never
        ends cannot keep a serving party from its next run (each wait of a run has a deadline). The
        progress bar is closed here too, so an error is never printed under a stale bar (issue #13)."""
        bar = getattr(self, "bar", None)
        if bar is not None:
            bar.close()
        running = [f for job in self.jobs for f in job.futures if not f.cancel() and not f.done()]
        if not running:
            self.scalar.wipe()
            return
        lock, left = threading.Lock(), [len(running)]

        def one_ended(_: object) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.scalar.wipe()

        for f in running:
            f.add_done_callback(one_ended)  # (called at once if it has ended meanwhile)
        log.debug("psi %s: %d batch(es) still running at the end of the run; the scalar is wiped when they "
                  "end", self.role, len(running))


def run_psi(channel: Channel, peer: str, ids: Sequence[bytes], *, role: str, chunk_size: int = DEFAULT_CHUNK,
            workers: int | None = None, timeout: float = 300.0, progress: bool = False,
            engine: Engine | None = None, max_peer_size: int = 200_000_000,
            curve: str | None = None, run_timeout: float | None = None,
            backend: str | None = None) -> PsiResult:
    """Run one PSI session with ``peer`` over ``channel`` and return this party's aligned common ids.

    ``ids`` are the party's encoded ids in input-row order (see :mod:`fedrec.psi.ids`; duplicates are
    dropped with a warning, the first row kept). ``role`` is ``"guest"`` or ``"host"`` (the peer must
    have the other). ``timeout`` bounds every wait for the peer, in seconds; ``run_timeout`` the whole
    run, from this call to its end (default: :func:`default_run_timeout` of both set sizes; see the
    module docstring, "Deadlines"); past either, :class:`PeerTimeoutError` names the peer and the step.
    ``engine`` lets a caller
    reuse a thread pool; otherwise one with ``workers`` threads (default: all cores) is created.
    A peer announcing more than ``max_peer_size`` ids is refused (it would cost 32 bytes each here).
    ``curve`` is ``"ristretto255"`` or ``"x25519"`` (default: the engine's curve, else ``DEFAULT_CURVE``);
    the peer must use the same one. ``backend`` picks the X25519 implementation of a new engine
    (``"auto"``, ``"ifma"``, ``"sodium"``; see :class:`~fedrec.psi.group.Engine`): the values sent are
    the same with either, so it is this party's choice alone and not part of the handshake.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK}], got {chunk_size}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if run_timeout is not None and not run_timeout > 0:
        raise ValueError(f"run_timeout must be positive, got {run_timeout}")
    if curve is None:
        curve = DEFAULT_CURVE if engine is None else engine.curve
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    if engine is not None and engine.curve != curve:
        raise ValueError(f"curve={curve!r} but the engine given runs {engine.curve!r}")
    if engine is not None and backend is not None:
        raise ValueError("pass backend= or engine=, not both (an engine's backend is fixed when it is made)")
    bad = next((i for i, x in enumerate(ids) if not isinstance(x, bytes)), None)
    if bad is not None:
        raise TypeError(f"ids[{bad}] is {type(ids[bad]).__name__}; encode ids with fedrec.psi.ids.encode_ids")
    start, started = time.perf_counter(), time.monotonic()
    unique = dedupe(ids, source=f"psi {role} ids")
    own_engine = engine is None
    eng = Engine(workers, curve, backend) if engine is None else engine
    session = _Session(channel, peer, role, unique, chunk_size, eng, timeout, progress, max_peer_size,
                       run_timeout=run_timeout, started=started)
    try:
        log.info("psi %s: %d ids (%d unique), peer %r, %s (%s), %d workers", role, len(ids),
                 len(unique.ids), peer, eng.curve, eng.backend, eng.workers)
        own_double, peer_double = session.run()
        t_blind = time.perf_counter() - start
        try:
            common = align(own_double, peer_double)
        except DuplicateValueError as err:
            raise session.fail(CHUNK_STEP, str(err)) from None
        session.finish(own_double[common])
    finally:
        session.close()
        if own_engine:
            eng.close(wait=False)  # a running batch ends on its own (and then wipes the scalar)
    original = session.perm[common]
    end = time.perf_counter()
    seconds = end - start
    n_mults = len(unique.ids) + session.other.set_size
    log.info("psi %s: %d common ids of %d / %d in %.2f s (%.0f scalar mults/s by this party after the "
             "handshake)", role, len(common), len(unique.ids), session.other.set_size, seconds,
             n_mults / max(t_blind - (session.connected_at - start), 1e-9))
    return PsiResult(
        ids=[unique.ids[i] for i in original],
        rows=unique.rows[original],
        n_input=unique.n_input,
        n_unique=len(unique.ids),
        peer_size=session.other.set_size,
        seconds=seconds,
        stats={"handshake_seconds": session.connected_at - start,
               "protocol_seconds": end - session.connected_at,
               "scalar_mults": n_mults, "workers": eng.workers, "curve": eng.curve,
               "backend": eng.backend,
               "skipped_chunks": session.skipped, "run_timeout": session.run_timeout},
    )
