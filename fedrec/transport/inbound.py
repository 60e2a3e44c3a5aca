"""The receive path every :class:`~fedrec.transport.channel.Channel` shares: decode, sequencing,
replay detection, the idempotency (reply) cache and error replies.

Sequencing. Each channel instance has a random 63-bit ``session``; each (sender, receiver) pair numbers
its messages ``seq = 1, 2, ...`` (0 is reserved for heartbeats/goodbyes). The receiver keeps, per peer,
the highest seq and the set of seqs seen within ``replay_window`` of it:

* seq already seen        -> a retransmit: if we replied to it, the cached reply is sent again;
                             either way the application does not see it twice ("applied once");
* seq <= highest - window -> a replay: dropped and logged;
* a session seen before   -> a replay from an old session: dropped and logged;
* a new session           -> the peer restarted: logged, its sequence state is reset.

A message this side rejects (malformed, too large, sequence 0) is logged and answered with an
:class:`ErrorReply` (an error reply is never answered); when its header was readable it is also queued
for the application as a :class:`WireError`.
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
from fedrec.transport.wire import Header, Message, WireFrame, WireLimits, decode, encode

log = logging.getLogger(__name__)

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
    _inbox: list[_Inbound]
    _replies: OrderedDict[tuple[str, int, int], list[WireFrame]]
    _traffic_lock: threading.Lock
    _traffic: TrafficStats

    @abstractmethod
    def _emit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True) -> None:
        """Transmit ``frames`` to ``peer`` and count them (implemented by ``Channel``)."""

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
