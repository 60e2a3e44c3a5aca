"""The channel interface and the logic every implementation shares.

A :class:`Channel` connects this party (``name``) to named ``peers``. Implementations only move frames
(:meth:`Channel._transmit` out, :meth:`Channel._on_frames` in, from an *authenticated* peer name); this
module and its base ``_ReceivePath`` own everything above: encoding, size limits, sequence numbers, the
idempotency cache, replay detection, buffering by (peer, step) (:mod:`fedrec.transport.inbox`: a
waiting thread finds its message in O(1) however much else is queued), deadlines, liveness and error replies.

Sequencing, replay detection, the reply cache and error replies are the receive path in
:mod:`fedrec.transport.inbound` (``_ReceivePath``, a base of :class:`Channel`).

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
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from fedrec.transport.channel_types import (
    Received,
    SendListener,
    TrafficStats,
    TransportConfig,
    _Inbound,
    _PeerState,
)
from fedrec.transport.control import Goodbye, Heartbeat
from fedrec.transport.errors import (
    MessageTooLargeError,
    PeerDiedError,
    PeerTimeoutError,
    ProtocolError,
    TransportError,
    WireError,
)
from fedrec.transport.inbound import _ReceivePath
from fedrec.transport.inbox import Inbox
from fedrec.transport.wire import Message, WireFrame, check_size, decode, encode

__all__ = ["Channel", "Received", "SendListener", "TrafficStats", "TransportConfig"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class Channel(_ReceivePath, ABC):
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
        self._inbox = Inbox()
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
        """Call ``listener(peer, step, n_bytes, msg)`` for every message sent from now on, once it was
        handed to the transport: requests, replies, error replies, goodbyes, each retransmission again
        (not heartbeats). E.g. to split the traffic by protocol phase, or, in tests, to act at a protocol
        event. It runs on the sending thread and must not raise; ``msg`` must not be mutated."""
        self._send_listeners.append(listener)

    def send(self, peer: str, msg: Message, *, step: str, timeout: float | None = None) -> int:
        """Send ``msg`` to ``peer`` for protocol step ``step``; returns the sequence number used.
        ``timeout`` bounds the wait for a connection or queue space (default: ``send_timeout``), e.g. to
        keep within a deadline of the caller's."""
        seq, frames = self._prepare(peer, msg, step, reply_to=None)
        self._emit(peer, frames, step=step, msg=msg, timeout=timeout)
        return seq

    def recv(self, peer: str, expected: type[M], *, step: str, timeout: float | None = None) -> M:
        """The next message from ``peer`` for ``step``; it must be an ``expected`` instance."""
        self._check_peer(peer)
        item = self._wait(lambda: self._inbox.first(peer, step), [peer], step, expected.__name__, timeout)
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

        def pick() -> _Inbound | None:
            """The oldest candidate across ``cands``; one O(1) look per peer."""
            best: _Inbound | None = None
            for p in cands:
                while True:
                    m = self._inbox.first_of_peer(p) if step is None else self._inbox.first(p, step)
                    if m is None or not isinstance(m.error, WireError):
                        break
                    self._take(m)  # rejected messages were answered already: consumed here
                if m is not None and (best is None or m.arrival < best.arrival):
                    best = m
            return best

        item = self._wait(pick, cands, step or "any", "/".join(t.__name__ for t in types), timeout,
                          any_peer=True)
        return self._unwrap(item, types)

    def reply(self, request: Received[Any], msg: Message) -> None:
        """Answer ``request``; the answer is cached so a retransmitted request gets it again."""
        with self._cond:
            current = self._state[request.peer].session if request.peer in self._state else None
        if current is not None and request.session and request.session != current:
            log.warning("%s: reply to %r at step %r not sent: the request came from an earlier session of "
                        "that peer", self._name, request.peer, request.step)
            return
        seq, frames = self._prepare(request.peer, msg, request.step, reply_to=request.seq)
        with self._cond:
            key = (request.peer, request.session, request.seq)
            self._replies[key] = frames
            self._reply_bytes += sum(memoryview(f).nbytes for f in frames)
            while self._replies and (len(self._replies) > self.config.reply_cache_size
                                     or self._reply_bytes > self.config.reply_cache_bytes):
                self._drop_reply(next(iter(self._replies)))
        self._emit(request.peer, frames, step=request.step, msg=msg)

    def request(self, peer: str, msg: Message, expected: type[M], *, step: str,
                timeout: float | None = None, retries: int = 2) -> M:
        """Send ``msg`` and wait for the peer's :meth:`reply`; on a timeout retransmit the same sequence
        number up to ``retries`` times (the peer applies it once and re-sends its cached answer)."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        seq, frames = self._prepare(peer, msg, step, reply_to=None)
        self._emit(peer, frames, step=step, msg=msg)
        for attempt in range(retries + 1):
            try:
                item = self._wait(lambda: self._inbox.first_reply(peer, seq), [peer], step,
                                  expected.__name__, timeout)
                return cast(M, self._unwrap(item, (expected,)).msg)
            except PeerTimeoutError:
                if attempt == retries:
                    raise
                log.warning("%s: no reply from %r for step %r (seq %d); retransmitting (%d/%d)",
                            self._name, peer, step, seq, attempt + 1, retries)
                self._emit(peer, frames, step=step, msg=msg)
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

    def peer_session(self, peer: str) -> int | None:
        """The id of ``peer``'s current session as last seen here (``None``: not heard yet); it changes
        when the peer restarts (e.g. to re-send an opening message the restarted peer never got)."""
        self._check_peer(peer)
        with self._cond:
            return self._state[peer].session

    def alive(self, peer: str) -> bool:
        """Whether ``peer`` has been heard from and is not known to be dead."""
        self._check_peer(peer)
        with self._cond:
            return self._state[peer].last_heard is not None and self._dead_reason(peer) is None

    def close(self, reason: str = "closed") -> None:
        """Say goodbye to the peers (``reason``: why, e.g. why this party abandoned the run; the peer
        reports it in its error), then release the transport. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            heard = [p for p, s in self._state.items()
                     if s.last_heard is not None and (s.gone is None or s.said_goodbye)]
            self._cond.notify_all()
        goodbye = Goodbye(reason or "closed")
        bye = encode(goodbye, step="", seq=0, session=self._session)
        for p in heard:
            try:
                self._emit(p, list(bye), step="close", wait=False, msg=goodbye)
            except TransportError as e:
                log.debug("%s: goodbye to %r not delivered: %s", self._name, p, e)
        self._shutdown()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ implementation hooks
    @abstractmethod
    def _transmit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True,
                  timeout: float | None = None) -> None:
        """Deliver frames to ``peer``; raise PeerDiedError / PeerTimeoutError if impossible.

        ``wait=False``: one attempt, no waiting for a connection or queue space (goodbyes). ``timeout``:
        how long to wait for them (``None``: ``send_timeout``).
        """

    @abstractmethod
    def _shutdown(self) -> None:
        """Release sockets and threads (after the goodbyes were sent)."""

    def _emit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True,
              msg: Message | None = None, timeout: float | None = None) -> None:
        """``_transmit`` + the traffic counters (counted once the frames were handed over) + the send
        listeners. ``msg`` is the message the frames encode; the receive path's error replies come as
        frames only and are decoded back for the listeners (rare, and only when there are listeners)."""
        self._transmit(peer, frames, step=step, wait=wait, timeout=timeout)
        if not isinstance(msg, Goodbye):
            with self._cond:
                st = self._state.get(peer)
                if st is not None:
                    st.last_sent = time.monotonic()
        n = sum(memoryview(f).nbytes for f in frames)
        with self._traffic_lock:
            t = self._traffic
            self._traffic = TrafficStats(t.bytes_sent + n, t.messages_sent + 1, t.bytes_received,
                                         t.messages_received)
        if self._send_listeners:
            sent = msg if msg is not None else decode(frames, self._limits)[1]
            for listener in self._send_listeners:
                listener(peer, step, n, sent)

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

    def _wait(self, pick: Callable[[], _Inbound | None], peers: list[str], step: str, what: str,
              timeout: float | None, any_peer: bool = False) -> _Inbound:
        """Wait for the item ``pick`` finds (called with the lock held, on every wake-up: it must be an
        index lookup, not a scan of the inbox) and take it out of the inbox."""
        limit = self.config.recv_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                self._check_open()
                item = pick()
                if item is not None:
                    self._take(item)
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
