"""The value types a :class:`~fedrec.transport.channel.Channel` works with.

:class:`TransportConfig` (limits, deadlines, security switches shared by every implementation),
:class:`Received` (a delivered message with its envelope), :class:`TrafficStats` (counters) and the
per-peer bookkeeping behind sequencing, replay detection and liveness (``_PeerState``) and the inbox
(``_Inbound``). The behaviour that uses them is documented and implemented in
:mod:`fedrec.transport.channel`, which re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fedrec.transport.errors import TransportError
from fedrec.transport.wire import MIB, Message, WireLimits

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class TransportConfig:
    """Limits, deadlines and security switches shared by both channel implementations.

    ``max_message_bytes`` bounds the sum of a message's frames (and libzmq's ``MAXMSGSIZE`` per frame);
    64 MiB fits a CKKS public context with Galois keys (~35 MB). What one peer may have received and not
    yet delivered to the application is bounded in count (``max_buffered_messages``) and in encoded bytes
    (``max_buffered_bytes``; one message is always admitted into an empty buffer); beyond either, a
    message is refused with an ``overloaded`` error reply naming the limit. Times are in seconds.
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
    max_buffered_bytes: int = 256 * MIB

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_frames", "max_header_bytes", "recv_timeout", "send_timeout",
                     "heartbeat_interval", "heartbeat_timeout", "handshake_timeout", "hwm", "replay_window",
                     "reply_cache_size", "reply_cache_bytes", "max_buffered_messages", "max_buffered_bytes"):
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
    n_bytes: int = 0  # encoded size, counted in the sender's ``buffered_bytes`` while queued
    arrival: int = 0  # set by the inbox: the order of arrival across peers


@dataclass
class _PeerState:
    next_seq: int = 1
    session: int | None = None
    old_sessions: dict[int, None] = field(default_factory=dict)  # insertion-ordered
    highest: int = 0
    #: the highest seq of this session that passed the envelope checks (delivered or not)
    frontier: int = 0
    seen: set[int] = field(default_factory=set)
    last_heard: float | None = None
    gone: str | None = None
    buffered: int = 0
    buffered_bytes: int = 0
    #: the connection the live session arrives on (``None``: none yet, or the implementation has no
    #: connection identity); another connection is refused while this one is alive
    conn: object | None = None
    #: the session ``conn`` has carried (``None``: none yet, e.g. just after a reconnect)
    conn_session: int | None = None
    #: rejected messages of this session still queued for the application (bounded apart from
    #: ``buffered``: a flood of rejected messages never crowds out valid ones) and their total
    rejected_queued: int = 0
    rejected_total: int = 0
    #: messages dropped because they came on a second connection while the live one was alive
    foreign_dropped: int = 0
    #: monotonic times of the last message (not a heartbeat) from the peer and of the last one we sent
    #: it (not a goodbye): a close waits for a peer that has not spoken since our last message
    #: (:meth:`fedrec.transport.zmq_channel.ZmqChannel._shutdown`)
    last_message: float | None = None
    last_sent: float | None = None
    #: the peer closed its channel (its Goodbye): ``gone`` says why; we still say goodbye to it, since it
    #: may be waiting for ours before it closes its socket
    said_goodbye: bool = False

    def new_session(self, session: int) -> None:
        """Forget the sequence state and the counters of the previous session."""
        if self.session is not None:  # (before the first session there is nothing to forget)
            self.old_sessions[self.session] = None
            while len(self.old_sessions) > 64:  # bounded: the oldest are the least likely to be replayed
                del self.old_sessions[next(iter(self.old_sessions))]
            self.buffered = self.buffered_bytes = self.rejected_queued = self.rejected_total = 0
            self.foreign_dropped = 0
        self.session, self.highest, self.frontier, self.gone = session, 0, 0, None
        self.said_goodbye = False
        self.seen.clear()


@dataclass(frozen=True)
class TrafficStats:
    """Encoded bytes and messages a channel sent (everything through ``_transmit``: messages, replies,
    resends, goodbyes; not heartbeats an implementation's I/O thread sends on its own) and received
    (every inbound message, heartbeats and rejected ones included) since it was opened."""

    bytes_sent: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    messages_received: int = 0


#: ``listener(peer, step, n_bytes, msg)`` called for every message this channel sends
SendListener = Callable[[str, str, int, Message], None]
