"""CSV/TSV/Parquet interaction and side tables: column mapping, round trips, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data.schema import DataValidationError
from fedrec.data.tables import read_delimited, read_interactions, read_side_table, write_table

MAPPING = {"userId": "user_id", "movieId": "item_id", "stars": "rating", "when": "timestamp"}


def test_csv_with_column_mapping_quotes_and_iso_times(fixtures_dir: Path) -> None:
    df, report = read_interactions(fixtures_dir / "interactions.csv", columns=MAPPING)
    assert list(df.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert df["user_id"].tolist() == ["alice", "alice", "bob", "carol, jr"]
    assert df["timestamp"].tolist() == [1577872800, 1577880000, 1577953800, 1577990000]
    assert df["rating"].tolist() == [4.5, 3.0, 2.5, 5.0] and report.n_rows_out == 4


def test_unmapped_columns_are_a_missing_column_error(fixtures_dir: Path) -> None:
    with pytest.raises(DataValidationError, match=r"interactions.csv.*missing column.*'user_id'.*userId"):
        read_interactions(fixtures_dir / "interactions.csv")


def test_side_table_types_numeric_and_categorical_columns(fixtures_dir: Path) -> None:
    table, report = read_side_table(fixtures_dir / "items.csv", id_column="item_id",
                                    known_ids=["m1", "m2", "m3"])
    assert table.index.name == "item_id" and table.index.tolist() == ["m1", "m2", "m3"]
    assert table["price"].dtype == np.float64 and np.isnan(table.loc["m2", "price"])
    assert pd.api.types.is_string_dtype(table["genre"].dtype) and report.notes == {"missing_price": 1}


def test_categorical_override_keeps_numeric_looking_codes_as_strings(tmp_path: Path) -> None:
    p = tmp_path / "u.csv"
    p.write_text("user_id,zip,age\n1,02460,30\n2,94043,40\n")
    table, _ = read_side_table(p, id_column="user_id", categorical=["zip"])
    assert table["zip"].tolist() == ["02460", "94043"] and table["age"].tolist() == [30.0, 40.0]


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet"])
def test_interactions_round_trip(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame({"user_id": [1, 2, 2], "item_id": [5, 5, 7], "rating": [1.0, 4.5, 3.0],
                       "timestamp": np.array([10, 20, 30], dtype=np.int64)})
    path = write_table(df, tmp_path / f"r.{suffix}")
    back, _ = read_interactions(path)
    pd.testing.assert_frame_equal(back, df)


def test_write_renames_columns_and_side_table_round_trips(tmp_path: Path) -> None:
    side = pd.DataFrame({"genre": ["a", "b"], "price": [1.5, 2.0]}, index=pd.Index([3, 4], name="item_id"))
    path = write_table(side, tmp_path / "items.parquet", columns={"item_id": "movieId"})
    back, _ = read_side_table(path, id_column="item_id", columns={"movieId": "item_id"})
    assert back.index.tolist() == [3, 4] and back["price"].tolist() == [1.5, 2.0]


def test_unknown_suffix_needs_a_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format="):
        read_interactions(tmp_path / "r.json")


def test_parquet_rows_are_named_by_position(tmp_path: Path) -> None:
    df = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "rating": [3.0, 9.0], "timestamp": [1, 2]})
    path = write_table(df, tmp_path / "r.parquet")
    with pytest.raises(DataValidationError, match=r"r.parquet, row 1, column 'rating'"):
        read_interactions(path)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_bytes(b"user_id,item_id,rating,timestamp\n1,2,3,4\n\xe9,2,3,4\n")
    with pytest.raises(DataValidationError, match="line 3.*latin-1"):
        read_interactions(p)


def test_read_delimited_keeps_strings_and_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "x.dat"
    p.write_bytes(b"1::a::007\r\n\r\n2::b::8\r\n")
    tt = read_delimited(p, sep="::", names=["id", "name", "code"])
    assert tt.frame["code"].tolist() == ["007", "8"] and tt.line_numbers.tolist() == [1, 3]
    assert tt.issues == ()


def test_auto_ids_become_int_only_when_all_are_plain_integers(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("user_id,item_id,rating,timestamp\n007,1,3,10\n8,2,4,11\n")
    df, _ = read_interactions(p)
    assert df["user_id"].tolist() == ["007", "8"] and df["item_id"].tolist() == [1, 2]
    assert df["item_id"].dtype == np.int64


# --------------------------------------------------------------------------- hardening (issue #9)
def test_utf8_bom_is_not_part_of_the_header(tmp_path: Path) -> None:
    p = tmp_path / "users.csv"
    p.write_bytes(b"\xef\xbb\xbfuser_id,age\nu1,30\nu2,40\n")
    table, _ = read_side_table(p, id_column="user_id")
    assert table.index.tolist() == ["u1", "u2"]


def test_one_word_in_a_numeric_column_is_an_error_not_a_category(tmp_path: Path) -> None:
    p = tmp_path / "users.csv"
    p.write_text("user_id,income\n" + "".join(f"u{j},{j * 10}\n" for j in range(50)) + "u50,abc\n")
    with pytest.raises(DataValidationError, match=r"users.csv, line 52, column 'income': value 'abc'"):
        read_side_table(p, id_column="user_id")


@pytest.mark.parametrize("cell", ["inf", "-inf", "nan"])
def test_non_finite_feature_text_is_an_error(tmp_path: Path, cell: str) -> None:
    p = tmp_path / "users.csv"
    p.write_text(f"user_id,income\nu1,1\nu2,{cell}\n")
    with pytest.raises(DataValidationError, match=r"line 3, column 'income'"):
        read_side_table(p, id_column="user_id")


def test_header_only_is_an_error_unless_allowed(tmp_path: Path) -> None:
    p = tmp_path / "inter.csv"
    p.write_text("user_id,item_id,rating,timestamp\n")
    with pytest.raises(DataValidationError, match="no data rows"):
        read_interactions(p)
    assert len(read_interactions(p, allow_empty=True)[0]) == 0


def test_huge_field_is_refused_without_echo(tmp_path: Path) -> None:
    p = tmp_path / "users.csv"
    p.write_text("user_id,age\n" + "x" * 200_000 + ",3\n")
    with pytest.raises(DataValidationError) as err:
        read_side_table(p, id_column="user_id")
    assert "line 2" in str(err.value) and "user_id" in str(err.value) and len(str(err.value)) < 400


def test_binary_and_directory_inputs_are_clean_errors(tmp_path: Path) -> None:
    p = tmp_path / "bin.csv"
    p.write_bytes(b"user_id,age\nu1,\x00\x01\n")
    with pytest.raises(DataValidationError, match="bin.csv, line 2: binary data"):
        read_side_table(p, id_column="user_id")
    d = tmp_path / "dir.csv"
    d.mkdir()
    with pytest.raises(DataValidationError, match="dir.csv: is a directory"):
        read_interactions(d)


def test_parquet_nested_column_and_not_parquet_are_named(tmp_path: Path) -> None:
    p = tmp_path / "inter.parquet"
    pd.DataFrame({"user_id": [[1, 2]], "item_id": [1], "rating": [1.0], "timestamp": [1]}).to_parquet(p)
    with pytest.raises(DataValidationError, match=r"inter.parquet, column 'user_id': Parquet type"):
        read_interactions(p)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DataValidationError, match="bad.parquet: not a readable Parquet file"):
        read_interactions(bad)


def test_duplicate_header_names_are_an_error(tmp_path: Path) -> None:
    p = tmp_path / "users.csv"
    p.write_text("user_id,age,age\nu1,1,2\n")
    with pytest.raises(DataValidationError, match="column 'age': named twice"):
        read_side_table(p, id_column="user_id")
