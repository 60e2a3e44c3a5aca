"""Authentication and handshakes of the ZeroMQ channel (:mod:`fedrec.transport.zmq_channel`).

The ZAP handler, ours, answered on the channel's I/O thread, maps a client's CURVE public key to a party
name (libzmq then attaches that name to every frame as ``User-Id``) and refuses every other key.

A wrong key (issue #13) is said once, with key fingerprints (:func:`fedrec.transport.keys.fingerprint`),
never once per reconnect: the listener logs a refused key the first time it sees it (then counts it) and
the first failed handshake of a client holding a wrong key for it, and names both in its "did not connect"
error; a connecting party whose key the server refused, or whose handshake failed
``_HANDSHAKE_FAILURES_FATAL`` times in a row (the server key it was given is not the server's), stops
reconnecting and fails every call at once with :class:`AuthenticationError` naming the key and who
refused it. The socket monitor's events drive this (:meth:`ZmqHandshake._drain_monitor`).
"""

from __future__ import annotations

from typing import Any

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from fedrec.transport.errors import AuthenticationError
from fedrec.transport.keys import KeyPair, fingerprint
from fedrec.transport.zmq_io import ZmqIO, log

_ZAP_DOMAIN = b"fedrec"
#: consecutive failed CURVE handshakes after which a connecting party gives up: the server's key it holds
#: is not the server's (a wrong key fails every time; a network fault closes, it does not fail a handshake)
_HANDSHAKE_FAILURES_FATAL = 3
_REFUSED_KEYS_KEPT = 64


class ZmqHandshake(ZmqIO):
    """The authentication part of :class:`~fedrec.transport.zmq_channel.ZmqChannel`: the ZAP handler,
    the monitor's handshake events, wrong keys said once, giving up on a key that cannot work."""

    # set by ZmqChannel.__init__ / listen / connect
    _keys: KeyPair | None
    _allowed: dict[str, str]  # public key -> party name
    _zap: zmq.Socket[Any] | None
    _monitor: zmq.Socket[Any]
    _probe_key: str | None
    _probe_refused_by_us: bool
    _last_event: str
    _handshake_failures: int  # consecutive, since the last handshake that succeeded
    _handshake_failures_total: int
    _refused_keys: dict[str, int]  # listener: refused client key -> attempts
    _server_key: str  # connecting: the server's public key we were given
    endpoint: str

    def _serve_zap(self) -> None:
        assert self._zap is not None
        msg = self._zap.recv_multipart()
        if len(msg) < 6:
            log.error("%s: malformed ZAP request (%d frames)", self.name, len(msg))
            return
        version, request_id, domain, address, _identity, mechanism, *creds = msg
        name, reason = None, b"Unknown key"
        curve = mechanism == b"CURVE" and len(creds) == 1 and len(creds[0]) == 32
        key = z85.encode(creds[0]).decode() if curve else None
        if version != b"1.0" or domain != _ZAP_DOMAIN:
            reason = b"Bad ZAP version or domain"
        elif key is None:
            reason = b"CURVE required"
        else:
            name = self._allowed.get(key)
        addr = address.decode(errors="replace")
        if name is not None:
            log.debug("%s: authenticated %r from %s", self.name, name, addr)
            self._zap.send_multipart([b"1.0", request_id, b"200", b"OK", name.encode(), b""])
            return
        if key is not None and key == self._probe_key:
            self._probe_refused_by_us = True
        else:
            self._note_refused(key or "", addr, reason.decode())
        self._zap.send_multipart([b"1.0", request_id, b"400", reason, b"", b""])

    def _expected_keys(self) -> str:
        return ", ".join(f"{party!r} {fingerprint(k)}" for k, party in self._allowed.items())

    def _note_refused(self, key: str, addr: str, reason: str) -> None:
        """Log a refused client key once (with its fingerprint and the expected ones), then count it."""
        first = key not in self._refused_keys
        if first and len(self._refused_keys) >= _REFUSED_KEYS_KEPT:
            self._refused_keys.pop(next(iter(self._refused_keys)))
        self._refused_keys[key] = self._refused_keys.get(key, 0) + 1
        what = f"CURVE key {fingerprint(key)}" if key else "no CURVE key"
        if first and len(self._refused_keys) <= 8:
            log.warning("%s: refused a connection from %s with %s: %s; this party accepts %s. Compare the "
                        "fingerprints (fedrec keys prints them); further attempts with it are not logged",
                        self.name, addr, what, reason, self._expected_keys())
        else:
            log.debug("%s: refused %s from %s again (%d attempts)", self.name, what, addr,
                      self._refused_keys.get(key, 0))

    def _drain_monitor(self) -> None:
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            event, value = ev["event"], ev["value"]
            try:
                name = zmq.Event(event).name
            except ValueError:
                name = str(event)
            self._last_event = f"{name}({value})"
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failures = 0
                if not self._listening:
                    self._handshake_ok = True
                    self._send_heartbeats()  # so the server learns our route at once
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and not self._listening:
                own = fingerprint(self._keys.public) if self._keys else "?"
                self._give_up(AuthenticationError(
                    f"{self.name!r}: {self.peers[0]!r} at {self.endpoint} refused this party's CURVE key "
                    f"{own} (ZAP status {value}): {self.peers[0]!r} does not have it in its allow-list. "
                    f"Send it this party's public key file and compare the fingerprint {own} by phone"))
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self._on_handshake_failed()
            elif event == zmq.EVENT_DISCONNECTED:
                # normal: a client that connected before the server listened, a peer's goodbye, the end
                # of a run. A peer that is really gone is reported by the heartbeat timeout (an error
                # naming peer and step), so this line is debug only (issue #13: it confused users at -v)
                log.debug("%s: a connection on %s closed", self.name, self.endpoint)

    def _on_handshake_failed(self) -> None:
        """A CURVE handshake failed (not an allow-list refusal): a wrong server key on the client's side."""
        self._handshake_failures += 1
        self._handshake_failures_total += 1
        own = fingerprint(self._keys.public) if self._keys else "?"
        if self._listening:
            if self._handshake_failures_total == 1:
                log.warning("%s: a client on %s failed the CURVE handshake: it holds a wrong public key for "
                            "this party (ours is %s; compare fingerprints, fedrec keys prints them); further "
                            "failures are not logged", self.name, self.endpoint, own)
            return
        server = fingerprint(self._server_key) if self._server_key else "?"
        if self._handshake_failures >= _HANDSHAKE_FAILURES_FATAL and self._auth_error is None:
            self._give_up(AuthenticationError(
                f"{self.name!r}: the CURVE handshake with {self.peers[0]!r} at {self.endpoint} failed "
                f"{self._handshake_failures} times: {self.peers[0]!r} refused the public key this party "
                f"holds for it ({server}), which is not its key. Get the public key file of "
                f"{self.peers[0]!r} again and compare fingerprints by phone (this party's own key is {own})"))

    def _give_up(self, err: AuthenticationError) -> None:
        """A wrong key: say it once, stop reconnecting, and fail every call with ``err``."""
        if self._auth_error is not None:
            return
        self._auth_error = err
        log.error("%s", err)
        try:
            self._sock.disconnect(self.endpoint)
        except zmq.ZMQError as e:
            log.debug("%s: disconnect from %s: %s", self.name, self.endpoint, e)
        with self._cond:
            self._cond.notify_all()

    def _not_connected_hint(self) -> str:
        if self._listening:
            hint = f"; listening on {self.endpoint}"
            if self._refused_keys:
                refused = list(self._refused_keys.items())  # (the I/O thread adds to it)
                keys = ", ".join(f"{fingerprint(k) if k else 'none'} ({n}x)" for k, n in refused)
                hint += (f"; refused connections with CURVE key(s) {keys}, not in the allow-list "
                         f"({self._expected_keys()})")
            if self._handshake_failures_total:
                own = fingerprint(self._keys.public) if self._keys else "?"
                hint += (f"; {self._handshake_failures_total} CURVE handshake(s) failed: a client holds a "
                         f"wrong public key for this party (ours is {own})")
            return hint
        if self._handshake_ok:
            return ""
        return (f"; no handshake with {self.endpoint} has succeeded yet (last event: {self._last_event}); "
                "is the server running, and is its public key the right one?")
