"""FM fields: who owns them, which side they score on, and how raw tables become sparse rows.

A *field* is a group of features with its own parameter tensors (``w_f[n_f]``, ``V_f[n_f, k]``), its
own L2 strength, an **owner** party (``guest`` holds the labels, ids, item features, context and
history; ``host`` holds the ``user_features`` table — DESIGN §4.2) and a **side**:

* ``user``: depends on the user only (user id, host user features, history) -> ``p_u`` when scoring;
* ``item``: depends on the item only (item id, item features) -> ``q_i``;
* ``context``: depends on the sample (item age at the interaction time); for recommendation at a
  fixed time it depends on the item only and joins ``q_i``.

User/item fields are stored as CSR rows per entity (``indptr``, ``indices``, ``values``) with one
extra empty row at the end used for unknown entities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

OWNERS = ("guest", "host")
SIDES = ("user", "item", "context")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    owner: str
    side: str
    size: int

    def __post_init__(self) -> None:
        if self.owner not in OWNERS or self.side not in SIDES or self.size < 1:
            raise ValueError(f"bad field {self}: owner in {OWNERS}, side in {SIDES}, size >= 1")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "owner": self.owner, "side": self.side, "size": self.size}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FieldSpec:
        return cls(str(obj["name"]), str(obj["owner"]), str(obj["side"]), int(obj["size"]))


@dataclass
class Csr:
    """Sparse rows ``[n_rows + 1 (empty row for unknown), size]``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flattened ``(indices, values, offsets)`` of ``rows`` (``-1`` -> the empty last row)."""
        rows = np.where(rows < 0, self.n_rows - 1, rows)
        starts = self.indptr[rows]
        lens = self.indptr[rows + 1] - starts
        offsets = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(lens[:-1], out=offsets[1:])
        total = int(lens.sum())
        pos = np.repeat(starts - offsets, lens) + np.arange(total, dtype=np.int64)
        return self.indices[pos], self.values[pos], offsets

    @classmethod
    def from_lists(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int) -> Csr:
        """Build from coordinates (rows in ``[0, n_rows)``); appends the empty unknown row."""
        order = np.lexsort((cols, rows))
        counts = np.bincount(rows, minlength=n_rows + 1)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, cols[order].astype(np.int64), vals[order].astype(np.float32))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.indptr": self.indptr, f"{prefix}.indices": self.indices,
                f"{prefix}.values": self.values}


class TableEncoder:
    """Encode a side table (indexed by raw id) into one field's sparse rows.

    Column kinds follow :mod:`fedrec.data.dataset`: ``object``/``string``/``category`` columns are
    categorical (one-hot over the values seen at fit, in sorted order; missing/unseen values -> no
    feature); ``bool``/integer/float columns are numeric (one feature, value standardised by the fit
    mean/std; missing -> 0, i.e. the mean).
    """

    def __init__(self, columns: list[dict[str, Any]]) -> None:
        self.columns = columns
        self.size = 0
        self.offsets: list[int] = []
        for col in columns:
            self.offsets.append(self.size)
            self.size += len(col["vocab"]) if col["kind"] == "categorical" else 1

    @classmethod
    def fit(cls, table: pd.DataFrame, what: str, columns: list[str] | None = None) -> TableEncoder:
        cols = list(table.columns) if columns is None else list(columns)
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise ValueError(f"{what}: column(s) {missing} not found; it has {list(table.columns)}")
        specs: list[dict[str, Any]] = []
        for c in cols:
            s = table[c]
            if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
                v = s.to_numpy(dtype=np.float64, na_value=np.nan)
                if np.isinf(v).any():
                    row = int(np.flatnonzero(np.isinf(v))[0])
                    raise ValueError(f"{what}: column {c!r} has an infinite value at row {row}")
                mean = float(np.nanmean(v)) if np.isfinite(v).any() else 0.0
                std = float(np.nanstd(v)) if np.isfinite(v).any() else 1.0
                specs.append({"name": str(c), "kind": "numeric", "mean": mean, "std": std or 1.0})
            else:
                vocab = sorted({str(x) for x in s.dropna().tolist()})
                if not vocab:
                    raise ValueError(f"{what}: categorical column {c!r} has no values")
                specs.append({"name": str(c), "kind": "categorical", "vocab": vocab})
        return cls(specs)

    def transform(self, table: pd.DataFrame, raw_ids: np.ndarray, what: str) -> Csr:
        """Rows for ``raw_ids`` (entities absent from ``table`` get an empty row)."""
        if table.index.has_duplicates:
            dup = table.index[table.index.duplicated()].tolist()[:5]
            raise ValueError(f"{what}: duplicate index (raw id) values {dup!r}")
        pos = table.index.get_indexer(pd.Index(raw_ids))
        present = np.flatnonzero(pos >= 0)
        rows_l, cols_l, vals_l = [], [], []
        for col, off in zip(self.columns, self.offsets, strict=True):
            if col["name"] not in table.columns:
                raise ValueError(f"{what}: column {col['name']!r} (seen at fit) is missing")
            s = table[col["name"]].iloc[pos[present]]
            if col["kind"] == "numeric":
                v = (s.to_numpy(dtype=np.float64, na_value=np.nan) - col["mean"]) / col["std"]
                v = np.nan_to_num(v, nan=0.0)
                rows_l.append(present)
                cols_l.append(np.full(len(present), off))
                vals_l.append(v)
            else:
                lookup = {val: j for j, val in enumerate(col["vocab"])}
                codes = np.array([lookup.get(str(x), -1) if pd.notna(x) else -1 for x in s.tolist()],
                                 dtype=np.int64)
                ok = codes >= 0
                rows_l.append(present[ok])
                cols_l.append(off + codes[ok])
                vals_l.append(np.ones(int(ok.sum())))
        rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
        cols = np.concatenate(cols_l) if cols_l else np.zeros(0, np.int64)
        vals = np.concatenate(vals_l) if vals_l else np.zeros(0)
        return Csr.from_lists(rows.astype(np.int64), cols.astype(np.int64), vals, len(raw_ids))

    def to_json(self) -> list[dict[str, Any]]:
        return self.columns

    @classmethod
    def from_json(cls, obj: list[dict[str, Any]]) -> TableEncoder:
        for col in obj:
            if col.get("kind") not in ("numeric", "categorical") or "name" not in col:
                raise ValueError(f"bad column encoder {col!r}")
        return cls(obj)


def one_hot_rows(n: int, known: np.ndarray | None = None) -> Csr:
    """Identity rows (row ``r`` has feature ``r``); rows with ``known[r] == False`` are empty."""
    rows = np.arange(n, dtype=np.int64) if known is None else np.flatnonzero(known)
    return Csr.from_lists(rows, rows.copy(), np.ones(len(rows)), n)


def history_rows(users: np.ndarray, items: np.ndarray, n_users: int) -> Csr:
    """SVD++-style implicit set: row ``u`` = ``|N(u)|^{-1/2}`` on each item ``u`` rated in train."""
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=n_users)
    vals = 1.0 / np.sqrt(np.maximum(counts[pairs[:, 0]], 1))
    return Csr.from_lists(pairs[:, 0], pairs[:, 1], vals, n_users)
