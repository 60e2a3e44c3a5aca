"""``fedrec train``: two real processes over CURVE sockets align with PSI, train, score the guest's
pairs and export artifacts; a complete run is left alone; a party killed at a protocol step makes the
other exit with an error naming the peer and the step; a rerun after a crash reuses the alignment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.models.vertical import VerticalFM
from training.demo import RunFiles, write_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:crypto backend 'plain'")]
PLAIN = {"backend": "plain", "n_factors": 4, "batch_size": 256, "lr": 0.02, "epochs": 2, "timeout": 60.0}


def _views(n_users: int = 120) -> tuple[Any, Any]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=30, n_ratings=n_users * 8, seed=2)).dataset
    return vertical_split(ds, host_user_fraction=0.8, n_host_only_users=15, seed=0)


def _start(role: str, files: RunFiles, log: Path, fault: str | None = None, *extra: str,
           progress: bool = False) -> subprocess.Popen[bytes]:
    """``fedrec -v train`` of ``role``, stderr into ``log`` (a file: not a terminal); ``--no-progress``
    unless ``progress`` (then the bars follow the config)."""
    config = files.guest_config if role == "guest" else files.host_config
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDREC_FAULT", None)
    if fault is not None:
        env["FEDREC_FAULT"] = fault
    flags = [*extra, *([] if progress else ["--no-progress"])]
    return subprocess.Popen([sys.executable, "-m", "training.cli", "-v", "train", "--role", role, "--config",
                             str(config), *flags], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _run(files: RunFiles, logs: Path, faults: dict[str, str] | None = None, timeout: float = 75,
         progress: bool = False) -> dict[str, int]:
    """Both parties once; their exit statuses (logs in ``logs/<role>.log``)."""
    procs = {r: _start(r, files, logs / f"{r}.log", (faults or {}).get(r), progress=progress)
             for r in ("host", "guest")}
    try:
        return {r: p.wait(timeout) for r, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()


def _with_predict(files: RunFiles, pairs: pd.DataFrame) -> Path:
    path = files.run_dir / "guest" / "pairs.csv"
    pairs.to_csv(path, index=False)
    text = files.guest_config.read_text().replace("[data]\n", '[data]\npredict = "guest/pairs.csv"\n')
    files.guest_config.write_text(text)
    return path


@pytest.mark.timeout(150)
def test_two_processes_align_train_score_and_export_artifacts(tmp_path: Path) -> None:
    gv, hv = _views()
    files = write_run(gv, hv, tmp_path, PLAIN)
    common = set(map(str, gv.user_ids)) & set(map(str, hv.user_ids))
    pairs = gv.interactions.head(200)[["user_id", "item_id"]]
    _with_predict(files, pairs)
    codes = _run(files, tmp_path)
    for role in ("guest", "host"):
        assert codes[role] == 0, (tmp_path / f"{role}.log").read_text()
    g_al = pd.read_csv(files.guest_out / "aligned.csv", dtype={"id": str})
    h_al = pd.read_csv(files.host_out / "aligned.csv", dtype={"id": str})
    assert g_al["id"].tolist() == h_al["id"].tolist() and set(g_al["id"]) == common
    partials = pd.read_parquet(files.host_out / "partials.parquet")
    assert partials["user_id"].tolist() == h_al["id"].tolist()
    assert list(partials.columns) == ["aligned_index", "user_id", "z_H", *[f"e_H_{f}" for f in range(4)]]
    assert (files.host_out / "model" / "arrays.npz").is_file()
    assert (files.guest_out / "model" / "hetero.json").is_file()
    # [data] predict: the guest scored the pairs with the host's partials (guest terms for the others)
    pred = pd.read_csv(files.guest_out / "predictions.csv")
    summary = json.loads((files.guest_out / "summary.json").read_text())
    guard = summary["guard"]  # the guest-side guard (default blend): alpha chosen on the validation rows
    assert guard["status"] == "chosen" and guard["blended"] <= min(guard["bank_alone"], guard["federated"])
    blended = ["prediction_federated"] if guard["alpha"] < 1 else []
    assert list(pred.columns) == ["user_id", "item_id", "prediction", *blended] and len(pred) == len(pairs)
    # ... which is what the exported halves give (the partials carry the run id of the guest model), the
    # guard applied; prediction_federated: the federated model as trained
    scorer = VerticalFM.load(files.guest_out / "model", files.host_out / "partials.parquet")
    assert pred["prediction"].to_numpy() == pytest.approx(scorer.predict(pairs), abs=1e-6)
    if blended:
        federated = VerticalFM.load(files.guest_out / "model", files.host_out / "partials.parquet",
                                    guard=False)
        assert pred["prediction_federated"].to_numpy() == pytest.approx(federated.predict(pairs), abs=1e-6)
    assert summary["alignment"] == "psi" and summary["predictions"]["rows"] == len(pairs)
    assert summary["predictions"]["fallbacks"] == scorer.last_fallbacks
    assert not pairs["user_id"].astype(str).isin(common).all()  # some pairs need the fallback
    host_log = (tmp_path / "host.log").read_text()
    # the host hears of the aligned users only (not of the guest's other users, not even their number)
    assert f"setup with {len(common)} aligned users ({len(common)} with features)" in host_log
    assert len(common) < len(gv.user_ids)
    # a complete run is left as it is
    again = subprocess.run([sys.executable, "-m", "training.cli", "train", "--role", "guest", "--config",
                            str(files.guest_config)], cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert again.returncode == 0, again.stderr
    assert f"the run in {files.guest_out} is complete (summary.json is there); nothing to do" in again.stdout


@pytest.fixture(scope="module")
def crash_and_rerun(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One crash and its rerun, shared by the two tests below (each checks its own half; both runs cost
    ~25 s of process start-up on 2 cores): the host SIGKILLs itself when it sends its first message of
    epoch 1, after both parties checkpointed epoch 0; then the same two commands again."""
    tmp = tmp_path_factory.mktemp("crash")
    gv, hv = _views()
    files = write_run(gv, hv, tmp, {**PLAIN, "epochs": 3}, {"heartbeat_timeout": 3.0, "recv_timeout": 60.0})
    first, second = tmp / "first", tmp / "second"
    first.mkdir()
    second.mkdir()
    out: dict[str, Any] = {"files": files, "first": _run(files, first, {"host": "kill:fm/e1/*"}, timeout=60)}
    out["first_logs"] = {r: (first / f"{r}.log").read_text() for r in ("guest", "host")}
    out["first_summary"] = (files.guest_out / "summary.json").exists()
    # the alignment in use is kept in .work/ (published with the model when both commit)
    out["work_aligned"] = {r: (d / ".work" / "aligned.csv").read_bytes()
                           for r, d in (("guest", files.guest_out), ("host", files.host_out))}
    out["first_published"] = (files.guest_out / "aligned.csv").exists()
    out["second"] = _run(files, second)
    out["second_logs"] = {r: (second / f"{r}.log").read_text() for r in ("guest", "host")}
    return out


@pytest.mark.timeout(200)
def test_killed_host_makes_guest_fail_naming_peer_and_step(crash_and_rerun: dict[str, Any]) -> None:
    codes, logs = crash_and_rerun["first"], crash_and_rerun["first_logs"]
    err = logs["guest"]
    assert codes["host"] == -9, logs["host"]
    assert codes["guest"] == 1, err
    assert "fedrec train (guest): " in err and "peer 'host'" in err
    assert "step 'fm/e1/b0" in err
    assert not crash_and_rerun["first_summary"]


@pytest.mark.timeout(200)
def test_rerun_after_a_crash_reuses_the_alignment_and_completes(crash_and_rerun: dict[str, Any]) -> None:
    files, codes = crash_and_rerun["files"], crash_and_rerun["second"]
    assert crash_and_rerun["first"] == {"host": -9, "guest": 1}
    assert not crash_and_rerun["first_published"]
    for role in ("guest", "host"):
        assert "running PSI" in crash_and_rerun["first_logs"][role]
    for role, out in (("guest", files.guest_out), ("host", files.host_out)):
        log = crash_and_rerun["second_logs"][role]
        assert codes[role] == 0, log
        assert "reused the alignment of an earlier run" in log and "running PSI" not in log
        assert (out / "aligned.csv").read_bytes() == crash_and_rerun["work_aligned"][role]
        assert json.loads((out / "summary.json").read_text())["alignment"] == "reused"
        assert "resuming run" in log  # from the checkpoint of epoch 0 both parties hold ([checkpoint])
    assert np.isfinite(pd.read_parquet(files.host_out / "partials.parquet")["z_H"]).all()
