"""Open the channel of one party to its named peers: the one way every command connects.

::

    ch = open_channel("guest", {"host": PeerAddress(endpoint="tcp://10.0.0.5:7710",
                                                    public_key="keys/host.key")},
                      key="keys/guest.key_secret", config=TransportConfig(recv_timeout=300),
                      messages=protocol_messages("fedrec.psi.messages"))

A party either **listens** (``listen="tcp://0.0.0.0:7710"``; every peer connects to it, so the hub
of a protocol with several peers listens) or **connects** to the one peer that has an ``endpoint``.
``key`` is this party's key pair file (``NAME.key_secret`` from ``fedrec keys``) and each peer's
``public_key`` its public key file (``NAME.key``); both are required unless ``config.insecure``.

``messages`` is the set of message types the protocol speaks. They are registered with the wire
format before the socket exists, so no message of the peer can arrive before its type is known
(:func:`protocol_messages` lists a messages module's types). The fault-injection hook of
:mod:`fedrec.faults` is installed on the channel (a no-op unless ``FEDREC_FAULT`` is set). The call
returns once every peer has been heard from (``connect_timeout`` seconds at most); the channel is
closed if that fails.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedrec.transport.channel import Channel
from fedrec.transport.channel_types import TransportConfig
from fedrec.transport.wire import Message, register_message

__all__ = ["PeerAddress", "open_channel", "protocol_messages"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerAddress:
    """Where a peer is: ``endpoint`` (only when this party connects to it) and its public key file."""

    endpoint: str | None = None
    public_key: str | Path | None = None


def protocol_messages(*modules: str) -> tuple[type[Message], ...]:
    """The message types a protocol's messages modules declare: the module's ``MESSAGES`` tuple when
    it has one, else every :class:`Message` subclass with a ``TYPE`` in its namespace."""
    found: dict[str, type[Message]] = {}
    for name in modules:
        module = importlib.import_module(name)
        declared = getattr(module, "MESSAGES", None)
        types = declared if declared is not None else [
            v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Message) and v.TYPE]
        for cls in types:
            found[cls.TYPE] = cls
    return tuple(found.values())


def _endpoint(addr: str) -> str:
    return addr if "://" in addr else f"tcp://{addr}"


def _check(name: str, peers: Mapping[str, PeerAddress], key: str | Path | None, listen: str | None,
           insecure: bool) -> str | None:
    """Validate the topology and the key files given; returns the peer to connect to (None: listen)."""
    if not peers:
        raise ValueError(f"party {name!r}: at least one peer is required")
    target: str | None = None
    if listen is not None:
        with_endpoint = [p for p, a in peers.items() if a.endpoint is not None]
        if with_endpoint:
            raise ValueError(f"party {name!r} listens on {listen}, so it connects to no peer, but peer "
                             f"{with_endpoint[0]!r} has an endpoint")
    else:
        if len(peers) != 1:
            raise ValueError(f"party {name!r} has {len(peers)} peers and does not listen: a party with "
                             "several peers is the hub and must listen")
        target = next(iter(peers))
        if peers[target].endpoint is None:
            raise ValueError(f"party {name!r} connects to {target!r} but has no endpoint for it")
    if not insecure:
        if key is None:
            raise ValueError(f"party {name!r}: a key pair file is required (or insecure mode for debugging)")
        missing = [p for p, a in peers.items() if a.public_key is None]
        if missing:
            raise ValueError(f"party {name!r}: the public key file of peer {missing[0]!r} is required "
                             "(or insecure mode for debugging)")
    return target


def open_channel(name: str, peers: Mapping[str, PeerAddress], *, key: str | Path | None = None,
                 listen: str | None = None, config: TransportConfig | None = None,
                 messages: Iterable[type[Message]] = (), connect_timeout: float = 300.0) -> Channel:
    """This party's authenticated ZeroMQ channel to ``peers``, once all of them are connected.

    See the module docstring. Raises ``ValueError`` for an inconsistent topology or missing key file,
    :class:`~fedrec.transport.errors.KeyFileError` for an unreadable one, and the transport's errors
    (e.g. ``PeerTimeoutError`` naming the peer and step ``"connect"``) when a peer does not show up."""
    from fedrec import faults
    from fedrec.transport.keys import KeyPair, load_keypair, load_public_key
    from fedrec.transport.zmq_channel import ZmqChannel

    config = config or TransportConfig()
    target = _check(name, peers, key, listen, config.insecure)
    for cls in messages:  # before the socket exists: nothing can arrive before its type is known
        register_message(cls)
    keys: KeyPair | None = None
    public: dict[str, str] = {}
    if not config.insecure:
        assert key is not None
        keys = load_keypair(key)
        public = {p: load_public_key(a.public_key) for p, a in peers.items() if a.public_key is not None}
    ch: ZmqChannel
    if target is None:
        assert listen is not None
        allowed = public if not config.insecure else list(peers)
        ch = ZmqChannel.listen(name, keys, allowed, endpoint=_endpoint(listen), config=config)
        log.info("%s: listening on %s for %s", name, ch.endpoint, ", ".join(map(repr, peers)))
    else:
        endpoint = peers[target].endpoint
        assert endpoint is not None
        ch = ZmqChannel.connect(name, keys, target, public.get(target), _endpoint(endpoint), config=config)
    try:
        faults.install(ch)
        ch.wait_for_peers(timeout=connect_timeout)
    except BaseException:
        ch.close()
        raise
    return ch
