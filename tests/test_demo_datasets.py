"""`fedrec demo --dataset ml-1m` (issue #13 item 8): real MovieLens 1M when its files are there; when
they are not, an error that says what to download and where (GroupLens does not allow redistributing
it); `synthetic-ml1m` for a run of the same shape that is reported as synthetic."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from training.cli import main
from training.demo import load_dataset


def _args(dataset: str, data_dir: Path | None) -> argparse.Namespace:
    return argparse.Namespace(dataset=dataset, data_dir=data_dir, seed=0, users=None, items=None)


def _tiny_ml1m(folder: Path, ratings: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "users.dat").write_text("".join(f"{u}::{'FM'[u % 2]}::25::{u % 20}::1000{u}\n"
                                              for u in range(1, 31)), encoding="latin-1")
    (folder / "movies.dat").write_text("".join(f"{m}::Film {m} (1999)::Comedy|Drama\n" for m in range(1, 21)),
                                       encoding="latin-1")
    if ratings:
        rows = [f"{u}::{m}::{1 + (u * m) % 5}::{978300000 + u * 100 + m}\n" for u in range(1, 31)
                for m in range(1, 21)]
        (folder / "ratings.dat").write_text("".join(rows))
    return folder


def test_ml1m_without_its_ratings_says_what_to_download_and_where(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = _tiny_ml1m(tmp_path / "ml-1m", ratings=False)  # as in ../shared/data: users and movies only
    assert main(["demo", "--dataset", "ml-1m", "--data-dir", str(folder), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"ratings.dat missing in {folder}" in err
    zip_url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    assert f"{zip_url} (md5 c4d9eecfca2ab87c1945afe126590906)" in err
    assert f"download_movielens('ml-1m', '{tmp_path}')" in err and "--dataset synthetic-ml1m" in err
    assert not (tmp_path / "o").exists()  # nothing written before the data are there


def test_ml1m_is_read_when_its_files_are_there(tmp_path: Path) -> None:
    _tiny_ml1m(tmp_path / "ml-1m")
    ds = load_dataset(_args("ml-1m", tmp_path))  # the parent folder is accepted too
    assert ds.name == "ml-1m" and ds.n_users == 30 and len(ds.interactions) == 600
    assert ds.user_features is not None and "gender" in ds.user_features.columns


def test_synthetic_ml1m_has_its_shape_and_says_it_is_synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedrec.data

    seen: list[Any] = []

    class Generated(Exception):  # the config is what is checked; 1M ratings take seconds to draw
        pass

    def generate(cfg: Any) -> None:
        seen.append(cfg)
        raise Generated

    monkeypatch.setattr(fedrec.data, "generate", generate)
    with pytest.raises(Generated):
        load_dataset(_args("synthetic-ml1m", None))
    cfg = seen[0]
    assert (cfg.n_users, cfg.n_items, cfg.n_ratings) == (6040, 3706, 1_000_209)
