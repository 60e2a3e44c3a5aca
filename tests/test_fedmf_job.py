"""``fedrec train`` for fedmf: a server and three silo clients as separate processes over CURVE sockets
finish, equal the in-memory simulation of the same data, and each client's bundle serves its own users
through ``fedrec recommend``; the server writes only its summary. Plus the job's file readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data import DataValidationError
from fedrec.protocols.fedmf import FedMFConfig
from fedrec.protocols.fedmf.simulation import simulate, synthetic_federation
from serving.artifacts import load_bundle
from training.config import load_config
from training.fedmf_job import read_catalogue, read_ratings, write_run

REPO = Path(__file__).resolve().parents[1]
MODEL = {"backend": "plain", "n_factors": 4, "rounds": 3, "timeout": 60.0,
         "masks": False}  # compared exactly with the in-memory run


def _start(role: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDREC_FAULT", None)
    return subprocess.Popen([sys.executable, "-m", "training.cli", "train", "--role", role, "--config",
                             str(config), "--no-progress"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
def test_server_and_three_silos_over_sockets_equal_the_in_memory_run(tmp_path: Path) -> None:
    clients, catalogue, _ = synthetic_federation(3, n_users=45, n_items=30)
    files = write_run(clients, catalogue, tmp_path, MODEL, {"heartbeat_timeout": 5.0})
    procs = {"server": _start("server", files.server_config, tmp_path / "server.log")}
    procs.update({n: _start("client", c, tmp_path / f"{n}.log") for n, c in files.client_configs.items()})
    try:
        codes = {n: p.wait(150) for n, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    for name, code in codes.items():
        assert code == 0, (tmp_path / f"{name}.log").read_text()
    # the server keeps its summary and its checkpoints: ciphertexts and the public context, no secret key
    assert sorted(p.name for p in files.server_out.iterdir()) == ["checkpoints", "summary.json"]
    from fedrec.protocols.checkpoint import Checkpointer

    ckpts = Checkpointer(files.server_out / "checkpoints").list(role="server")
    assert ckpts and all(set(Checkpointer(files.server_out / "checkpoints").load(i).arrays)
                         == {"model", "public_context", "roster_keys"} for i in ckpts)
    summary = json.loads((files.server_out / "summary.json").read_text())
    assert summary["rounds"] == MODEL["rounds"] and summary["in_job"] == 3 and summary["failed_uploads"] == 0
    # the same data in memory gives the same model (plain: float32 of the same float64 numbers)
    mem = simulate(clients, catalogue, FedMFConfig(**MODEL))
    for name, out in files.client_outs.items():
        bundle = load_bundle(out / "bundle")
        c = mem.clients[name]
        assert c.items is not None and c.mu is not None
        assert bundle.q_i == pytest.approx(c.items.q.astype(np.float32), abs=1e-6)
        assert bundle.b_i == pytest.approx((c.mu + c.items.b).astype(np.float32), abs=1e-6)
        assert bundle.p_u == pytest.approx(c.users.p.astype(np.float32), abs=1e-6)
        own = sorted(map(str, clients[name]["user_id"].unique()))
        assert sorted(map(str, bundle.user_map.raw_ids)) == own
        assert json.loads((out / "summary.json").read_text())["rounds_taken_part"] == MODEL["rounds"]
    # fedrec recommend serves a client's own users from its bundle
    users = tmp_path / "users.txt"
    users.write_text("\n".join(map(str, clients["c1"]["user_id"].unique()[:5])) + "\n")
    rec = subprocess.run([sys.executable, "-m", "training.cli", "recommend", "--model",
                          str(files.client_outs["c1"] / "bundle"), "--users", str(users), "--k", "3", "--out",
                          str(tmp_path / "recs.csv"), "--no-progress"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert rec.returncode == 0, rec.stderr
    recs = pd.read_csv(tmp_path / "recs.csv")
    assert len(recs) == 15 and set(recs["fallback"]) == {"none"}
    assert set(recs["item_id"]) <= set(catalogue)
    assert set(recs["score_kind"]) == {"predicted_rating"}
    assert recs["score"].between(1, 5).all()  # clipped to the silo's own ratings' range


def test_example_configs_parse() -> None:
    for name in ("fedmf_server.toml", "fedmf_client.toml"):
        cfg = load_config(REPO / "training" / "configs" / name)
        assert cfg.protocol == "fedmf" and cfg.data.catalogue is not None
        FedMFConfig(**cfg.model)


def test_ratings_reader_names_file_line_and_column(tmp_path: Path) -> None:
    good = tmp_path / "r.csv"
    good.write_text("user_id,item_id,rating\n1,10,4\n1,11,3.5\n2,10,5\n")
    assert read_ratings(good)["rating"].tolist() == [4.0, 3.5, 5.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating\n1,10,4\n2,11,lots\n")
    with pytest.raises(DataValidationError, match=r"bad.csv.*line 3.*rating"):
        read_ratings(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("user_id,item_id\n1,10\n")
    with pytest.raises(DataValidationError, match="rating"):
        read_ratings(missing)


def test_catalogue_reader_keeps_file_order_and_refuses_repeats(tmp_path: Path) -> None:
    cat = tmp_path / "items.csv"
    cat.write_text("item_id,title\n30,c\n10,a\n20,b\n")
    assert read_catalogue(cat) == [30, 10, 20]
    cat.write_text("item_id\n1\n2\n1\n")
    with pytest.raises(DataValidationError, match="line 4"):
        read_catalogue(cat)
