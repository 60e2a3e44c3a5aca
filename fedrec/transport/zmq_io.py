"""The data socket's side of the ZeroMQ channel's I/O thread (:mod:`fedrec.transport.zmq_channel`):
framing, sends with retry, heartbeats.

Inbound messages are read and size-checked frame by frame (an oversized one is discarded without being
kept, its header kept to name the step in the error reply), their sender identified (the ``User-Id``
our ZAP handler gave the connection, never a routing id or a message field) and handed to
:meth:`Channel._on_frames`. Sends come from the user's threads over an inproc pipe (``copy=False``: array
frames are not copied); one that cannot leave at once (no route yet, a full queue) is retried every
5 ms until its patience runs out or the peer is known dead, and the outcome goes back over the pipe.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from fedrec.transport.channel import Channel
from fedrec.transport.errors import MessageTooLargeError, TransportError
from fedrec.transport.wire import peek_header

log = logging.getLogger("fedrec.transport.zmq_channel")  # the channel's log lines keep their logger name


@dataclass
class _Pending:
    peer: str
    frames: list[Any]
    step: str
    deadline: float
    patience: float = 0.0  # seconds it may wait (send_timeout, or the caller's timeout)


class ZmqIO(Channel):
    """Framing, sends and heartbeats of :class:`~fedrec.transport.zmq_channel.ZmqChannel` (module
    docstring); run on its I/O thread."""

    # set by ZmqChannel.__init__ / listen / connect
    _listening: bool
    _sock: zmq.Socket[Any]
    _routes: dict[str, bytes]
    _pending: _Pending | None
    _handshake_ok: bool
    _auth_error: TransportError | None
    _cmd_io: zmq.Socket[Any]
    _io_thread: threading.Thread

    def _drain_inbound(self) -> None:
        for _ in range(1000):
            try:
                first = self._sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._receive_one(first)

    def _receive_one(self, first: zmq.Frame) -> None:
        route, current = None, first
        if self._listening:
            route = first.bytes
            if not first.more:
                log.error("%s: dropped a message with no content frames", self.name)
                return
            current = self._sock.recv(copy=False)
        parts, total, count, oversized = [current], len(current), 1, False
        max_bytes, max_parts = self.config.max_message_bytes, self.config.max_frames + 1
        while current.more:  # read frame by frame; past the limits, frames are dropped as they come
            current = self._sock.recv(copy=False)
            count, total = count + 1, total + len(current)
            if not oversized and (total > max_bytes or count > max_parts):
                oversized = True
                del parts[1:]  # keep only the header frame, to name the step in the error reply
            if not oversized:
                parts.append(current)
        peer = self._identify(parts[0], route)
        if peer is None:
            return
        if oversized:
            err = MessageTooLargeError(f"message of {total} bytes / {count - 1} frames exceeds "
                                       f"max_message_bytes={self.config.max_message_bytes} or "
                                       f"max_frames={self.config.max_frames}")
            err.header = peek_header(parts[0].buffer, self._limits)
            self._on_rejected(peer, err, conn=route)
            return
        self._on_frames(peer, [p.buffer for p in parts], conn=route)

    def _identify(self, frame: zmq.Frame, route: bytes | None) -> str | None:
        if self.config.insecure:
            name = route.decode(errors="replace") if route is not None else self.peers[0]
        elif not self._listening:
            name = self.peers[0]  # the server, authenticated by its key during the handshake
        else:
            try:
                name = str(frame.get("User-Id"))
            except zmq.ZMQError:
                log.error("%s: dropped a message with no authenticated identity (no User-Id)", self.name)
                return None
        if name not in self._state:
            log.error("%s: dropped a message from unknown party %r", self.name, name)
            return None
        return name  # the route is adopted by the receive path (one live connection per peer)

    def _connection_alive(self, peer: str, conn: object) -> bool:
        """Probe the route of the live connection (I/O thread): libzmq refuses a closed one."""
        if not self._listening or not isinstance(conn, bytes):
            return True
        try:
            self._sock.send_multipart([conn, *self._heartbeat_frames()], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return True  # open, its queue is full
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return False
            raise
        return True

    def _connection_adopted(self, peer: str, conn: object) -> None:
        if self._listening and isinstance(conn, bytes):
            if peer in self._routes:
                log.info("%s: peer %r reconnected", self.name, peer)
            self._routes[peer] = conn

    def _try_send(self, peer: str, frames: list[Any]) -> str | None:
        """Send without blocking; None on success, else why not (the caller may retry)."""
        try:
            if self._listening:
                route = self._routes.get(peer)
                if route is None:
                    return "has not connected"
                self._sock.send_multipart([route, *frames], flags=zmq.NOBLOCK, copy=False)
            else:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return "not connected, or its queue is full (high-water mark reached)"
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self._routes.pop(peer, None)
                return "disconnected"
            raise
        return None

    def _serve_command(self) -> None:
        msg = self._cmd_io.recv_multipart(copy=False)
        if msg[0].bytes == b"stop":
            self._stop = True
            return
        peer, step = msg[1].bytes.decode(), msg[2].bytes.decode()
        command = msg[0].bytes
        patience = float(command.split(b" ", 1)[1]) if command.startswith(b"send ") else -1.0
        self._pending = _Pending(peer, msg[3:], step, time.monotonic() + patience, patience)
        self._retry_pending()

    def _retry_pending(self) -> None:
        p = self._pending
        assert p is not None
        why = self._try_send(p.peer, p.frames)
        if why is None:
            self._pending = None
            self._cmd_io.send_multipart([b"ok", b""])
            return
        with self._cond:
            dead = self._dead_reason(p.peer)
        if self._auth_error is not None:
            self._pending = None
            self._cmd_io.send_multipart([b"auth", str(self._auth_error).encode()])
        elif dead is not None:
            self._pending = None
            self._cmd_io.send_multipart([b"died", f"peer {why}; {dead}".encode()])
        elif time.monotonic() > p.deadline:
            self._pending = None
            heard = self._state[p.peer].last_heard is not None
            status = b"died" if heard else b"timeout"
            limit = ("send_timeout=" if p.patience == self.config.send_timeout else "") + f"{p.patience:g}"
            detail = f"could not send within {limit} s: peer {why}"
            self._cmd_io.send_multipart([status, detail.encode()])

    def _send_heartbeats(self) -> None:
        beat = self._heartbeat_frames()
        targets = list(self._routes) if self._listening else ([self.peers[0]] if self._handshake_ok else [])
        for peer in targets:
            self._try_send(peer, list(beat))
