"""Validation: every reason, in both modes, with file/line/column in the message."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data.schema import DataValidationError, validate_interactions, validate_side_table
from fedrec.data.tables import read_interactions, read_side_table

GOOD = {"user_id": [1, 2, 3, 4], "item_id": [10, 20, 30, 40], "rating": [1.0, 2.5, 4.0, 5.0],
        "timestamp": [100, 200, 300, 400]}


def frame(**changes: list[object]) -> pd.DataFrame:
    return pd.DataFrame({**GOOD, **changes})


# (column changed, new column values, reason, bad row label)
BAD_CELLS = [
    ("user_id", [1, None, 3, 4], "missing_id", 1),
    ("item_id", [10, 20, "", 40], "missing_id", 2),
    ("rating", [1.0, "x", 4.0, 5.0], "rating_not_numeric", 1),
    ("rating", [1.0, 2.5, np.nan, 5.0], "rating_nan", 2),
    ("rating", [1.0, 2.5, np.inf, 5.0], "rating_inf", 2),
    ("rating", [1.0, 2.5, 4.0, 5.5], "rating_out_of_range", 3),
    ("rating", [0.0, 2.5, 4.0, 5.0], "rating_out_of_range", 0),
    ("timestamp", [100, "soon", 300, 400], "timestamp_unparsable", 1),
    ("timestamp", [100, 200, 300.5, 400], "timestamp_unparsable", 2),
    ("timestamp", [100, 200, None, 400], "timestamp_unparsable", 2),
]


@pytest.mark.parametrize(("column", "values", "reason", "row"), BAD_CELLS)
def test_each_bad_cell_raises_with_row_column_and_value(column: str, values: list[object], reason: str,
                                                         row: int) -> None:
    with pytest.raises(DataValidationError) as ei:
        validate_interactions(frame(**{column: values}), source="mem")
    err = ei.value
    assert (err.reason, err.row, err.column, err.source) == (reason, row, column, "mem")
    assert f"row (index) {row}" in str(err) and repr(column) in str(err) and reason in str(err)


@pytest.mark.parametrize(("column", "values", "reason", "row"), BAD_CELLS)
def test_each_bad_cell_is_dropped_and_counted_in_skip_mode(column: str, values: list[object], reason: str,
                                                           row: int) -> None:
    clean, report = validate_interactions(frame(**{column: values}), source="mem", errors="skip")
    assert report.dropped == {reason: 1}
    assert row not in clean.index and len(clean) == 3 and report.n_rows_out == 3


def test_duplicate_user_item_timestamp_keeps_the_first() -> None:
    df = frame(user_id=[1, 1, 3, 1], item_id=[10, 10, 30, 10], timestamp=[100, 100, 300, 101])
    with pytest.raises(DataValidationError, match=r"row \(index\) 1.*duplicate_interaction"):
        validate_interactions(df)
    clean, report = validate_interactions(df, errors="skip")
    assert report.dropped == {"duplicate_interaction": 1} and clean.index.tolist() == [0, 2, 3]


def test_missing_column_raises_even_in_skip_mode() -> None:
    with pytest.raises(DataValidationError, match="missing column.*'timestamp'") as ei:
        validate_interactions(frame().drop(columns="timestamp"), errors="skip")
    assert ei.value.column == "timestamp" and ei.value.reason == "missing_column"


def test_raise_reports_the_first_bad_row_and_counts_all() -> None:
    df = frame(rating=[9.0, "x", 4.0, 9.0], user_id=[None, 2, 3, 4])
    with pytest.raises(DataValidationError) as ei:
        validate_interactions(df)
    assert ei.value.row == 0 and ei.value.counts == {"missing_id": 1, "rating_not_numeric": 1,
                                                     "rating_out_of_range": 1}
    assert "3 bad row(s)" in str(ei.value)


def test_skip_mode_logs_the_report_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedrec.data.schema"):
        validate_interactions(frame(rating=[1.0, 2.0, 3.0, 7.0]), source="mem", errors="skip")
    assert any("rating_out_of_range=1" in r.getMessage() for r in caplog.records)


def test_clean_table_is_typed() -> None:
    clean, report = validate_interactions(frame(timestamp=["1970-01-01T00:01:40Z", 200, 300, 400]))
    assert clean["timestamp"].dtype == np.int64 and clean["timestamp"].iloc[0] == 100
    assert clean["rating"].dtype == np.float64 and report.n_dropped == 0


def test_errors_argument_is_checked() -> None:
    with pytest.raises(ValueError, match="errors="):
        validate_interactions(frame(), errors="ignore")  # type: ignore[arg-type]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_file_errors_name_the_1_based_line(tmp_path: Path) -> None:
    p = write(tmp_path, "r.csv", "user_id,item_id,rating,timestamp\n1,2,3,100\n1,3,abc,101\n")
    with pytest.raises(DataValidationError) as ei:
        read_interactions(p)
    assert ei.value.row == 3 and f"{p}, line 3, column 'rating'" in str(ei.value)
    assert ei.value.value == "abc"


@pytest.mark.parametrize("line", ["1,2,3", "1,2,3,100,extra"])
def test_malformed_lines_are_reported_with_line_numbers(tmp_path: Path, line: str) -> None:
    p = write(tmp_path, "r.csv", f"user_id,item_id,rating,timestamp\n1,2,3,100\n\n{line}\n2,2,3,100\n")
    with pytest.raises(DataValidationError, match=r"line 4.*4 fields.*malformed_line") as ei:
        read_interactions(p)
    assert ei.value.row == 4
    clean, report = read_interactions(p, errors="skip")
    assert report.dropped == {"malformed_line": 1} and len(clean) == 2


def test_non_numeric_ids_are_errors_when_ints_are_required(tmp_path: Path) -> None:
    df = frame(item_id=[10, 20, "x30", 40])
    with pytest.raises(DataValidationError, match="id_not_integer") as ei:
        validate_interactions(df, id_type="int", line_numbers=np.array([2, 3, 4, 5]), source="f.tsv")
    assert ei.value.row == 4 and "f.tsv, line 4, column 'item_id'" in str(ei.value)


def side(**cols: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [1, 2, 3], "age": [20, 30, 40], "city": ["a", "b", "c"], **cols})


def test_side_table_duplicate_id() -> None:
    df = side(user_id=[1, 2, 1])
    with pytest.raises(DataValidationError, match="duplicate_id") as ei:
        validate_side_table(df, id_column="user_id", source="users")
    assert (ei.value.row, ei.value.column, ei.value.value) == (2, "user_id", 1)
    table, report = validate_side_table(df, id_column="user_id", errors="skip")
    assert report.dropped == {"duplicate_id": 1} and table.index.tolist() == [1, 2]


def test_side_table_ids_absent_from_interactions() -> None:
    with pytest.raises(DataValidationError, match="id_not_in_interactions") as ei:
        validate_side_table(side(), id_column="user_id", known_ids=[1, 2], source="users")
    assert ei.value.row == 2 and ei.value.value == 3
    table, report = validate_side_table(side(), id_column="user_id", known_ids=[1, 2], errors="skip")
    assert report.dropped == {"id_not_in_interactions": 1} and table.index.tolist() == [1, 2]


@pytest.mark.parametrize(("unknown", "kept"), [("drop", [1, 2]), ("keep", [1, 2, 3])])
def test_side_table_unknown_ids_can_be_dropped_or_kept_with_a_count(unknown: str, kept: list[int]) -> None:
    table, report = validate_side_table(side(), id_column="user_id", known_ids=[1, 2], unknown=unknown)  # type: ignore[arg-type]
    assert table.index.tolist() == kept
    assert report.notes == {f"id_not_in_interactions_{'dropped' if unknown == 'drop' else 'kept'}": 1}


def test_side_table_missing_id_and_non_numeric_feature() -> None:
    df = side(user_id=[1, None, 3], age=["20", "30", "old"])
    with pytest.raises(DataValidationError) as ei:
        validate_side_table(df, id_column="user_id", numeric=["age"])
    assert ei.value.counts == {"missing_id": 1, "feature_not_numeric": 1} and ei.value.row == 1
    table, report = validate_side_table(df, id_column="user_id", numeric=["age"], errors="skip")
    assert table.index.tolist() == [1] and report.n_dropped == 2


def test_side_table_missing_id_column() -> None:
    with pytest.raises(DataValidationError, match="missing column.*'item_id'"):
        validate_side_table(side(), id_column="item_id")


def test_side_table_file_line_numbers(tmp_path: Path) -> None:
    p = write(tmp_path, "u.csv", "user_id,age\n1,20\n2,30\n1,40\n")
    with pytest.raises(DataValidationError) as ei:
        read_side_table(p, id_column="user_id")
    assert ei.value.row == 4 and f"{p}, line 4, column 'user_id'" in str(ei.value)
