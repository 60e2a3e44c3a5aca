"""``fedrec demo``: the federated main job end to end on a tiny dataset, its help, its example configs,
and how a failing party is reported."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.cli import main
from training.config import load_config
from training.launcher import PartyFailed, PartyGroup

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(110)
def test_tiny_demo_runs_two_processes_and_prints_the_table(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--users", "250", "--items", "50", "--epochs", "1", "--n-boot", "50",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("FM guest-only (bank alone)", "FM centralized (pooled, reference)",
                 "federated FM (2 processes)"):
        assert name in out
    assert "label privacy: on, epsilon" in out  # protected by default, and says so
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["backend"] == "ckks"
    g, h = res["parties"]["guest"], res["parties"]["host"]
    assert g["n_aligned"] == h["n_aligned"] < min(g["n_users"], h["n_users"])  # PSI mattered
    assert res["fallbacks"]["host_partials_users"] > 0  # guest users the host does not have
    fed = res["models"]["federated"]["rmse"]  # keys without spaces, the table label inside
    assert fed["low"] <= fed["point"] <= fed["high"] < 1.5
    assert res["models"]["federated"]["label"] == "federated FM (2 processes)"
    assert set(res["models"]) == {"federated", "guest_only", "centralized", "guarded"}
    guard = g["guard"]  # the guest-side guard: alpha chosen on the guest's validation rows, reported
    assert guard["status"] == "chosen" and 0 <= guard["alpha"] <= 1 and f"alpha {guard['alpha']:.2f}" in out
    assert "guarded FM (bank alone + federated)" in out and "guarded_vs_guest_only_all" in res["gains"]
    assert str(tmp_path) not in json.dumps(res)  # paths relative to the demo folder
    assert g["model_dir"] == "guest/model" and (tmp_path / g["model_dir"] / "hetero.json").is_file()
    for part in ("guest/model/hetero.json", "host/partials.parquet", "host/model/meta.json",
                 "reference/centralized/meta.json", "run/keys/guest.key_secret", "run/guest.log"):
        assert (tmp_path / part).is_file(), part


def test_example_configs_name_the_files_the_demo_writes() -> None:
    out = REPO / "artifacts" / "demo"
    guest = load_config(REPO / "training" / "configs" / "guest.toml")
    host = load_config(REPO / "training" / "configs" / "host.toml")
    assert guest.data.interactions is not None and guest.network.key is not None
    assert guest.data.interactions.resolve() == (out / "run" / "guest" / "interactions.parquet").resolve()
    assert host.data.user_features is not None and host.peers["guest"].public_key is not None
    assert host.data.user_features.resolve() == (out / "run" / "host" / "users.parquet").resolve()
    assert host.peers["guest"].public_key.resolve() == (out / "run" / "keys" / "guest.key").resolve()
    assert guest.network.listen == host.peers["guest"].endpoint  # the guest is the hub
    assert guest.protocol == host.protocol == "hetero_fm" and list(guest.peers) == ["host"]
    assert guest.model == host.model


def test_failed_party_is_named_with_its_stderr_and_the_other_is_stopped(tmp_path: Path) -> None:
    fail = [sys.executable, "-c", "import sys, time; time.sleep(0.3); "
                                  "print('boom: bad key file', file=sys.stderr); sys.exit(3)"]
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    with PartyGroup() as group:
        sleeper = group.start("host", sleep, tmp_path / "host.log")
        group.start("guest", fail, tmp_path / "guest.log")
        t0 = time.monotonic()
        with pytest.raises(PartyFailed) as exc:
            group.wait(timeout=30)
    assert time.monotonic() - t0 < 10
    assert exc.value.party == "guest" and exc.value.returncode == 3
    assert "[guest] boom: bad key file" in str(exc.value)
    assert sleeper.returncode is not None  # the other party did not outlive the launcher


def test_party_that_overruns_the_timeout_is_reported(tmp_path: Path) -> None:
    with PartyGroup() as group:
        group.start("host", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "h.log")
        with pytest.raises(PartyFailed, match=r"party 'host' did not finish within 1s"):
            group.wait(timeout=1)


@pytest.mark.parametrize("command", ["demo", "train"])
def test_help_texts(command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "training.cli", command, "--help"], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0
    wanted = {"demo": ("--dataset", "--data-dir", "--users", "--epochs", "--backend", "ml-100k"),
              "train": ("--role", "--config", "--restart", "training/configs/host.toml")}[command]
    for text in wanted:
        assert text in proc.stdout
