"""fedrec.artifacts: one verified, atomically written format for models, bundles and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.artifacts import (
    ArtifactError,
    atomic_file,
    read_artifact,
    replace_path,
    write_artifact,
    write_json_atomic,
)


def _write(path: Path, **meta: object) -> str:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "flags": np.array([True, False])}
    return write_artifact(path, "fedrec.test", 2, arrays, {"note": "x", **meta},
                          extra_json={"extra.json": {"a": 1}})


def test_round_trip_returns_arrays_meta_and_digest(tmp_path: Path) -> None:
    digest = _write(tmp_path / "a")
    art = read_artifact(tmp_path / "a", "fedrec.test", [1, 2], required=["note"])
    assert art.content_sha256 == digest and art.format_version == 2
    assert art.meta == {"note": "x"}
    np.testing.assert_array_equal(art.arrays["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert json.loads((tmp_path / "a" / "extra.json").read_text()) == {"a": 1}


def test_replacing_leaves_one_complete_artifact_and_no_temporaries(tmp_path: Path) -> None:
    _write(tmp_path / "a", note2=1)
    _write(tmp_path / "a", note2=2)
    assert read_artifact(tmp_path / "a", "fedrec.test", [2]).meta["note2"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_failed_write_leaves_the_previous_artifact(tmp_path: Path) -> None:
    _write(tmp_path / "a")
    with pytest.raises(TypeError, match="'bad'"):
        write_artifact(tmp_path / "a", "fedrec.test", 2, {"bad": np.array(["s"], dtype=object)}, {})
    assert read_artifact(tmp_path / "a", "fedrec.test", [2]).meta["note"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


@pytest.mark.parametrize("damage, match", [
    ("flip", "does not match field 'content_sha256'"),
    ("format", "field 'format' is 'other'"),
    ("version", "field 'format_version' is 9"),
    ("unlisted", "are not listed"),
    ("no_meta", "file not found"),
])
def test_damaged_artifacts_are_refused_naming_file_and_field(tmp_path: Path, damage: str, match: str) -> None:
    path = tmp_path / "a"
    _write(path)
    meta = json.loads((path / "meta.json").read_text())
    if damage == "flip":
        raw = bytearray((path / "arrays.npz").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (path / "arrays.npz").write_bytes(bytes(raw))
    elif damage == "format":
        meta["format"] = "other"
    elif damage == "version":
        meta["format_version"] = 9
    elif damage == "unlisted":
        del meta["arrays"]["flags"]
    elif damage == "no_meta":
        (path / "meta.json").unlink()
    if damage in ("format", "version", "unlisted"):
        (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=match):
        read_artifact(path, "fedrec.test", [1, 2])


def test_missing_digest_is_refused_unless_explicitly_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a"
    _write(path)
    meta = json.loads((path / "meta.json").read_text())
    del meta["content_sha256"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="'content_sha256' is missing"):
        read_artifact(path, "fedrec.test", [2])
    assert read_artifact(path, "fedrec.test", [2], require_digest=False).meta["note"] == "x"


def test_atomic_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target.with_suffix(".json"), {"n": np.int64(3)})
    assert json.loads(target.with_suffix(".json").read_text()) == {"n": 3}


def test_everything_written_is_private_to_the_user(tmp_path: Path) -> None:
    _write(tmp_path / "a")
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    for f in (tmp_path / "a").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    write_json_atomic(tmp_path / "x.json", {})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o600


def test_atomic_file_is_private_while_it_is_written_too(tmp_path: Path) -> None:
    """Before, the temporary file got the umask's mode (0644) and 0600 only once written: a model or
    partials file was readable by others while a library wrote it."""
    import os

    import pandas as pd

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "partials.parquet") as tmp:
            assert tmp.stat().st_mode & 0o777 == 0o600  # before the library writes a byte
            pd.DataFrame({"u": ["a"], "z": [0.5]}).to_parquet(tmp, index=False)
            assert tmp.stat().st_mode & 0o777 == 0o600  # the library truncated it and kept the mode
        with atomic_file(tmp_path / "host.key", 0o644) as tmp:
            tmp.write_text("public")
    finally:
        os.umask(old)
    assert (tmp_path / "partials.parquet").stat().st_mode & 0o777 == 0o600
    assert pd.read_parquet(tmp_path / "partials.parquet")["u"].tolist() == ["a"]
    assert (tmp_path / "host.key").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.key", "partials.parquet"]


def test_replace_path_puts_files_and_directories_in_place_and_refuses_a_kind_change(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.npz").write_text("old")
    new = tmp_path / ".new-model"
    new.mkdir()
    (new / "arrays.npz").write_text("new")
    replace_path(new, tmp_path / "model")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["arrays.npz"] and not new.exists()
    (tmp_path / "summary.json").write_text("old")
    (tmp_path / ".summary.tmp").write_text("new")
    replace_path(tmp_path / ".summary.tmp", tmp_path / "summary.json", sync=False)
    assert (tmp_path / "summary.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "summary.json"]  # nothing moved aside left
    (tmp_path / ".file").write_text("x")
    with pytest.raises(ArtifactError, match=r"model: is a directory; refusing to replace it with the file"):
        replace_path(tmp_path / ".file", tmp_path / "model")
    (tmp_path / ".dir").mkdir()
    with pytest.raises(ArtifactError, match=r"summary.json: exists and is not a directory"):
        replace_path(tmp_path / ".dir", tmp_path / "summary.json")


def test_replace_path_moves_a_symlink_aside_never_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model").symlink_to(target)
    (tmp_path / "out" / ".model.tmp").mkdir()
    replace_path(tmp_path / "out" / ".model.tmp", tmp_path / "out" / "model")
    assert (tmp_path / "out" / "model").is_dir() and not (tmp_path / "out" / "model").is_symlink()
    assert (target / "keep.txt").read_text() == "keep" and [p.name for p in (tmp_path / "out").iterdir()] == [
        "model"]
