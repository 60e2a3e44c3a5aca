"""``fedrec train`` for fedmf over real processes and CURVE sockets: ``kill -9`` of the server in round 2
(right after it sent the round's requests: the clients work on a round nobody will aggregate), the
clients notice its death and end, then every party is started again with the same configs: they resume
from the newest round both sides hold and the bundles equal the uninterrupted (in-memory) run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrec.protocols.fedmf import FedMFConfig
from fedrec.protocols.fedmf.simulation import simulate, synthetic_federation
from serving.artifacts import load_bundle
from training.fedmf_job import write_run

REPO = Path(__file__).resolve().parents[1]
MODEL = {"backend": "plain", "n_factors": 4, "rounds": 4, "timeout": 30.0, "masks": False}  # exact replay
NET = {"heartbeat_timeout": 3.0, "connect_timeout": 30.0, "recv_timeout": 30.0}


def _start(role: str, config: Path, log: Path, fault: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDREC_FAULT", None)
    if fault:
        env["FEDREC_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "training.cli", "train", "--role", role, "--config",
                             str(config), "--no-progress"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))


def _run_all(files: object, logs: Path, server_fault: str | None = None) -> dict[str, int | None]:
    logs.mkdir(parents=True, exist_ok=True)
    procs = {"server": _start("server", files.server_config, logs / "server.log", server_fault)}  # type: ignore
    procs.update({n: _start("client", c, logs / f"{n}.log")
                  for n, c in files.client_configs.items()})  # type: ignore[attr-defined]
    try:
        codes: dict[str, int | None] = {}
        for n, p in procs.items():
            try:
                codes[n] = p.wait(90)
            except subprocess.TimeoutExpired:
                codes[n] = None
        return codes
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
def test_kill_9_of_the_server_then_restart_of_all_gives_the_uninterrupted_model(tmp_path: Path) -> None:
    clients, catalogue, _ = synthetic_federation(3, n_users=30, n_items=20)
    files = write_run(clients, catalogue, tmp_path, MODEL, NET)
    first = _run_all(files, tmp_path / "first", server_fault="kill:fedmf/train/r2/a0/upload")
    assert first["server"] == -9, (tmp_path / "first" / "server.log").read_text()
    assert not (files.server_out / "summary.json").exists()
    assert all(code != 0 for n, code in first.items() if n != "server"), first  # none finished
    second = _run_all(files, tmp_path / "second")
    logs = {n: (tmp_path / "second" / f"{n}.log").read_text() for n in second}
    assert all(code == 0 for code in second.values()), (second, logs)
    summary = json.loads((files.server_out / "summary.json").read_text())
    assert summary["resumed_from_round"] == 2 and summary["rounds"] == MODEL["rounds"]
    assert summary["in_job"] == 3 and not summary["excluded"]
    mem = simulate(clients, catalogue, FedMFConfig(**MODEL))
    for name, out in files.client_outs.items():
        bundle = load_bundle(out / "bundle")
        c = mem.clients[name]
        assert c.items is not None and c.mu is not None
        assert json.loads((out / "summary.json").read_text())["resumed_from_round"] == 2
        # float32 of the same float64 numbers as the uninterrupted run
        np.testing.assert_array_equal(bundle.q_i, c.items.q.astype(np.float32))
        np.testing.assert_array_equal(bundle.b_i, (c.mu + c.items.b).astype(np.float32))
        np.testing.assert_array_equal(bundle.p_u, c.users.p.astype(np.float32))
