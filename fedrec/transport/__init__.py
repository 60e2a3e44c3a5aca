"""Transport: typed messages, a strict wire format, a ZeroMQ channel with CURVE, and an in-memory twin.

Everything federated in fedrec talks through a :class:`Channel`. Protocols never see sockets, routing
ids or bytes: they define typed messages and call ``send`` / ``recv`` / ``request`` / ``reply``.

Messages (``fedrec.transport.wire``)
------------------------------------
A message is a frozen dataclass deriving from :class:`Message`, registered by a unique type name, with an
explicit, paired wire form::

    @register_message
    @dataclass(frozen=True)
    class BlindedChunk(Message):
        TYPE: ClassVar[str] = "psi.BlindedChunk"      # unique, "<protocol>.<Name>"
        index: int
        points: np.ndarray                             # (n, 32) uint8

        def to_wire(self, w: WireWriter) -> None:
            w.put_int("index", self.index)
            w.put_array("points", self.points)             # raw frame, zero-copy, dtype/shape in header

        @classmethod
        def from_wire(cls, r: WireReader) -> BlindedChunk:
            return cls(index=r.get_int("index", lo=0),
                       points=r.get_array("points", dtype=np.uint8, shape=(None, 32)))

``WireWriter`` / ``WireReader`` are defined in ``fedrec.transport.fields`` (re-exported by ``.wire``).
``WireWriter``: ``put_int(name, v)``, ``put_float``, ``put_bool``, ``put_str``, ``put_bytes`` (small,
inline in the header), ``put_int_list`` / ``put_float_list`` / ``put_str_list``, ``put_none(name)``,
``put_array(name, a)`` (numpy array -> one raw frame, no copy when C-contiguous little-endian),
``put_blob(name, buf)`` (bytes-like -> one raw frame, e.g. a serialized ciphertext or CKKS context),
``put_blobs(name, bufs)`` (a list of raw frames).

``WireReader`` (every accessor validates and raises :class:`WireError` naming the field):
``get_int(name, lo=None, hi=None)``, ``get_float(name, lo=None, hi=None, finite=True)``,
``get_bool(name)``, ``get_str(name, max_len=256, choices=None)``, ``get_bytes(name, max_len=65536)``,
``get_int_list(name, max_len=1_000_000, lo=None, hi=None)``, ``get_float_list(...)``,
``get_str_list(name, max_len=..., max_str_len=256)``, ``has(name) -> bool`` (optional fields; a field
written with ``put_none`` reads as absent), ``get_array(name, dtype, shape=None, ndim=None,
max_elems=None) -> np.ndarray`` (read-only view on the frame; ``shape`` entries may be ``None`` = any
length), ``get_blob(name, max_bytes=None) -> memoryview``,
``get_blobs(name, max_count=None, max_bytes=None) -> list[memoryview]``.
After ``from_wire`` returns, every header field and frame must have been read, else ``WireError``.
Array dtypes come from an allow-list (bool, int8..int64, uint8..uint64, float32, float64; little
endian); the shape must match the frame's byte length. Nothing is ever unpickled.

``encode(msg, step=..., seq=..., session=..., reply_to=None) -> list[bytes | memoryview]`` and
``decode(frames, limits) -> (Header, Message)`` are the whole wire format: frame 0 is a msgpack header
``{v: PROTOCOL_VERSION, t: type, step, seq, sid, re, b: fields, f: [frame lengths]}``, frames 1.. are raw.
``roundtrip(msg)`` encodes and decodes once (handy in message-module tests).

Channels (``fedrec.transport.channel``, ``.memory``, ``.zmq_channel``)
----------------------------------------------------------------------
``Channel`` (abstract; the same contract for both implementations)::

    ch.name -> str                      # this party's authenticated name
    ch.peers -> tuple[str, ...]         # the parties it may talk to
    ch.send(peer, msg, *, step) -> int  # returns the sequence number used
    ch.recv(peer, expected_type, *, step, timeout=None) -> msg
    ch.recv_any(expected_type_or_tuple, *, step=None, peers=None, timeout=None) -> Received
    ch.reply(received, msg) -> None     # answers a request; the answer is cached for retransmits
    ch.request(peer, msg, expected_type, *, step, timeout=None, retries=2) -> msg
    ch.wait_for_peers(peers=None, timeout=None) -> None   # block until they have connected
    ch.alive(peer) -> bool              # heard from and not known dead
    ch.close()                          # says goodbye to peers; also a context manager

``Received`` (frozen): ``peer, step, seq, msg, reply_to``. ``step`` is a short protocol-step id you
choose (e.g. ``"psi/blind/3"``, ``"fm/epoch2/batch17/grad"``); it appears in every error. Messages from
a peer for other steps stay buffered until asked for. ``timeout=None`` means ``config.recv_timeout``.
``recv``/``request`` raise the peer's error reply as :class:`RemoteError` and a message from that peer
that this side rejected as :class:`WireError`; ``recv_any`` (for serving loops) skips rejected messages
(they were logged and answered) and raises :class:`PeerDiedError` only when every candidate is dead.
Messages are sent without copying their arrays: do not mutate an array until ``send`` returns, nor the
arrays of a message passed to ``reply`` (the reply cache keeps a reference for retransmits).

Identity: the peer name of a received message is the name bound to the public key that authenticated
the connection (ZAP User-Id), never a field of the message. ``request`` retransmits the *same* sequence
number on timeout; the receiver answers a retransmit from its reply cache and delivers the request to the
application once; other duplicates and replays (seq outside the window, old session) are dropped and logged.
Sessions are isolated: a peer's new session (a restart) discards whatever its earlier one left queued and
resets its counters; a sequence number far ahead of the window, or another session id on the live
connection, is refused; a second connection authenticated as the same peer is ignored while the first
is alive (see :mod:`fedrec.transport.inbound`).

Implementations::

    net = MemoryNetwork(config=None)        # tests: same contract, still encodes/decodes every message
    net.channel(name, peers: Iterable[str]) -> MemoryChannel;  net.kill(name)   # simulate a crash
    ZmqChannel.listen(name, keys: KeyPair | None, peers: Mapping[name, z85_public_key] | Iterable[name],
                      endpoint="tcp://127.0.0.1:0", config=None) -> ZmqChannel   # ROUTER, bind
    ZmqChannel.connect(name, keys: KeyPair | None, server: str, server_key: str | None, endpoint: str,
                       config=None) -> ZmqChannel                                 # DEALER, connect
    ch.endpoint -> str                      # the bound address (real port when asked for port 0)

(``keys``/``server_key`` may be None and ``peers`` a list of names only with ``insecure=True``, which
binds and connects on loopback endpoints only: ``InsecureConfigurationError`` otherwise.)

``TransportConfig`` (frozen dataclass; seconds and bytes): ``max_message_bytes=64 MiB``,
``max_frames=100_000``, ``max_header_bytes=16 MiB``, ``recv_timeout=300``, ``send_timeout=60``,
``heartbeat_interval=1``, ``heartbeat_timeout=30``, ``handshake_timeout=10``, ``hwm=1000``,
``insecure=False``, ``replay_window=4096``, ``reply_cache_size=256``, ``reply_cache_bytes=256 MiB``,
``max_buffered_messages=10_000`` and ``max_buffered_bytes=256 MiB`` (per peer: received, not yet
delivered; beyond either the message is refused with an ``overloaded`` error reply).
``insecure=True`` disables CURVE (debugging only; warns on every start, with logging WARNING and
``warnings.warn``).

A listening channel proves at start-up that a random, unregistered key is refused, and raises
:class:`InsecureConfigurationError` otherwise.

Keys (``fedrec.transport.keys``; CLI ``fedrec keys --out DIR --name PARTY [--force]``)
-------------------------------------------------------------------------------------
``KeyPair(public, secret)`` (z85 strings), ``generate_keypair() -> KeyPair``,
``write_keypair(directory, name, keys=None, force=False) -> (public_path, secret_path)`` (``NAME.key``,
``NAME.key_secret`` with mode 0600), ``load_keypair(secret_path) -> KeyPair`` (refuses group/world-readable
files), ``load_public_key(path) -> str``, ``load_peer_keys(paths_or_directory) -> dict[name, public]``.

Errors (``fedrec.transport.errors``)
------------------------------------
``TransportError`` (base) > ``WireError`` (malformed / invalid message; ``MessageTooLargeError``),
``ProtocolError`` (unexpected message type for a step), ``PeerError`` (has ``.peer``, ``.step``) >
``PeerTimeoutError``, ``PeerDiedError``, ``RemoteError`` (the peer rejected our message);
``AuthenticationError`` (the server refused our key / the handshake failed),
``InsecureConfigurationError`` (an allow-list that would fail open), ``KeyFileError``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedrec.transport.channel import Channel, Received, TransportConfig
    from fedrec.transport.errors import (
        AuthenticationError,
        InsecureConfigurationError,
        KeyFileError,
        MessageTooLargeError,
        PeerDiedError,
        PeerError,
        PeerTimeoutError,
        ProtocolError,
        RemoteError,
        TransportError,
        WireError,
    )
    from fedrec.transport.keys import (
        KeyPair,
        generate_keypair,
        load_keypair,
        load_peer_keys,
        load_public_key,
        write_keypair,
    )
    from fedrec.transport.memory import MemoryChannel, MemoryNetwork
    from fedrec.transport.open import PeerAddress, open_channel, protocol_messages
    from fedrec.transport.parties import PartyHungError, run_parties
    from fedrec.transport.wire import (
        ALLOWED_DTYPES,
        PROTOCOL_VERSION,
        Header,
        Message,
        WireLimits,
        WireReader,
        WireWriter,
        decode,
        encode,
        register_message,
        roundtrip,
    )
    from fedrec.transport.zmq_channel import ZmqChannel

# Names are resolved lazily so that ``import fedrec.transport`` (e.g. by the ``fedrec keys`` CLI) does
# not load zmq or numpy until they are used.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Channel", "Received", "TransportConfig"], "channel"),
    **dict.fromkeys(
        [
            "AuthenticationError", "InsecureConfigurationError", "KeyFileError", "MessageTooLargeError",
            "PeerDiedError", "PeerError", "PeerTimeoutError", "ProtocolError", "RemoteError",
            "TransportError", "WireError",
        ],
        "errors",
    ),
    **dict.fromkeys(
        ["KeyPair", "generate_keypair", "load_keypair", "load_peer_keys", "load_public_key", "write_keypair"],
        "keys",
    ),
    **dict.fromkeys(["MemoryChannel", "MemoryNetwork"], "memory"),
    **dict.fromkeys(["PeerAddress", "open_channel", "protocol_messages"], "open"),
    **dict.fromkeys(["PartyHungError", "run_parties"], "parties"),
    **dict.fromkeys(
        [
            "ALLOWED_DTYPES", "PROTOCOL_VERSION", "Header", "Message", "WireLimits", "WireReader",
            "WireWriter", "decode", "encode", "register_message", "roundtrip",
        ],
        "wire",
    ),
    "ZmqChannel": "zmq_channel",
}

__all__ = [
    "ALLOWED_DTYPES", "AuthenticationError", "Channel", "Header", "InsecureConfigurationError",
    "KeyFileError", "KeyPair", "MemoryChannel", "MemoryNetwork", "Message", "MessageTooLargeError",
    "PROTOCOL_VERSION", "PartyHungError", "PeerDiedError", "PeerError", "PeerTimeoutError", "ProtocolError",
    "Received",
    "RemoteError", "TransportConfig", "TransportError", "WireError", "WireLimits", "WireReader",
    "WireWriter", "ZmqChannel", "decode", "encode", "generate_keypair", "load_keypair", "load_peer_keys",
    "load_public_key", "register_message", "roundtrip", "run_parties", "write_keypair",
    "PeerAddress", "open_channel", "protocol_messages",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedrec.transport' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedrec.transport.{module}"), name)
