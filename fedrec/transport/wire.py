"""The wire format: typed messages <-> a msgpack header plus raw frames.

A message on the wire is a list of frames::

    frame 0   msgpack map {v: PROTOCOL_VERSION, t: type name, step: str, seq: int, sid: int,
                           re: int | None, b: {field: value}, f: [byte length of frame 1, 2, ...]}
    frame k   raw bytes of an array or blob (k >= 1), referenced from a field of ``b``

Arrays travel as their little-endian C-order bytes with ``{"array": k, "dtype": "<f8", "shape": [..]}``
in ``b``; the reader checks the dtype against :data:`ALLOWED_DTYPES`, that ``prod(shape) * itemsize``
equals the frame's length, and the caller's expected dtype/shape, then returns a read-only
``np.frombuffer`` view (no copy). Blobs (serialized ciphertexts, CKKS contexts) are ``{"blob": k}``.
Decoding is "verify, then parse": sizes and frame accounting first, then the header schema, then the
registered class's ``from_wire`` through a :class:`WireReader` whose every accessor validates, and
finally a check that every field and every frame was consumed. Nothing is ever unpickled.
:class:`WireWriter`, :class:`WireReader` and :data:`ALLOWED_DTYPES` live in
:mod:`fedrec.transport.fields` and are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, cast

import msgpack

from fedrec.transport.errors import MessageTooLargeError, WireError
from fedrec.transport.fields import _NAME_MAX, ALLOWED_DTYPES, WireReader, WireWriter

__all__ = [
    "ALLOWED_DTYPES", "MIB", "PROTOCOL_VERSION", "Header", "Message", "WireFrame", "WireLimits",
    "WireReader", "WireWriter", "check_size", "decode", "decode_header", "encode", "frames_nbytes",
    "message_class", "peek_header", "register_message", "roundtrip",
]

PROTOCOL_VERSION = 1
MIB = 1 << 20

_HEADER_KEYS = frozenset({"v", "t", "step", "seq", "sid", "re", "b", "f"})
_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")
_STEP_MAX = 200
_U63 = (1 << 63) - 1

WireFrame = bytes | bytearray | memoryview
M = TypeVar("M", bound="Message")
MT = TypeVar("MT", bound="type[Message]")


@dataclass(frozen=True)
class WireLimits:
    """Size limits enforced while decoding (and by the sender before sending).

    The default 64 MiB leaves room for a serialized CKKS public context with Galois keys (~35 MB).
    """

    max_message_bytes: int = 64 * MIB
    max_frames: int = 100_000
    max_header_bytes: int = 16 * MIB
    max_array_dims: int = 8

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_frames", "max_header_bytes", "max_array_dims"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"WireLimits.{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Header:
    """The envelope of a decoded message (everything but the fields)."""

    version: int
    type: str
    step: str
    seq: int
    session: int
    reply_to: int | None


class Message:
    """Base of every typed message: a frozen dataclass with a unique ``TYPE`` and a paired wire form."""

    TYPE: ClassVar[str] = ""

    def to_wire(self, w: WireWriter) -> None:
        raise NotImplementedError(f"{type(self).__name__}.to_wire is not implemented")

    @classmethod
    def from_wire(cls, r: WireReader) -> Self:
        raise NotImplementedError(f"{cls.__name__}.from_wire is not implemented")


_REGISTRY: dict[str, type[Message]] = {}


def register_message(cls: MT) -> MT:
    """Class decorator: make ``cls`` decodable under its ``TYPE`` name (unique across fedrec)."""
    name = cls.TYPE
    if not isinstance(name, str) or not _TYPE_RE.match(name) or len(name) > _NAME_MAX:
        raise ValueError(f"{cls.__qualname__}.TYPE must look like 'protocol.Name', got {name!r}")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"message type {name!r} already registered by {old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def message_class(name: str) -> type[Message]:
    """The class registered under ``name`` (raises :class:`WireError` if unknown)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WireError(f"unknown message type {name!r}") from None


def encode(msg: Message, *, step: str, seq: int, session: int = 0,
           reply_to: int | None = None) -> list[WireFrame]:
    """Serialize ``msg`` into frames: the msgpack header, then raw frames (arrays are not copied)."""
    cls = type(msg)
    if _REGISTRY.get(cls.TYPE) is not cls:
        raise ValueError(f"{cls.__qualname__} is not registered (decorate it with @register_message)")
    if not isinstance(step, str) or len(step) > _STEP_MAX:
        raise ValueError(f"step must be a str of at most {_STEP_MAX} chars, got {step!r:.100}")
    for label, v in (("seq", seq), ("session", session), ("reply_to", reply_to)):
        if v is not None and (type(v) is not int or not 0 <= v <= _U63):
            raise ValueError(f"{label} must be an int in [0, 2**63), got {v!r}")
    w = WireWriter()
    msg.to_wire(w)
    header = {"v": PROTOCOL_VERSION, "t": cls.TYPE, "step": step, "seq": seq, "sid": session,
              "re": reply_to, "b": w.fields, "f": [f.nbytes for f in w.frames]}
    return [msgpack.packb(header, use_bin_type=True), *w.frames]


def frames_nbytes(frames: Sequence[WireFrame]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def check_size(frames: Sequence[WireFrame], limits: WireLimits) -> None:
    """Raise :class:`MessageTooLargeError` if ``frames`` exceed ``limits`` (used before sending, too)."""
    if len(frames) - 1 > limits.max_frames:
        raise MessageTooLargeError(f"{len(frames) - 1} frames exceed max_frames={limits.max_frames}")
    total = frames_nbytes(frames)
    if total > limits.max_message_bytes:
        raise MessageTooLargeError(
            f"message of {total} bytes exceeds max_message_bytes={limits.max_message_bytes}")
    if frames and memoryview(frames[0]).nbytes > limits.max_header_bytes:
        raise MessageTooLargeError(f"header exceeds max_header_bytes={limits.max_header_bytes}")


def decode_header(frames: Sequence[WireFrame], limits: WireLimits) -> tuple[Header, dict[str, Any]]:
    """Check sizes and the header schema; return the envelope and the raw field map.

    On failure the :class:`WireError` carries the best-effort envelope (``peek_header``) when one is
    readable, so the receiver's error reply can name the step and sequence number.
    """
    if not frames:
        raise WireError("empty message (no frames)")
    try:
        return _decode_header(frames, limits)
    except WireError as e:
        if e.header is None:
            e.header = peek_header(frames[0], limits)
        raise


def _decode_header(frames: Sequence[WireFrame], limits: WireLimits) -> tuple[Header, dict[str, Any]]:
    check_size(frames, limits)
    try:
        h = msgpack.unpackb(frames[0], raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise WireError(f"header is not valid msgpack ({type(e).__name__}: {e})") from None
    if type(h) is not dict or set(h) != _HEADER_KEYS:
        keys = sorted(map(str, h)) if type(h) is dict else type(h).__name__
        raise WireError(f"header must be a map with keys {sorted(_HEADER_KEYS)}, got {keys}")
    if h["v"] != PROTOCOL_VERSION or type(h["v"]) is not int:
        raise WireError(f"protocol version {h['v']!r}, this side speaks {PROTOCOL_VERSION}")
    if type(h["t"]) is not str or type(h["step"]) is not str or len(h["step"]) > _STEP_MAX:
        raise WireError("header fields 't' and 'step' must be short strings")
    for key in ("seq", "sid") + (("re",) if h["re"] is not None else ()):
        if type(h[key]) is not int or not 0 <= h[key] <= _U63:
            raise WireError(f"header field {key!r} must be an int in [0, 2**63), got {h[key]!r:.50}")
    header = Header(h["v"], h["t"], h["step"], h["seq"], h["sid"], h["re"])
    lengths, fields = h["f"], h["b"]
    if type(fields) is not dict or not all(type(k) is str for k in fields):
        raise _with_header(WireError(f"{header.type}: field map must map str to values"), header)
    if type(lengths) is not list or len(lengths) != len(frames) - 1:
        raise _with_header(WireError(
            f"{header.type}: header announces {len(lengths) if type(lengths) is list else '?'} frame(s), "
            f"message has {len(frames) - 1} (truncated or padded)"), header)
    for i, (want, frame) in enumerate(zip(lengths, frames[1:], strict=True), start=1):
        if memoryview(frame).nbytes != want:
            got = memoryview(frame).nbytes
            raise _with_header(WireError(
                f"{header.type}: frame {i} has {got} bytes, header says {want!r:.30}"), header)
    return header, fields


def peek_header(frame: WireFrame, limits: WireLimits) -> Header | None:
    """Best-effort envelope of a message that is rejected anyway (e.g. too large), to name its step."""
    if memoryview(frame).nbytes > limits.max_header_bytes:
        return None
    try:
        h = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception:  # garbage: there is no envelope to report
        return None
    if type(h) is not dict:
        return None
    ints = [h.get(k) for k in ("v", "seq", "sid")]
    re_ = h.get("re")
    if re_ is not None:
        ints.append(re_)
    if (not all(type(v) is int and 0 <= v <= _U63 for v in ints) or type(h.get("t")) is not str
            or type(h.get("step")) is not str):
        return None
    return Header(h["v"], h["t"][:_NAME_MAX], h["step"][:_STEP_MAX], h["seq"], h["sid"], re_)


def _with_header(err: WireError, header: Header) -> WireError:
    err.header = header
    return err


def decode(frames: Sequence[WireFrame], limits: WireLimits | None = None) -> tuple[Header, Message]:
    """Verify and parse one message. Raises :class:`WireError` (with ``.header`` when it was readable)."""
    limits = limits or WireLimits()
    header, fields = decode_header(frames, limits)
    try:
        cls = message_class(header.type)
        reader = WireReader(header.type, fields, [memoryview(f) for f in frames[1:]], limits)
        msg = cls.from_wire(reader)
        reader.finish()
        if type(msg) is not cls:
            raise WireError(f"{header.type}.from_wire returned {type(msg).__name__}")
    except WireError as e:
        raise _with_header(e, header) from None
    except (ValueError, TypeError, OverflowError) as e:  # raised by a dataclass's own validation
        raise _with_header(WireError(f"{header.type}: invalid content: {e}"), header) from None
    return header, msg


def roundtrip(msg: M, limits: WireLimits | None = None) -> M:
    """Encode ``msg``, copy its frames as a socket would, and decode them (for message-module tests)."""
    frames = [bytes(f) for f in encode(msg, step="roundtrip", seq=1)]
    _, out = decode(frames, limits)
    if type(out) is not type(msg):
        raise WireError(f"roundtrip of {type(msg).__name__} decoded as {type(out).__name__}")
    return cast(M, out)
