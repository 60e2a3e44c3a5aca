"""One guest and two hosts end to end (issue #11): ``fedrec demo --hosts 2`` runs the guest and two host
processes of ``fedrec train`` over CURVE sockets (each host holds a different 85% of the host users:
partial overlaps, PSI per host), then ``fedrec recommend`` writes a campaign file scored from the guest
model and BOTH hosts' partials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    env.pop("FEDREC_FAULT", None)
    return subprocess.run([sys.executable, "-m", "training.cli", *argv], check=False, cwd=REPO, env=env,
                          text=True, capture_output=True, timeout=timeout)


@pytest.mark.slow  # three party processes, PSI twice, then a campaign
def test_guest_and_two_host_processes_train_and_score_a_campaign_from_both_partials(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    demo = _cli("demo", "--hosts", "2", "--users", "150", "--items", "40", "--epochs", "1", "--factors", "4",
                "--backend", "plain", "--n-boot", "20", "--timeout", "120", "--out", str(out), timeout=150)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "federated FM (3 processes)" in demo.stdout  # the guest and two hosts (item 6)
    res = json.loads((out / "results.json").read_text())
    guest = res["parties"]["guest"]
    assert guest["hosts"] == ["host1", "host2"]
    per_host = guest["n_aligned_per_host"]
    assert 0 < per_host["host1"] < guest["n_users"] and 0 < per_host["host2"] < guest["n_users"]
    assert all(v > 0 for v in guest["zero_partials_per_host"].values())  # partial overlaps, counted
    users = tmp_path / "users.csv"
    aligned = pd.read_csv(out / "guest" / "alignments" / "host1" / "aligned.csv")["id"]
    pd.DataFrame({"user_id": sorted(aligned.tolist())[:30]}).to_csv(users, index=False)
    campaign = tmp_path / "campaign.csv"
    rec = _cli("recommend", "--model", str(out / "guest" / "model"),
               "--host-partials", f"host1={out / 'host1' / 'partials.parquet'}",
               "--host-partials", f"host2={out / 'host2' / 'partials.parquet'}",
               "--users", str(users), "--k", "3", "--out", str(campaign), "--no-progress", timeout=60)
    assert rec.returncode == 0, rec.stderr[-3000:]
    scored = pd.read_csv(campaign)
    assert len(scored) == 30 * 3 and scored["user_id"].nunique() == 30
