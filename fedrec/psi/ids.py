"""Id columns for PSI: normalisation to bytes, de-duplication, reading id files and writing aligned files.

Normalisation rule: :func:`fedrec.data.idmap.id_key`, the one rule for "the same id" across parties
(both parties must apply the same one, so it is fixed there and only delegated to here):

* ``str`` ids are used as they are, encoded as UTF-8. No case folding, trimming or Unicode normalisation:
  ``"é"`` (U+00E9) and ``"e\\u0301"`` are different ids, as are ``"a"`` and ``" a"``.
* integer ids (``int``, NumPy integers) become their base-10 text without leading zeros or ``+``:
  ``7 -> "7"``, ``-3 -> "-3"``. So the int ``7`` and the string ``"7"`` are the same id, but ``"007"`` is not.
* anything else (``bool``, floats, ``None``/NaN, bytes) is rejected with the row that holds it. A float
  column usually means an int column with missing values; fix the file rather than guess.

Duplicates: the first occurrence of each id is kept (its row is the one reported in the aligned output),
later ones are dropped with a warning that gives their count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.idmap import IdError, id_key

__all__ = ["MAX_ID_BYTES", "IdError", "UniqueIds", "dedupe", "encode_ids", "normalize_id", "read_id_column",
           "write_aligned"]

log = logging.getLogger(__name__)

MAX_ID_BYTES = 4096


def normalize_id(value: Any, row: int | None, source: str = "ids") -> str:
    """:func:`fedrec.data.idmap.id_key` of one id; ``row`` and ``source`` only serve the error."""
    return id_key(value, source=source, row=row)


def encode_ids(values: Iterable[Any], source: str = "ids") -> list[bytes]:
    """Normalise and UTF-8 encode every id; errors name ``source`` and the 0-based row."""
    out: list[bytes] = []
    for row, value in enumerate(values):
        text = normalize_id(value, row, source)
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise IdError(f"{source}: row {row}: id is not valid Unicode ({err.reason})") from None
        if len(raw) > MAX_ID_BYTES:
            raise IdError(f"{source}: row {row}: id of {len(raw)} bytes exceeds {MAX_ID_BYTES}")
        out.append(raw)
    return out


@dataclass(frozen=True)
class UniqueIds:
    """De-duplicated ids with the input row of each one's first occurrence."""

    ids: list[bytes]
    rows: np.ndarray  # int64, rows[i] is the input row of ids[i]
    n_input: int

    @property
    def n_duplicates(self) -> int:
        return self.n_input - len(self.ids)


def dedupe(ids: Sequence[bytes], source: str = "ids") -> UniqueIds:
    """Keep the first occurrence of each id, warn with the number of dropped duplicate rows."""
    first: dict[bytes, int] = {}
    for row, x in enumerate(ids):
        first.setdefault(x, row)
    result = UniqueIds(list(first), np.fromiter(first.values(), dtype=np.int64, count=len(first)), len(ids))
    if result.n_duplicates:
        log.warning("%s: %d duplicate id row(s) dropped (%d unique of %d); the first occurrence is kept",
                    source, result.n_duplicates, len(result.ids), len(ids))
    return result


def read_id_column(path: str | Path, column: str) -> list[bytes]:
    """Read and encode the id column of a CSV (``.csv``, ``.csv.gz``, ``.tsv``), Parquet or ``.txt`` (one id
    per line, no header) file, through the validated table reader (:func:`fedrec.data.tables.read_ids`):
    a ragged line, a BOM, binary data, a huge field, a blank id or a wrong column type is an error naming
    the file, line and column, raised before any PSI message is sent.

    CSV cells are read as text, so ``007`` stays ``"007"``; Parquet integer columns follow the integer rule.
    """
    from fedrec.data.schema import DataValidationError
    from fedrec.data.tables import read_ids, table_location

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".parquet", ".pq", ".csv", ".csv.gz", ".tsv", ".txt")):
        raise IdError(f"{path}: unknown id file type; use .csv, .csv.gz, .tsv, .txt or .parquet")
    try:
        values, lines = read_ids(path, column, allow_blank=True)
    except DataValidationError as exc:
        raise IdError(str(exc)) from exc
    out: list[bytes] = []
    for row, (value, line) in enumerate(zip(values, lines.tolist(), strict=True)):
        where = table_location(path, line, None if name.endswith(".txt") else column)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise IdError(f"{path} column {column!r}: row {row}: empty id ({where})")
        raw = normalize_id(value, None, where).encode("utf-8")
        if len(raw) > MAX_ID_BYTES:
            raise IdError(f"{where}: id of {len(raw)} bytes exceeds {MAX_ID_BYTES}")
        out.append(raw)
    return out


def write_aligned(path: str | Path, ids: Sequence[bytes], rows: np.ndarray) -> None:
    """Write ``aligned_index, id, row_index`` (CSV, or Parquet when the name ends in ``.parquet``).

    ``row_index`` is the 0-based data row (header excluded) of the id in the party's input file.
    """
    import pandas as pd

    path = Path(path)
    frame = pd.DataFrame({
        "aligned_index": np.arange(len(ids), dtype=np.int64),
        "id": pd.Series([x.decode("utf-8") for x in ids], dtype=object),
        "row_index": np.asarray(rows, dtype=np.int64),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
