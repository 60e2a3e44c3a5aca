"""The bad-files matrix (issue #9): every malformed input x every command that reads files.

Each cell is a clean error (exit code != 0 or a named exception, the message names the file and, where
there is one, the line or column, no traceback, the value of a huge field never echoed) or a documented
acceptance (listed in ``ACCEPTED`` with the reason); none is silently accepted. The commands run in
process (``training.cli.main``); ``fedrec train``'s data files are read by the job's own readers (the
command opens the network before reading them, see ``test_train_reads_*``). A few subprocess runs at the
end check what only a real process shows (kill -9 while writing, a 20 MB id on stderr).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.data.schema import DataValidationError
from serving.artifacts import random_bundle
from training.cli import main

RUN = "run-1"  # the training run of the vertical model and of every partials file here

REPO = Path(__file__).resolve().parents[1]
T = 1_700_000_000
CASES = ("empty", "header_only", "ragged", "bom", "nan", "inf", "wrong_type", "duplicate", "binary", "huge",
         "encoding", "parquet_schema", "not_parquet", "directory")
HUGE = 2_000_000  # characters: far beyond the reader's 64 K field limit (the 20 MB one runs once, below)

# (command, case) -> why accepting it is right (the reason is the documentation of the acceptance)
ACCEPTED = {
    ("recommend", "bom"): "Excel's UTF-8 mark is dropped; the file is read as without it",
    ("recommend", "nan"): "'nan' is a string user id: answered, flagged unknown_user, listed on stderr",
    ("recommend", "inf"): "'inf' is a string user id: answered, flagged unknown_user, listed on stderr",
    ("recommend", "wrong_type"): "users are string ids: 'abc' is answered, flagged unknown_user on stderr",
    ("recommend", "header_only"): "no users (fedrec dormant found nobody): an output with no rows, a warning",
    ("psi", "bom"): "Excel's UTF-8 mark is dropped",
    ("psi", "nan"): "ids are compared as text: 'nan' is an id",
    ("psi", "inf"): "ids are compared as text: 'inf' is an id",
    ("psi", "wrong_type"): "ids are compared as text: 'abc' is an id",
    ("psi", "duplicate"): "duplicate ids are dropped with a warning, the first row kept (fedrec psi --help)",
    ("partials", "bom"): "Excel's UTF-8 mark is dropped",
    ("dormant", "bom"): "Excel's UTF-8 mark is dropped",
    ("train_guest", "bom"): "Excel's UTF-8 mark is dropped",
    ("train_host", "bom"): "Excel's UTF-8 mark is dropped",
    ("train_pairs", "bom"): "Excel's UTF-8 mark is dropped",
}
# cases whose error must name a line (text) or row (Parquet) besides the file
LOCATED = {"ragged", "nan", "inf", "wrong_type", "duplicate", "binary", "huge", "encoding"}


# ------------------------------------------------------------------------------------------ the files
class Table:
    """A good table of one kind (header, rows, its numeric column) and every bad variant of it."""

    def __init__(self, header: list[str], rows: list[list[str]], numeric: str, key: str) -> None:
        self.header, self.rows, self.numeric, self.key = header, rows, numeric, key

    def text(self, rows: list[list[str]]) -> str:
        return "\n".join(",".join(r) for r in [self.header, *rows]) + "\n"

    def write(self, folder: Path, case: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        csv, rows = folder / f"{case}.csv", [list(r) for r in self.rows]
        j = self.header.index(self.numeric)
        if case == "empty":
            csv.write_bytes(b"")
        elif case == "header_only":
            csv.write_text(self.text([]))
        elif case == "ragged":  # the first data row has one field too many
            rows[0].append("extra")
            csv.write_text(self.text(rows))
        elif case == "bom":
            csv.write_bytes(b"\xef\xbb\xbf" + self.text(rows).encode())
        elif case in ("nan", "inf", "wrong_type"):
            rows[1][j] = {"nan": "nan", "inf": "inf", "wrong_type": "abc"}[case]
            csv.write_text(self.text(rows))
        elif case == "duplicate":
            csv.write_text(self.text([*rows, rows[0]]))
        elif case == "binary":
            csv.write_bytes(self.text(rows).encode() + b"\x00\x01\x02\xff" * 16)
        elif case == "huge":
            rows[1][self.header.index(self.key)] = "x" * HUGE
            csv.write_text(self.text(rows))
        elif case == "encoding":
            csv.write_bytes(self.text(rows).replace(rows[1][0], "caf\xe9").encode("latin-1"))
        elif case == "parquet_schema":  # the key column is missing
            path = folder / f"{case}.parquet"
            frame = pd.DataFrame(rows, columns=self.header).rename(columns={self.key: "something_else"})
            frame.to_parquet(path)
            return path
        elif case == "not_parquet":
            path = folder / f"{case}.parquet"
            path.write_bytes(b"PAR1\x00garbage" * 10)
            return path
        elif case == "directory":
            path = folder / f"{case}.csv"
            path.mkdir()
            return path
        else:
            raise AssertionError(case)
        return csv


USERS = Table(["user_id", "n_history"], [["u1", "6"], ["u2", "7"], ["u3", "5"]], "user_id", "user_id")
IDS = Table(["user_id"], [["a1"], ["a2"], ["a3"]], "user_id", "user_id")
INTER = Table(["user_id", "item_id", "rating", "timestamp"],
              [["u1", f"i{j}", "4", str(T - (40 + j) * 86_400)] for j in range(6)], "rating", "user_id")
FEATURES = Table(["user_id", "age", "city"], [["u1", "30", "x"], ["u2", "40", "y"], ["u3", "50", "x"]], "age",
                 "user_id")
PAIRS = Table(["user_id", "item_id", "timestamp"], [["u1", "i1", "5"], ["u2", "i2", "6"], ["u3", "i3", "7"]],
              "timestamp", "user_id")


def partials_table(k: int) -> Table:
    header = ["user_id", "z_H", *[f"e_H_{j}" for j in range(k)]]
    return Table(header, [[f"u{u}", "0.1", *["0.01"] * k] for u in range(3)], "z_H", "user_id")


# ------------------------------------------------------------------------------------------ the commands
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    users = root / "users.csv"
    users.write_text("user_id\nu1\nu2\n")
    return {"bundle": random_bundle(10, 20, 2, seed=0).save(root / "bundle"),
            "vertical": _with_run(random_bundle(10, 20, 2, kind="vertical", seed=0)).save(root / "vertical"),
            "users": users}


def _with_run(bundle: Any) -> Any:
    bundle.run_id = RUN
    return bundle


def _fingerprint(path: Path) -> None:
    """The run fingerprint sidecar of a partials file as the training job writes it (a partials file
    without one is refused whatever its content, issue #13 item 10; the matrix is about the content)."""
    from fedrec.artifacts import file_sha256
    from fedrec.models.vertical import PARTIALS_FORMAT, PARTIALS_VERSION, sidecar_path

    if path.is_file():
        sidecar_path(path).write_text(json.dumps({
            "format": PARTIALS_FORMAT, "format_version": PARTIALS_VERSION, "run_id": RUN,
            "data_file": path.name, "content_sha256": file_sha256(path), "n_factors": 2}))


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def _train_reader(kind: str, data: Path, tmp: Path) -> Callable[[], object]:
    from training import hetero_fm_job
    from training.config import load_config

    role = "host" if kind == "train_host" else "guest"
    key = {"train_guest": "interactions", "train_host": "user_features", "train_pairs": "predict"}[kind]
    extra = f'interactions = "{INTER.write(tmp / "good", "bom")}"\n' if kind == "train_pairs" else ""
    peer = "[peers.host]\n" if role == "guest" else '[peers.guest]\nendpoint = "tcp://127.0.0.1:9"\n'
    listen = 'listen = "tcp://127.0.0.1:0"\n' if role == "guest" else ""
    cfg_path = tmp / f"{role}.toml"
    cfg_path.write_text(f'[job]\nprotocol = "hetero_fm"\n[party]\nrole = "{role}"\nname = "{role}"\n'
                        f'[network]\ninsecure = true\n{listen}{peer}[data]\n{key} = "{data}"\n{extra}'
                        f'[output]\ndir = "{tmp / "out"}"\n')
    cfg = load_config(cfg_path)
    if kind == "train_guest":
        return lambda: hetero_fm_job._read_guest_data(cfg)
    if kind == "train_host":
        return lambda: hetero_fm_job._read_host_table(cfg)
    return lambda: hetero_fm_job.read_pairs(data)


COMMANDS = {"recommend": USERS, "psi": IDS, "partials": partials_table(2),
            "serve_partials": partials_table(2),
            "dormant": INTER, "train_guest": INTER, "train_host": FEATURES, "train_pairs": PAIRS}


def run_command(command: str, path: Path, tmp: Path, models: dict[str, Path],
                capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of the command reading ``path``; readers of ``fedrec train``: 1 + the error."""
    out = tmp / "out.csv"
    if command == "recommend":
        return _cli(["recommend", "--model", str(models["bundle"]), "--users", str(path), "--out", str(out),
                     "--k", "3", "--no-progress"], capsys)
    if command in ("partials", "serve_partials"):
        _fingerprint(path)
    if command == "partials":
        return _cli(["recommend", "--model", str(models["vertical"]), "--host-partials", str(path), "--users",
                     str(models["users"]), "--out", str(out), "--no-progress"], capsys)
    if command == "serve_partials":  # fails before serving; a good file would serve for ever
        return _cli(["serve", "--model", str(models["vertical"]), "--host-partials", str(path), "--port",
                     "0"], capsys)
    if command == "psi":  # the ids are read before the network opens; no peer: an accepted file ends there
        rc, err = _cli(["psi", "--role", "guest", "--ids", str(path), "--column", "user_id", "--out",
                        str(out), "--insecure", "--peer-endpoint", "tcp://127.0.0.1:9", "--connect-timeout",
                        "0.3", "--no-progress"], capsys)
        return (0, err) if "step 'connect'" in err else (rc, err)
    if command == "dormant":
        return _cli(["dormant", "--interactions", str(path), "--as-of", str(T), "--out", str(out)], capsys)
    try:
        _train_reader(command, path, tmp)()
    except (DataValidationError, FileNotFoundError, ValueError) as exc:
        return 1, f"{type(exc).__name__}: {exc}"
    return 0, ""


# a good partials file would make `fedrec serve` serve for ever: its acceptance is the `recommend` cell
MATRIX = [(c, k) for c in COMMANDS for k in CASES if (c, k) != ("serve_partials", "bom")]


@pytest.mark.parametrize(("command", "case"), MATRIX)
def test_bad_file(command: str, case: str, tmp_path: Path, models: dict[str, Path],
                  capsys: pytest.CaptureFixture[str]) -> None:
    path = COMMANDS[command].write(tmp_path / "in", case)
    rc, err = run_command(command, path, tmp_path, models, capsys)
    assert "Traceback" not in err
    assert len(err) < 2000, "a bounded message (a huge field is never echoed)"
    if (command, case) in ACCEPTED:
        assert rc == 0, err
        return
    assert rc != 0, f"{command} silently accepted a {case} file"
    assert path.name in err, err
    if case in LOCATED and path.suffix != ".parquet":
        assert " line " in err or " row " in err, err


def test_matrix_has_no_silent_acceptance_left() -> None:
    """Every acceptance is listed with its reason; every other cell is asserted to be an error above."""
    assert all(reason for reason in ACCEPTED.values())
    assert len(MATRIX) >= 100


# ------------------------------------------------------------------------------------------ serve --model
@pytest.mark.parametrize("case", ["missing", "empty_dir", "file", "garbage_json", "binary_arrays"])
def test_serve_bad_model_dir(case: str, tmp_path: Path, models: dict[str, Path],
                             capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    model = tmp_path / "model"
    if case == "empty_dir":
        model.mkdir()
    elif case == "file":
        model.write_text("not a directory")
    elif case in ("garbage_json", "binary_arrays"):
        shutil.copytree(models["bundle"], model)
        target = model / ("serving.json" if case == "garbage_json" else "arrays.npz")
        target.write_bytes(b"\x00\xff{not json" * 20)
    rc, err = _cli(["serve", "--model", str(model), "--port", "0"], capsys)
    assert rc != 0 and "Traceback" not in err and "model" in err


# ------------------------------------------------------------------------------------------ one per defect
def test_defect3_ragged_users_file_does_not_turn_into_one_user(tmp_path: Path, models: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu1,extra\nu2\nu3\n")
    rc, err = _cli(["recommend", "--model", str(models["bundle"]), "--users", str(users), "--out",
                    str(tmp_path / "recs.csv"), "--no-progress"], capsys)
    assert rc == 2 and "users.csv, line 2" in err and not (tmp_path / "recs.csv").exists()


def test_defect3_psi_reads_each_id_of_a_ragged_file_or_refuses(tmp_path: Path) -> None:
    from fedrec.psi.ids import IdError, read_id_column

    ids = tmp_path / "ids.csv"
    ids.write_text("user_id\n" + "\n".join(f"u{j},x" if j == 0 else f"u{j}" for j in range(300)) + "\n")
    with pytest.raises(IdError, match="ids.csv, line 2"):
        read_id_column(ids, "user_id")


def test_defect4_inf_in_host_features_is_caught_before_psi(tmp_path: Path) -> None:
    from fedrec.data import read_side_table

    feats = tmp_path / "host.csv"
    feats.write_text("user_id,income\nu1,10\nu2,inf\n")
    with pytest.raises(DataValidationError, match=r"host.csv, line 3, column 'income'"):
        read_side_table(feats, id_column="user_id")


def test_defect6_recommend_checks_the_output_before_any_work(tmp_path: Path, models: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for out in (Path("/proc/fedrec-recs.csv"), tmp_path):  # not writable; a directory
        rc, err = _cli(["recommend", "--model", str(tmp_path / "no-such-model"), "--users",
                        str(models["users"]), "--out", str(out)], capsys)
        assert rc == 2 and str(out) in err and "no-such-model" not in err


def test_defect6_recommend_leaves_no_partial_output(tmp_path: Path, models: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import serving.batch

    users = tmp_path / "users.csv"
    users.write_text("user_id\n" + "".join(f"u{j % 10}x{j}\n" for j in range(50)))
    calls = {"n": 0}
    real = serving.batch._write

    def failing(frames: list[pd.DataFrame], out: Path, writer: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(frames, out, writer)

    monkeypatch.setattr(serving.batch, "_write", failing)
    out = tmp_path / "recs.csv"
    rc, err = _cli(["recommend", "--model", str(models["bundle"]), "--users", str(users), "--out", str(out),
                    "--chunk-size", "5", "--no-progress"], capsys)
    assert rc == 2 and "No space left" in err
    assert not out.exists() and os.listdir(tmp_path) == ["users.csv"]


def test_defect6_recommend_refuses_partials_of_another_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           ) -> None:
    from serving.artifacts import write_host_partials

    bundle = random_bundle(10, 8, 2, kind="vertical", seed=0)
    bundle.run_id = "run-A"
    model = bundle.save(tmp_path / "vertical")
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "z_H": [0.1, 0.2], "e_H_0": [0.0, 0.1],
                          "e_H_1": [0.1, 0.0]})
    partials = write_host_partials(tmp_path / "partials.csv", frame, run_id="run-B")
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu1\n")
    rc, err = _cli(["recommend", "--model", str(model), "--host-partials", str(partials), "--users",
                    str(users), "--out", str(tmp_path / "recs.csv")], capsys)
    assert rc == 2 and "different training runs" in err and not (tmp_path / "recs.csv").exists()


def test_defect6_kill_9_mid_write_leaves_no_valid_looking_output(tmp_path: Path) -> None:
    bundle = random_bundle(200, 300, 4, seed=1).save(tmp_path / "bundle")
    users = tmp_path / "users.txt"
    users.write_text("".join(f"u{j}\n" if j < 200 else f"new{j}\n" for j in range(60_000)))
    out = tmp_path / "recs.csv"
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "recommend", "--model", str(bundle),
                             "--users", str(users), "--out", str(out), "--k", "50", "--chunk-size", "64",
                             "--no-progress"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".recs.tmp-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "recommend ended before writing"
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not out.exists(), "a killed run must not leave a valid-looking recs.csv"


def test_defect9_dormant_directory_input_and_unwritable_output(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = INTER.write(tmp_path / "in", "bom")
    for argv in (["--interactions", str(tmp_path), "--out", str(tmp_path / "d.csv")],
                 ["--interactions", str(good), "--out", "/proc/fedrec-dormant.csv"],
                 ["--interactions", str(good), "--out", str(tmp_path)]):
        rc, err = _cli(["dormant", "--as-of", str(T), *argv], capsys)
        assert rc == 2 and "Traceback" not in err and "error:" in err


def test_defect9_bom_header_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = INTER.write(tmp_path / "in", "bom")
    rc, _ = _cli(["dormant", "--interactions", str(path), "--as-of", str(T), "--min-history", "1", "--out",
                  str(tmp_path / "d.csv")], capsys)
    assert rc == 0 and pd.read_csv(tmp_path / "d.csv")["user_id"].tolist() == ["u1"]


def test_defect9_empty_movielens_side_file_is_an_error(tmp_path: Path) -> None:
    from fedrec.data import load_ml100k

    (tmp_path / "u.data").write_text("1\t1\t4\t881250949\n")
    (tmp_path / "u.user").write_text("")
    genres = "|".join(["0"] * 19)
    (tmp_path / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||http://x|{genres}\n")
    with pytest.raises(DataValidationError, match="u.user: empty"):
        load_ml100k(tmp_path)


def test_defect9_a_20_mb_id_is_refused_without_echo(tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_bytes(b"user_id\na1\n" + b"A" * 20_000_000 + b"\na3\n")
    proc = subprocess.run([sys.executable, "-m", "training.cli", "psi", "--role", "guest", "--ids", str(ids),
                           "--column", "user_id", "--out", str(tmp_path / "al.csv"), "--insecure",
                           "--peer-endpoint", "tcp://127.0.0.1:9", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "ids.csv, line 3" in proc.stderr
    assert len(proc.stderr) < 2000 and "Traceback" not in proc.stderr
    assert not np.any([line.count("A") > 100 for line in proc.stderr.splitlines()])
