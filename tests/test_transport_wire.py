"""The wire format: typed messages round-trip, and every malformed variant is rejected by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import msgpack
import numpy as np
import pytest

from fedrec.transport.errors import MessageTooLargeError, WireError
from fedrec.transport.wire import (
    ALLOWED_DTYPES,
    PROTOCOL_VERSION,
    Message,
    WireLimits,
    WireReader,
    WireWriter,
    decode,
    encode,
    register_message,
    roundtrip,
)


@register_message
@dataclass(frozen=True)
class Sample(Message):
    TYPE: ClassVar[str] = "ttwire.Sample"
    index: int
    weights: np.ndarray  # (n, 4) float64
    blob: bytes
    names: list[str]
    scale: float | None = None

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("index", self.index)
        w.put_array("weights", self.weights)
        w.put_blob("blob", self.blob)
        w.put_str_list("names", self.names)
        if self.scale is None:
            w.put_none("scale")
        else:
            w.put_float("scale", self.scale)

    @classmethod
    def from_wire(cls, r: WireReader) -> Sample:
        return cls(index=r.get_int("index", lo=0, hi=1000),
                   weights=r.get_array("weights", np.float64, shape=(None, 4)),
                   blob=bytes(r.get_blob("blob", max_bytes=1 << 20)),
                   names=r.get_str_list("names", max_len=10),
                   scale=r.get_float("scale", lo=0.0) if r.has("scale") else None)


@register_message
@dataclass(frozen=True)
class AnyArray(Message):
    TYPE: ClassVar[str] = "ttwire.AnyArray"
    a: np.ndarray
    parts: list[bytes]

    def to_wire(self, w: WireWriter) -> None:
        w.put_array("a", self.a)
        w.put_blobs("parts", self.parts)

    @classmethod
    def from_wire(cls, r: WireReader) -> AnyArray:
        return cls(r.get_array("a"), [bytes(b) for b in r.get_blobs("parts", max_count=8)])


def _sample(**kw: object) -> Sample:
    base = dict(index=7, weights=np.arange(12.0).reshape(3, 4), blob=b"\x00ct\xff", names=["a", "b"],
                scale=0.5)
    base.update(kw)
    return Sample(**base)  # type: ignore[arg-type]


def _frames(msg: Message, seq: int = 1) -> list[bytes]:
    return [bytes(f) for f in encode(msg, step="s", seq=seq, session=9)]


def _with_header(frames: list[bytes], **changes: object) -> list[bytes]:
    h = msgpack.unpackb(frames[0], raw=False)
    for path, value in changes.items():
        target = h
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[k]
        if value is KeyError:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def test_roundtrip_preserves_every_field() -> None:
    msg = _sample()
    out = roundtrip(msg)
    assert out.index == 7 and out.blob == msg.blob and out.names == ["a", "b"] and out.scale == 0.5
    np.testing.assert_array_equal(out.weights, msg.weights)


def test_optional_field_roundtrips_as_none() -> None:
    assert roundtrip(_sample(scale=None)).scale is None


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
def test_every_allowed_dtype_roundtrips(dtype: str) -> None:
    a = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    out = roundtrip(AnyArray(a, [b"x", b""]))
    assert out.a.dtype == np.dtype(dtype) and out.a.shape == (2, 3) and out.parts == [b"x", b""]
    np.testing.assert_array_equal(out.a, a)


def test_big_endian_and_non_contiguous_arrays_are_normalized() -> None:
    a = np.arange(20, dtype=">f8").reshape(4, 5)[:, ::2]
    out = roundtrip(AnyArray(a, []))
    np.testing.assert_array_equal(out.a, a)
    assert out.a.dtype.str == "<f8"


def test_decoded_array_is_a_read_only_view_without_copy() -> None:
    frames = _frames(_sample())
    _, msg = decode(frames)
    assert isinstance(msg, Sample) and not msg.weights.flags.writeable
    assert msg.weights.base is not None  # a view on the received frame


def test_encode_puts_array_bytes_in_a_raw_frame_without_copy() -> None:
    a = np.ones((1000, 4))
    frames = encode(_sample(weights=a), step="s", seq=1)
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.float64), a)


def test_header_carries_version_step_and_seq() -> None:
    h, _ = decode(_frames(_sample(), seq=42))
    got = (h.version, h.type, h.step, h.seq, h.session, h.reply_to)
    assert got == (PROTOCOL_VERSION, Sample.TYPE, "s", 42, 9, None)


def test_object_dtype_is_refused_on_encode() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        encode(AnyArray(np.array(["x"], dtype=object), []), step="s", seq=1)


@pytest.mark.parametrize("changes, match", [
    ({"v": PROTOCOL_VERSION + 1}, "protocol version"),
    ({"t": "ttwire.Nope"}, "unknown message type"),
    ({"b__index": -1}, r"Sample.index: value -1 outside"),
    ({"b__index": "7"}, r"Sample.index: expected int"),
    ({"b__index": True}, r"Sample.index: expected int"),
    ({"b__scale": float("nan")}, "finite"),
    ({"b__scale": -1.0}, "outside"),
    ({"b__names": ["a"] * 11}, "exceeds 10"),
    ({"b__weights__dtype": "|O"}, "dtype '|O' is not allowed"),
    ({"b__weights__dtype": "<f4"}, "expected dtype float64"),
    ({"b__weights__shape": [4, 3]}, r"expected shape \(None, 4\)"),
    ({"b__weights__shape": [6, 4]}, "frame length"),
    ({"b__blob__blob": 1}, "frame 1 referenced twice"),
    ({"b__weights__array": 9}, "out of range"),
    ({"b__extra": 1}, "unexpected field"),
    ({"b__index": KeyError}, "missing field"),
    ({"f": [96]}, "announces 1 frame"),
    ({"f": [96, 5]}, "header says 5"),
    ({"seq": -3}, "'seq'"),
    ({"step": "x" * 500}, "short strings"),
    ({"sid": KeyError}, "keys"),
])
def test_invalid_header_or_field_is_rejected(changes: dict[str, object], match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode(_with_header(_frames(_sample()), **changes))


def test_truncated_frame_is_rejected_with_its_header() -> None:
    frames = _frames(_sample())
    with pytest.raises(WireError, match="frame 1 has 88 bytes") as ei:
        decode([frames[0], frames[1][:-8], frames[2]])
    assert ei.value.header is not None and ei.value.header.step == "s"


def test_missing_and_extra_frames_are_rejected() -> None:
    frames = _frames(_sample())
    with pytest.raises(WireError, match="announces 2"):
        decode(frames[:2])
    with pytest.raises(WireError, match="announces 2"):
        decode([*frames, b"extra"])


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\x92\x01", b"garbage!", msgpack.packb([1, 2]),
                                    msgpack.packb({"v": 1})])
def test_garbage_header_is_rejected(header: bytes) -> None:
    with pytest.raises(WireError):
        decode([header])


def test_message_over_the_size_limit_is_rejected_before_parsing() -> None:
    frames = _frames(_sample(weights=np.zeros((1000, 4))))
    with pytest.raises(MessageTooLargeError, match="max_message_bytes=1000"):
        decode(frames, WireLimits(max_message_bytes=1000, max_header_bytes=1000))


def test_too_many_frames_are_rejected() -> None:
    frames = _frames(AnyArray(np.zeros(1), [b"a"] * 8))
    with pytest.raises(MessageTooLargeError, match="max_frames=4"):
        decode(frames, WireLimits(max_frames=4))


def test_array_element_limit_applies() -> None:
    @register_message
    @dataclass(frozen=True)
    class Small(Message):
        TYPE: ClassVar[str] = "ttwire.Small"
        a: np.ndarray

        def to_wire(self, w: WireWriter) -> None:
            w.put_array("a", self.a)

        @classmethod
        def from_wire(cls, r: WireReader) -> Small:
            return cls(r.get_array("a", np.uint8, ndim=1, max_elems=10))

    with pytest.raises(WireError, match="11 elements exceed 10"):
        decode(_frames(Small(np.zeros(11, np.uint8))))


def test_duplicate_type_name_from_another_class_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        @register_message
        @dataclass(frozen=True)
        class Other(Message):
            TYPE: ClassVar[str] = "ttwire.AnyArray"


def test_unregistered_message_cannot_be_encoded() -> None:
    @dataclass(frozen=True)
    class Loose(Message):
        TYPE: ClassVar[str] = "ttwire.Loose"

    with pytest.raises(ValueError, match="not registered"):
        encode(Loose(), step="s", seq=1)
