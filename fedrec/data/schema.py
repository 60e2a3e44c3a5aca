"""Validation of interaction tables and side tables, with errors that say where and why.

Every check is vectorized and produces, per bad row, a *reason*, the *column*, the bad *value* and what was
*expected*. Two modes:

* ``errors="raise"`` (default): raise :class:`DataValidationError` for the first bad row (lowest position),
  its message also giving the number of bad rows per reason.
* ``errors="skip"``: drop every bad row and return a :class:`ValidationReport` with counts per reason; the
  report is logged at WARNING when anything was dropped. Nothing is ever dropped silently.

Rows are named by their 1-based *line* in the file when the table came from a text file (the parser passes
``line_numbers``), by *index label* for in-memory frames, and by 0-based *row* position for Parquet files.

Reasons (the keys of :attr:`ValidationReport.dropped`): ``malformed_line``, ``missing_id``,
``id_not_integer``, ``rating_not_numeric``, ``rating_nan``, ``rating_inf``, ``rating_out_of_range``,
``timestamp_unparsable``, ``duplicate_interaction``, ``duplicate_id``, ``feature_not_numeric``,
``feature_not_finite``, ``id_not_in_interactions``. Values are shown cut to 80 characters.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedrec.data.dataset import INTERACTION_COLUMNS

log = logging.getLogger(__name__)

Errors = Literal["raise", "skip"]
RowKind = Literal["line", "index", "row"]


@dataclass(frozen=True)
class Issue:
    """One bad row: where (``row``, in the checker's row units), which column, the value, why, what was
    expected."""

    reason: str
    row: Any
    column: str | None
    value: Any
    expected: str


class DataValidationError(ValueError):
    """A table failed validation. ``source`` is the file (or frame name), ``row`` the 1-based line for
    files / the index label for frames, ``column`` and ``value`` the offending cell (``None`` when the
    whole row or a whole column is at fault)."""

    def __init__(self, message: str, *, source: str, row: Any = None, column: str | None = None,
                 value: Any = None, reason: str = "", counts: Mapping[str, int] | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.row = row
        self.column = column
        self.value = value
        self.reason = reason
        self.counts = dict(counts or {})


@dataclass
class ValidationReport:
    """What validation did to one table: rows in/out, rows dropped per reason, notes (counted, kept)."""

    source: str
    n_rows_in: int = 0
    n_rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "n_rows_in": self.n_rows_in, "n_rows_out": self.n_rows_out,
                "dropped": dict(self.dropped), "notes": dict(self.notes), "examples": list(self.examples)}

    def __str__(self) -> str:
        parts = [f"{self.source}: {self.n_rows_in} rows in, {self.n_rows_out} kept"]
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{k}={v}" for k, v in self.dropped.items()))
        if self.notes:
            parts.append("notes " + ", ".join(f"{k}={v}" for k, v in self.notes.items()))
        return "; ".join(parts)


def where(source: str, row: Any, row_kind: RowKind, column: str | None) -> str:
    """``"u.data, line 7, column 'rating'"`` — the location phrase every message starts with."""
    out = source
    if row is not None:
        out += {"line": f", line {row}", "index": f", row (index) {row!r}", "row": f", row {row}"}[row_kind]
    if column is not None:
        out += f", column {column!r}"
    return out


def _check_errors_arg(errors: str) -> None:
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors= must be 'raise' or 'skip', got {errors!r}")


class _Checker:
    """Collects vectorized row masks per reason, then raises on the first bad row or drops them all."""

    def __init__(self, frame: pd.DataFrame, source: str, line_numbers: np.ndarray | None,
                 prior_issues: Sequence[Issue], row_kind: RowKind | None) -> None:
        self.frame = frame
        self.raw = frame  # values shown in messages are the cells as given, before typing
        self.source = source
        n = len(frame)
        if line_numbers is not None:
            if len(line_numbers) != n:
                raise ValueError(f"{source}: {len(line_numbers)} line numbers for {n} rows")
            self.labels = np.asarray(line_numbers)
            self.row_kind: RowKind = row_kind or "line"
        else:
            self.labels = frame.index.to_numpy()
            self.row_kind = row_kind or "index"
        self.bad = np.zeros(n, dtype=bool)
        self.checks: list[tuple[str, str | None, np.ndarray, str]] = []
        self.prior = list(prior_issues)

    def missing_columns(self, required: Sequence[str], what: str) -> None:
        missing = [c for c in required if c not in self.frame.columns]
        if missing:
            raise DataValidationError(
                f"{where(self.source, None, self.row_kind, missing[0])}: missing column(s) {missing}; "
                f"{what} needs {list(required)}, found {list(map(str, self.frame.columns))}",
                source=self.source, column=missing[0], reason="missing_column")

    def add(self, reason: str, column: str | None, mask: np.ndarray, expected: str) -> None:
        """Flag rows in ``mask`` not flagged yet (each bad row is counted once, under its first reason)."""
        new = np.asarray(mask, dtype=bool) & ~self.bad
        if new.any():
            self.checks.append((reason, column, new, expected))
            self.bad |= new

    def _first(self) -> Issue:
        cands: list[tuple[int, Issue]] = []
        for reason, column, mask, expected in self.checks:
            pos = int(np.argmax(mask))
            value, row = self._cell(pos, column)
            key = int(row) if self.row_kind == "line" else pos
            cands.append((key, Issue(reason, row, column, value, expected)))
        cands.extend((int(i.row) if self.row_kind == "line" else -1, i) for i in self.prior)
        return min(cands, key=lambda t: t[0])[1]

    def _cell(self, pos: int, column: str | None) -> tuple[Any, Any]:
        """(raw value, row label) of position ``pos``, as plain Python objects."""
        lab = self.labels[pos]
        value = self.raw[column].iloc[pos] if column is not None and column in self.raw else None
        plain = [v.item() if isinstance(v, np.generic) else v for v in (value, lab)]
        return plain[0], plain[1]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for issue in self.prior:
            out[issue.reason] = out.get(issue.reason, 0) + 1
        for reason, _, mask, _ in self.checks:
            out[reason] = out.get(reason, 0) + int(mask.sum())
        return out

    def message(self, issue: Issue) -> str:
        value = "" if issue.column is None and issue.value is None else f": value {_shown(issue.value)}"
        return (f"{where(self.source, issue.row, self.row_kind, issue.column)}{value}; expected "
                f"{issue.expected} [{issue.reason}]")

    def finish(self, errors: Errors, n_in: int) -> tuple[pd.DataFrame, ValidationReport]:
        counts = self.counts()
        report = ValidationReport(self.source, n_rows_in=n_in)
        if not counts:
            report.n_rows_out = len(self.frame)
            return self.frame, report
        if errors == "raise":
            issue = self._first()
            total = sum(counts.values())
            summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
            raise DataValidationError(
                f"{self.message(issue)}. {total} bad row(s) in total ({summary}); "
                "pass errors='skip' to drop them with a report",
                source=self.source, row=issue.row, column=issue.column, value=issue.value,
                reason=issue.reason, counts=counts)
        report.dropped = counts
        report.examples = [self.message(i) for i in self.prior[:3]]
        for reason, column, mask, expected in self.checks[:5]:
            value, row = self._cell(int(np.argmax(mask)), column)
            report.examples.append(self.message(Issue(reason, row, column, value, expected)))
        kept = self.frame.loc[~self.bad] if len(self.frame) else self.frame
        report.n_rows_out = len(kept)
        log.warning("validation dropped rows: %s (e.g. %s)", report, report.examples[0])
        return kept, report


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 20 MB cell is named, never echoed)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _blank(s: pd.Series) -> np.ndarray:
    """Missing cells: NaN/None, or an empty/whitespace string."""
    isna = s.isna().to_numpy()
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        stripped = s.astype("str").str.strip()
        isna = isna | (stripped == "").to_numpy()
    return isna


def _numeric(s: pd.Series) -> pd.Series:
    """Float64 values; NaN where a cell is not a number (the caller decides whether that is an error)."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("float64")
    if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
        try:  # fast path: every cell parses
            arr = pc.cast(pc.utf8_trim_whitespace(pa.array(s)), pa.float64())
            return pd.Series(arr.to_numpy(zero_copy_only=False), index=s.index, dtype="float64")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    return pd.to_numeric(s.astype("str").str.strip(), errors="coerce").astype("float64")


def _ids(chk: _Checker, column: str, id_type: str | None) -> pd.Series:
    s = chk.frame[column]
    chk.add("missing_id", column, _blank(s), "a non-empty id")
    if id_type is None:
        return s
    if id_type not in ("int", "auto"):
        raise ValueError(f"id_type= must be None, 'int' or 'auto', got {id_type!r}")
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.astype("int64")
    num = _numeric(s)
    ok = num.notna().to_numpy() & np.isfinite(num.to_numpy()) & (np.mod(num.fillna(0.5), 1) == 0).to_numpy()
    if id_type == "int":
        chk.add("id_not_integer", column, ~ok, "an integer id")
    else:  # "auto": int64 only if every id is written as a plain integer ("007" stays a string id)
        text = s.astype("str").str.strip()
        if not pd.api.types.is_numeric_dtype(s.dtype):
            ok = ok & text.str.fullmatch(r"-?(0|[1-9][0-9]*)").fillna(False).to_numpy(dtype=bool)
        if not ok[~chk.bad].all():
            return text
    return num.where(ok, -1).astype("int64")


def _timestamps(chk: _Checker, column: str) -> pd.Series:
    """Int64 Unix seconds from ints, integral floats, datetimes or ISO-8601 / integer strings."""
    s = chk.frame[column]
    expected = "Unix seconds (an integer) or an ISO-8601 date-time"
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
        dt = pd.to_datetime(s, utc=True)
        chk.add("timestamp_unparsable", column, dt.isna().to_numpy(), expected)
        secs = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return secs.fillna(0).astype("int64")
    num = _numeric(s)
    if not pd.api.types.is_numeric_dtype(s.dtype):
        text = s.astype("str").str.strip()
        need = num.isna().to_numpy() & ~_blank(s)
        if need.any():
            dt = pd.to_datetime(text[need], format="ISO8601", utc=True, errors="coerce")
            num.loc[need] = ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("float64")
    vals = num.to_numpy()
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(vals) & (np.mod(vals, 1) == 0) & (np.abs(vals) < 2**62)
    chk.add("timestamp_unparsable", column, ~ok, expected)
    return pd.Series(np.where(ok, vals, 0).astype("int64"), index=s.index)


def validate_interactions(
    df: pd.DataFrame, *, source: str = "<DataFrame>", errors: Errors = "raise",
    rating_scale: tuple[float, float] | None = (1.0, 5.0), id_type: str | None = None,
    line_numbers: np.ndarray | None = None, prior_issues: Sequence[Issue] = (),
    row_kind: RowKind | None = None,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Check and type an interaction table; return ``(clean, report)``.

    Columns ``user_id, item_id, rating, timestamp`` are required (extra columns are kept). The result has
    ``rating`` float64 in ``rating_scale`` (inclusive; ``None`` = any finite number), ``timestamp`` int64
    Unix seconds, no missing ids and no duplicate ``(user_id, item_id, timestamp)`` (the first is kept).
    ``id_type``: ``None`` keeps ids as given, ``"int"`` requires integer ids, ``"auto"`` makes them int64
    when every id is a plain integer (no leading zeros) and stripped strings otherwise. ``prior_issues``
    are problems found by a parser (e.g. malformed lines), reported together with these checks. The
    index is kept.
    """
    _check_errors_arg(errors)
    chk = _Checker(df, source, line_numbers, prior_issues, row_kind)
    chk.missing_columns(INTERACTION_COLUMNS, "an interaction table")
    users = _ids(chk, "user_id", id_type)
    items = _ids(chk, "item_id", id_type)
    raw = df["rating"]
    rating = _numeric(raw)
    vals = rating.to_numpy()
    chk.add("rating_not_numeric", "rating", rating.isna().to_numpy() & ~_blank(raw), "a number")
    chk.add("rating_nan", "rating", np.isnan(vals), "a rating, not NaN/empty")
    chk.add("rating_inf", "rating", np.isinf(vals), "a finite rating")
    if rating_scale is not None:
        lo, hi = rating_scale
        with np.errstate(invalid="ignore"):
            out_of_range = (vals < lo) | (vals > hi)
        chk.add("rating_out_of_range", "rating", out_of_range, f"a rating in [{lo:g}, {hi:g}]")
    ts = _timestamps(chk, "timestamp")
    out = df.copy()
    out["user_id"], out["item_id"], out["rating"], out["timestamp"] = users, items, rating, ts
    key = out[["user_id", "item_id", "timestamp"]]
    dup = np.zeros(len(out), dtype=bool)
    good = ~chk.bad
    dup[good] = key[good].duplicated(keep="first").to_numpy()
    chk.add("duplicate_interaction", None, dup, "no repeated (user_id, item_id, timestamp)")
    chk.frame = out
    return chk.finish(errors, len(df) + len(prior_issues))


def validate_side_table(
    df: pd.DataFrame, *, id_column: str, source: str = "<DataFrame>", errors: Errors = "raise",
    known_ids: Collection[Any] | None = None, unknown: Literal["error", "drop", "keep"] = "error",
    numeric: Sequence[str] = (), id_type: str | None = None, line_numbers: np.ndarray | None = None,
    prior_issues: Sequence[Issue] = (), row_kind: RowKind | None = None,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Check a user/item side table; return ``(table indexed by id_column, report)``.

    ``id_column`` may be a column or the index name. Checks: missing ids, duplicate ids (first kept),
    ``numeric`` columns parse as numbers (empty -> NaN, allowed; counted in ``report.notes``), and, when
    ``known_ids`` (the interaction table's ids) is given, ids absent from it: ``unknown="error"`` treats them
    as bad rows, ``"drop"`` drops them and ``"keep"`` keeps them (both counted in the report).
    """
    _check_errors_arg(errors)
    if unknown not in ("error", "drop", "keep"):
        raise ValueError(f"unknown= must be 'error', 'drop' or 'keep', got {unknown!r}")
    if id_column not in df.columns and df.index.name == id_column:
        df = df.reset_index()
        row_kind = row_kind or ("index" if line_numbers is None else row_kind)
    chk = _Checker(df, source, line_numbers, prior_issues, row_kind)
    chk.missing_columns([id_column, *numeric], "this side table")
    ids = _ids(chk, id_column, id_type)
    out = df.copy()
    out[id_column] = ids
    for col in numeric:
        num = _numeric(df[col])
        blank = _blank(df[col])
        chk.add("feature_not_numeric", col, num.isna().to_numpy() & ~blank, "a number (or empty)")
        chk.add("feature_not_finite", col, np.isinf(num.to_numpy()), "a finite number (or empty)")
        out[col] = num
    dup = np.zeros(len(out), dtype=bool)
    dup[~chk.bad] = ids[~chk.bad].duplicated(keep="first").to_numpy()
    chk.add("duplicate_id", id_column, dup, f"each {id_column} once")
    notes: dict[str, int] = {}
    if known_ids is not None:
        absent = ~ids.isin(pd.Index(known_ids)).to_numpy() & ~chk.bad
        if unknown == "error":
            chk.add("id_not_in_interactions", id_column, absent, f"a {id_column} present in the interactions")
        elif absent.any():
            action = "dropped" if unknown == "drop" else "kept"
            notes[f"id_not_in_interactions_{action}"] = int(absent.sum())
            if unknown == "drop":
                out, chk.raw = out.loc[~absent], chk.raw.loc[~absent]
                chk.bad = chk.bad[~absent]
                chk.labels = chk.labels[~absent]
                chk.checks = [(r, c, m[~absent], e) for r, c, m, e in chk.checks]
    for col in numeric:
        n_missing = int(out[col].isna().sum())
        if n_missing:
            notes[f"missing_{col}"] = n_missing
    chk.frame = out
    table, report = chk.finish(errors, len(df) + len(prior_issues))
    report.notes.update(notes)
    if any(k.startswith("id_not_in") for k in notes):
        log.info("%s: %s", source, report)
    return table.set_index(id_column), report
