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
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, cast

import msgpack
import numpy as np

from fedrec.transport.errors import MessageTooLargeError, WireError

PROTOCOL_VERSION = 1
MIB = 1 << 20

#: dtypes an array frame may carry (numpy ``dtype.str``; little endian or byte-order free).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f4", "<f8"}
)
_HEADER_KEYS = frozenset({"v", "t", "step", "seq", "sid", "re", "b", "f"})
_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")
_STEP_MAX = 200
_NAME_MAX = 64
_U63 = (1 << 63) - 1
_I64 = (-(1 << 63), (1 << 63) - 1)

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


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > _NAME_MAX:
        raise ValueError(f"field name must be a non-empty str of at most {_NAME_MAX} chars, got {name!r}")


class WireWriter:
    """Collects the fields and frames of one message (used by ``Message.to_wire``)."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.frames: list[memoryview] = []

    def _set(self, name: str, value: Any) -> None:
        _check_name(name)
        if name in self.fields:
            raise ValueError(f"field {name!r} written twice")
        self.fields[name] = value

    def _frame(self, buf: Any) -> int:
        view = memoryview(buf)
        if not view.contiguous:
            raise ValueError("frames must be contiguous buffers")
        self.frames.append(view.cast("B") if view.ndim != 1 or view.format != "B" else view)
        return len(self.frames)  # frame 0 is the header

    def put_int(self, name: str, value: int) -> None:
        v = operator.index(value)
        if isinstance(value, bool) or not _I64[0] <= v <= _I64[1]:
            raise ValueError(f"field {name!r}: expected an int64, got {value!r}")
        self._set(name, v)

    def put_float(self, name: str, value: float) -> None:
        self._set(name, float(value))

    def put_bool(self, name: str, value: bool) -> None:
        self._set(name, bool(value))

    def put_str(self, name: str, value: str) -> None:
        if not isinstance(value, str):
            raise ValueError(f"field {name!r}: expected str, got {type(value).__name__}")
        self._set(name, value)

    def put_bytes(self, name: str, value: bytes) -> None:
        self._set(name, bytes(value))

    def put_int_list(self, name: str, values: Sequence[int]) -> None:
        self._set(name, [operator.index(v) for v in values])

    def put_float_list(self, name: str, values: Sequence[float]) -> None:
        self._set(name, [float(v) for v in values])

    def put_str_list(self, name: str, values: Sequence[str]) -> None:
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"field {name!r}: expected a list of str")
        self._set(name, list(values))

    def put_none(self, name: str) -> None:
        self._set(name, None)

    def put_array(self, name: str, array: np.ndarray) -> None:
        a = np.asarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype.str not in ALLOWED_DTYPES:
            raise ValueError(f"field {name!r}: dtype {a.dtype} is not allowed on the wire "
                             f"(allowed: {sorted(ALLOWED_DTYPES)})")
        a = np.ascontiguousarray(a)
        index = self._frame(a.reshape(-1).view(np.uint8))
        self._set(name, {"array": index, "dtype": a.dtype.str, "shape": list(a.shape)})

    def put_blob(self, name: str, data: Any) -> None:
        self._set(name, {"blob": self._frame(data)})

    def put_blobs(self, name: str, items: Sequence[Any]) -> None:
        self._set(name, {"blobs": [self._frame(d) for d in items]})


class WireReader:
    """Validating accessors over the fields and frames of one received message."""

    def __init__(self, type_name: str, fields: dict[str, Any], frames: Sequence[memoryview],
                 limits: WireLimits) -> None:
        self.type_name = type_name
        self._fields = fields
        self._frames = frames
        self._limits = limits
        self._read: set[str] = set()
        self._used_frames: set[int] = set()

    def _err(self, name: str, what: str) -> WireError:
        return WireError(f"{self.type_name}.{name}: {what}")

    def _get(self, name: str) -> Any:
        if name not in self._fields or self._fields[name] is None:
            raise self._err(name, "missing field")
        self._read.add(name)
        return self._fields[name]

    def has(self, name: str) -> bool:
        """Whether an optional field is present (``put_none`` fields read as absent)."""
        if name in self._fields and self._fields[name] is None:
            self._read.add(name)
        return self._fields.get(name) is not None

    def get_int(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
        v = self._get(name)
        if type(v) is not int:
            raise self._err(name, f"expected int, got {type(v).__name__}")
        _check_range(self, name, v, lo, hi)
        return v

    def get_float(self, name: str, *, lo: float | None = None, hi: float | None = None,
                  finite: bool = True) -> float:
        v = self._get(name)
        if type(v) is not float:
            raise self._err(name, f"expected float, got {type(v).__name__}")
        if finite and not math.isfinite(v):
            raise self._err(name, f"expected a finite float, got {v!r}")
        _check_range(self, name, v, lo, hi)
        return v

    def get_bool(self, name: str) -> bool:
        v = self._get(name)
        if type(v) is not bool:
            raise self._err(name, f"expected bool, got {type(v).__name__}")
        return v

    def get_str(self, name: str, *, max_len: int = 256, choices: Sequence[str] | None = None) -> str:
        v = self._get(name)
        if type(v) is not str:
            raise self._err(name, f"expected str, got {type(v).__name__}")
        if len(v) > max_len:
            raise self._err(name, f"string of {len(v)} chars exceeds {max_len}")
        if choices is not None and v not in choices:
            raise self._err(name, f"{v!r} is not one of {list(choices)}")
        return v

    def get_bytes(self, name: str, *, max_len: int = 65536) -> bytes:
        v = self._get(name)
        if type(v) is not bytes:
            raise self._err(name, f"expected bytes, got {type(v).__name__}")
        if len(v) > max_len:
            raise self._err(name, f"{len(v)} bytes exceed {max_len}")
        return v

    def _list(self, name: str, kind: type, max_len: int) -> list[Any]:
        v = self._get(name)
        if type(v) is not list:
            raise self._err(name, f"expected a list, got {type(v).__name__}")
        if len(v) > max_len:
            raise self._err(name, f"list of {len(v)} items exceeds {max_len}")
        bad = next((x for x in v if type(x) is not kind), None)
        if bad is not None:
            raise self._err(name, f"expected a list of {kind.__name__}, found {type(bad).__name__}")
        return v

    def get_int_list(self, name: str, *, max_len: int = 1_000_000, lo: int | None = None,
                     hi: int | None = None) -> list[int]:
        v = self._list(name, int, max_len)
        if v:
            _check_range(self, name, min(v), lo, None)
            _check_range(self, name, max(v), None, hi)
        return v

    def get_float_list(self, name: str, *, max_len: int = 1_000_000, finite: bool = True) -> list[float]:
        v = self._list(name, float, max_len)
        if finite and not all(math.isfinite(x) for x in v):
            raise self._err(name, "expected finite floats")
        return v

    def get_str_list(self, name: str, *, max_len: int = 100_000, max_str_len: int = 256) -> list[str]:
        v = self._list(name, str, max_len)
        if any(len(s) > max_str_len for s in v):
            raise self._err(name, f"a string exceeds {max_str_len} chars")
        return v

    def _descriptor(self, name: str, keys: set[str]) -> dict[str, Any]:
        d = self._get(name)
        if type(d) is not dict or set(d) != keys:
            raise self._err(name, f"expected a frame descriptor with keys {sorted(keys)}, got {d!r:.100}")
        return d

    def _take_frame(self, name: str, index: Any) -> memoryview:
        if type(index) is not int or not 1 <= index <= len(self._frames):
            raise self._err(name, f"frame index {index!r} out of range 1..{len(self._frames)}")
        if index in self._used_frames:
            raise self._err(name, f"frame {index} referenced twice")
        self._used_frames.add(index)
        return self._frames[index - 1]

    def get_array(self, name: str, dtype: Any = None, *, shape: Sequence[int | None] | None = None,
                  ndim: int | None = None, max_elems: int | None = None) -> np.ndarray:
        """A read-only array view on its frame, after checking dtype, shape and byte length."""
        d = self._descriptor(name, {"array", "dtype", "shape"})
        dt = d["dtype"]
        if type(dt) is not str or dt not in ALLOWED_DTYPES:
            raise self._err(name, f"dtype {dt!r} is not allowed (allowed: {sorted(ALLOWED_DTYPES)})")
        if dtype is not None and np.dtype(dtype).newbyteorder("<").str != dt:
            raise self._err(name, f"expected dtype {np.dtype(dtype)}, got {np.dtype(dt)}")
        shp = d["shape"]
        if (type(shp) is not list or len(shp) > self._limits.max_array_dims
                or not all(type(s) is int and s >= 0 for s in shp)):
            raise self._err(name, f"invalid shape {shp!r:.100}")
        if ndim is not None and len(shp) != ndim:
            raise self._err(name, f"expected {ndim} dimensions, got shape {tuple(shp)}")
        if shape is not None and (len(shape) != len(shp) or any(
                want is not None and want != got for want, got in zip(shape, shp, strict=True))):
            raise self._err(name, f"expected shape {tuple(shape)}, got {tuple(shp)}")
        count = math.prod(shp)
        if max_elems is not None and count > max_elems:
            raise self._err(name, f"{count} elements exceed {max_elems}")
        frame = self._take_frame(name, d["array"])
        itemsize = np.dtype(dt).itemsize
        if count * itemsize != frame.nbytes:
            raise self._err(name, f"shape {tuple(shp)} x {itemsize} bytes != frame length {frame.nbytes}")
        arr = np.frombuffer(frame, dtype=np.dtype(dt)).reshape(shp)
        arr.flags.writeable = False
        return arr

    def get_blob(self, name: str, *, max_bytes: int | None = None) -> memoryview:
        frame = self._take_frame(name, self._descriptor(name, {"blob"})["blob"])
        if max_bytes is not None and frame.nbytes > max_bytes:
            raise self._err(name, f"blob of {frame.nbytes} bytes exceeds {max_bytes}")
        return frame

    def get_blobs(self, name: str, *, max_count: int | None = None,
                  max_bytes: int | None = None) -> list[memoryview]:
        idx = self._descriptor(name, {"blobs"})["blobs"]
        if type(idx) is not list:
            raise self._err(name, "expected a list of frame indices")
        if max_count is not None and len(idx) > max_count:
            raise self._err(name, f"{len(idx)} blobs exceed {max_count}")
        out = [self._take_frame(name, i) for i in idx]
        big = next((f.nbytes for f in out if max_bytes is not None and f.nbytes > max_bytes), None)
        if big is not None:
            raise self._err(name, f"a blob of {big} bytes exceeds {max_bytes}")
        return out

    def finish(self) -> None:
        """Fail if a field or a frame was not consumed (unknown fields are an error, not ignored)."""
        extra = sorted(set(self._fields) - self._read)
        if extra:
            raise WireError(f"{self.type_name}: unexpected field(s) {extra[:10]}")
        unused = sorted(set(range(1, len(self._frames) + 1)) - self._used_frames)
        if unused:
            raise WireError(f"{self.type_name}: {len(unused)} frame(s) not referenced by any field")


def _check_range(r: WireReader, name: str, v: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise r._err(name, f"value {v!r} outside [{lo}, {hi}]")


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
