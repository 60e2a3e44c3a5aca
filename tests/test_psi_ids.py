"""Id normalisation, de-duplication, id files in and aligned files out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.psi.ids import IdError, dedupe, encode_ids, read_id_column, write_aligned


def test_int_ids_become_base10_text() -> None:
    assert encode_ids([7, np.int64(-3), "7", "007"]) == [b"7", b"-3", b"7", b"007"]


def test_non_ascii_ids_are_utf8_without_normalisation() -> None:
    ids = ["José", "Jose\u0301", "東京"]
    assert encode_ids(ids) == [x.encode("utf-8") for x in ids]


@pytest.mark.parametrize("bad", [1.5, None, True, b"raw", float("nan")])
def test_other_id_types_are_rejected_with_the_row(bad: object) -> None:
    with pytest.raises(IdError, match="row 1"):
        encode_ids(["ok", bad])


def test_empty_id_is_rejected() -> None:
    with pytest.raises(IdError, match="row 0: empty id"):
        encode_ids([""])


def test_dedupe_keeps_first_row_and_warns_with_count(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedrec.psi.ids"):
        u = dedupe([b"a", b"b", b"a", b"c", b"b", b"a"], source="test")
    assert u.ids == [b"a", b"b", b"c"]
    assert u.rows.tolist() == [0, 1, 3]
    assert u.n_duplicates == 3
    assert "3 duplicate id row(s)" in caplog.text


def test_csv_ids_are_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("uid,x\n007,1\nNA,2\nMünchen,3\n", encoding="utf-8")
    assert read_id_column(path, "uid") == [b"007", b"NA", "München".encode()]


def test_parquet_int_column_follows_the_int_rule(tmp_path: Path) -> None:
    path = tmp_path / "ids.parquet"
    pd.DataFrame({"uid": np.array([5, -1, 42], dtype=np.int64)}).to_parquet(path)
    assert read_id_column(path, "uid") == [b"5", b"-1", b"42"]


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(IdError, match=r"ids.csv: no column 'uid'; columns are \['a', 'b'\]"):
        read_id_column(path, "uid")


def test_empty_csv_cell_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("uid\nx\n\"\"\n")
    with pytest.raises(IdError, match="ids.csv column 'uid': row 1: empty id"):
        read_id_column(path, "uid")


def test_aligned_file_has_index_id_and_row(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_aligned(path, [b"b", "é".encode()], np.array([4, 0]))
    frame = pd.read_csv(path, dtype={"id": str})
    assert list(frame.columns) == ["aligned_index", "id", "row_index"]
    assert frame.to_dict("list") == {"aligned_index": [0, 1], "id": ["b", "é"], "row_index": [4, 0]}
