"""Reading and writing interaction tables and side tables as CSV/TSV or Parquet.

Text files are parsed into string columns first (nothing coerced, no line skipped), every line keeping its
1-based number; malformed lines (wrong number of fields) become ``malformed_line`` issues and the values are
then typed and checked by :mod:`fedrec.data.schema`, so every error names file, line and column.

Column-name mapping: ``columns={"userId": "user_id", "movieId": "item_id"}`` renames file columns to fedrec
names on read; on write the same kind of mapping renames fedrec columns to the file's names.

Every file a command reads from a user goes through here, and each of these is a :class:`DataValidationError`
naming the file (and the line/row and column where there is one), never a traceback or a silent result:
a path that is a directory or unreadable; binary data (a NUL byte) or bytes that are not valid in the
encoding; a field longer than :data:`MAX_FIELD` characters (its value is never echoed); a header with an
empty or repeated column name; a line with more or fewer fields than the header; a Parquet file that is
not one, or whose column has a nested/binary type; a table with no data rows (unless the caller says an
empty table means something, ``allow_empty=True``). A UTF-8 byte-order mark (Excel's "CSV UTF-8") is
dropped. ``.gz`` text files are decompressed.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedrec.data.dataset import INTERACTION_COLUMNS
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
#: the longest field (characters) a table may hold; longer is an error that does not echo the value
MAX_FIELD = 65536
MAX_COMPRESSED_RATIO = 200  # a .gz that inflates more than this is refused (a decompression bomb)


@dataclass(frozen=True)
class TextTable:
    """A text file split into string columns: ``frame`` (fresh RangeIndex), the 1-based
    ``line_numbers`` of its rows, and the ``issues`` of lines that could not be split."""

    frame: pd.DataFrame
    line_numbers: np.ndarray
    issues: tuple[Issue, ...]


def check_input_file(path: str | Path) -> Path:
    """``path`` as a readable regular file: :class:`FileNotFoundError` when it does not exist, else a
    :class:`DataValidationError` for a directory or a file this process may not read."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: file not found")
    if not p.is_file():
        raise DataValidationError(f"{p}: is {'a directory' if p.is_dir() else 'not a regular file'}; "
                                  "expected a file", source=str(p), reason="not_a_file")
    if not os.access(p, os.R_OK):
        raise DataValidationError(f"{p}: not readable (permission denied)", source=str(p),
                                  reason="unreadable")
    return p


def _read_bytes(path: Path) -> bytes:
    check_input_file(path)
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            with gzip.open(io.BytesIO(raw)) as f:
                raw = f.read(max(len(raw), 1 << 20) * MAX_COMPRESSED_RATIO + 1)
            if len(raw) > max(path.stat().st_size, 1 << 20) * MAX_COMPRESSED_RATIO:
                raise DataValidationError(f"{path}: decompresses to more than {MAX_COMPRESSED_RATIO}x its "
                                          "size; refused", source=str(path), reason="binary")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataValidationError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:200]})",
                                  source=str(path), reason="unreadable") from e
    return raw


def _decode(path: Path, encoding: str) -> str:
    raw = _read_bytes(path)
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        raise DataValidationError(f"{path}, line {line}: binary data (a NUL byte); expected {encoding} text",
                                  source=str(path), row=line, reason="binary")
    utf8 = encoding.replace("-", "").replace("_", "").lower() in ("utf8", "utf8sig")
    if utf8 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # Excel's "CSV UTF-8" starts with a byte-order mark; it is not part of the header
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataValidationError(
            f"{path}, line {line}: byte {raw[e.start:e.start + 1]!r} is not valid {encoding}; "
            f"expected {encoding} text (pass encoding=, e.g. 'latin-1')",
            source=str(path), row=line, reason="encoding") from e


def _check_header(path: Path, names: list[str]) -> None:
    for j, name in enumerate(names):
        if len(name) > MAX_FIELD or len(name) > 1000:
            raise DataValidationError(f"{path}, line 1: column name {j + 1} has {len(name)} characters; "
                                      "expected a header line", source=str(path), row=1, reason="bad_header")
        if not name:
            raise DataValidationError(f"{path}, line 1: column {j + 1} of the header has no name",
                                      source=str(path), row=1, reason="bad_header")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataValidationError(f"{path}, line 1, column {name!r}: named twice in the header",
                                      source=str(path), row=1, column=name, reason="duplicate_column")
        seen.add(name)


def _huge_field(path: Path, names: list[str], fields: Sequence[str], line: int) -> DataValidationError:
    j, n = max(enumerate(len(f) for f in fields), key=lambda t: t[1])
    column = names[j] if j < len(names) else None
    col = f", column {column!r}" if column is not None else f", field {j + 1}"
    return DataValidationError(f"{path}, line {line}{col}: field of {n} characters exceeds the limit of "
                               f"{MAX_FIELD}", source=str(path), row=line, column=column,
                               reason="field_too_long")


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
        _check_header(path, names)
        line_no = line_no[1:]
    if names is None:
        raise ValueError("read_delimited: names= is required when header=False")
    names = list(names)
    n = len(names)
    if rows is not None:
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        for i, r in enumerate(rows):
            if any(len(f) > MAX_FIELD for f in r):
                raise _huge_field(path, names, r, int(line_no[i]))
    else:
        assert lines is not None
        long = pc.greater(pc.utf8_length(lines), MAX_FIELD).to_numpy(zero_copy_only=False)
        if long.any():
            i = int(np.flatnonzero(long)[0])
            raise _huge_field(path, names, str(lines[i].as_py()).split(sep), int(line_no[i]))
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
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    last = 0
    raw_lines: list[str] | None = None
    try:
        for rec in reader:
            keep = bool(rec) and any(f.strip() for f in rec)
            if rec and not keep:  # whitespace only, or quoted empty fields ('""' is a row, not a blank line)
                raw_lines = raw_lines if raw_lines is not None else text.split("\n")
                keep = '"' in "".join(raw_lines[last:reader.line_num])
            if keep:
                rows.append(rec)
                starts.append(last + 1)
            last = reader.line_num
    except csv.Error as e:
        raise DataValidationError(f"{source}, line {reader.line_num}: {str(e)[:200]}; expected "
                                  "well-formed CSV quoting",
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


def read_parquet(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A Parquet file as a frame (fresh RangeIndex), checked: a file that is not Parquet, a repeated column
    name, a column of a nested or binary type, or a string longer than :data:`MAX_FIELD` is a
    :class:`DataValidationError` naming the file (and column, row). ``columns``: read only these (those
    absent are left for the caller's missing-column check)."""
    import pyarrow.parquet as pq

    p = check_input_file(path)
    try:
        schema = pq.read_schema(p)
        names = list(schema.names)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise DataValidationError(f"{p}, column {dup!r}: named twice in the Parquet schema",
                                      source=str(p), column=dup, reason="duplicate_column")
        wanted = names if columns is None else [c for c in columns if c in names]
        for name in wanted:
            t = schema.field(name).type
            if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) \
                    or pa.types.is_dictionary(t) and not pa.types.is_string(t.value_type):
                raise DataValidationError(f"{p}, column {name!r}: Parquet type {t} is not a plain number, "
                                          "string or time", source=str(p), column=name, reason="wrong_type")
        table = pq.read_table(p, columns=wanted)
    except DataValidationError:
        raise
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataValidationError(f"{p}: not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})",
                                  source=str(p), reason="not_parquet") from e
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            length = pc.utf8_length(col)
            longest = pc.max(length).as_py()
            if longest is not None and longest > MAX_FIELD:
                row = int(np.flatnonzero(pc.greater(length, MAX_FIELD).to_numpy(zero_copy_only=False))[0])
                raise DataValidationError(f"{p}, row {row}, column {name!r}: field of {longest} characters "
                                          f"exceeds the limit of {MAX_FIELD}", source=str(p), row=row,
                                          column=name, reason="field_too_long")
    return table.to_pandas().reset_index(drop=True)


def _check_not_empty(path: Path, n_rows: int, issues: Sequence[Issue], allow_empty: bool) -> None:
    if n_rows == 0 and not issues and not allow_empty:
        raise DataValidationError(f"{path}: no data rows (only a header, or an empty table); expected at "
                                  "least one row", source=str(path), reason="no_rows")


def _read_raw(path: Path, fmt: str, columns: Mapping[str, str] | None, sep: str | None,
              encoding: str, allow_empty: bool = False,
              ) -> tuple[pd.DataFrame, np.ndarray | None, tuple[Issue, ...], RowKind]:
    issues: tuple[Issue, ...] = ()
    kind: RowKind
    lines: np.ndarray | None
    if fmt == "parquet":
        frame = read_parquet(path)
        lines, kind = None, "row"
    else:
        tt = read_delimited(path, sep=sep or ("," if fmt == "csv" else "\t"), header=True, encoding=encoding)
        frame, lines, issues, kind = tt.frame, tt.line_numbers, tt.issues, "line"
    _check_not_empty(path, len(frame), issues, allow_empty)
    if columns:
        frame = frame.rename(columns=dict(columns))
    return frame, lines, issues, kind


def read_table(path: str | Path, *, format: str | None = None, sep: str | None = None,
               encoding: str = "utf-8", allow_empty: bool = False) -> TextTable:
    """Any table file (CSV/TSV with a header line, optionally ``.gz``, or Parquet) with every check of the
    module docstring, untyped: text cells stay strings, Parquet columns keep their types. The result's
    ``line_numbers`` are 1-based file lines for text, 0-based rows for Parquet."""
    p = Path(path)
    name = p.name.lower()
    fmt = _format(Path(name[:-3]) if name.endswith(".gz") else p, format)
    frame, lines, issues, kind = _read_raw(p, fmt, None, sep, encoding, allow_empty)
    if lines is None:
        lines = np.arange(len(frame), dtype=np.int64)
    return TextTable(frame, lines, issues)


def read_ids(path: str | Path, column: str, *, allow_empty: bool = False, encoding: str = "utf-8",
             allow_blank: bool = False) -> tuple[list[Any], np.ndarray]:
    """The ids of ``column`` in file order and the line (text; 1-based) or row (Parquet; 0-based) of each.

    ``.txt``: one id per line, no header (``column`` unused), blank lines skipped, each line stripped.
    CSV/TSV (also ``.csv.gz``): cells as written (strings; the caller decides about whitespace); Parquet:
    values keep their types (integer columns give ints). A missing column, a blank id, a float, boolean
    or nested id column, and every check of :func:`read_table` are :class:`DataValidationError` naming
    the file and the line/column. No ids is an error unless ``allow_empty``; blank ids are returned as
    they are with ``allow_blank`` (the caller reports them)."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        text = _decode(check_input_file(p), encoding)
        ids, lines = [], []
        for j, text_line in enumerate(text.split("\n"), start=1):
            value = text_line.strip()
            if not value:
                continue
            if len(value) > MAX_FIELD:
                raise DataValidationError(f"{p}, line {j}: id of {len(value)} characters exceeds the limit "
                                          f"of {MAX_FIELD}", source=str(p), row=j, reason="field_too_long")
            ids.append(value)
            lines.append(j)
        _check_not_empty(p, len(ids), (), allow_empty)
        return ids, np.asarray(lines, dtype=np.int64)
    tt = read_table(p, encoding=encoding, allow_empty=True)
    if tt.issues:
        i = tt.issues[0]
        raise DataValidationError(f"{table_location(p, i.row)}: {i.expected} [{i.reason}]", source=str(p),
                                  row=i.row, reason=i.reason)
    if column not in tt.frame.columns:
        cols = [str(c)[:40] for c in tt.frame.columns[:20]]
        raise DataValidationError(f"{p}: no column {column!r}; columns are {cols}", source=str(p),
                                  column=column, reason="missing_column")
    _check_not_empty(p, len(tt.frame), (), allow_empty)
    col = tt.frame[column]
    if pd.api.types.is_float_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise DataValidationError(f"{p}, column {column!r}: ids of type {col.dtype}; ids must be strings or "
                                  "integers (a float column is usually an integer column with missing "
                                  "values)", source=str(p), column=column, reason="wrong_type")
    values = col.tolist()
    blank = [j for j, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if blank and not allow_blank:
        line = int(tt.line_numbers[blank[0]])
        raise DataValidationError(f"{table_location(p, line, column)}: empty id ({len(blank)} empty in "
                                  "total)", source=str(p), row=line, column=column, reason="missing_id")
    return values, tt.line_numbers


def check_output_file(path: str | Path, suffixes: Sequence[str] | None = None) -> Path:
    """Preflight of an output file, before any work: the suffix is one of ``suffixes``, the path is not a
    directory, and a file can be created in its directory (or the nearest existing ancestor, if it is
    to be created) — probed by creating and removing a hidden file, so a read-only file system or a
    missing permission is found now, not after the work. :class:`DataValidationError` naming the path."""
    import tempfile

    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise DataValidationError(f"{p}: output file: use one of {', '.join(suffixes)}", source=str(p),
                                  reason="bad_output")
    if p.is_dir():
        raise DataValidationError(f"{p}: is a directory; expected an output file name", source=str(p),
                                  reason="bad_output")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DataValidationError(f"{p}: {parent} is not a directory", source=str(p), reason="bad_output")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".fedrec-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataValidationError(f"{p}: cannot write in {parent} ({e.strerror or type(e).__name__})",
                                  source=str(p), reason="bad_output") from e
    return p


def replacing_note(path: str | Path) -> str | None:
    """A line telling the user that ``path`` exists and will be replaced (with when it was written), or
    ``None``. Commands print it before their work, so an earlier run's output is never replaced
    silently (issue #13: each run of the README's commands overwrote the previous one's files)."""
    p = Path(path)
    if not p.is_file():
        return None
    import datetime as dt

    when = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"note: {p} exists (written {when}); it is replaced when this run completes"


def table_location(path: str | Path, line: int, column: str | None = None) -> str:
    """``"users.csv, line 7, column 'user_id'"`` (Parquet: ``row 7``, 0-based) for a :func:`read_table`
    line number."""
    p = Path(path)
    kind = "row" if p.suffix.lower() in (".parquet", ".pq") else "line"
    return f"{p}, {kind} {line}" + (f", column {column!r}" if column is not None else "")


def read_interactions(path: str | Path, *, format: str | None = None,
                      columns: Mapping[str, str] | None = None, sep: str | None = None,
                      encoding: str = "utf-8", errors: Errors = "raise",
                      rating_scale: tuple[float, float] | None = (1.0, 5.0),
                      id_type: str | None = "auto", allow_empty: bool = False, implicit: bool = False,
                      ) -> tuple[pd.DataFrame, ValidationReport]:
    """Read and validate an interaction table (CSV/TSV with a header line, or Parquet).

    ``columns`` maps file column names to ``user_id, item_id, rating, timestamp``; timestamps may be
    integer Unix seconds or ISO-8601 strings. Ids become int64 when all are integers (``id_type="auto"``).
    ``implicit``: an event log without a rating (a bank's product events): every row gets ``rating`` 1
    (a ``rating`` column, if any, is still checked — a NaN, ``inf`` or ``abc`` there is an error, the file
    is malformed — and then not used); :func:`fedrec.data.implicit.implicit_interactions` then
    makes one positive per pair. A missing column is an error naming the file's own column name (before
    ``columns`` renamed it) and the columns the file has.
    Returns ``(interactions with a fresh RangeIndex, report)``; see :func:`validate_interactions`. A file
    without data rows is an error unless ``allow_empty``.
    """
    p = Path(path)
    fmt = _format(p, format)
    frame, lines, issues, kind = _read_raw(p, fmt, columns, sep, encoding, allow_empty)
    inverse = {v: k for k, v in (columns or {}).items()}
    needed = ("user_id", "item_id", "timestamp") if implicit else INTERACTION_COLUMNS
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        names = [inverse.get(c, c) for c in missing]
        has = [inverse.get(str(c), str(c)) for c in frame.columns]
        hint = (" (events without a rating are implicit feedback)" if missing == ["rating"] else "")
        raise DataValidationError(f"{p}: missing column(s) {names}{hint}; the file has {has}",
                                  source=str(p), column=names[0], reason="missing_column")
    had_rating = "rating" in frame.columns
    if implicit and not had_rating:
        frame = frame.assign(rating=1.0)
    df, report = validate_interactions(frame, source=str(p), errors=errors,
                                       rating_scale=None if implicit else rating_scale,
                                       id_type=id_type if fmt != "parquet" or id_type != "auto" else None,
                                       line_numbers=lines, prior_issues=issues, row_kind=kind)
    if implicit and had_rating:  # checked like any rating (a NaN or 'abc' is an error), then not used
        df = df.assign(rating=1.0)
    return df.reset_index(drop=True), report


def read_side_table(path: str | Path, *, id_column: str, format: str | None = None,
                    columns: Mapping[str, str] | None = None, sep: str | None = None, encoding: str = "utf-8",
                    errors: Errors = "raise", known_ids: Collection[Any] | None = None,
                    unknown: Literal["error", "drop", "keep"] = "error",
                    categorical: Sequence[str] = (), id_type: str | None = "auto",
                    allow_empty: bool = False) -> tuple[pd.DataFrame, ValidationReport]:
    """Read and validate a user or item feature table; returns ``(table indexed by id_column, report)``.

    Column types are inferred once, here, from the text: a column at least half of whose non-empty
    cells are numbers is numeric (float64; empty -> NaN, a missing value), and then every other cell of
    it is an error naming file, line and column (``feature_not_numeric``; ``nan``/``inf`` text is
    ``feature_not_finite``) — never silently a categorical feature of hundreds of levels. The other
    columns, and those named in ``categorical`` (declare a category whose levels look like numbers
    there), stay strings: categorical features. Parquet columns keep their types (an infinite float is
    an error, NaN/null is missing). ``known_ids``/``unknown``: see :func:`validate_side_table`.
    """
    p = Path(path)
    fmt = _format(p, format)
    frame, lines, issues, kind = _read_raw(p, fmt, columns, sep, encoding, allow_empty)
    numeric: list[str] = []
    if fmt != "parquet":
        for col in frame.columns:
            if col == id_column or col in categorical:
                continue
            s = frame[col].str.strip()
            nonblank = s[s != ""]
            parsed = pd.to_numeric(nonblank, errors="coerce").notna().sum() if len(nonblank) else 0
            if len(nonblank) and 2 * parsed >= len(nonblank):
                numeric.append(col)
                if parsed < len(nonblank):
                    log.info("%s, column %r: %d of %d cells are numbers: a numeric column", p, col, parsed,
                             len(nonblank))
        for col in frame.columns:
            if col not in numeric and col != id_column:
                frame[col] = frame[col].where(frame[col].str.strip() != "", np.nan)
    else:
        numeric = [c for c in frame.columns if c != id_column and c not in categorical
                   and pd.api.types.is_numeric_dtype(frame[c].dtype)
                   and not pd.api.types.is_bool_dtype(frame[c].dtype)]
    try:
        table, report = validate_side_table(
            frame, id_column=id_column, source=str(p), errors=errors, known_ids=known_ids, unknown=unknown,
            numeric=numeric, id_type=id_type if fmt != "parquet" else None, line_numbers=lines,
            prior_issues=issues, row_kind=kind)
    except DataValidationError as exc:
        if exc.reason != "feature_not_numeric" or fmt == "parquet":
            raise
        hint = (f" (column {exc.column!r} is numeric because most of its cells are numbers; if it is a "
                "category, declare it categorical, e.g. [data] categorical = [...])")
        raise DataValidationError(str(exc) + hint, source=exc.source, row=exc.row, column=exc.column,
                                  value=exc.value, reason=exc.reason, counts=exc.counts) from exc
    return table, report


def write_table(df: pd.DataFrame, path: str | Path, *, format: str | None = None,
                columns: Mapping[str, str] | None = None, index: bool | None = None) -> Path:
    """Write an interaction or side table as CSV/TSV (with a header) or Parquet, atomically (0600).

    ``columns`` renames fedrec columns to the file's names. ``index`` defaults to writing the index only
    when it is named (side tables are indexed by ``user_id``/``item_id``). Returns the path written.
    """
    from fedrec.artifacts import atomic_file

    p = Path(path)
    fmt = _format(p, format)
    out = df.reset_index() if (index if index is not None else df.index.name is not None) else df
    if columns:
        out = out.rename(columns=dict(columns))
    with atomic_file(p) as tmp:  # complete or absent, never a partial file
        if fmt == "parquet":
            out.to_parquet(tmp, index=False)
        else:
            out.to_csv(tmp, sep="," if fmt == "csv" else "\t", index=False, lineterminator="\n")
    log.info("wrote %d rows to %s", len(out), p)
    return p
