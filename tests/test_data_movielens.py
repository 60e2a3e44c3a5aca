"""MovieLens readers on hand-made fixtures, their errors, the downloader, and the real files (data)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data import movielens as ml
from fedrec.data.schema import DataValidationError


def copy_fixture(fixtures_dir: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(fixtures_dir / name, dest)
    return dest


def replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_bytes().decode("latin-1").split("\n")
    lines[lineno - 1] = text
    path.write_bytes("\n".join(lines).encode("latin-1"))


def test_ml100k_fixture(fixtures_dir: Path) -> None:
    ds = ml.load_ml100k(fixtures_dir / "ml-100k")
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (18, 5, 6)
    assert ds.interactions.dtypes.tolist() == [np.int64, np.int64, np.float64, np.int64]
    users = ds.user_features
    assert users.loc[5].tolist() == [33, "F", "other", "T"] and users["age"].dtype == np.int64
    items = ds.item_features
    assert items.columns[0] == "release_ts" and len(items.columns) == 20
    assert items.loc[1, "release_ts"] == pd.Timestamp("1995-01-01", tz="UTC").timestamp()
    assert np.isnan(items.loc[4, "release_ts"])
    assert items.loc[1, ["genre_animation", "genre_childrens", "genre_comedy"]].tolist() == [1, 1, 1]
    assert items["genre_sci_fi"].dtype == np.int64
    assert ds.meta["titles"].loc[3] == "Café Society (1995)"  # type: ignore[union-attr]
    assert ds.meta["validation"][str(fixtures_dir / "ml-100k" / "u.item")]["notes"] == {  # type: ignore[index]
        "missing_release_ts": 1}


def test_ml100k_official_split(fixtures_dir: Path) -> None:
    train, test = ml.load_ml100k_split(fixtures_dir / "ml-100k", "u1")
    assert (len(train.interactions), len(test)) == (13, 5)
    assert train.user_features is not None and len(train.user_features) == 5


def test_ml100k_split_name_is_checked(fixtures_dir: Path) -> None:
    with pytest.raises(ValueError, match="u1"):
        ml.load_ml100k_split(fixtures_dir / "ml-100k", "u9")


def test_ml1m_fixture(fixtures_dir: Path) -> None:
    ds = ml.load_ml1m(fixtures_dir / "ml-1m")
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (11, 4, 5)
    assert ds.user_features is not None and ds.item_features is not None
    assert ds.user_features.loc[1].tolist() == [1, "F", "K-12 student", "4"]
    assert ds.user_features.loc[4, "zip_prefix"] == "0"
    items = ds.item_features
    assert 3952 not in items.index and items.loc[914, "year"] == 1964 and np.isnan(items.loc[2000, "year"])
    assert items.loc[661, ["genre_animation", "genre_childrens", "genre_musical"]].tolist() == [1, 1, 1]
    assert items.loc[2000, "genre_film_noir"] == 1 and len(items.columns) == 19
    assert ds.meta["titles"].loc[2000] == "Pokémon the Movie"  # type: ignore[union-attr]
    notes = ds.meta["validation"][str(fixtures_dir / "ml-1m" / "movies.dat")]["notes"]  # type: ignore[index]
    assert notes == {"id_not_in_interactions_dropped": 1, "missing_year": 1}


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ratings.dat"):
        ml.load_ml1m(tmp_path)


@pytest.mark.parametrize(("folder", "file", "lineno", "text", "reason", "column"), [
    ("ml-100k", "u.data", 3, "1\t3\t4", "malformed_line", None),
    ("ml-100k", "u.data", 2, "1\tx2\t3\t876893171", "id_not_integer", "item_id"),
    ("ml-100k", "u.data", 5, "2\t1\t6\t888550871", "rating_out_of_range", "rating"),
    ("ml-100k", "u.user", 2, "2|53|F|other", "malformed_line", None),
    ("ml-100k", "u.user", 4, "4|old|M|technician|43537", "feature_not_numeric", "age"),
    ("ml-100k", "u.item", 3, "3|Café Society (1995)|1995-03-15||x|" + "|".join("0" * 19),
     "release_date_unparsable", "release_date"),
    ("ml-100k", "u.item", 2, "2|GoldenEye (1995)|01-Jan-1995||x|" + "|".join("2" * 19),
     "genre_flag_invalid", "genre_unknown"),
    ("ml-1m", "ratings.dat", 4, "2::1193::4.x::978298413", "rating_not_numeric", "rating"),
    ("ml-1m", "users.dat", 3, "3::M::25::21::55117", "occupation_unknown", "occ"),
    ("ml-1m", "movies.dat", 2, "914::My Fair Lady (1964)::Musical|Opera", "unknown_genre", "genres"),
    ("ml-1m", "movies.dat", 1, "661::James::and::Peach", "malformed_line", None),
])
def test_bad_lines_raise_with_file_line_and_column(fixtures_dir: Path, tmp_path: Path, folder: str, file: str,
                                                   lineno: int, text: str, reason: str,
                                                   column: str | None) -> None:
    root = copy_fixture(fixtures_dir, tmp_path, folder)
    replace_line(root / file, lineno, text)
    load = ml.load_ml100k if folder == "ml-100k" else ml.load_ml1m
    with pytest.raises(DataValidationError) as ei:
        load(root)
    err = ei.value
    assert (err.reason, err.row, err.column) == (reason, lineno, column)
    assert f"{root / file}, line {lineno}" in str(err) and err.source == str(root / file)


def test_skip_mode_drops_bad_lines_with_a_report(fixtures_dir: Path, tmp_path: Path) -> None:
    root = copy_fixture(fixtures_dir, tmp_path, "ml-100k")
    replace_line(root / "u.data", 3, "1\t3\t4")
    ds = ml.load_ml100k(root, errors="skip")
    assert len(ds.interactions) == 17
    assert ds.meta["validation"][str(root / "u.data")]["dropped"] == {"malformed_line": 1}  # type: ignore[index]


def test_genre_column_names() -> None:
    assert [ml.genre_column(g) for g in ("Children's", "Film-Noir", "Sci-Fi")] == [
        "genre_childrens", "genre_film_noir", "genre_sci_fi"]


# --- downloader ----------------------------------------------------------------------------------------

def make_zip(fixtures_dir: Path, tmp_path: Path, extra: str | None = None) -> Path:
    zpath = tmp_path / "src" / "ml-100k.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted((fixtures_dir / "ml-100k").iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
        if extra:
            zf.writestr(extra, "x")
    return zpath


def patch_remote(monkeypatch: pytest.MonkeyPatch, zpath: Path, md5: str) -> list[str]:
    fetched: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        shutil.copyfile(zpath, dest)

    monkeypatch.setattr(ml, "_fetch", fake_fetch)
    monkeypatch.setitem(ml.MOVIELENS_ZIPS, "ml-100k", replace(ml.MOVIELENS_ZIPS["ml-100k"], md5=md5))
    return fetched


def test_download_verifies_then_extracts(fixtures_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    zpath = make_zip(fixtures_dir, tmp_path)
    fetched = patch_remote(monkeypatch, zpath, hashlib.md5(zpath.read_bytes()).hexdigest())
    out = ml.download_movielens("ml-100k", tmp_path / "data")
    assert out == tmp_path / "data" / "ml-100k" and fetched == [ml.MOVIELENS_ZIPS["ml-100k"].url]
    assert len(ml.load_ml100k(out).interactions) == 18
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ml-100k"]  # no leftover zip or temp dir


def test_download_refuses_a_checksum_mismatch(fixtures_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    patch_remote(monkeypatch, make_zip(fixtures_dir, tmp_path), "0" * 32)
    with pytest.raises(ml.ChecksumError, match="md5"):
        ml.download_movielens("ml-100k", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_download_refuses_members_outside_the_folder(fixtures_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    zpath = make_zip(fixtures_dir, tmp_path, extra="../evil.txt")
    patch_remote(monkeypatch, zpath, hashlib.md5(zpath.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="outside"):
        ml.download_movielens("ml-100k", tmp_path / "data")
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "data").iterdir()) == []


def test_download_checks_name_and_https() -> None:
    with pytest.raises(ValueError, match="ml-100k"):
        ml.download_movielens("ml-20m", "/nonexistent")
    with pytest.raises(ValueError, match="HTTPS"):
        ml._fetch("http://files.grouplens.org/x.zip", Path("/nonexistent"))


def test_published_checksums() -> None:
    assert ml.MOVIELENS_ZIPS["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert ml.MOVIELENS_ZIPS["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert all(z.url.startswith("https://files.grouplens.org/") for z in ml.MOVIELENS_ZIPS.values())


# --- the real files ------------------------------------------------------------------------------------

@pytest.mark.data
def test_real_ml100k(shared_data_dir: Path) -> None:
    ds = ml.load_ml100k(shared_data_dir / "ml-100k")
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (100000, 943, 1682)
    histogram = ds.interactions["rating"].value_counts().sort_index().tolist()
    assert histogram == [6110, 11370, 27145, 34174, 21201]
    assert ds.user_features is not None and ds.item_features is not None
    assert len(ds.user_features) == 943 and len(ds.item_features) == 1682
    assert int(ds.item_features["release_ts"].isna().sum()) == 1
    train, test = ml.load_ml100k_split(shared_data_dir / "ml-100k", "u1")
    assert (len(train.interactions), len(test)) == (80000, 20000)


@pytest.mark.data
def test_real_ml1m_side_files(shared_data_dir: Path) -> None:
    users, _ = ml.read_ml1m_users(shared_data_dir / "ml-1m" / "users.dat")
    movies, titles, _ = ml.read_ml1m_movies(shared_data_dir / "ml-1m" / "movies.dat")
    assert len(users) == 6040 and set(users["age"]) == {1, 18, 25, 35, 45, 50, 56}
    assert users["occupation"].nunique() == 21
    assert len(movies) == 3883 and movies.index.max() == 3952 and int(movies["year"].isna().sum()) == 0
    assert int(movies["genre_drama"].sum()) == 1603 and int(movies["genre_western"].sum()) == 68
    assert titles.loc[1] == "Toy Story (1995)"
