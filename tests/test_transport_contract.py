"""One contract, two channels: the in-memory twin and the ZeroMQ channel (CURVE on) behave the same."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import msgpack
import numpy as np
import pytest

from fedrec.transport.channel import Channel, TransportConfig
from fedrec.transport.errors import (
    MessageTooLargeError,
    PeerDiedError,
    PeerTimeoutError,
    ProtocolError,
    RemoteError,
)
from fedrec.transport.keys import generate_keypair
from fedrec.transport.memory import MemoryNetwork
from fedrec.transport.wire import Message, WireReader, WireWriter, encode, register_message
from fedrec.transport.zmq_channel import ZmqChannel

CONFIG = TransportConfig(recv_timeout=5, send_timeout=2, heartbeat_interval=0.1, heartbeat_timeout=3.0,
                         handshake_timeout=2, max_message_bytes=1 << 20, max_header_bytes=1 << 18,
                         replay_window=8)


@register_message
@dataclass(frozen=True)
class Vec(Message):
    TYPE: ClassVar[str] = "ttcontract.Vec"
    x: np.ndarray

    def to_wire(self, w: WireWriter) -> None:
        w.put_array("x", self.x)

    @classmethod
    def from_wire(cls, r: WireReader) -> Vec:
        return cls(r.get_array("x", np.float64, ndim=1))


@register_message
@dataclass(frozen=True)
class Note(Message):
    TYPE: ClassVar[str] = "ttcontract.Note"
    text: str

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("text", self.text)

    @classmethod
    def from_wire(cls, r: WireReader) -> Note:
        return cls(r.get_str("text", max_len=100))


Factory = Callable[[int], tuple[Channel, list[Channel]]]


@pytest.fixture(params=["memory", "zmq"])
def make(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """``make(n)`` -> (server, [client_1..client_n]), connected."""
    opened: list[Channel] = []

    def memory(n: int) -> tuple[Channel, list[Channel]]:
        net = MemoryNetwork(CONFIG)
        names = [f"c{i}" for i in range(1, n + 1)]
        server = net.channel("server", names)
        clients = [net.channel(c, ["server"]) for c in names]
        return server, clients

    def zmq(n: int) -> tuple[Channel, list[Channel]]:
        skeys = generate_keypair()
        ckeys = {f"c{i}": generate_keypair() for i in range(1, n + 1)}
        server = ZmqChannel.listen("server", skeys, {c: k.public for c, k in ckeys.items()}, config=CONFIG)
        opened.append(server)
        clients: list[Channel] = []
        for c, k in ckeys.items():
            clients.append(ZmqChannel.connect(c, k, "server", skeys.public, server.endpoint, config=CONFIG))
            opened.append(clients[-1])
        server.wait_for_peers(timeout=5)
        for ch in clients:
            ch.wait_for_peers(timeout=5)
        return server, clients

    def factory(n: int) -> tuple[Channel, list[Channel]]:
        server, clients = (memory if request.param == "memory" else zmq)(n)
        opened.extend([server, *clients])
        return server, clients

    yield factory
    for ch in opened:
        ch.close()


def _serve(server: Channel, n: int, delay: float = 0.0, seen: list[int] | None = None) -> threading.Thread:
    """Answer ``n`` Vec requests with 2x, optionally after ``delay`` seconds."""
    def loop() -> None:
        for _ in range(n):
            req = server.recv_any(Vec)
            if seen is not None:
                seen.append(req.seq)
            time.sleep(delay)
            server.reply(req, Vec(req.msg.x * 2))
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def _raw(ch: Channel, peer: str, msg: Message, step: str, seq: int, session: int | None = None) -> None:
    """Transmit hand-made frames (a retransmit, a replay, or a forged envelope) from ``ch``."""
    frames = encode(msg, step=step, seq=seq, session=ch._session if session is None else session)
    ch._transmit(peer, list(frames), step=step)


def test_send_and_recv_carry_arrays_and_the_authenticated_sender(make: Factory) -> None:
    server, (c1,) = make(1)
    c1.send("server", Vec(np.arange(5.0)), step="upload")
    got = server.recv_any(Vec, step="upload")
    assert got.peer == "c1" and got.step == "upload" and got.seq >= 1
    np.testing.assert_array_equal(got.msg.x, np.arange(5.0))


def test_request_gets_the_reply(make: Factory) -> None:
    server, (c1,) = make(1)
    t = _serve(server, 1)
    out = c1.request("server", Vec(np.ones(3)), Vec, step="double")
    t.join(2)
    np.testing.assert_array_equal(out.x, 2 * np.ones(3))


def test_messages_are_buffered_until_their_step_is_asked_for(make: Factory) -> None:
    server, (c1,) = make(1)
    c1.send("server", Note("second"), step="b")
    c1.send("server", Note("first"), step="a")
    assert server.recv("c1", Note, step="a").text == "first"
    assert server.recv("c1", Note, step="b").text == "second"


def test_fan_in_names_each_sender(make: Factory) -> None:
    server, clients = make(2)
    for c in clients:
        c.send("server", Note(c.name), step="hello")
    got = {server.recv_any(Note, step="hello").peer for _ in clients}
    assert got == {"c1", "c2"}


def test_wrong_message_type_at_a_step_is_a_protocol_error(make: Factory) -> None:
    server, (c1,) = make(1)
    c1.send("server", Note("oops"), step="grad")
    with pytest.raises(ProtocolError, match=r"'c1' sent ttcontract.Note at step 'grad', expected .*Vec"):
        server.recv("c1", Vec, step="grad")


def test_silent_peer_times_out_naming_peer_and_step(make: Factory) -> None:
    server, (c1,) = make(1)
    t0 = time.monotonic()
    with pytest.raises(PeerTimeoutError, match=r"peer 'c1' during step 'round-3'") as ei:
        server.recv("c1", Vec, step="round-3", timeout=0.3)
    assert ei.value.peer == "c1" and ei.value.step == "round-3"
    assert time.monotonic() - t0 < 2


def test_closed_peer_is_reported_dead_at_once(make: Factory) -> None:
    server, (c1,) = make(1)
    c1.close()
    t0 = time.monotonic()
    with pytest.raises(PeerDiedError, match="'c1' during step 'grad'.*closed its channel"):
        server.recv("c1", Vec, step="grad", timeout=4)
    assert time.monotonic() - t0 < 2


def test_retransmitted_request_is_applied_once(make: Factory) -> None:
    server, (c1,) = make(1)
    seen: list[int] = []
    t = _serve(server, 1, delay=0.5, seen=seen)
    out = c1.request("server", Vec(np.ones(2)), Vec, step="slow", timeout=0.2, retries=4)
    t.join(2)
    np.testing.assert_array_equal(out.x, [2.0, 2.0])
    assert len(seen) == 1


def test_retransmit_after_the_reply_is_answered_from_the_cache(make: Factory,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    server, (c1,) = make(1)
    seen: list[int] = []
    t = _serve(server, 1, seen=seen)
    c1.request("server", Vec(np.ones(2)), Vec, step="once")
    t.join(2)
    with caplog.at_level(logging.INFO, logger="fedrec.transport"):
        _raw(c1, "server", Vec(np.ones(2)), "once", seq=seen[0])
        deadline = time.monotonic() + 2
        while "answered from the reply cache" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "answered from the reply cache" in caplog.text
    assert len(seen) == 1
    with pytest.raises(PeerTimeoutError):  # and the application never sees it again
        server.recv("c1", Vec, step="once", timeout=0.2)


def test_replay_older_than_the_window_is_dropped(make: Factory, caplog: pytest.LogCaptureFixture) -> None:
    server, (c1,) = make(1)
    for i in range(12):
        c1.send("server", Note(str(i)), step=f"s{i}")
    with caplog.at_level(logging.WARNING, logger="fedrec.transport"):
        _raw(c1, "server", Note("replayed"), "evil", seq=2)
        with pytest.raises(PeerTimeoutError):
            server.recv("c1", Note, step="evil", timeout=0.3)
    assert "replayed message" in caplog.text


def test_another_session_on_the_live_connection_is_refused_and_the_session_goes_on(make: Factory) -> None:
    server, (c1,) = make(1)
    c1.send("server", Note("current"), step="a")
    old = c1._session
    _raw(c1, "server", Note("forged"), "b", seq=1, session=old ^ 1)  # not a restart: same connection
    with pytest.raises(RemoteError, match=r"replay.*session id changed on a live connection"):
        c1.recv("server", Note, step="b")
    with pytest.raises(PeerTimeoutError):
        server.recv("c1", Note, step="b", timeout=0.3)
    c1.send("server", Note("still here"), step="c")
    assert server.recv("c1", Note, step="a").text == "current"
    assert server.recv("c1", Note, step="c").text == "still here"


def test_invalid_message_gets_an_error_reply_and_the_endpoint_keeps_serving(make: Factory) -> None:
    server, (c1,) = make(1)
    frames = encode(Vec(np.ones(2)), step="bad", seq=50, session=c1._session)
    header = msgpack.unpackb(frames[0], raw=False)
    header["b"]["x"]["dtype"] = "<i8"  # the receiver insists on float64
    c1._transmit("server", [msgpack.packb(header), frames[1]], step="bad")
    with pytest.raises(RemoteError, match=r"'server' during step 'bad'.*malformed.*expected dtype float64"):
        c1.recv("server", Vec, step="bad")
    t = _serve(server, 1)
    np.testing.assert_array_equal(c1.request("server", Vec(np.ones(1)), Vec, step="ok").x, [2.0])
    t.join(2)


def test_oversized_message_is_refused_before_sending(make: Factory) -> None:
    server, (c1,) = make(1)
    with pytest.raises(MessageTooLargeError, match=r"for peer 'server' at step 'big'.*max_message_bytes"):
        c1.send("server", Vec(np.zeros(200_000)), step="big")


def test_unknown_peer_name_is_a_value_error(make: Factory) -> None:
    server, (c1,) = make(1)
    with pytest.raises(ValueError, match="'mallory' is not a peer of 'c1'"):
        c1.send("mallory", Note("hi"), step="x")
