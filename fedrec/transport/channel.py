"""The channel interface and the logic every implementation shares.

A :class:`Channel` connects this party (``name``) to named ``peers``. Implementations only move frames
(:meth:`Channel._transmit` out, :meth:`Channel._on_frames` in, from an *authenticated* peer name); this
module owns everything above: encoding, size limits, sequence numbers, the idempotency cache, replay
detection, buffering by (peer, step), deadlines, liveness and error replies.

Sequencing. Each channel instance has a random 63-bit ``session``; each (sender, receiver) pair numbers
its messages ``seq = 1, 2, ...`` (0 is reserved for heartbeats/goodbyes). The receiver keeps, per peer,
the highest seq and the set of seqs seen within ``replay_window`` of it:

* seq already seen        -> a retransmit: if we replied to it, the cached reply is sent again;
                             either way the application does not see it twice ("applied once");
* seq <= highest - window -> a replay: dropped and logged;
* a session seen before   -> a replay from an old session: dropped and logged;
* a new session           -> the peer restarted: logged, its sequence state is reset.

Liveness. Any message, including the heartbeats an implementation sends every
``heartbeat_interval``, refreshes ``last_heard``. A peer not heard from for ``heartbeat_timeout``, or
that said goodbye, or that became unreachable, is dead: waits on it raise :class:`PeerDiedError` at once,
naming the peer and the step; a live peer that is merely slow raises :class:`PeerTimeoutError` at the
receive deadline.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from fedrec.transport.control import ErrorReply, Goodbye, Heartbeat
from fedrec.transport.errors import (
    MessageTooLargeError,
    PeerDiedError,
    PeerTimeoutError,
    ProtocolError,
    RemoteError,
    TransportError,
    WireError,
)
from fedrec.transport.wire import MIB, Header, Message, WireFrame, WireLimits, check_size, decode, encode

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
_Action = tuple[str, list[WireFrame], str]  # (peer, frames, step) to transmit once the lock is released


@dataclass(frozen=True)
class TransportConfig:
    """Limits, deadlines and security switches shared by both channel implementations.

    ``max_message_bytes`` bounds the sum of a message's frames (and libzmq's ``MAXMSGSIZE`` per frame);
    64 MiB fits a CKKS public context with Galois keys (~35 MB). Times are in seconds.
    """

    max_message_bytes: int = 64 * MIB
    max_frames: int = 100_000
    max_header_bytes: int = 16 * MIB
    recv_timeout: float = 300.0
    send_timeout: float = 60.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 30.0
    handshake_timeout: float = 10.0
    hwm: int = 1000
    insecure: bool = False
    replay_window: int = 4096
    reply_cache_size: int = 256
    reply_cache_bytes: int = 256 * MIB
    max_buffered_messages: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_frames", "max_header_bytes", "recv_timeout", "send_timeout",
                     "heartbeat_interval", "heartbeat_timeout", "handshake_timeout", "hwm", "replay_window",
                     "reply_cache_size", "reply_cache_bytes", "max_buffered_messages"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TransportConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ValueError(f"TransportConfig.heartbeat_timeout ({self.heartbeat_timeout}) must exceed "
                             f"twice heartbeat_interval ({self.heartbeat_interval})")
        if self.max_header_bytes > self.max_message_bytes:
            raise ValueError("TransportConfig.max_header_bytes must not exceed max_message_bytes")

    @property
    def limits(self) -> WireLimits:
        return WireLimits(self.max_message_bytes, self.max_frames, self.max_header_bytes)


@dataclass(frozen=True)
class Received(Generic[M]):
    """A delivered message with its envelope. ``peer`` is the authenticated sender."""

    peer: str
    step: str
    seq: int
    msg: M
    reply_to: int | None = None
    session: int = field(default=0, repr=False)


@dataclass
class _Inbound:
    peer: str
    step: str
    seq: int
    reply_to: int | None
    session: int
    msg: Message | None
    error: TransportError | None  # a RemoteError, or the WireError of a message we rejected


@dataclass
class _PeerState:
    next_seq: int = 1
    session: int | None = None
    old_sessions: set[int] = field(default_factory=set)
    highest: int = 0
    seen: set[int] = field(default_factory=set)
    last_heard: float | None = None
    gone: str | None = None
    buffered: int = 0


@dataclass(frozen=True)
class TrafficStats:
    """Encoded bytes and messages a channel sent (everything through ``_transmit``: messages, replies,
    resends, goodbyes; not heartbeats an implementation's I/O thread sends on its own) and received
    (every inbound message, heartbeats and rejected ones included) since it was opened."""

    bytes_sent: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    messages_received: int = 0


#: ``listener(peer, step, n_bytes)`` called for every message this channel sends
SendListener = Callable[[str, str, int], None]


class Channel(ABC):
    """Typed, sequenced, authenticated messaging with named peers (see the package docstring)."""

    #: whether silence longer than ``heartbeat_timeout`` means death (the in-memory twin has no clock)
    _heartbeat_liveness: bool = True

    def __init__(self, name: str, peers: Iterable[str], config: TransportConfig | None = None) -> None:
        peer_names = tuple(dict.fromkeys(peers))
        for n in (name, *peer_names):
            if not isinstance(n, str) or not n or len(n) > 64 or not n.isprintable():
                raise ValueError(f"party names must be printable strings of 1..64 chars, got {n!r}")
        if name in peer_names:
            raise ValueError(f"party {name!r} cannot be its own peer")
        if not peer_names:
            raise ValueError(f"party {name!r}: at least one peer is required")
        self._name = name
        self._peers = peer_names
        self.config = config or TransportConfig()
        self._limits = self.config.limits
        self._session = secrets.randbits(63)
        self._cond = threading.Condition(threading.RLock())
        self._state = {p: _PeerState() for p in peer_names}
        self._inbox: list[_Inbound] = []
        self._replies: OrderedDict[tuple[str, int, int], list[WireFrame]] = OrderedDict()
        self._reply_bytes = 0
        self._closed = False
        self._traffic_lock = threading.Lock()
        self._traffic = TrafficStats()
        self._send_listeners: list[SendListener] = []

    # ------------------------------------------------------------------ public API
    @property
    def name(self) -> str:
        return self._name

    @property
    def peers(self) -> tuple[str, ...]:
        return self._peers

    # -- traffic counters (public; benchmarks and monitoring read them)
    @property
    def traffic(self) -> TrafficStats:
        """A snapshot of the bytes/messages sent and received so far."""
        with self._traffic_lock:
            return self._traffic

    @property
    def bytes_sent(self) -> int:
        return self.traffic.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.traffic.bytes_received

    @property
    def messages_sent(self) -> int:
        return self.traffic.messages_sent

    @property
    def messages_received(self) -> int:
        return self.traffic.messages_received

    def add_send_listener(self, listener: SendListener) -> None:
        """Call ``listener(peer, step, n_bytes)`` for every message sent from now on (e.g. to split the
        traffic by protocol phase); it runs on the sending thread and must not raise."""
        self._send_listeners.append(listener)

    def send(self, peer: str, msg: Message, *, step: str) -> int:
        """Send ``msg`` to ``peer`` for protocol step ``step``; returns the sequence number used."""
        seq, frames = self._prepare(peer, msg, step, reply_to=None)
        self._emit(peer, frames, step=step)
        return seq

    def recv(self, peer: str, expected: type[M], *, step: str, timeout: float | None = None) -> M:
        """The next message from ``peer`` for ``step``; it must be an ``expected`` instance."""
        self._check_peer(peer)
        item = self._wait(lambda m: m.peer == peer and m.step == step, [peer], step,
                          expected.__name__, timeout)
        return cast(M, self._unwrap(item, (expected,)).msg)

    def recv_any(self, expected: type[M] | tuple[type[M], ...], *, step: str | None = None,
                 peers: Iterable[str] | None = None, timeout: float | None = None) -> Received[M]:
        """The next message from any of ``peers`` (default: all), optionally only for ``step``.

        For serving loops: messages this channel rejected were already logged and answered with an
        error reply, so they are skipped here; a :class:`RemoteError` from a peer is raised. Raises
        :class:`PeerDiedError` only when every candidate peer is dead.
        """
        cands = list(self._peers if peers is None else dict.fromkeys(peers))
        for p in cands:
            self._check_peer(p)
        types = expected if isinstance(expected, tuple) else (expected,)
        want = set(cands)

        def match(m: _Inbound) -> bool:
            return m.peer in want and (step is None or m.step == step) and not isinstance(m.error, WireError)

        item = self._wait(match, cands, step or "any", "/".join(t.__name__ for t in types), timeout,
                          any_peer=True)
        return self._unwrap(item, types)

    def reply(self, request: Received[Any], msg: Message) -> None:
        """Answer ``request``; the answer is cached so a retransmitted request gets it again."""
        seq, frames = self._prepare(request.peer, msg, request.step, reply_to=request.seq)
        with self._cond:
            key = (request.peer, request.session, request.seq)
            self._replies[key] = frames
            self._reply_bytes += sum(memoryview(f).nbytes for f in frames)
            while self._replies and (len(self._replies) > self.config.reply_cache_size
                                     or self._reply_bytes > self.config.reply_cache_bytes):
                _, old = self._replies.popitem(last=False)
                self._reply_bytes -= sum(memoryview(f).nbytes for f in old)
        self._emit(request.peer, frames, step=request.step)

    def request(self, peer: str, msg: Message, expected: type[M], *, step: str,
                timeout: float | None = None, retries: int = 2) -> M:
        """Send ``msg`` and wait for the peer's :meth:`reply`; on a timeout retransmit the same sequence
        number up to ``retries`` times (the peer applies it once and re-sends its cached answer)."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        seq, frames = self._prepare(peer, msg, step, reply_to=None)
        self._emit(peer, frames, step=step)
        for attempt in range(retries + 1):
            try:
                item = self._wait(lambda m: m.peer == peer and m.reply_to == seq, [peer], step,
                                  expected.__name__, timeout)
                return cast(M, self._unwrap(item, (expected,)).msg)
            except PeerTimeoutError:
                if attempt == retries:
                    raise
                log.warning("%s: no reply from %r for step %r (seq %d); retransmitting (%d/%d)",
                            self._name, peer, step, seq, attempt + 1, retries)
                self._emit(peer, frames, step=step)
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_for_peers(self, peers: Iterable[str] | None = None, timeout: float | None = None) -> None:
        """Block until every peer in ``peers`` (default: all) has been heard from."""
        names = list(self._peers if peers is None else peers)
        for p in names:
            self._check_peer(p)
        limit = self.config.recv_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                self._check_open()
                missing = [p for p in names if self._state[p].last_heard is None]
                if not missing:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeoutError(missing[0], "connect", f"did not connect within {limit:.1f} s"
                                           + self._not_connected_hint())
                self._cond.wait(min(left, 0.2))

    def alive(self, peer: str) -> bool:
        """Whether ``peer`` has been heard from and is not known to be dead."""
        self._check_peer(peer)
        with self._cond:
            return self._state[peer].last_heard is not None and self._dead_reason(peer) is None

    def close(self) -> None:
        """Say goodbye to the peers, then release the transport. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            heard = [p for p, s in self._state.items() if s.last_heard is not None and s.gone is None]
            self._cond.notify_all()
        bye = encode(Goodbye("closed"), step="", seq=0, session=self._session)
        for p in heard:
            try:
                self._emit(p, list(bye), step="close", wait=False)
            except TransportError as e:
                log.debug("%s: goodbye to %r not delivered: %s", self._name, p, e)
        self._shutdown()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ implementation hooks
    @abstractmethod
    def _transmit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True) -> None:
        """Deliver frames to ``peer``; raise PeerDiedError / PeerTimeoutError if impossible.

        ``wait=False``: one attempt, no waiting for a connection or queue space (goodbyes).
        """

    @abstractmethod
    def _shutdown(self) -> None:
        """Release sockets and threads (after the goodbyes were sent)."""

    def _emit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True) -> None:
        """``_transmit`` + the traffic counters (counted once the frames were handed over)."""
        self._transmit(peer, frames, step=step, wait=wait)
        n = sum(memoryview(f).nbytes for f in frames)
        with self._traffic_lock:
            t = self._traffic
            self._traffic = TrafficStats(t.bytes_sent + n, t.messages_sent + 1, t.bytes_received,
                                         t.messages_received)
        for listener in self._send_listeners:
            listener(peer, step, n)

    def _health_error(self) -> TransportError | None:
        """A fatal transport condition to raise from every call (e.g. the server refused our key)."""
        return None

    def _not_connected_hint(self) -> str:
        return ""

    def _heartbeat_frames(self) -> list[WireFrame]:
        return encode(Heartbeat(), step="", seq=0, session=self._session)

    def _mark_gone(self, peer: str, reason: str) -> None:
        with self._cond:
            st = self._state.get(peer)
            if st is not None and st.gone is None:
                st.gone = reason
                self._cond.notify_all()

    def _mark_heard(self, peer: str) -> None:
        with self._cond:
            self._state[peer].last_heard = time.monotonic()
            self._cond.notify_all()

    def _on_frames(self, peer: str, frames: Sequence[WireFrame]) -> None:
        """Handle one inbound message from the authenticated ``peer`` (any thread)."""
        n = sum(memoryview(f).nbytes for f in frames)
        with self._traffic_lock:
            t = self._traffic
            self._traffic = TrafficStats(t.bytes_sent, t.messages_sent, t.bytes_received + n,
                                         t.messages_received + 1)
        if peer not in self._state:
            log.error("%s: dropped a message from %r, which is not one of this channel's peers %s",
                      self._name, peer, list(self._peers))
            return
        actions: list[_Action] = []
        try:
            header, msg = decode(frames, self._limits)
        except WireError as e:
            self._reject(peer, e, actions)
        else:
            with self._cond:
                self._accept(peer, header, msg, actions)
        self._run_actions(actions)

    def _on_rejected(self, peer: str, err: WireError) -> None:
        """Report a message the implementation rejected before decoding (e.g. over the size limit)."""
        actions: list[_Action] = []
        self._reject(peer, err, actions)
        self._run_actions(actions)

    def _run_actions(self, actions: list[_Action]) -> None:
        for p, fr, st in actions:
            try:
                self._emit(p, fr, step=st)
            except TransportError as e:
                log.warning("%s: could not answer %r at step %r: %s", self._name, p, st, e)

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"channel of {self._name!r} is closed")
        err = self._health_error()
        if err is not None:
            raise err

    def _check_peer(self, peer: str) -> None:
        if peer not in self._state:
            raise ValueError(f"{peer!r} is not a peer of {self._name!r} (peers: {list(self._peers)})")

    def _prepare(self, peer: str, msg: Message, step: str,
                 reply_to: int | None) -> tuple[int, list[WireFrame]]:
        self._check_peer(peer)
        with self._cond:
            self._check_open()
            reason = self._dead_reason(peer)
            if reason is not None:
                raise PeerDiedError(peer, step, reason)
            seq = self._state[peer].next_seq
            self._state[peer].next_seq += 1
        frames = encode(msg, step=step, seq=seq, session=self._session, reply_to=reply_to)
        try:
            check_size(frames, self._limits)
        except MessageTooLargeError as e:
            raise MessageTooLargeError(f"{msg.TYPE} for peer {peer!r} at step {step!r}: {e}") from None
        return seq, frames

    def _dead_reason(self, peer: str) -> str | None:
        st = self._state[peer]
        if st.gone is not None:
            return st.gone
        if self._heartbeat_liveness and st.last_heard is not None:
            silent = time.monotonic() - st.last_heard
            if silent > self.config.heartbeat_timeout:
                return (f"no message or heartbeat for {silent:.1f} s "
                        f"(heartbeat_timeout={self.config.heartbeat_timeout:g} s)")
        return None

    def _wait(self, match: Callable[[_Inbound], bool], peers: list[str], step: str, what: str,
              timeout: float | None, any_peer: bool = False) -> _Inbound:
        limit = self.config.recv_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                self._check_open()
                for i, item in enumerate(self._inbox):
                    if match(item):
                        del self._inbox[i]
                        self._state[item.peer].buffered -= 1
                        return item
                dead = {p: r for p in peers if (r := self._dead_reason(p)) is not None}
                if dead and (not any_peer or len(dead) == len(peers)):
                    p, reason = next(iter(dead.items()))
                    raise PeerDiedError(p, step, f"{reason}; was waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    p = peers[0] if len(peers) == 1 else "/".join(peers)
                    heard = [self._state[q].last_heard for q in peers]
                    hint = (" (never connected" + self._not_connected_hint() + ")"
                            if all(h is None for h in heard) else "")
                    raise PeerTimeoutError(p, step, f"no {what} within {limit:.1f} s{hint}")
                self._cond.wait(min(left, self.config.heartbeat_interval / 2))

    def _unwrap(self, item: _Inbound, types: tuple[type[Message], ...]) -> Received[Any]:
        if item.error is not None:
            raise item.error
        assert item.msg is not None
        if not isinstance(item.msg, types):
            raise ProtocolError(f"peer {item.peer!r} sent {item.msg.TYPE} at step {item.step!r}, "
                                f"expected {'/'.join(t.TYPE for t in types)}")
        return Received(item.peer, item.step, item.seq, item.msg, item.reply_to, item.session)

    def _reject(self, peer: str, err: WireError, actions: list[_Action]) -> None:
        h: Header | None = err.header
        where = f"step {h.step!r}, seq {h.seq}, type {h.type}" if h else "unreadable header"
        log.error("%s: rejected a message from peer %r (%s): %s", self._name, peer, where, err)
        code = "too_large" if isinstance(err, MessageTooLargeError) else "malformed"
        with self._cond:
            st = self._state[peer]
            st.last_heard = time.monotonic()
            if h is not None and h.type == ErrorReply.TYPE:
                return  # never answer an error with an error
            if h is not None and st.buffered < self.config.max_buffered_messages:
                e = WireError(f"message from peer {peer!r} at step {h.step!r} rejected: {err}")
                self._inbox.append(_Inbound(peer, h.step, h.seq, h.reply_to, h.session, None, e))
                st.buffered += 1
                self._cond.notify_all()
            self._queue_error(peer, code, str(err), h.step if h else "", h.seq if h else None, actions)

    def _queue_error(self, peer: str, code: str, detail: str, step: str, seq: int | None,
                     actions: list[_Action]) -> None:
        st = self._state[peer]
        out_seq = st.next_seq
        st.next_seq += 1
        frames = encode(ErrorReply(code, detail, step, seq), step=step, seq=out_seq, session=self._session,
                        reply_to=seq)
        actions.append((peer, frames, step))

    def _accept(self, peer: str, h: Header, msg: Message, actions: list[_Action]) -> None:
        st = self._state[peer]
        st.last_heard = time.monotonic()
        self._cond.notify_all()
        if isinstance(msg, Heartbeat):  # liveness only; carries no state to sequence
            return
        if st.session != h.session:
            if st.session is None:
                st.session = h.session
            elif h.session in st.old_sessions:
                log.warning("%s: dropped a replayed message from an old session of peer %r (step %r, seq %d)",
                            self._name, peer, h.step, h.seq)
                return
            else:
                log.warning("%s: peer %r restarted (new session); its sequence numbers start over",
                            self._name, peer)
                st.old_sessions.add(st.session)
                st.session, st.highest, st.gone = h.session, 0, None
                st.seen.clear()
        if isinstance(msg, Goodbye):
            st.gone = f"closed its channel ({msg.reason})"
            return
        if h.seq == 0:
            self._reject(peer, WireError(f"{h.type}: sequence number 0 is reserved"), actions)
            return
        if h.seq <= st.highest - self.config.replay_window:
            log.warning("%s: dropped a replayed message from %r (step %r, seq %d is older than the window)",
                        self._name, peer, h.step, h.seq)
            return
        if h.seq in st.seen:
            cached = self._replies.get((peer, h.session, h.seq))
            if cached is not None:
                log.info("%s: retransmit of step %r seq %d from %r answered from the reply cache",
                         self._name, h.step, h.seq, peer)
                actions.append((peer, cached, h.step))
            else:
                log.info("%s: duplicate of step %r seq %d from %r dropped (already delivered)",
                         self._name, h.step, h.seq, peer)
            return
        if st.buffered >= self.config.max_buffered_messages:
            log.error("%s: %d undelivered messages from %r; rejecting step %r seq %d",
                      self._name, st.buffered, peer, h.step, h.seq)
            self._queue_error(peer, "overloaded", "receiver buffer full", h.step, h.seq, actions)
            return
        st.seen.add(h.seq)
        st.highest = max(st.highest, h.seq)
        if len(st.seen) > 2 * self.config.replay_window:
            st.seen = {s for s in st.seen if s > st.highest - self.config.replay_window}
        if isinstance(msg, ErrorReply):
            err = RemoteError(peer, msg.about_step, f"rejected our message (seq {msg.about_seq}): "
                                                    f"{msg.code}: {msg.detail}")
            item = _Inbound(peer, msg.about_step, h.seq, msg.about_seq, h.session, None, err)
        else:
            item = _Inbound(peer, h.step, h.seq, h.reply_to, h.session, msg, None)
        self._inbox.append(item)
        st.buffered += 1
