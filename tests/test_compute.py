"""fedrec.compute without Ray: the executor interface (local, process pool), CKKS batches and sharded,
resumable batch scoring (``fedrec recommend --engine``) compared with the single-process scorer."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fedrec.compute import (
    ComputeConfig,
    ExecutorError,
    LocalExecutor,
    ProcessExecutor,
    batched,
    make_executor,
)
from fedrec.compute.ckks import decrypt_many, dot_many, encrypt_many
from fedrec.crypto.ckks import CKKSBackend
from serving.artifacts import random_bundle
from serving.sharded import MANIFEST, read_dataset
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3000-user x 400-item bundle, 3500 users (500 unknown) and the single-process output."""
    d = tmp_path_factory.mktemp("scoring")
    random_bundle(3000, 400, 8, seed=3).save(d / "bundle")
    users = d / "users.csv"
    users.write_text("user_id\n" + "".join(f"u{j}\n" for j in range(3500)))
    single = d / "single.parquet"
    assert main(["recommend", "--model", str(d / "bundle"), "--users", str(users), "--out", str(single),
                 "--chunk-size", "128", "--no-progress"]) == 0
    return {"dir": d, "bundle": d / "bundle", "users": users, "single": single}


def _sharded(files: dict[str, Path], out: Path, engine: str, *extra: str) -> list[str]:
    return ["recommend", "--model", str(files["bundle"]), "--users", str(files["users"]), "--out", str(out),
            "--chunk-size", "128", "--shard-users", "500", "--engine", engine, "--workers", "2",
            "--no-progress", *extra]


# --------------------------------------------------------------------------------------------- config
def test_compute_config_validates() -> None:
    assert ComputeConfig() == ComputeConfig(engine="local", address=None, workers=0)
    with pytest.raises(ValueError, match="engine must be one of local, process, ray, got 'spark'"):
        ComputeConfig(engine="spark")
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        ComputeConfig(workers=-1)
    with pytest.raises(ValueError, match="address 'auto' is for engine 'ray', not 'process'"):
        ComputeConfig(engine="process", address="auto")
    assert isinstance(make_executor(), LocalExecutor)


def test_party_config_reads_the_compute_table(tmp_path: Path) -> None:
    from training.config import ConfigError, parse_config

    base = ('[job]\nprotocol = "hetero_fm"\n[party]\nrole = "host"\n[network]\ninsecure = true\n'
            '[peers.guest]\nendpoint = "tcp://127.0.0.1:7000"\n[data]\nuser_features = "u.csv"\n'
            '[output]\ndir = "out"\n')
    assert parse_config(base, "p.toml").compute == ComputeConfig()
    cfg = parse_config(base + '[compute]\nengine = "ray"\naddress = "auto"\nworkers = 4\n', "p.toml")
    assert cfg.compute == ComputeConfig("ray", "auto", 4)
    with pytest.raises(ConfigError, match=r"p.toml: \[compute\]: compute engine must be one of"):
        parse_config(base + '[compute]\nengine = "dask"\n', "p.toml")
    with pytest.raises(ConfigError, match=r"p.toml: unknown key \[compute\] worker \(did you mean 'workers'"):
        parse_config(base + '[compute]\nworker = 2\n', "p.toml")


# --------------------------------------------------------------------------------------------- executors
def test_batched_and_local_map() -> None:
    assert batched(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        batched([1], 0)
    ex = LocalExecutor()
    assert ex.map(math.sqrt, [4.0, 9.0]) == [2.0, 3.0]
    assert ex.map(math.pow, [2.0, 3.0], shared=10.0) == [100.0, 1000.0]
    with pytest.raises(ExecutorError, match=r"local engine: task 1 \(sqrt\) failed: ValueError: math domain"):
        ex.map(math.sqrt, [1.0, -1.0])


def test_process_pool_equals_local_and_names_the_failed_task(pool: ProcessExecutor) -> None:
    items = [float(j) for j in range(40)]
    assert pool.map(math.pow, items, shared=2.0) == LocalExecutor().map(math.pow, items, shared=2.0)
    assert sorted(i for i, _ in pool.imap_unordered(math.sqrt, items)) == list(range(40))
    with pytest.raises(ExecutorError, match=r"process engine: task 3 \(sqrt\) failed: ValueError"):
        pool.map(math.sqrt, [1.0, 2.0, 3.0, -3.0])


def test_ckks_batches_on_a_pool_equal_the_serial_path(pool: ProcessExecutor, ckks: CKKSBackend) -> None:
    rng = np.random.default_rng(0)
    rows = rng.uniform(-1, 1, (40, 300))
    plains = rng.uniform(-1, 1, (40, 2, 300))
    cts = encrypt_many(ckks, rows, pool, batch=16)  # 3 tasks
    bound = ckks.error_bound(0)
    assert np.abs(decrypt_many(ckks, cts) - rows).max() < bound
    groups = [[c, c] for c in cts]
    local = decrypt_many(ckks, dot_many(ckks, groups, plains))
    remote = dot_many(ckks, groups, plains, pool, batch=16)
    assert [c.level for c in remote] == [1] * 40
    wire = dot_many(ckks, groups, plains, pool, batch=16, as_bytes=True)  # bytes for the peer, not loaded
    np.testing.assert_array_equal(decrypt_many(ckks, [ckks.deserialize(b, 300, 1) for b in wire]), local)
    # products and decryption are deterministic: the pool's result is the serial one, bit for bit
    np.testing.assert_array_equal(decrypt_many(ckks, remote, pool, batch=16), local)
    assert np.abs(local - (rows[:, None, :] * plains).sum(axis=1)).max() < ckks.error_bound(1, terms=2)
    with pytest.raises(ValueError, match=r"plains must be \(n_groups=40, T, size\)"):
        dot_many(ckks, groups, plains[:3], pool)


# --------------------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("engine", ["local", "process"])
def test_sharded_scoring_equals_the_single_process_scorer(files: dict[str, Path], tmp_path: Path,
                                                          engine: str, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    out = tmp_path / "recs"
    assert main(_sharded(files, out, engine)) == 0
    msg = capsys.readouterr()
    assert f"3500 users -> {out}/ in 7 shard(s) on {engine}, " in msg.out and "unknown_user=500" in msg.out
    table, single = read_dataset(out), pq.read_table(files["single"])
    assert table.equals(single) and table.schema.equals(single.schema)  # the same rows, bit for bit
    parts = sorted(p.name for p in out.iterdir())
    assert parts == [MANIFEST] + [f"part-{i:05d}.{s}" for i in range(7) for s in ("json", "parquet")]
    if engine != "local":
        return
    # rerun: nothing is redone
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    assert main(_sharded(files, out, engine)) == 0
    assert "(7 resumed)" in capsys.readouterr().out
    assert before == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    # a damaged shard file (its digest no longer matches its record) is scored again, the others are not
    damaged = out / "part-00004.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    assert main(_sharded(files, out, engine)) == 0
    assert "(6 resumed)" in capsys.readouterr().out
    assert read_dataset(out).equals(single)


def test_sharded_scoring_refuses_bad_outputs_and_inputs(files: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_sharded(files, tmp_path / "recs.parquet", "local")) == 2
    assert "with --engine the output is a directory" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(_sharded(files, other, "local")) == 2
    assert f"{other}: not empty and has no {MANIFEST}" in capsys.readouterr().err
    out = tmp_path / "recs"
    assert main(_sharded(files, out, "local")) == 0
    capsys.readouterr()
    assert main(_sharded(files, out, "local", "--k", "5")) == 2  # another job into the same directory
    assert "written for another job" in capsys.readouterr().err
    deny = tmp_path / "deny.txt"
    deny.write_text("i1\nnope\n")
    assert main(_sharded(files, tmp_path / "recs2", "local", "--deny", str(deny))) == 2
    assert "deny list: 1 item id(s) not in the model's catalogue, e.g. ['nope']" in capsys.readouterr().err
    assert main(_sharded(files, tmp_path / "recs3", "local", "--k", "401")) == 2
    assert "exceeds the catalogue size (400 items)" in capsys.readouterr().err


def test_recommend_takes_the_engine_from_a_party_config(files: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "guest.toml"
    cfg.write_text('[job]\nprotocol = "hetero_fm"\n[compute]\nengine = "local"\n')
    argv = ["recommend", "--config", str(cfg), "--model", str(files["bundle"]), "--users",
            str(files["users"]), "--chunk-size", "128", "--shard-users", "500", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "recs")]) == 0
    assert "in 7 shard(s) on local" in capsys.readouterr().out
    assert read_dataset(tmp_path / "recs").equals(pq.read_table(files["single"]))
    cfg.write_text('[compute]\nengines = "ray"\n')
    assert main([*argv, "--out", str(tmp_path / "recs2")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: unknown key [compute] engines; allowed: engine, address, workers" in err
    cfg.write_text('[compute]\nworkers = "two"\n')
    assert main([*argv, "--out", str(tmp_path / "recs2")]) == 2
    assert f"{cfg}: [compute] workers must be an integer, got 'two'" in capsys.readouterr().err


def _run_cli(argv: list[str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FEDREC_FAULT", None)
    if fault:
        env["FEDREC_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "training.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=120, start_new_session=True, check=False)


def test_sharded_scoring_resumes_after_kill_9_of_the_driver(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "recs"
    # the local engine scores in the driver: SIGKILL right after the 3rd shard's record was written
    r = _run_cli(_sharded(files, out, "local"), fault="kill:score/shard/*:3")
    assert r.returncode == -signal.SIGKILL, r.stderr
    done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    assert len(done) == 3 and not (out / "part-00003.json").exists()
    r = _run_cli(_sharded(files, out, "local"))
    assert r.returncode == 0 and "(3 resumed)" in r.stdout, r.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == done  # finished shards not redone
    assert read_dataset(out).equals(pq.read_table(files["single"]))


@pytest.mark.slow
def test_sharded_scoring_process_worker_killed_then_resumed(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "recs"
    # the pool's worker dies (SIGKILL) at its 6th chunk: the run stops, finished shards are kept
    r = _run_cli(_sharded(files, out, "process", "--workers", "1"), fault="kill:score/chunk/*:6")
    assert r.returncode == 2 and "a worker died while running task" in r.stderr, r.stderr
    assert "rerun the same command to resume" in r.stderr
    kept = len(list(out.glob("part-*.json")))
    assert kept >= 1
    r = _run_cli(_sharded(files, out, "process", "--workers", "1"))
    assert r.returncode == 0 and f"({kept} resumed)" in r.stdout, r.stderr
    assert read_dataset(out).equals(pq.read_table(files["single"]))
