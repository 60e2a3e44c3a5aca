"""The in-memory twin of the ZeroMQ channel, for protocol unit tests.

Same :class:`~fedrec.transport.channel.Channel` contract, same wire: every message is encoded, its frames
are copied as a socket would copy them, and decoded by the receiver with the same limits, so message
serialization, sequencing, duplicates and error replies are exercised without sockets. Delivery happens
synchronously in the sender's thread; run each party in its own thread.

Identity is the name a channel was created with on the :class:`MemoryNetwork` (the stand-in for an
authenticated key): a channel accepts messages only from the peers it lists.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from fedrec.transport.channel import Channel, TransportConfig
from fedrec.transport.errors import PeerDiedError
from fedrec.transport.wire import WireFrame

log = logging.getLogger(__name__)


class MemoryNetwork:
    """A set of in-memory parties that can reach each other by name.

    >>> net = MemoryNetwork()
    >>> guest, host = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    """

    def __init__(self, config: TransportConfig | None = None) -> None:
        self.config = config or TransportConfig()
        self._lock = threading.Lock()
        self._channels: dict[str, MemoryChannel] = {}

    def channel(self, name: str, peers: Iterable[str]) -> MemoryChannel:
        """Join the network as ``name``, accepting messages from ``peers`` only."""
        ch = MemoryChannel(self, name, peers, self.config)
        with self._lock:
            old = self._channels.get(name)
            if old is not None and not old._closed and not old._killed:
                raise ValueError(f"party {name!r} is already on this network")
            self._channels[name] = ch
            others = list(self._channels.values())
        for other in others:  # "connecting": both sides now know the other is there
            if other is not ch and other.name in ch.peers and ch.name in other.peers and other._reachable():
                ch._mark_heard(other.name)
                other._mark_heard(ch.name)
        return ch

    def kill(self, name: str) -> None:
        """Simulate a crash of ``name``: no goodbye; its peers see it dead, and its own pending and later
        calls raise :class:`PeerDiedError` naming ``name`` (a crashed party does not carry on)."""
        with self._lock:
            ch = self._channels.get(name)
            others = list(self._channels.values())
        if ch is None:
            raise KeyError(f"no party {name!r} on this network")
        with ch._cond:
            ch._killed = True
            ch._cond.notify_all()
        for other in others:
            if other is not ch and name in other.peers:
                other._mark_gone(name, "died (killed)")

    def _lookup(self, name: str) -> MemoryChannel | None:
        with self._lock:
            return self._channels.get(name)


class MemoryChannel(Channel):
    """A :class:`Channel` whose frames travel through a :class:`MemoryNetwork`."""

    _heartbeat_liveness = False  # no background clock: death is a goodbye or MemoryNetwork.kill

    def __init__(self, network: MemoryNetwork, name: str, peers: Iterable[str],
                 config: TransportConfig) -> None:
        super().__init__(name, peers, config)
        self._network = network
        self._killed = False

    def _reachable(self) -> bool:
        return not self._closed and not self._killed

    def _health_error(self) -> PeerDiedError | None:
        return PeerDiedError(self.name, None, "this party was killed") if self._killed else None

    def _transmit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True,
                  timeout: float | None = None) -> None:
        if self._killed:
            raise PeerDiedError(self.name, step, "this party was killed")
        target = self._network._lookup(peer)
        if target is None or not target._reachable():
            state = "has not joined the network" if target is None else "is gone"
            raise PeerDiedError(peer, step, f"unreachable: it {state}")
        wire = [bytes(f) for f in frames]  # what a socket does: the receiver never shares our buffers
        target._on_frames(self.name, wire, conn=self)  # this channel object is the "connection"

    def _connection_alive(self, peer: str, conn: object) -> bool:
        return not isinstance(conn, MemoryChannel) or conn._reachable()

    def _shutdown(self) -> None:
        log.debug("in-memory channel of %r closed", self.name)
