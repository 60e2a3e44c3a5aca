"""The receive path every :class:`~fedrec.transport.channel.Channel` shares: decode, sequencing,
replay detection, the idempotency (reply) cache and error replies.

Sequencing. Each channel instance has a random 63-bit ``session``; each (sender, receiver) pair numbers
its messages ``seq = 1, 2, ...`` (0 is reserved for heartbeats/goodbyes). The receiver keeps, per peer,
the highest seq and the set of seqs seen within ``replay_window`` of it:

* seq already seen        -> a retransmit: if we replied to it, the cached reply is sent again;
                             either way the application does not see it twice ("applied once");
* seq <= highest - window -> a replay: dropped and logged;
* a session seen before   -> a replay from an old session: dropped and logged;
* a new session           -> the peer restarted: logged, its sequence state is reset, and everything
                             still queued from its earlier session (messages, rejections, cached
                             replies) is discarded, so nothing of one session reaches the next;
* seq > highest + window  -> refused (``replay``): one forged sequence number cannot push the window
                             past every later message of the live session.

Sessions are bound to connections where the implementation can tell them apart (the ZeroMQ listener:
one routing id per connection; the in-memory twin: the sending channel). The first connection of a
peer carries its session; a different session id on that same connection is refused, and a second
connection authenticated as the same peer is ignored (its messages dropped, never answered, its
route never used for replies) while the first is alive (heard within ``heartbeat_timeout``, no
goodbye, not disconnected). A peer that restarts opens a new connection after its old one closed,
so it takes over at once.

A message this side rejects (malformed, too large, sequence 0) is logged and answered with an
:class:`ErrorReply` (an error reply is never answered); when its header was readable it is also queued
for the application as a :class:`WireError`, at most ``_REJECTED_QUEUED`` per peer (older ones are
dropped: the peer was answered already) and apart from ``max_buffered_messages``, so rejected messages
never make valid ones "overloaded". Every counter is per session. Rejections are logged in full for the
first ``_LOG_FIRST`` of a session, then every ``_LOG_EVERY``-th with the running count.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence

from fedrec.transport.channel_types import TrafficStats, TransportConfig, _Inbound, _PeerState
from fedrec.transport.control import ErrorReply, Goodbye, Heartbeat
from fedrec.transport.errors import MessageTooLargeError, RemoteError, TransportError, WireError
from fedrec.transport.inbox import Inbox
from fedrec.transport.wire import Header, Message, WireFrame, WireLimits, decode, encode

log = logging.getLogger(__name__)

_REJECTED_QUEUED = 64
_LOG_FIRST = 20
_LOG_EVERY = 1000

_Action = tuple[str, list[WireFrame], str]  # (peer, frames, step) to transmit once the lock is released


class _ReceivePath(ABC):
    """Inbound handling of :class:`~fedrec.transport.channel.Channel` (its ``__init__`` sets the state)."""

    _name: str
    _peers: tuple[str, ...]
    config: TransportConfig
    _limits: WireLimits
    _session: int
    _cond: threading.Condition
    _state: dict[str, _PeerState]
    _inbox: Inbox
    _replies: OrderedDict[tuple[str, int, int], list[WireFrame]]
    _reply_bytes: int
    _traffic_lock: threading.Lock
    _traffic: TrafficStats

    @abstractmethod
    def _emit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True) -> None:
        """Transmit ``frames`` to ``peer`` and count them (implemented by ``Channel``)."""

    def _connection_alive(self, peer: str, conn: object) -> bool:
        """Whether connection ``conn`` of ``peer`` is still open (implementations that can tell)."""
        return True

    def _connection_adopted(self, peer: str, conn: object) -> None:
        """``conn`` now carries ``peer``'s session (e.g. the ZeroMQ listener routes replies there)."""
        return None

    def _admit(self, peer: str, conn: object | None) -> bool:
        """Whether a message of ``peer`` arriving on ``conn`` may be processed (see the module docstring).
        Called with ``self._cond`` held."""
        st = self._state[peer]
        if conn is None or st.conn is None or conn == st.conn:
            if conn is not None and st.conn is None:
                st.conn, st.conn_session = conn, None
                self._connection_adopted(peer, conn)
            return True
        silent = time.monotonic() - st.last_heard if st.last_heard is not None else float("inf")
        if st.gone is None and silent <= self.config.heartbeat_timeout and self._connection_alive(peer,
                                                                                                    st.conn):
            st.foreign_dropped += 1
            if st.foreign_dropped <= _LOG_FIRST or st.foreign_dropped % _LOG_EVERY == 0:
                log.warning("%s: ignored a message of %r on a second connection while its first one is alive "
                            "(%d so far this session)", self._name, peer, st.foreign_dropped)
            return False
        log.info("%s: peer %r is back on a new connection", self._name, peer)
        st.conn, st.conn_session = conn, None
        self._connection_adopted(peer, conn)
        return True

    def _on_frames(self, peer: str, frames: Sequence[WireFrame], conn: object | None = None) -> None:
        """Handle one inbound message from the authenticated ``peer`` (any thread); ``conn`` identifies
        the connection it came on (``None``: the implementation cannot tell)."""
        n = sum(memoryview(f).nbytes for f in frames)
        with self._traffic_lock:
            t = self._traffic
            self._traffic = TrafficStats(t.bytes_sent, t.messages_sent, t.bytes_received + n,
                                         t.messages_received + 1)
        if peer not in self._state:
            log.error("%s: dropped a message from %r, which is not one of this channel's peers %s",
                      self._name, peer, list(self._peers))
            return
        with self._cond:
            if not self._admit(peer, conn):
                return
        actions: list[_Action] = []
        try:
            header, msg = decode(frames, self._limits)
        except WireError as e:
            self._reject(peer, e, actions)
        else:
            with self._cond:
                self._accept(peer, header, msg, actions, conn, n_bytes=n)
        self._run_actions(actions)

    def _on_rejected(self, peer: str, err: WireError, conn: object | None = None) -> None:
        """Report a message the implementation rejected before decoding (e.g. over the size limit)."""
        with self._cond:
            if not self._admit(peer, conn):
                return
        actions: list[_Action] = []
        self._reject(peer, err, actions)
        self._run_actions(actions)

    def _run_actions(self, actions: list[_Action]) -> None:
        for p, fr, st in actions:
            try:
                self._emit(p, fr, step=st)
            except TransportError as e:
                log.warning("%s: could not answer %r at step %r: %s", self._name, p, st, e)

    def _reject(self, peer: str, err: WireError, actions: list[_Action], code: str | None = None,
                queue: bool = True) -> None:
        h: Header | None = err.header
        where = f"step {h.step!r}, seq {h.seq}, type {h.type}" if h else "unreadable header"
        code = code or ("too_large" if isinstance(err, MessageTooLargeError) else "malformed")
        with self._cond:
            st = self._state[peer]
            st.last_heard = time.monotonic()
            st.rejected_total += 1
            n = st.rejected_total
            if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
                log.error("%s: rejected a message from peer %r (%s): %s [%d rejected this session]",
                          self._name, peer, where, err, n)
            if h is not None and h.type == ErrorReply.TYPE:
                return  # never answer an error with an error
            if h is not None and queue and st.session in (None, h.session):
                if st.rejected_queued >= _REJECTED_QUEUED:
                    self._drop_oldest_rejected(peer)
                e = WireError(f"message from peer {peer!r} at step {h.step!r} rejected: {err}")
                self._inbox.append(_Inbound(peer, h.step, h.seq, h.reply_to, h.session, None, e))
                st.rejected_queued += 1
                self._cond.notify_all()
            self._queue_error(peer, code, str(err), h.step if h else "", h.seq if h else None, actions)

    def _drop_oldest_rejected(self, peer: str) -> None:
        item = self._inbox.first_rejected(peer)
        if item is not None:
            self._inbox.remove(item)
            self._state[peer].rejected_queued -= 1

    def _take(self, item: _Inbound) -> None:
        """Take ``item`` out of the inbox (delivered, or a rejection consumed)."""
        self._inbox.remove(item)
        self._forget(item)

    def _forget(self, item: _Inbound) -> None:
        """Book-keeping for an item taken out of the inbox."""
        st = self._state[item.peer]
        if isinstance(item.error, WireError):
            st.rejected_queued -= 1
        else:
            st.buffered -= 1
            st.buffered_bytes -= item.n_bytes

    def _purge_peer(self, peer: str, keep_session: int) -> None:
        """Discard what an earlier session of ``peer`` left queued: messages, rejections, cached replies."""
        stale = [m for m in self._inbox.of_peer(peer) if m.session != keep_session]
        for m in stale:
            self._inbox.remove(m)
        for key in [k for k in self._replies if k[0] == peer and k[1] != keep_session]:
            self._drop_reply(key)
        if stale:
            log.warning("%s: discarded %d undelivered message(s) of an earlier session of %r", self._name,
                        len(stale), peer)

    def _drop_reply(self, key: tuple[str, int, int]) -> None:
        frames = self._replies.pop(key, None)
        if frames is not None:
            self._reply_bytes -= sum(memoryview(f).nbytes for f in frames)

    def _queue_error(self, peer: str, code: str, detail: str, step: str, seq: int | None,
                     actions: list[_Action]) -> None:
        st = self._state[peer]
        out_seq = st.next_seq
        st.next_seq += 1
        frames = encode(ErrorReply(code, detail, step, seq), step=step, seq=out_seq, session=self._session,
                        reply_to=seq)
        actions.append((peer, frames, step))

    def _accept(self, peer: str, h: Header, msg: Message, actions: list[_Action],
                conn: object | None = None, n_bytes: int = 0) -> None:
        st = self._state[peer]
        st.last_heard = time.monotonic()
        self._cond.notify_all()
        beat = isinstance(msg, Heartbeat)  # liveness, and a restarted peer's first sign of its session
        if st.session != h.session:
            if st.session is None:
                st.new_session(h.session)
            elif h.session in st.old_sessions:
                if not beat:
                    log.warning("%s: dropped a replayed message from an old session of peer %r (step %r, "
                                "seq %d)", self._name, peer, h.step, h.seq)
                return
            elif conn is not None and conn == st.conn and st.conn_session is not None:
                if beat:
                    return
                self._reject(peer, _with(WireError(f"{h.type}: session id changed on a live connection "
                                                   "(a restarted party opens a new connection)"), h),
                             actions, code="replay", queue=False)
                return
            else:
                log.warning("%s: peer %r restarted (new session); its sequence numbers start over and "
                            "what its earlier session left queued is discarded", self._name, peer)
                st.new_session(h.session)
                self._purge_peer(peer, h.session)
        if conn is not None and conn == st.conn:
            st.conn_session = h.session
        if beat:
            return
        st.last_message = time.monotonic()
        if isinstance(msg, Goodbye):
            st.gone, st.said_goodbye = f"closed its channel ({msg.reason})", True
            return
        if h.seq == 0:
            self._reject(peer, _with(WireError(f"{h.type}: sequence number 0 is reserved"), h), actions,
                         queue=False)
            return
        if st.frontier and h.seq > st.frontier + self.config.replay_window:
            self._reject(peer, _with(WireError(f"{h.type}: sequence number {h.seq} is more than "
                                               f"replay_window={self.config.replay_window} ahead of the "
                                               f"highest seen ({st.frontier})"), h),
                         actions, code="replay", queue=False)
            return
        st.frontier = max(st.frontier, h.seq)
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
        full = self._buffer_full(st, n_bytes)
        if full is not None:
            st.rejected_total += 1
            if st.rejected_total <= _LOG_FIRST or st.rejected_total % _LOG_EVERY == 0:
                log.error("%s: undelivered messages from %r: %s; rejecting step %r seq %d [%d rejected this "
                          "session]", self._name, peer, full, h.step, h.seq, st.rejected_total)
            if not isinstance(msg, ErrorReply):  # never answer an error with an error (no ping-pong)
                self._queue_error(peer, "overloaded", f"receiver buffer for {peer!r} full: {full}", h.step,
                                  h.seq, actions)
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
        item.n_bytes = n_bytes
        self._inbox.append(item)
        st.buffered += 1
        st.buffered_bytes += n_bytes

    def _buffer_full(self, st: _PeerState, n_bytes: int) -> str | None:
        """Why one more message of ``n_bytes`` from this peer does not fit its receive buffer (or None)."""
        c = self.config
        if st.buffered >= c.max_buffered_messages:
            return f"{st.buffered} messages (max_buffered_messages={c.max_buffered_messages})"
        if st.buffered and st.buffered_bytes + n_bytes > c.max_buffered_bytes:  # one always fits
            return (f"{st.buffered_bytes} bytes in {st.buffered} messages + {n_bytes} "
                    f"(max_buffered_bytes={c.max_buffered_bytes})")
        return None


def _with(err: WireError, header: Header) -> WireError:
    err.header = header
    return err
