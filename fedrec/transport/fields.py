"""Field accessors of the wire format: :class:`WireWriter` (``put_*``) and :class:`WireReader` (``get_*``).

A message's ``to_wire`` writes named fields through a :class:`WireWriter`: scalars, short strings and
lists go inline into the msgpack header's field map; arrays and blobs become raw frames referenced by
index (``{"array": k, "dtype": "<f8", "shape": [..]}``, ``{"blob": k}``, ``{"blobs": [k, ..]}``).
Its ``from_wire`` reads them back through a :class:`WireReader`, whose every accessor validates type,
range, length, dtype (against :data:`ALLOWED_DTYPES`) and shape against the frame's byte length, and
raises :class:`WireError` naming ``Type.field``. The envelope, limits and registry live in
:mod:`fedrec.transport.wire`, which re-exports these names.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.transport.errors import WireError

if TYPE_CHECKING:
    from fedrec.transport.wire import WireLimits

#: dtypes an array frame may carry (numpy ``dtype.str``; little endian or byte-order free).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f4", "<f8"}
)
_NAME_MAX = 64
_I64 = (-(1 << 63), (1 << 63) - 1)


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
