"""Reading and writing interaction tables and side tables as CSV/TSV or Parquet.

Text files are parsed into string columns first (nothing coerced, no line skipped), every line keeping its
1-based number; malformed lines (wrong number of fields) become ``malformed_line`` issues and the values are
then typed and checked by :mod:`fedrec.data.schema`, so every error names file, line and column.

Column-name mapping: ``columns={"userId": "user_id", "movieId": "item_id"}`` renames file columns to fedrec
names on read; on write the same kind of mapping renames fedrec columns to the file's names.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedrec.data.schema import (
    DataValidationError,
    Errors,
    Issue,
    RowKind,
    ValidationReport,
    validate_interactions,
    validate_side_table,
)

log = logging.getLogger(__name__)

Format = Literal["csv", "tsv", "parquet"]


@dataclass(frozen=True)
class TextTable:
    """A text file split into string columns: ``frame`` (fresh RangeIndex), the 1-based
    ``line_numbers`` of its rows, and the ``issues`` of lines that could not be split."""

    frame: pd.DataFrame
    line_numbers: np.ndarray
    issues: tuple[Issue, ...]


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataValidationError(
            f"{path}, line {line}: byte {raw[e.start:e.start + 1]!r} is not valid {encoding}; "
            f"expected {encoding} text (pass encoding=, e.g. 'latin-1')",
            source=str(path), row=line, reason="encoding") from e


def read_delimited(path: str | Path, *, sep: str, names: Sequence[str] | None = None,
                   header: bool = False, encoding: str = "utf-8") -> TextTable:
    """Split a delimited text file into string columns without dropping or coercing anything.

    ``names`` gives the column names (required without ``header``; with ``header`` they are read from
    the first non-blank line). Blank lines are ignored (they hold no row). A line whose field count
    differs from the number of columns is returned as a ``malformed_line`` issue. Double-quoted CSV fields
    are honoured when ``sep`` is a single character and the file contains a ``"``; otherwise ``sep`` is a
    literal string (e.g. ``"::"``, as in the MovieLens formats) and splitting is vectorized (pyarrow).
    """
    path = Path(path)
    text = _decode(path, encoding)
    rows: list[list[str]] | None = None
    lines: pa.Array | None = None
    if "\"" in text and len(sep) == 1:
        rows, line_no = _split_quoted(text, sep, str(path))
        n_rows = len(rows)
    else:
        lines = pc.list_flatten(pc.split_pattern(pa.array([text], type=pa.large_string()), "\n"))
        lines = pc.utf8_rtrim(lines, characters="\r")
        keep = pc.not_equal(pc.utf8_trim_whitespace(lines), "")
        line_no = np.flatnonzero(keep.to_numpy(zero_copy_only=False)).astype(np.int64) + 1
        lines = lines.filter(keep)
        n_rows = len(lines)
    if header:
        if n_rows == 0:
            raise DataValidationError(f"{path}: empty file; expected a header line", source=str(path),
                                      reason="malformed_line")
        if rows is not None:
            head = rows.pop(0)
        else:
            assert lines is not None
            head, lines = str(lines[0].as_py()).split(sep), lines.slice(1)
        names = [h.strip() for h in head]
        line_no = line_no[1:]
    if names is None:
        raise ValueError("read_delimited: names= is required when header=False")
    names = list(names)
    n = len(names)
    if rows is not None:
        counts = np.array([len(r) for r in rows], dtype=np.int64)
    else:
        parts = pc.split_pattern(lines, sep)
        counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False).astype(np.int64)
    bad = counts != n

    def raw_line(i: int) -> str:
        return (str(lines[i].as_py()) if lines is not None else sep.join(rows[i] if rows else []))[:200]

    issues = tuple(Issue("malformed_line", int(line_no[i]), None, raw_line(i),
                         f"{n} fields separated by {sep!r} ({', '.join(names)}), found {int(counts[i])}")
                   for i in np.flatnonzero(bad).tolist())
    if rows is not None:
        frame = pd.DataFrame([r for r, b in zip(rows, bad, strict=True) if not b], columns=names, dtype="str")
    else:
        good = parts.filter(pa.array(~bad))
        frame = pd.DataFrame({name: pd.Series(pc.list_element(good, j).to_pandas(), dtype="str")
                              for j, name in enumerate(names)})
    return TextTable(frame, line_no[~bad], issues)


def _split_quoted(text: str, sep: str, source: str) -> tuple[list[list[str]], np.ndarray]:
    rows: list[list[str]] = []
    starts: list[int] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    last = 0
    try:
        for rec in reader:
            if rec and any(f.strip() for f in rec):
                rows.append(rec)
                starts.append(last + 1)
            last = reader.line_num
    except csv.Error as e:
        raise DataValidationError(f"{source}, line {reader.line_num}: {e}; expected well-formed CSV quoting",
                                  source=source, row=reader.line_num, reason="malformed_line") from e
    return rows, np.asarray(starts, dtype=np.int64)


def _format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        suffix = path.suffix.lower().lstrip(".")
        fmt = {"csv": "csv", "tsv": "tsv", "txt": "tsv", "parquet": "parquet", "pq": "parquet"}.get(suffix)
        if fmt is None:
            raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass "
                             "format='csv', 'tsv' or 'parquet'")
    if fmt not in ("csv", "tsv", "parquet"):
        raise ValueError(f"format= must be 'csv', 'tsv' or 'parquet', got {fmt!r}")
    return fmt


def _read_raw(path: Path, fmt: str, columns: Mapping[str, str] | None, sep: str | None,
              encoding: str) -> tuple[pd.DataFrame, np.ndarray | None, tuple[Issue, ...], RowKind]:
    issues: tuple[Issue, ...] = ()
    kind: RowKind
    lines: np.ndarray | None
    if fmt == "parquet":
        frame = pd.read_parquet(path).reset_index(drop=True)
        lines, kind = None, "row"
    else:
        tt = read_delimited(path, sep=sep or ("," if fmt == "csv" else "\t"), header=True, encoding=encoding)
        frame, lines, issues, kind = tt.frame, tt.line_numbers, tt.issues, "line"
    if columns:
        frame = frame.rename(columns=dict(columns))
    return frame, lines, issues, kind


def read_interactions(path: str | Path, *, format: str | None = None,
                      columns: Mapping[str, str] | None = None, sep: str | None = None,
                      encoding: str = "utf-8", errors: Errors = "raise",
                      rating_scale: tuple[float, float] | None = (1.0, 5.0),
                      id_type: str | None = "auto") -> tuple[pd.DataFrame, ValidationReport]:
    """Read and validate an interaction table (CSV/TSV with a header line, or Parquet).

    ``columns`` maps file column names to ``user_id, item_id, rating, timestamp``; timestamps may be
    integer Unix seconds or ISO-8601 strings. Ids become int64 when all are integers (``id_type="auto"``).
    Returns ``(interactions with a fresh RangeIndex, report)``; see :func:`validate_interactions`.
    """
    p = Path(path)
    fmt = _format(p, format)
    frame, lines, issues, kind = _read_raw(p, fmt, columns, sep, encoding)
    df, report = validate_interactions(frame, source=str(p), errors=errors, rating_scale=rating_scale,
                                       id_type=id_type if fmt != "parquet" or id_type != "auto" else None,
                                       line_numbers=lines, prior_issues=issues, row_kind=kind)
    return df.reset_index(drop=True), report


def read_side_table(path: str | Path, *, id_column: str, format: str | None = None,
                    columns: Mapping[str, str] | None = None, sep: str | None = None, encoding: str = "utf-8",
                    errors: Errors = "raise", known_ids: Collection[Any] | None = None,
                    unknown: Literal["error", "drop", "keep"] = "error",
                    categorical: Sequence[str] = (), id_type: str | None = "auto",
                    ) -> tuple[pd.DataFrame, ValidationReport]:
    """Read and validate a user or item feature table; returns ``(table indexed by id_column, report)``.

    Text columns whose every non-empty value is a number become numeric (float64; empty -> NaN), the
    others (and those named in ``categorical``) stay strings, i.e. categorical features. Parquet columns
    keep their types. ``known_ids``/``unknown``: see :func:`validate_side_table`.
    """
    p = Path(path)
    fmt = _format(p, format)
    frame, lines, issues, kind = _read_raw(p, fmt, columns, sep, encoding)
    numeric: list[str] = []
    if fmt != "parquet":
        for col in frame.columns:
            if col == id_column or col in categorical:
                continue
            s = frame[col].str.strip()
            nonblank = s[s != ""]
            if len(nonblank) and pd.to_numeric(nonblank, errors="coerce").notna().all():
                numeric.append(col)
        for col in frame.columns:
            if col not in numeric and col != id_column:
                frame[col] = frame[col].where(frame[col].str.strip() != "", np.nan)
    table, report = validate_side_table(
        frame, id_column=id_column, source=str(p), errors=errors, known_ids=known_ids, unknown=unknown,
        numeric=numeric, id_type=id_type if fmt != "parquet" else None, line_numbers=lines,
        prior_issues=issues, row_kind=kind)
    return table, report


def write_table(df: pd.DataFrame, path: str | Path, *, format: str | None = None,
                columns: Mapping[str, str] | None = None, index: bool | None = None) -> Path:
    """Write an interaction or side table as CSV/TSV (with a header) or Parquet.

    ``columns`` renames fedrec columns to the file's names. ``index`` defaults to writing the index only
    when it is named (side tables are indexed by ``user_id``/``item_id``). Returns the path written.
    """
    p = Path(path)
    fmt = _format(p, format)
    out = df.reset_index() if (index if index is not None else df.index.name is not None) else df
    if columns:
        out = out.rename(columns=dict(columns))
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        out.to_parquet(p, index=False)
    else:
        out.to_csv(p, sep="," if fmt == "csv" else "\t", index=False, lineterminator="\n")
    log.info("wrote %d rows to %s", len(out), p)
    return p
