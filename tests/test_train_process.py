"""``fedrec train``: two real processes over CURVE sockets align with PSI, train and export artifacts;
a party killed mid-run makes the other exit with an error naming the peer and the step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.models.vertical import VerticalFM
from training.demo import RunFiles, write_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def _views(n_users: int = 120) -> tuple[Any, Any]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=30, n_ratings=n_users * 8, seed=2)).dataset
    return vertical_split(ds, host_user_fraction=0.8, n_host_only_users=15, seed=0)


def _start(role: str, files: RunFiles, log: Path) -> subprocess.Popen[bytes]:
    config = files.guest_config if role == "guest" else files.host_config
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "training.cli", "train", "--role", role, "--config",
                             str(config), "--no-progress"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))


def _run_pair(tmp_path: Path, model: dict[str, Any], timeouts: dict[str, float] | None = None
              ) -> tuple[RunFiles, Any, Any, dict[str, subprocess.Popen[bytes]]]:
    gv, hv = _views()
    files = write_run(gv, hv, tmp_path, model, timeouts)
    procs = {r: _start(r, files, tmp_path / f"{r}.log") for r in ("host", "guest")}
    return files, gv, hv, procs


@pytest.mark.timeout(90)
def test_two_processes_align_train_and_export_artifacts(tmp_path: Path) -> None:
    model = {"backend": "plain", "n_factors": 4, "batch_size": 256, "lr": 0.02, "epochs": 2, "timeout": 60.0}
    files, gv, hv, procs = _run_pair(tmp_path, model)
    try:
        for role in ("guest", "host"):
            assert procs[role].wait(75) == 0, (tmp_path / f"{role}.log").read_text()
    finally:
        for p in procs.values():
            p.kill()
    g_al = pd.read_csv(files.guest_out / "aligned.csv", dtype={"id": str})
    h_al = pd.read_csv(files.host_out / "aligned.csv", dtype={"id": str})
    common = set(map(str, gv.user_ids)) & set(map(str, hv.user_ids))
    assert g_al["id"].tolist() == h_al["id"].tolist() and set(g_al["id"]) == common
    partials = pd.read_parquet(files.host_out / "partials.parquet")
    assert partials["user_id"].tolist() == h_al["id"].tolist()
    assert list(partials.columns) == ["aligned_index", "user_id", "z_H", *[f"e_H_{f}" for f in range(4)]]
    assert (files.host_out / "model" / "arrays.npz").is_file()
    assert (files.guest_out / "model" / "hetero.json").is_file()
    scorer = VerticalFM.load(files.guest_out / "model", files.host_out / "partials.parquet")
    pairs = gv.interactions.head(200)
    scores = scorer.predict(pairs)
    assert scores.shape == (200,) and np.all(np.isfinite(scores))
    guest_only_rows = int((~pairs["user_id"].astype(str).isin(common)).sum())
    assert scorer.last_fallbacks["no_host_partial"] == guest_only_rows
    host_log = (tmp_path / "host.log").read_text()
    # the host hears of the aligned users only (not of the guest's other users, not even their number)
    assert f"setup with {len(common)} aligned users ({len(common)} with features)" in host_log
    assert len(common) < len(gv.user_ids)


@pytest.mark.timeout(90)
def test_killed_host_makes_guest_fail_naming_peer_and_step(tmp_path: Path) -> None:
    model = {"backend": "plain", "n_factors": 4, "batch_size": 64, "epochs": 500, "patience": 500,
             "timeout": 60.0}
    files, _, _, procs = _run_pair(tmp_path, model, {"heartbeat_timeout": 3.0, "recv_timeout": 60.0})
    guest_log = tmp_path / "guest.log"
    try:
        deadline = time.monotonic() + 60
        while "context sha256" not in guest_log.read_text() and time.monotonic() < deadline:
            assert procs["guest"].poll() is None, guest_log.read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # well inside the training loop
        procs["host"].kill()
        t0 = time.monotonic()
        code = procs["guest"].wait(30)
        waited = time.monotonic() - t0
    finally:
        for p in procs.values():
            p.kill()
    err = guest_log.read_text()
    assert code == 1
    assert waited < 20
    assert "fedrec train (guest): " in err and "peer 'host'" in err
    assert "step 'fm/e" in err
