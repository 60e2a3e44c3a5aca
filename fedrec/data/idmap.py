"""Raw <-> inner id maps.

Raw ids are whatever the data owner uses (ints or strings); inner ids are dense ``int64`` in
``[0, n)`` and index model arrays. The two never mix: every public API of fedrec takes and returns raw
ids, and converts at its boundary through an :class:`IdMap` (the role of Surprise's ``Trainset``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd


class UnknownIdError(KeyError):
    """Raised when a raw id is not in the map and the caller asked for strictness."""

    def __init__(self, kind: str, missing: list[Any], total: int) -> None:
        shown = ", ".join(repr(m) for m in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        super().__init__(f"{len(missing)} of {total} {kind} id(s) are unknown: {shown}{more}")
        self.kind = kind
        self.missing = missing

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class IdMap:
    """A bijection between raw ids and dense inner ids ``0..n-1`` (in first-seen order).

    >>> m = IdMap.from_raw(["b", "a", "b"], kind="user")
    >>> m.to_inner(["a", "b"]).tolist(), m.to_raw([1]).tolist()
    ([1, 0], ['a'])
    """

    def __init__(self, raw_ids: Iterable[Any], kind: str = "id") -> None:
        raw = pd.Index(list(raw_ids))
        if raw.has_duplicates:
            dup = raw[raw.duplicated()].tolist()[:5]
            raise ValueError(f"{kind} id map: duplicate raw ids {dup!r}")
        if raw.hasnans:
            raise ValueError(f"{kind} id map: raw ids contain NaN/None")
        self.kind = kind
        self._index = raw

    @classmethod
    def from_raw(cls, values: Iterable[Any], kind: str = "id") -> IdMap:
        """Build from a column of raw ids (duplicates allowed; first-seen order kept)."""
        return cls(pd.unique(pd.Series(list(values) if not isinstance(values, pd.Series) else values)),
                   kind=kind)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, raw_id: object) -> bool:
        return raw_id in self._index

    @property
    def raw_ids(self) -> np.ndarray:
        """Raw ids in inner-id order (``raw_ids[inner] == raw``)."""
        return self._index.to_numpy()

    def to_inner(self, raw: Iterable[Any], *, unknown: str = "raise") -> np.ndarray:
        """Map raw ids to inner ids.

        ``unknown="raise"`` raises :class:`UnknownIdError` naming the missing ids;
        ``unknown="mask"`` returns ``-1`` for them (the caller must then handle the fallback).
        """
        if unknown not in ("raise", "mask"):
            raise ValueError(f"unknown= must be 'raise' or 'mask', got {unknown!r}")
        values = raw if isinstance(raw, (pd.Series, pd.Index, np.ndarray)) else list(raw)
        inner = np.asarray(self._index.get_indexer(values), dtype=np.int64)
        if unknown == "raise" and (inner < 0).any():
            arr = np.asarray(values, dtype=object)
            raise UnknownIdError(self.kind, list(pd.unique(arr[inner < 0])), len(arr))
        return inner

    def to_raw(self, inner: Iterable[int] | np.ndarray) -> np.ndarray:
        """Map inner ids back to raw ids; out-of-range inner ids raise ``IndexError``."""
        idx = np.asarray(inner, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.kind} inner id out of range [0, {len(self)})")
        return self.raw_ids[idx]

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form (no pickle); raw ids keep their int/str type."""
        vals = self.raw_ids.tolist()
        return {"kind": self.kind, "raw_ids": [v if isinstance(v, (int, str)) else str(v) for v in vals]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IdMap:
        if not isinstance(obj, dict) or not isinstance(obj.get("raw_ids"), list):
            raise ValueError("id map JSON must be an object with a 'raw_ids' list")
        for v in obj["raw_ids"]:
            if not isinstance(v, (int, str)) or isinstance(v, bool):
                raise ValueError(f"id map JSON: raw id {v!r} is neither int nor str")
        return cls(obj["raw_ids"], kind=str(obj.get("kind", "id")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._index.equals(other._index)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IdMap(kind={self.kind!r}, n={len(self)})"
