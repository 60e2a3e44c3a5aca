"""MovieLens 100K and 1M readers (from a local folder) and a checksum-verified downloader.

ML-100K (``u.data`` tab-separated ``user item rating timestamp``; ``u.user``
``id|age|gender|occupation|zip``; ``u.item`` latin-1, 24 ``|``-separated fields) becomes a
:class:`Dataset` with

* user features: ``age`` (numeric), ``gender``, ``occupation``, ``zip_prefix`` (first character of the zip
  code) — categorical;
* item features: ``release_ts`` (Unix seconds of the release date, float64, NaN when the file has none —
  counted in ``meta["validation"]``) and the 19 flags ``genre_<name>`` (int64 0/1).

ML-1M (``::``-separated latin-1 ``ratings.dat``, ``users.dat`` ``UserID::Gender::Age::Occupation::Zip``,
``movies.dat`` ``MovieID::Title::Genres``) gives ``gender``, ``age`` (the age-bucket lower bound, numeric),
``occupation`` (the README's name for the code), ``zip_prefix`` and ``year`` (from the title, float64)
plus 18 ``genre_<name>`` flags. Movies that nobody rated are dropped from ``item_features`` (counted).

Titles are kept in ``dataset.meta["titles"]`` (a Series indexed by item id), not as features. Genre column
names are lower-case with non-alphanumerics as ``_``: ``Children's`` -> ``genre_childrens``,
``Sci-Fi`` -> ``genre_sci_fi``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.dataset import Dataset
from fedrec.data.schema import (
    DataValidationError,
    Errors,
    Issue,
    ValidationReport,
    validate_interactions,
    validate_side_table,
)
from fedrec.data.tables import TextTable, read_delimited
from fedrec.progress import progress_bar

log = logging.getLogger(__name__)

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
GENRES_1M: tuple[str, ...] = GENRES_100K[1:]
OCCUPATIONS_1M: tuple[str, ...] = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer")
ML100K_SPLITS: tuple[str, ...] = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


def genre_column(genre: str) -> str:
    """``"Children's"`` -> ``"genre_childrens"``, ``"Film-Noir"`` -> ``"genre_film_noir"``."""
    return "genre_" + re.sub(r"[^a-z0-9]+", "_", genre.lower().replace("'", "")).strip("_")


def _file(folder: str | Path, name: str) -> Path:
    p = Path(folder) / name
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not found; expected the MovieLens file {name!r} in {folder}")
    return p


def _read(path: Path, sep: str, names: list[str]) -> TextTable:
    """A MovieLens file split into string columns; a file without a single row is an error (an empty
    side file would otherwise load as a dataset without its features)."""
    tt = read_delimited(path, sep=sep, names=names, encoding="latin-1")
    if not len(tt.frame) and not tt.issues:
        raise DataValidationError(f"{path}: empty; expected {sep!r}-separated lines of "
                                  f"{', '.join(names)}", source=str(path), reason="no_rows")
    return tt


def _flag(tt: TextTable, mask: np.ndarray, reason: str, column: str, expected: str) -> TextTable:
    """Move the rows in ``mask`` out of the table into issues (reported with their line numbers)."""
    if not mask.any():
        return tt
    issues = [Issue(reason, int(tt.line_numbers[i]), column, tt.frame[column].iloc[i], expected)
              for i in np.flatnonzero(mask).tolist()]
    return TextTable(tt.frame.loc[~mask].reset_index(drop=True), tt.line_numbers[~mask],
                     tt.issues + tuple(issues))


def _ratings(path: Path, sep: str, errors: Errors) -> tuple[pd.DataFrame, ValidationReport]:
    tt = _read(path, sep, RATING_COLUMNS)
    df, rep = validate_interactions(tt.frame, source=str(path), errors=errors, id_type="int",
                                    line_numbers=tt.line_numbers, prior_issues=tt.issues)
    return df.reset_index(drop=True), rep


def _users(tt: TextTable, source: Path, errors: Errors, known: pd.Series | None,
           ) -> tuple[pd.DataFrame, ValidationReport]:
    tt.frame["zip_prefix"] = tt.frame["zip"].str.strip().str[:1]
    table, rep = validate_side_table(tt.frame, id_column="user_id", source=str(source), errors=errors,
                                     known_ids=known, numeric=["age"], id_type="int",
                                     line_numbers=tt.line_numbers, prior_issues=tt.issues)
    table["age"] = table["age"].astype("int64") if table["age"].notna().all() else table["age"]
    return table[["age", "gender", "occupation", "zip_prefix"]], rep


def read_ml100k_users(path: str | Path, *, known_ids: pd.Series | None = None,
                      errors: Errors = "raise") -> tuple[pd.DataFrame, ValidationReport]:
    """``u.user`` -> user features indexed by ``user_id`` (see the module docstring)."""
    p = Path(path)
    names = ["user_id", "age", "gender", "occupation", "zip"]
    tt = _read(p, "|", names)
    return _users(tt, p, errors, known_ids)


def read_ml100k_items(path: str | Path, *, known_ids: pd.Series | None = None, errors: Errors = "raise",
                      ) -> tuple[pd.DataFrame, pd.Series, ValidationReport]:
    """``u.item`` -> ``(item features, titles, report)``; release dates ``dd-Mon-yyyy`` -> ``release_ts``."""
    p = Path(path)
    genres = [genre_column(g) for g in GENRES_100K]
    names = ["item_id", "title", "release_date", "video_release_date", "url", *genres]
    tt = _read(p, "|", names)
    date = tt.frame["release_date"].str.strip()
    parsed = pd.to_datetime(date, format="%d-%b-%Y", errors="coerce", utc=True)
    tt = _flag(tt, (parsed.isna() & (date != "")).to_numpy(), "release_date_unparsable", "release_date",
               "a date like 01-Jan-1995 (or empty)")
    for g in genres:
        bad = ~tt.frame[g].str.strip().isin(["0", "1"]).to_numpy()
        tt = _flag(tt, bad, "genre_flag_invalid", g, "0 or 1")
    date = tt.frame["release_date"].str.strip()
    parsed = pd.to_datetime(date, format="%d-%b-%Y", errors="coerce", utc=True)
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    tt.frame["release_ts"] = seconds.astype("float64")
    table, rep = validate_side_table(tt.frame, id_column="item_id", source=str(p), errors=errors,
                                     known_ids=known_ids, numeric=["release_ts", *genres], id_type="int",
                                     line_numbers=tt.line_numbers, prior_issues=tt.issues)
    if rep.notes.get("missing_release_ts"):
        log.warning("%s: %d item(s) have no release date (release_ts = NaN)", p,
                    rep.notes["missing_release_ts"])
    features = table[["release_ts", *genres]].astype({g: "int64" for g in genres})
    return features, table["title"].rename("title"), rep


def _dataset(name: str, folder: Path, ratings: pd.DataFrame, reports: list[ValidationReport],
             users: pd.DataFrame, items: pd.DataFrame, titles: pd.Series) -> Dataset:
    meta: dict[str, object] = {"source": str(folder), "titles": titles,
                               "validation": {r.source: r.to_dict() for r in reports}}
    return Dataset(name, ratings, users, items, (1.0, 5.0), meta)


def load_ml100k(path: str | Path, *, errors: Errors = "raise") -> Dataset:
    """Read MovieLens 100K from the folder holding ``u.data``, ``u.user`` and ``u.item``."""
    folder = Path(path)
    ratings, r_rep = _ratings(_file(folder, "u.data"), "\t", errors)
    users, u_rep = read_ml100k_users(_file(folder, "u.user"), known_ids=ratings["user_id"], errors=errors)
    items, titles, i_rep = read_ml100k_items(_file(folder, "u.item"), known_ids=ratings["item_id"],
                                             errors=errors)
    return _dataset("ml-100k", folder, ratings, [r_rep, u_rep, i_rep], users, items, titles)


def load_ml100k_split(path: str | Path, split: str = "u1", *, errors: Errors = "raise",
                      ) -> tuple[Dataset, pd.DataFrame]:
    """The official split ``split`` (u1..u5, ua, ub): ``(Dataset of <split>.base, <split>.test ratings)``.

    Side tables are checked against the ids of base and test together (test-only items are legitimate).
    """
    if split not in ML100K_SPLITS:
        raise ValueError(f"split= must be one of {ML100K_SPLITS}, got {split!r}")
    folder = Path(path)
    base, b_rep = _ratings(_file(folder, f"{split}.base"), "\t", errors)
    test, t_rep = _ratings(_file(folder, f"{split}.test"), "\t", errors)
    users, u_rep = read_ml100k_users(_file(folder, "u.user"),
                                     known_ids=pd.concat([base["user_id"], test["user_id"]]), errors=errors)
    items, titles, i_rep = read_ml100k_items(_file(folder, "u.item"),
                                             known_ids=pd.concat([base["item_id"], test["item_id"]]),
                                             errors=errors)
    ds = _dataset(f"ml-100k/{split}", folder, base, [b_rep, t_rep, u_rep, i_rep], users, items, titles)
    return ds, test


def read_ml1m_users(path: str | Path, *, known_ids: pd.Series | None = None,
                    errors: Errors = "raise") -> tuple[pd.DataFrame, ValidationReport]:
    """``users.dat`` -> user features indexed by ``user_id`` (occupation codes become their names)."""
    p = Path(path)
    tt = _read(p, "::", ["user_id", "gender", "age", "occ", "zip"])
    code = pd.to_numeric(tt.frame["occ"].str.strip(), errors="coerce")
    tt = _flag(tt, ~code.isin(range(len(OCCUPATIONS_1M))).to_numpy(), "occupation_unknown", "occ",
               f"an occupation code 0..{len(OCCUPATIONS_1M) - 1}")
    codes = tt.frame["occ"].str.strip().astype("int64").to_numpy()
    tt.frame["occupation"] = pd.Series(np.asarray(OCCUPATIONS_1M, dtype=object)[codes], dtype="str")
    return _users(tt, p, errors, known_ids)


def read_ml1m_movies(path: str | Path, *, known_ids: pd.Series | None = None, errors: Errors = "raise",
                     ) -> tuple[pd.DataFrame, pd.Series, ValidationReport]:
    """``movies.dat`` -> ``(item features, titles, report)``; unrated movies (not in ``known_ids``) are
    dropped and counted."""
    p = Path(path)
    tt = _read(p, "::", ["item_id", "title", "genres"])
    allowed = set(GENRES_1M)
    split = tt.frame["genres"].str.strip().str.split("|")
    unknown = split.map(lambda gs: any(g not in allowed for g in gs if g)).to_numpy(dtype=bool)
    tt = _flag(tt, unknown, "unknown_genre", "genres", f"genres from {'|'.join(GENRES_1M)}")
    frame = tt.frame
    year = frame["title"].str.extract(r"\((\d{4})\)\s*$", expand=False)
    frame["year"] = pd.to_numeric(year, errors="coerce").astype("float64")
    cols = [genre_column(g) for g in GENRES_1M]
    flags = frame["genres"].str.strip().str.get_dummies(sep="|")
    for g, col in zip(GENRES_1M, cols, strict=True):
        frame[col] = flags[g].astype("int64") if g in flags else np.zeros(len(frame), dtype=np.int64)
    table, rep = validate_side_table(frame, id_column="item_id", source=str(p), errors=errors,
                                     known_ids=known_ids, unknown="drop", numeric=["year"], id_type="int",
                                     line_numbers=tt.line_numbers, prior_issues=tt.issues)
    if rep.notes.get("missing_year"):
        log.warning("%s: %d title(s) carry no (yyyy) year (year = NaN)", p, rep.notes["missing_year"])
    return table[["year", *cols]], table["title"].rename("title"), rep


def load_ml1m(path: str | Path, *, errors: Errors = "raise") -> Dataset:
    """Read MovieLens 1M from the folder holding ``ratings.dat``, ``users.dat`` and ``movies.dat``."""
    folder = Path(path)
    ratings, r_rep = _ratings(_file(folder, "ratings.dat"), "::", errors)
    users, u_rep = read_ml1m_users(_file(folder, "users.dat"), known_ids=ratings["user_id"], errors=errors)
    items, titles, i_rep = read_ml1m_movies(_file(folder, "movies.dat"), known_ids=ratings["item_id"],
                                            errors=errors)
    return _dataset("ml-1m", folder, ratings, [r_rep, u_rep, i_rep], users, items, titles)


# --- download -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteZip:
    url: str
    md5: str
    folder: str  # the top-level folder inside the zip
    sha256: str | None = None


MOVIELENS_ZIPS: dict[str, RemoteZip] = {
    "ml-100k": RemoteZip("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                         "0e33842e24a9c977be4e0107933c0723", "ml-100k"),
    "ml-1m": RemoteZip("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                       "c4d9eecfca2ab87c1945afe126590906", "ml-1m"),
}


class ChecksumError(RuntimeError):
    """A downloaded file does not have the published checksum; it was deleted, nothing was extracted."""


def _fetch(url: str, dest: Path) -> None:
    """Stream ``url`` (HTTPS only) to ``dest`` with a progress bar."""
    if not url.startswith("https://"):
        raise ValueError(f"refusing to download over a non-HTTPS URL: {url}")
    with urllib.request.urlopen(url, timeout=60) as resp, dest.open("wb") as out:  # noqa: S310 (https only)
        total = int(resp.headers.get("Content-Length") or 0) or None
        with progress_bar(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_movielens(name: str, dest: str | Path, *, overwrite: bool = False) -> Path:
    """Download ``ml-100k`` or ``ml-1m`` from GroupLens into ``dest`` and return the extracted folder.

    The zip is verified against its published MD5 (and SHA-256 when known) *before* extraction and
    deleted on mismatch (:class:`ChecksumError`). Members that would land outside the folder are refused.
    An existing folder is returned as is unless ``overwrite``.
    """
    if name not in MOVIELENS_ZIPS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; expected one of {sorted(MOVIELENS_ZIPS)}")
    spec = MOVIELENS_ZIPS[name]
    dest = Path(dest)
    target = dest / spec.folder
    if target.exists() and not overwrite:
        log.info("%s already present at %s; not downloading", name, target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{name}-") as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        _fetch(spec.url, zpath)
        checks = [("md5", spec.md5)] + ([("sha256", spec.sha256)] if spec.sha256 else [])
        for algo, want in checks:
            got = _digest(zpath, algo)
            if got != want.lower():
                raise ChecksumError(f"{spec.url}: {algo} {got} does not match the published {want}; "
                                    "the download was deleted and nothing was extracted")
        out = Path(tmp) / "out"
        with zipfile.ZipFile(zpath) as zf:
            root = out.resolve() / spec.folder
            for member in zf.namelist():
                if not (out / member).resolve().is_relative_to(root):
                    raise ValueError(f"{spec.url}: zip member {member!r} lies outside {spec.folder}/; "
                                     "refused to extract")
            zf.extractall(out)
        if target.exists():
            shutil.rmtree(target)
        (out / spec.folder).rename(target)
    log.info("downloaded and verified %s into %s", name, target)
    return target
