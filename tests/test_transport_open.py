"""``open_channel``: one way to open a party's channel (listen as the hub, or connect to one peer), with
the protocol's messages registered before anything can arrive and key files required unless insecure."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from fedrec.transport import Channel, PeerAddress, TransportConfig, open_channel, write_keypair
from fedrec.transport.wire import Message, WireReader, WireWriter, message_class

CONFIG = TransportConfig(recv_timeout=10, heartbeat_interval=0.2, heartbeat_timeout=3)


@dataclass(frozen=True)
class Note(Message):  # deliberately not decorated: open_channel(messages=...) registers it
    TYPE: ClassVar[str] = "ttopen.Note"
    text: str

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("text", self.text)

    @classmethod
    def from_wire(cls, r: WireReader) -> Note:
        return cls(r.get_str("text"))


def _addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.timeout(60)
def test_hub_and_peer_connect_over_curve_and_speak_the_declared_messages(tmp_path: Path) -> None:
    for name in ("guest", "host"):
        write_keypair(tmp_path, name)
    addr = _addr()
    opened: dict[str, Channel] = {}

    def host() -> None:
        opened["host"] = open_channel("host", {"guest": PeerAddress(addr, tmp_path / "guest.key")},
                                      key=tmp_path / "host.key_secret", config=CONFIG, messages=[Note],
                                      connect_timeout=20)

    t = threading.Thread(target=host)
    t.start()
    guest = open_channel("guest", {"host": PeerAddress(public_key=tmp_path / "host.key")},
                         key=tmp_path / "guest.key_secret", listen=addr, config=CONFIG, messages=[Note],
                         connect_timeout=20)
    t.join(30)
    try:
        assert message_class("ttopen.Note") is Note
        opened["host"].send("guest", Note("hello"), step="t/1")
        assert guest.recv("host", Note, step="t/1").text == "hello"
    finally:
        guest.close()
        opened["host"].close()


@pytest.mark.parametrize(("peers", "listen", "wanted"), [
    ({}, None, "at least one peer"),
    ({"h": PeerAddress("tcp://127.0.0.1:1")}, "tcp://127.0.0.1:2", "connects to no peer, but peer 'h' has"),
    ({"a": PeerAddress("tcp://x:1"), "b": PeerAddress("tcp://x:2")}, None, "several peers is the hub"),
    ({"h": PeerAddress()}, None, "connects to 'h' but has no endpoint"),
])
def test_inconsistent_topology_is_refused(peers: dict[str, PeerAddress], listen: str | None,
                                          wanted: str) -> None:
    with pytest.raises(ValueError, match=wanted):
        open_channel("g", peers, listen=listen, config=TransportConfig(insecure=True))


def test_key_files_are_required_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a key pair file is required"):
        open_channel("g", {"h": PeerAddress("tcp://127.0.0.1:1", "h.key")})
    with pytest.raises(ValueError, match="the public key file of peer 'h' is required"):
        open_channel("g", {"h": PeerAddress("tcp://127.0.0.1:1")}, key="g.key_secret")
