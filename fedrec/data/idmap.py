"""Raw <-> inner id maps, and the one rule for "the same id" across parties.

Raw ids are whatever the data owner uses (ints or strings); inner ids are dense ``int64`` in
``[0, n)`` and index model arrays. The two never mix: every public API of fedrec takes and returns raw
ids, and converts at its boundary through an :class:`IdMap` (the role of Surprise's ``Trainset``).

Across parties and files an id is compared by its **key** (:func:`id_key`), the canonical text both
sides compute the same way (PSI hashes it, the guest and the host index partials by it, the scorer
matches request ids with it):

* a ``str`` id is its own key, unchanged: no case folding, trimming or Unicode normalisation, so
  ``"a"`` and ``" a"`` are different ids;
* an integer id (``int``, NumPy integers) is its base-10 text without leading zeros or ``+``:
  ``7 -> "7"``, ``-3 -> "-3"``; so the int ``7`` and the string ``"7"`` are the same id, ``"007"`` is not;
* anything else (``bool``, floats, ``None``/NaN, bytes) and the empty string are refused with
  :class:`IdError` naming the source and row. A float column usually means an int column with
  missing values: fix the data rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd


class IdError(ValueError):
    """An id cannot be used as a key: wrong type, empty, too long or not encodable; names source and row."""


def id_key(value: Any, *, source: str = "id", row: int | None = None) -> str:
    """The canonical text of one raw id (the module's rule); ``source``/``row`` only serve the error."""
    if isinstance(value, str):
        text = value
    else:
        where = source if row is None else f"{source}: row {row}"
        if isinstance(value, (bool, np.bool_)):
            raise IdError(f"{where}: boolean id {bool(value)}; ids must be strings or integers")
        if not isinstance(value, (int, np.integer)):
            raise IdError(f"{where}: id {value!r} of type {type(value).__name__}; ids must be strings or "
                          "integers (a float column usually means missing values)")
        text = str(int(value))
    if text == "":
        raise IdError(f"{source if row is None else f'{source}: row {row}'}: empty id")
    return text


def id_keys(values: Iterable[Any], source: str = "ids") -> list[str]:
    """:func:`id_key` of every value; an error names ``source`` and the 0-based row."""
    out: list[str] = []
    for row, value in enumerate(values):
        out.append(value if type(value) is str and value else id_key(value, source=source, row=row))
    return out


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
        self._keys: pd.Index | None = None

    key = staticmethod(id_key)

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

    @property
    def keys(self) -> pd.Index:
        """:func:`id_key` of every raw id, in inner-id order; :class:`IdError` if a raw id has no key or
        two raw ids share one (``7`` and ``"7"``)."""
        if self._keys is None:
            keys = pd.Index(id_keys(self._index, source=f"{self.kind} id map"))
            if keys.has_duplicates:
                dup = keys[keys.duplicated()][0]
                same = self._index[keys == dup].tolist()
                raise IdError(f"{self.kind} id map: raw ids {same!r} are the same id (key {dup!r})")
            self._keys = keys
        return self._keys

    def to_inner(self, raw: Iterable[Any], *, unknown: str = "raise", match: str = "exact") -> np.ndarray:
        """Map raw ids to inner ids.

        ``unknown="raise"`` raises :class:`UnknownIdError` naming the missing ids;
        ``unknown="mask"`` returns ``-1`` for them (the caller must then handle the fallback).
        ``match="exact"`` compares raw values (``7 != "7"``); ``match="key"`` compares :func:`id_key`
        (``7 == "7"``; floats and bools raise :class:`IdError`), as ids from another party or a file.
        """
        if unknown not in ("raise", "mask"):
            raise ValueError(f"unknown= must be 'raise' or 'mask', got {unknown!r}")
        if match not in ("exact", "key"):
            raise ValueError(f"match= must be 'exact' or 'key', got {match!r}")
        values = raw if isinstance(raw, (pd.Series, pd.Index, np.ndarray)) else list(raw)
        if match == "key":
            inner = self._key_lookup(id_keys(values, source=f"{self.kind} ids"))
        else:
            inner = np.asarray(self._index.get_indexer(values), dtype=np.int64)
        if unknown == "raise" and (inner < 0).any():
            arr = np.asarray(values, dtype=object)
            raise UnknownIdError(self.kind, list(pd.unique(arr[inner < 0])), len(arr))
        return inner

    def _key_lookup(self, keys: list[str]) -> np.ndarray:
        index = self.keys
        if len(keys) > 16:
            return np.asarray(index.get_indexer(pd.Index(keys, dtype=object)), dtype=np.int64)
        out = np.full(len(keys), -1, dtype=np.int64)  # online requests: no Index for a handful of keys
        for j, key in enumerate(keys):
            try:
                out[j] = int(index.get_loc(key))  # type: ignore[arg-type]  # unique index: an int
            except KeyError:
                pass
        return out

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
