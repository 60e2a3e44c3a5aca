"""fedmf messages: every message round-trips through the wire, and from_wire refuses what the protocol
does not allow (key sizes, mismatched lists, unknown purposes, overlapping survivor/dropped sets)."""

from __future__ import annotations

import pytest

from fedrec.protocols.fedmf import messages as m
from fedrec.transport.errors import WireError
from fedrec.transport.wire import Message, decode, encode, roundtrip

K1, K2 = bytes(range(32)), bytes(range(1, 33))
CT = b"\x01" * 100

SAMPLES: list[Message] = [
    m.KeyRequest(["a", "b"], [K1, K2]),
    m.KeyBundle(b"ctx", b"sealed-context", [b"", b"k" * 112], CT),
    m.KeyDelivery(["a", "b"], [K1, K2], "a", b"ctx", b"sealed-context", b"k" * 112),
    m.KeyAck("0" * 64),
    m.MaskRequest("train", 3, 1, 5),
    m.MaskAdvert(K1),
    m.ShareRequest("stats", 0, 0, ["a", "b"], [K1, K2]),
    m.SealedShares([b"", b"x" * 128]),
    m.StatsRequest(0, ["a", "b"], [], []),
    m.StatsRequest(1, ["a", "b"], [K1, K2], [b"", b"box"]),
    m.StatsResult(CT),
    m.RoundRequest(7, 0, ["a"], [], [], CT),
    m.Upload("train", 7, 0, CT),
    m.UnmaskRequest("train", 7, 0, ["a"], ["b"]),
    m.UnmaskShares([b"s" * 40], [b"t" * 40]),
    m.Finish(10, CT),
]


def test_message_set_lists_every_message_of_the_conversation() -> None:
    assert {type(x) for x in SAMPLES} <= set(m.MESSAGES)
    assert len({c.TYPE for c in m.MESSAGES}) == len(m.MESSAGES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda x: type(x).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert roundtrip(msg) == msg


@pytest.mark.parametrize("bad", [
    m.KeyRequest(["a", "b"], [K1, K2[:31]]),          # a 31-byte key
    m.KeyRequest(["a", "a"], [K1, K2]),               # repeated name
    m.KeyRequest(["a", "b"], [K1]),                   # one key for two names
    m.KeyDelivery(["a"], [K1], "z", b"ctx", b"c", b""),  # holder outside the roster
    m.KeyBundle(b"ctx", b"c", [b"k" * 113], CT),         # a sealed envelope key is 112 bytes
    m.KeyAck("abc"),
    m.MaskAdvert(K1 + b"\0"),
    m.ShareRequest("train", 0, 0, ["a", "b"], [K1]),
    m.StatsRequest(0, ["a", "b"], [K1, K2], [b""]),   # masks on: one box per participant
    m.RoundRequest(0, 0, ["a", "b"], [K1], [b"", b""], CT),
    m.UnmaskRequest("train", 0, 0, ["a"], ["a"]),     # survivor and dropped at once
    m.UnmaskShares([b"s" * 39], []),
], ids=lambda x: type(x).__name__)
def test_invalid_content_is_refused_on_decoding(bad: Message) -> None:
    with pytest.raises(WireError):
        roundtrip(bad)


def test_unknown_purpose_and_negative_round_are_refused() -> None:
    frames = encode(m.Upload("train", 1, 0, CT), step="s", seq=1)
    import msgpack

    head = msgpack.unpackb(frames[0], raw=False)
    head["b"]["purpose"] = "steal"
    with pytest.raises(WireError, match="purpose"):
        decode([msgpack.packb(head, use_bin_type=True), *map(bytes, frames[1:])])
    head["b"]["purpose"], head["b"]["round"] = "train", -1
    with pytest.raises(WireError, match="round"):
        decode([msgpack.packb(head, use_bin_type=True), *map(bytes, frames[1:])])
