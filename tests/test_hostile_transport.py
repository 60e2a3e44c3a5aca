"""Issue #9, defects 2 and 8: transport state is isolated per session, one forged frame cannot wedge the
live session, a second connection with a peer's key cannot take its reply route, and insecure mode
stays on the loopback."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest

from fedrec.transport.channel import Channel, TransportConfig
from fedrec.transport.errors import InsecureConfigurationError, PeerTimeoutError, RemoteError
from fedrec.transport.keys import generate_keypair
from fedrec.transport.memory import MemoryNetwork
from fedrec.transport.wire import Message, WireReader, WireWriter, encode, register_message
from fedrec.transport.zmq_channel import ZmqChannel

CONFIG = TransportConfig(recv_timeout=5, send_timeout=2, heartbeat_interval=0.1, heartbeat_timeout=3.0,
                         handshake_timeout=2, replay_window=64, max_buffered_messages=50)


@register_message
@dataclass(frozen=True)
class Word(Message):
    TYPE: ClassVar[str] = "tthostile.Word"
    text: str

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("text", self.text)

    @classmethod
    def from_wire(cls, r: WireReader) -> Word:
        return cls(r.get_str("text", max_len=20))


def _raw(ch: Channel, peer: str, msg: Message, step: str, seq: int, session: int | None = None) -> None:
    frames = encode(msg, step=step, seq=seq, session=ch._session if session is None else session)
    ch._transmit(peer, list(frames), step=step)


def test_messages_of_an_earlier_session_are_not_delivered_to_the_next() -> None:
    net = MemoryNetwork(CONFIG)
    server = net.channel("server", ["c1"])
    old = net.channel("c1", ["server"])
    old.send("server", Word("stale"), step="job/start")  # never read in that session
    net.kill("c1")
    new = net.channel("c1", ["server"])  # the restarted party
    new.send("server", Word("fresh"), step="job/other")
    assert server.recv("c1", Word, step="job/other").text == "fresh"
    with pytest.raises(PeerTimeoutError):
        server.recv("c1", Word, step="job/start", timeout=0.3)


def test_rejected_messages_never_make_valid_ones_overloaded_and_counters_reset_per_session() -> None:
    net = MemoryNetwork(CONFIG)
    server = net.channel("server", ["c1"])
    c1 = net.channel("c1", ["server"])
    for i in range(3 * CONFIG.max_buffered_messages):  # far more rejections than the buffer holds
        frames = encode(Word("x" * 30), step=f"junk/{i}", seq=i + 1, session=c1._session)
        c1._transmit("server", list(frames), step="junk")
    c1._state["server"].next_seq = 3 * CONFIG.max_buffered_messages + 1
    c1.send("server", Word("valid"), step="job/a")
    assert server.recv("c1", Word, step="job/a").text == "valid"
    assert server._state["c1"].rejected_total == 3 * CONFIG.max_buffered_messages
    net.kill("c1")
    c2 = net.channel("c1", ["server"])
    c2.send("server", Word("next"), step="job/b")
    assert server.recv("c1", Word, step="job/b").text == "next"
    assert server._state["c1"].rejected_total == 0


@pytest.mark.parametrize("seq", [(1 << 63) - 1, 10_000])
def test_a_forged_sequence_number_cannot_wedge_the_live_session(seq: int) -> None:
    net = MemoryNetwork(CONFIG)
    server = net.channel("server", ["c1"])
    c1 = net.channel("c1", ["server"])
    c1.send("server", Word("one"), step="a")
    _raw(c1, "server", Word("forged"), "b", seq=seq)
    with pytest.raises(RemoteError, match="replay.*ahead of the highest"):
        c1.recv("server", Word, step="b")
    for i in range(3):
        c1.send("server", Word(f"later{i}"), step=f"c{i}")
    assert [server.recv("c1", Word, step=s).text for s in ("a", "c0", "c1", "c2")] == [
        "one", "later0", "later1", "later2"]


def test_a_second_connection_with_the_peers_key_cannot_take_over_its_reply_route() -> None:
    skeys, ckeys = generate_keypair(), generate_keypair()
    server = ZmqChannel.listen("server", skeys, {"guest": ckeys.public}, config=CONFIG)
    guest = ZmqChannel.connect("guest", ckeys, "server", skeys.public, server.endpoint, config=CONFIG)
    intruder: ZmqChannel | None = None
    try:
        guest.wait_for_peers(timeout=5)
        server.wait_for_peers(timeout=5)
        intruder = ZmqChannel.connect("guest", ckeys, "server", skeys.public, server.endpoint, config=CONFIG)
        deadline = time.monotonic() + 5
        while not intruder._handshake_ok and time.monotonic() < deadline:  # authenticated, nothing more
            time.sleep(0.02)
        assert intruder._handshake_ok
        intruder.send("server", Word("hijack"), step="job/x")
        _raw(intruder, "server", Word("forged"), "job/y", seq=1, session=intruder._session ^ 5)

        def answer() -> None:
            req = server.recv_any(Word, peers=["guest"], timeout=5)
            server.reply(req, Word(req.msg.text.upper()))

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        assert guest.request("server", Word("ping"), Word, step="job/ping", timeout=5).text == "PING"
        t.join(5)
        with pytest.raises(PeerTimeoutError):
            server.recv("guest", Word, step="job/x", timeout=0.5)
        with pytest.raises(PeerTimeoutError):
            intruder.recv("server", Word, step="job/ping", timeout=0.3)
        assert server._state["guest"].foreign_dropped >= 2
        guest.close()  # the real guest leaves: a new connection with its key may now take over
        deadline = time.monotonic() + 5
        while server._state["guest"].gone is None and time.monotonic() < deadline:  # its goodbye seen
            time.sleep(0.02)
        guest = intruder
        guest.send("server", Word("back"), step="job/z")
        deadline = time.monotonic() + 5
        while server._state["guest"].gone is not None and time.monotonic() < deadline:  # then back
            time.sleep(0.02)
        assert server.recv("guest", Word, step="job/z", timeout=5).text == "back"
    finally:
        for ch in (guest, intruder, server):
            if ch is not None:
                ch.close()


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:0", "tcp://10.1.2.3:7000", "tcp://*:0",
                                      "tcp://[::]:0", "tcp://example.org:7000"])
def test_insecure_mode_refuses_endpoints_beyond_the_loopback(endpoint: str) -> None:
    insecure = TransportConfig(insecure=True)
    with pytest.raises(InsecureConfigurationError, match="loopback"):
        ZmqChannel.listen("host", None, ["guest"], endpoint=endpoint, config=insecure)
    with pytest.raises(InsecureConfigurationError, match="loopback"):
        ZmqChannel.connect("guest", None, "host", None, endpoint, config=insecure)


def test_insecure_mode_still_runs_on_the_loopback() -> None:
    from fedrec.transport.zmq_channel import is_loopback_endpoint

    assert is_loopback_endpoint("tcp://127.0.0.1:0") and is_loopback_endpoint("tcp://[::1]:5")
    assert is_loopback_endpoint("ipc:///tmp/x") and not is_loopback_endpoint("tcp://192.168.0.1:1")
    insecure = TransportConfig(insecure=True, heartbeat_interval=0.1, heartbeat_timeout=3.0)
    with pytest.warns(UserWarning, match="INSECURE"):
        host = ZmqChannel.listen("host", None, ["guest"], endpoint="tcp://127.0.0.1:0", config=insecure)
        guest = ZmqChannel.connect("guest", None, "host", None, host.endpoint, config=insecure)
    try:
        guest.send("host", Word("hi"), step="s")
        assert host.recv("guest", Word, step="s", timeout=5).text == "hi"
    finally:
        guest.close()
        host.close()


@register_message
@dataclass(frozen=True)
class Blob(Message):
    TYPE: ClassVar[str] = "tthostile.Blob"
    data: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_bytes("data", self.data)

    @classmethod
    def from_wire(cls, r: WireReader) -> Blob:
        return cls(r.get_bytes("data", max_len=1 << 20))


def test_undelivered_bytes_per_peer_are_bounded_and_the_excess_refused_naming_the_peer() -> None:
    # issue #9: the count bound alone let one peer park 10,000 x 64 MiB; the bytes are bounded too
    config = TransportConfig(max_message_bytes=1 << 20, max_header_bytes=1 << 20, max_buffered_bytes=3 << 18,
                             max_buffered_messages=100, recv_timeout=5)
    net = MemoryNetwork(config)
    server = net.channel("server", ["c1"])
    c1 = net.channel("c1", ["server"])
    for i in range(3):  # 3 x 300 kB: the third would pass 768 KiB
        c1.send("server", Blob(bytes(300_000)), step=f"up/{i}")
    assert server._state["c1"].buffered == 2
    refused = r"overloaded: receiver buffer for 'c1' full: .*max_buffered_bytes="
    with pytest.raises(RemoteError, match=refused):
        c1.recv("server", Word, step="up/2", timeout=5)
    assert len(server.recv("c1", Blob, step="up/0").data) == 300_000  # the server lives on, delivers
    c1.send("server", Blob(bytes(300_000)), step="up/3")  # room again once the application read one
    assert [len(server.recv("c1", Blob, step=s).data) for s in ("up/1", "up/3")] == [300_000, 300_000]
    assert server._state["c1"].buffered_bytes == 0
    c1.send("server", Blob(bytes(900_000)), step="big")  # one message always fits an empty buffer
    assert len(server.recv("c1", Blob, step="big").data) == 900_000
