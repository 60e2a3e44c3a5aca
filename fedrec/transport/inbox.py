"""The inbox of a :class:`~fedrec.transport.channel.Channel`: messages received and not yet delivered,
indexed so that a waiting thread finds its message in O(1) however much else is queued.

A waiting thread is woken once per inbound message (every message refreshes liveness). With the inbox a
plain list, each wake-up scanned every queued message in Python: a hostile peer that filled its buffer
(``max_buffered_messages``, 10,000) with messages of other steps made each look cost milliseconds,
held the channel lock meanwhile (so the I/O thread could not queue the next message), and a run
waiting on another step missed its deadline by seconds (``benchmarks/fuzz.py``: a PSI host run of
13.9 s for its 3 s timeout). Here each look is a dictionary lookup:

* by (peer, step): :meth:`Channel.recv`, :meth:`Channel.recv_any` with a step;
* by (peer, reply_to): :meth:`Channel.request`;
* by peer: :meth:`Channel.recv_any` without a step, and purging an earlier session;
* the rejected messages (``WireError``) of a peer: dropping the oldest beyond ``_REJECTED_QUEUED``.

Each index keeps arrival order (``OrderedDict``: O(1) first item and O(1) removal anywhere), so the order
per peer and per step is the order of arrival, as before; ``arrival`` orders items across peers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator

from fedrec.transport.channel_types import _Inbound
from fedrec.transport.errors import WireError

_Bucket = OrderedDict[int, _Inbound]


class Inbox:
    """Queued inbound messages in arrival order, with the indexes above. Not thread-safe: the channel
    holds its lock around every call."""

    def __init__(self) -> None:
        self._next = 0
        self._all: _Bucket = OrderedDict()
        self._by_step: dict[Hashable, _Bucket] = {}
        self._by_reply: dict[Hashable, _Bucket] = {}
        self._by_peer: dict[Hashable, _Bucket] = {}
        self._rejected: dict[Hashable, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __bool__(self) -> bool:
        return bool(self._all)

    def __iter__(self) -> Iterator[_Inbound]:
        """Every queued item in arrival order (a snapshot: the caller may remove items meanwhile)."""
        return iter(list(self._all.values()))

    def _keys(self, item: _Inbound) -> list[tuple[dict[Hashable, _Bucket], Hashable]]:
        keys: list[tuple[dict[Hashable, _Bucket], Hashable]] = [(self._by_step, (item.peer, item.step)),
                                                                (self._by_peer, item.peer)]
        if item.reply_to is not None:
            keys.append((self._by_reply, (item.peer, item.reply_to)))
        if isinstance(item.error, WireError):
            keys.append((self._rejected, item.peer))
        return keys

    def append(self, item: _Inbound) -> None:
        self._next += 1
        item.arrival = self._next
        self._all[item.arrival] = item
        for index, key in self._keys(item):
            bucket = index.get(key)
            if bucket is None:
                bucket = index[key] = OrderedDict()
            bucket[item.arrival] = item

    def remove(self, item: _Inbound) -> None:
        if self._all.pop(item.arrival, None) is None:
            return
        for index, key in self._keys(item):
            bucket = index[key]
            del bucket[item.arrival]
            if not bucket:  # no empty buckets: a peer cycling through step names costs no memory
                del index[key]

    def clear(self) -> None:
        self._all.clear()
        for index in (self._by_step, self._by_reply, self._by_peer, self._rejected):
            index.clear()

    @staticmethod
    def _first(index: dict[Hashable, _Bucket], key: Hashable) -> _Inbound | None:
        bucket = index.get(key)
        return next(iter(bucket.values())) if bucket else None

    def first(self, peer: str, step: str) -> _Inbound | None:
        """The oldest item of ``peer`` for ``step`` (rejected ones included)."""
        return self._first(self._by_step, (peer, step))

    def first_reply(self, peer: str, reply_to: int) -> _Inbound | None:
        """The oldest item of ``peer`` answering our message ``reply_to``."""
        return self._first(self._by_reply, (peer, reply_to))

    def first_of_peer(self, peer: str) -> _Inbound | None:
        """The oldest item of ``peer``, any step."""
        return self._first(self._by_peer, peer)

    def first_rejected(self, peer: str) -> _Inbound | None:
        """The oldest queued rejection (``WireError``) of a message of ``peer``."""
        return self._first(self._rejected, peer)

    def of_peer(self, peer: str) -> list[_Inbound]:
        """The items of ``peer`` in arrival order (a snapshot)."""
        return list(self._by_peer.get(peer, {}).values())
