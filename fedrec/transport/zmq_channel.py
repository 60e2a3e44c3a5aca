"""The ZeroMQ channel: CURVE encryption, a ZAP allow-list, and one I/O thread per channel.

This is the only module of fedrec that imports zmq.

Topology: the listening party binds a ROUTER; each connecting party connects a DEALER. The ROUTER never
trusts routing ids or message fields for identity: our own ZAP handler maps the client's CURVE public key
to a party name, libzmq attaches it to every frame as ``User-Id``, and that is the peer name. The DEALER
authenticates the server by its public key (``curve_serverkey``).

Fail-open guard. libzmq accepts *any* CURVE client when no ZAP handler is bound and
``ZAP_ENFORCE_DOMAIN`` is off, and also when ``ZAP_ENFORCE_DOMAIN`` is on but the socket has no
``zap_domain`` (measured with libzmq 4.3.5). We set both, and after binding each listening channel
connects a throwaway client with a random key and requires a ``HANDSHAKE_FAILED_AUTH`` that our own
handler produced; anything else raises :class:`InsecureConfigurationError` and the channel does not run.

Threads. An I/O thread owns the sockets: it answers ZAP requests, reads and size-checks inbound
messages (frame by frame, so an oversized one is discarded without being kept), hands them to
:meth:`Channel._on_frames`, sends heartbeats every ``heartbeat_interval``, watches the socket monitor,
and performs sends on behalf of the user's threads (over an inproc pipe, with ``copy=False`` so array
frames are not copied). libzmq itself also runs ZMTP heartbeats and a handshake deadline.

Code: the I/O thread's framing, retries and heartbeats are :mod:`.zmq_io`; the ZAP handler, the
handshake events and the wrong-key reports :mod:`.zmq_handshake`; this module builds the sockets (CURVE,
ZAP, the start-up refusal check), runs the I/O thread's loop and implements the Channel hooks. Only
these three modules of fedrec import zmq.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from fedrec.transport.channel import TransportConfig
from fedrec.transport.errors import (
    AuthenticationError,
    InsecureConfigurationError,
    PeerDiedError,
    PeerTimeoutError,
    TransportError,
)
from fedrec.transport.keys import KeyPair, is_z85_key
from fedrec.transport.wire import WireFrame
from fedrec.transport.zmq_handshake import _ZAP_DOMAIN, ZmqHandshake
from fedrec.transport.zmq_io import _Pending

log = logging.getLogger(__name__)

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: ``_ZAP_DOMAIN`` (zmq_handshake: the domain the ZAP handler answers) is set on the listening socket by
#: _bind from this module's name, as is ZAP_ENFORCE_DOMAIN (tests replace both to prove fail-open is refused)
_ZAP_ENFORCE_DOMAIN = 1
#: the most a close waits for its queued messages to leave while a peer is alive (ZmqChannel._shutdown)
CLOSE_LINGER_MS = 5000
#: the linger of a close whose peers all said goodbye: ours (a few bytes) leaves at once if they still read
GOODBYE_LINGER_MS = 250
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def curve_keypair() -> tuple[str, str]:
    """A fresh (public, secret) CURVE key pair, z85-encoded."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def curve_public(secret: str) -> str:
    """The public key of a z85 secret key."""
    return zmq.curve_public(secret.encode("ascii")).decode("ascii")


def _start_zap_handler(ctx: zmq.Context[Any]) -> zmq.Socket[Any] | None:
    """Bind the ZAP handler socket of ``ctx`` (served by the channel's I/O thread)."""
    zap = ctx.socket(zmq.REP)
    zap.linger = 0
    zap.bind(_ZAP_ENDPOINT)
    return zap


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` only reaches this machine: ``ipc://``/``inproc://``, or ``tcp://`` on
    127.0.0.0/8, ``localhost`` or ``::1`` (a wildcard or any other address is not)."""
    import ipaddress

    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if not rest.startswith("[") else rest[1:rest.find("]")]
    if ";" in host:  # "source;destination" form: both must be loopback
        return all(is_loopback_endpoint(f"tcp://{h}:0") for h in host.split(";"))
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_insecure_endpoint(name: str, endpoint: str, config: TransportConfig) -> None:
    if config.insecure and not is_loopback_endpoint(endpoint):
        raise InsecureConfigurationError(
            f"{name!r}: insecure mode (no CURVE, no authentication) only runs on this machine's loopback "
            f"(tcp://127.0.0.1:PORT, tcp://[::1]:PORT, ipc://); refusing the endpoint {endpoint}")


def _insecure_warning(name: str) -> None:
    text = (f"fedrec transport of {name!r} runs INSECURE: no CURVE encryption, no authentication, any "
            "process that can reach the endpoint can read and inject messages. Debugging only.")
    log.warning(text)
    warnings.warn(text, stacklevel=3)



class ZmqChannel(ZmqHandshake):
    """A :class:`Channel` over ZeroMQ. Build it with :meth:`listen` or :meth:`connect`."""

    def __init__(self, name: str, peers: Iterable[str], config: TransportConfig, *, listening: bool,
                 keys: KeyPair | None, allowed: Mapping[str, str]) -> None:
        super().__init__(name, peers, config)
        self._listening = listening
        self._keys = keys
        self._allowed = {key: party for party, key in allowed.items()}  # public key -> party name
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.ROUTER if listening else zmq.DEALER)
        self._zap: zmq.Socket[Any] | None = None
        self._routes: dict[str, bytes] = {}
        self._pending: _Pending | None = None
        self._probe_key: str | None = None
        self._probe_refused_by_us = False
        self._handshake_ok = False
        self._last_event = "none yet"
        self._auth_error: TransportError | None = None
        self._handshake_failures = 0  # consecutive, since the last handshake that succeeded
        self._handshake_failures_total = 0
        self._refused_keys: dict[str, int] = {}  # listener: refused client key -> attempts
        self._server_key = ""  # connecting: the server's public key we were given
        self._io_error: TransportError | None = None
        self._cmd_lock = threading.Lock()
        self._stop = False
        #: how long closing waits for queued messages (the last reply, the goodbye) to leave: CLOSE_LINGER_MS
        #: while a peer is alive, 0 once none is (see _shutdown)
        self._close_linger_ms = 500
        self.endpoint = ""
        self._configure_socket()
        self._monitor: zmq.Socket[Any] = self._sock.get_monitor_socket()
        self._cmd_io: zmq.Socket[Any] = self._ctx.socket(zmq.PAIR)
        self._cmd_io.bind(f"inproc://fedrec-cmd-{id(self)}")
        self._cmd_user: zmq.Socket[Any] = self._ctx.socket(zmq.PAIR)
        self._cmd_user.connect(f"inproc://fedrec-cmd-{id(self)}")
        self._io_thread = threading.Thread(target=self._io_main, name=f"fedrec-io-{name}", daemon=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def listen(cls, name: str, keys: KeyPair | None, peers: Mapping[str, str] | Iterable[str],
               endpoint: str = "tcp://127.0.0.1:0", config: TransportConfig | None = None) -> ZmqChannel:
        """Bind a ROUTER at ``endpoint`` accepting the parties of ``peers`` ({name: public key}).

        ``ch.endpoint`` is the bound address (with the real port when ``endpoint`` asked for port 0).
        Raises :class:`InsecureConfigurationError` if an unregistered key is not refused.
        """
        config = config or TransportConfig()
        _check_insecure_endpoint(name, endpoint, config)
        allowed = cls._check_security(name, keys, peers, config)
        ch = cls(name, list(peers), config, listening=True, keys=keys, allowed=allowed)
        try:
            ch._bind(endpoint)
            ch._io_thread.start()
            if not config.insecure:
                ch._prove_refusal()
        except BaseException:
            ch.close()
            raise
        log.info("%s listening on %s for %s", name, ch.endpoint, list(ch.peers))
        return ch

    @classmethod
    def connect(cls, name: str, keys: KeyPair | None, server: str, server_key: str | None, endpoint: str,
                config: TransportConfig | None = None) -> ZmqChannel:
        """Connect a DEALER to the listening party ``server`` whose public key is ``server_key``."""
        config = config or TransportConfig()
        _check_insecure_endpoint(name, endpoint, config)
        peers = {server: server_key or ""}
        cls._check_security(name, keys, peers, config)
        ch = cls(name, [server], config, listening=False, keys=keys, allowed={})
        try:
            if config.insecure:
                ch._sock.setsockopt(zmq.ROUTING_ID, name.encode())
            else:
                assert server_key is not None and keys is not None
                ch._sock.curve_serverkey = server_key.encode("ascii")
                ch._server_key = server_key
                ch._sock.curve_publickey = keys.public.encode("ascii")
                ch._sock.curve_secretkey = keys.secret.encode("ascii")
            ch._sock.connect(endpoint)
            ch.endpoint = endpoint
            ch._io_thread.start()
        except BaseException:
            ch.close()
            raise
        log.info("%s connecting to %r at %s", name, server, endpoint)
        return ch

    @staticmethod
    def _check_security(name: str, keys: KeyPair | None, peers: Mapping[str, str] | Iterable[str],
                        config: TransportConfig) -> dict[str, str]:
        if config.insecure:
            _insecure_warning(name)
            return {}
        if keys is None:
            raise ValueError(f"{name!r}: a CURVE KeyPair is required (or TransportConfig(insecure=True))")
        if not isinstance(peers, Mapping):
            raise ValueError(f"{name!r}: peers must map each party name to its z85 public key")
        bad = [p for p, k in peers.items() if not is_z85_key(k)]
        if bad:
            raise ValueError(f"{name!r}: public key of peer(s) {bad} is not a 40-character z85 key")
        if len(set(peers.values())) != len(peers) or keys.public in peers.values():
            raise ValueError(f"{name!r}: each party needs its own key (a public key appears twice)")
        return dict(peers)

    def _configure_socket(self) -> None:
        s, c = self._sock, self.config
        s.linger = 500
        # No receive high-water mark: the I/O thread drains the socket at once and the receive path
        # bounds what it keeps (max_buffered_messages, rejected messages apart). With one, a flood that
        # fills the inbound pipe stops libzmq's reading, and a disconnect while it is stopped aborts the
        # process in libzmq 4.3.5 ("Assertion failed: !_io_error (src/stream_engine_base.cpp:310)",
        # found by benchmarks/fuzz.py).
        s.sndhwm, s.rcvhwm = c.hwm, 0
        s.setsockopt(zmq.MAXMSGSIZE, c.max_message_bytes)
        s.setsockopt(zmq.HANDSHAKE_IVL, int(c.handshake_timeout * 1000))
        s.setsockopt(zmq.HEARTBEAT_IVL, int(c.heartbeat_interval * 1000))
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(c.heartbeat_timeout * 1000))
        s.setsockopt(zmq.HEARTBEAT_TTL, min(int(c.heartbeat_timeout * 1000), 6_553_500))
        if self._listening:
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        else:
            s.setsockopt(zmq.IMMEDIATE, 1)
            s.setsockopt(zmq.RECONNECT_IVL, 100)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)

    def _bind(self, endpoint: str) -> None:
        if not self.config.insecure:
            assert self._keys is not None
            self._zap = _start_zap_handler(self._ctx)
            self._sock.curve_server = True
            self._sock.curve_publickey = self._keys.public.encode("ascii")
            self._sock.curve_secretkey = self._keys.secret.encode("ascii")
            if _ZAP_DOMAIN:  # libzmq refuses an empty domain; leaving it unset is what fails open
                self._sock.zap_domain = _ZAP_DOMAIN
            self._sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, _ZAP_ENFORCE_DOMAIN)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as e:
            raise TransportError(f"{self.name!r} cannot listen on {endpoint}: {e}") from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _prove_refusal(self) -> None:
        """Connect with a random, unregistered key; require that our ZAP handler refused it."""
        public, secret = curve_keypair()
        self._probe_key = public
        assert self._keys is not None
        probe = self._ctx.socket(zmq.DEALER)
        probe.linger = 0
        probe.curve_serverkey = self._keys.public.encode("ascii")
        probe.curve_publickey, probe.curve_secretkey = public.encode("ascii"), secret.encode("ascii")
        mon = probe.get_monitor_socket(_HANDSHAKE_EVENTS)
        target = self.endpoint.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")
        outcome = f"no handshake result within {self.config.handshake_timeout:g} s"
        try:
            probe.connect(target)
            deadline = time.monotonic() + self.config.handshake_timeout
            while (left := deadline - time.monotonic()) > 0:
                if not mon.poll(int(left * 1000) + 1):
                    continue
                event = recv_monitor_message(mon)["event"]
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self._probe_refused_by_us:
                    log.debug("%s: start-up check passed: an unregistered key was refused", self.name)
                    return
                outcome = f"handshake event {zmq.Event(event).name}"
                break
        finally:
            probe.disable_monitor()
            mon.close(0)
            probe.close(0)
        raise InsecureConfigurationError(
            f"{self.name!r} on {self.endpoint}: start-up check failed, a client with a random unregistered "
            f"CURVE key was not refused by the allow-list ({outcome}). The ZAP handler is missing or the "
            "socket's zap_domain / ZAP_ENFORCE_DOMAIN would fail open; refusing to run.")

    # ------------------------------------------------------------------ Channel hooks
    def _health_error(self) -> TransportError | None:
        return self._io_error or self._auth_error


    def _transmit(self, peer: str, frames: list[WireFrame], *, step: str, wait: bool = True,
                  timeout: float | None = None) -> None:
        if threading.current_thread() is self._io_thread:
            error = self._try_send(peer, frames)
            if error is not None:
                raise PeerTimeoutError(peer, step, error)
            return
        with self._cmd_lock:
            if self._stop or not self._io_thread.is_alive():
                raise TransportError(f"channel of {self.name!r} is closed")
            patience = self.config.send_timeout if timeout is None else max(float(timeout), 0.0)
            patience = patience if wait else 0.0
            command = b"send %r" % patience if wait else b"try"
            self._cmd_user.send_multipart([command, peer.encode(), step.encode(), *frames], copy=False)
            if not self._cmd_user.poll(int((patience + 10) * 1000)):
                raise TransportError(f"{self.name!r}: the I/O thread did not answer a send to {peer!r}")
            status, detail = (f.decode() for f in self._cmd_user.recv_multipart())
        if status == "auth":
            raise AuthenticationError(detail)
        if status == "died":
            raise PeerDiedError(peer, step, detail)
        if status == "timeout":
            raise PeerTimeoutError(peer, step, detail)
        if status != "ok":
            raise TransportError(f"{self.name!r}: send to {peer!r} at step {step!r} failed: {detail}")

    def _shutdown(self) -> None:
        # A reply sent just before closing (the host's Ack of Done) must reach the peer, and handing it
        # to the socket is not enough: measured, a loaded guest (load 3) lost the host's Ack of Done ~1
        # run in 4 although the host's socket lingered (the guest saw the connection drop ~1 ms after the
        # host closed, the Ack unread), and then waited its heartbeat timeout at 'fm/done' of a complete
        # run. So a party that spoke last to a live peer (its answer may be unread) waits, after its
        # Goodbye (close()), up to CLOSE_LINGER_MS for that peer to speak again (its Goodbye: a peer
        # closes once it has what it waited for; the peer of a party that aborts reads our Goodbye and
        # closes too) or to die. A party whose peer spoke last (the guest, holding the Ack) does not
        # wait. A peer still live at the end gets the socket's linger; with no peer alive, nothing can
        # leave and the close does not wait at all.
        deadline = time.monotonic() + CLOSE_LINGER_MS / 1000
        with self._cond:
            while True:
                live = [p for p, st in self._state.items()
                        if st.last_heard is not None and self._dead_reason(p) is None]
                owed = [p for p in live
                        if (self._state[p].last_sent or 0.0) > (self._state[p].last_message or 0.0)]
                left = deadline - time.monotonic()
                if not owed or left <= 0 or not self._io_thread.is_alive():
                    break
                self._cond.wait(timeout=min(0.05, left))
            closing = any(st.said_goodbye for st in self._state.values())
        # a peer that said goodbye may be waiting for ours (it spoke last, see above): a short linger
        self._close_linger_ms = CLOSE_LINGER_MS if live else GOODBYE_LINGER_MS if closing else 0
        with self._cmd_lock:
            if self._io_thread.is_alive():
                self._cmd_user.send_multipart([b"stop"])
                self._io_thread.join(timeout=5)
            self._stop = True
            if self._io_thread.is_alive():
                log.error("%s: the transport I/O thread did not stop; leaving its sockets open", self.name)
                return
            if not self._sock.closed:  # the I/O thread never ran
                self._sock.disable_monitor()
            for s in (self._cmd_user, self._cmd_io, self._monitor, self._zap, self._sock):
                if s is not None and not s.closed:
                    s.close()
        self._ctx.term()

    # ------------------------------------------------------------------ I/O thread
    def _io_main(self) -> None:
        poller = zmq.Poller()
        for s in (self._sock, self._cmd_io, self._monitor, self._zap):
            if s is not None:
                poller.register(s, zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                wait = 0.005 if self._pending else max(0.0, next_beat - now)
                ready = dict(poller.poll(int(wait * 1000)))
                if self._zap is not None and self._zap in ready:
                    self._serve_zap()
                if self._monitor in ready:
                    self._drain_monitor()
                if self._sock in ready:
                    self._drain_inbound()
                if self._cmd_io in ready:
                    self._serve_command()
                if self._pending:
                    self._retry_pending()
                if time.monotonic() >= next_beat:
                    self._send_heartbeats()
                    next_beat = time.monotonic() + self.config.heartbeat_interval
        except Exception as e:  # a bug here must surface in the user's thread, not hang it
            log.exception("%s: transport I/O thread crashed", self.name)
            self._io_error = TransportError(f"{self.name!r}: transport I/O thread crashed: {e!r}")
            with self._cond:
                self._cond.notify_all()
        finally:
            self._stop = True
            self._sock.disable_monitor()
            for s in (self._monitor, self._zap):
                if s is not None:
                    s.close()
            self._sock.close(linger=self._close_linger_ms)
