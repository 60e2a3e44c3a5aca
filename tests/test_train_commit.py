"""``fedrec train``: both parties agree on success before either puts its outputs in place (issue #9,
defect 6; :mod:`fedrec.protocols.commit`). Real processes over CURVE sockets, ``kill -9`` at each phase
of the commit: after the crash the parties hold both outputs of the run, or neither, or the guest's in
place and the host's staged awaiting the guest's durable verdict; the same two commands then leave both
in place, of one training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_train_resume import _run  # the same two `fedrec train` processes, with faults

from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.models.vertical import VerticalFM
from training.demo import RunFiles, write_run
from training.info_cmd import describe

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:crypto backend 'plain'")]
MODEL = {"backend": "plain", "n_factors": 4, "batch_size": 64, "lr": 0.02, "epochs": 1, "timeout": 60.0}
NET = {"heartbeat_timeout": 3.0, "recv_timeout": 60.0, "connect_timeout": 8.0}

# a SIGKILL at each phase (fedrec.protocols.commit): the host right after sending its vote; the guest with
# its stage prepared but no decision; the guest with its decision on disk but nothing in place; the host
# with the guest's verdict recorded but nothing in place
CASES = {
    "host_after_vote": {"host": "kill:job/commit/prepare"},
    "guest_before_decision": {"guest": "kill:job/commit/staged"},
    "guest_after_decision": {"guest": "kill:job/commit/decided"},
    "host_after_verdict": {"host": "kill:job/commit/recorded"},
}


def _files(tmp: Path) -> tuple[RunFiles, Any]:
    ds = generate(SyntheticConfig(n_users=80, n_items=30, n_ratings=640, seed=2)).dataset
    gv, hv = vertical_split(ds, host_user_fraction=0.8, n_host_only_users=10, seed=0)
    return write_run(gv, hv, tmp, MODEL, NET), gv


def _state(out: Path) -> dict[str, bool]:
    stages = list(out.glob(".stage.tmp-*"))
    return {"placed": (out / "summary.json").is_file(), "decided": (out / ".commit.json").is_file(),
            "prepared": any((s / ".prepared.json").is_file() for s in stages),
            "model": (out / "model").exists(), "aligned": (out / "aligned.csv").exists()}


def _assert_never_half_committed(files: RunFiles) -> None:
    """The guest coordinates: nothing is in place anywhere without its decision on disk, and once it has
    decided, the host's outputs are in place or staged (prepared) awaiting that verdict."""
    g, h = _state(files.guest_out), _state(files.host_out)
    for side in (g, h):  # the outputs move together: the completion marker, the model and aligned.csv
        assert side["placed"] == side["model"] == side["aligned"], (g, h)
    if not g["decided"]:
        assert not g["placed"] and not h["placed"] and not h["decided"], (g, h)
    else:
        assert h["placed"] or h["prepared"], (g, h)
    if h["placed"]:
        assert g["decided"], (g, h)


def _assert_info_says_what_is_unsettled(files: RunFiles) -> None:
    """`fedrec info` on a side the crash left with staged outputs or a decision: what is unsettled, and
    that the same `fedrec train` settles each."""
    for out in (files.guest_out, files.host_out):
        st = _state(out)
        if not (list(out.glob(".stage.tmp-*")) or (st["decided"] and not st["placed"])):
            continue
        info = describe(out, digests=False)
        assert info["unsettled"], info
        assert all(u["next"].startswith("re-running `fedrec train` with the same config")
                   for u in info["unsettled"]), info
        assert st["placed"] or "NOT complete" in info["kind"], info


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(CASES))
def test_kill_at_each_commit_phase_never_leaves_a_half_committed_pair(tmp_path: Path, case: str) -> None:
    files, gv = _files(tmp_path)
    first = _run(files, tmp_path / "first", CASES[case])
    killed = [r for r, c in first.items() if c == -9]
    assert killed == list(CASES[case]), (first, (tmp_path / "first" / "guest.log").read_text())
    _assert_never_half_committed(files)
    _assert_info_says_what_is_unsettled(files)
    second = _run(files, tmp_path / "second")
    logs = {r: (tmp_path / "second" / f"{r}.log").read_text() for r in ("guest", "host")}
    assert second == {"host": 0, "guest": 0}, logs
    _assert_never_half_committed(files)
    g_sum = json.loads((files.guest_out / "summary.json").read_text())
    h_sum = json.loads((files.host_out / "summary.json").read_text())
    assert g_sum["run_id"] == h_sum["run_id"]
    for out in (files.guest_out, files.host_out):
        assert not list(out.glob(".stage.tmp-*")), list(out.iterdir())
        assert "unsettled" not in describe(out, digests=False)  # `fedrec info`: nothing left to settle
    scorer = VerticalFM.load(files.guest_out / "model", files.host_out / "partials.parquet")  # one run id
    assert np.isfinite(scorer.predict(gv.interactions.head(30))).all()
    if case == "guest_after_decision":  # the decision was carried out, then the host was told it
        assert "committed before an" in logs["guest"] and "were committed by 'guest'" in logs["host"]
    if case == "host_after_verdict":  # the host finishes alone from the verdict it recorded, then tells the
        assert "committed before an" in logs["host"]  # guest, which had not heard it (both record it)
        assert "'guest' recorded that this party's outputs are in place" in logs["host"]
    if case == "guest_before_decision":  # no decision: presumed abort, the run is produced again
        assert "did not commit the staged outputs" in logs["host"] and "resuming run" in logs["host"]


@pytest.mark.timeout(200)
def test_a_host_that_cannot_write_makes_the_guest_fail_too_naming_it(tmp_path: Path) -> None:
    """A full disk (here: the host's model directory cannot be created) is the host's vote against the
    commit: both exit 1, the guest's error names the host and its error, nobody has outputs in place."""
    files, _ = _files(tmp_path)
    # the host's stage cannot hold a directory named model: a file is in the way once the stage exists
    sitecustom = tmp_path / "site"
    sitecustom.mkdir()
    (sitecustom / "sitecustomize.py").write_text(
        "import os\n"
        "from fedrec.protocols import hetero_fm\n"
        "def _full(self, directory):\n"
        "    raise OSError(28, 'No space left on device', str(directory))\n"
        "if os.environ.get('FEDREC_TEST_FULL_DISK'):\n"
        "    hetero_fm.HeteroFMHost.save = _full\n")
    env_extra = {"PYTHONPATH": f"{sitecustom}{os.pathsep}{REPO}", "FEDREC_TEST_FULL_DISK": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {}
    for role in ("host", "guest"):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("FEDREC_FAULT", None)
        if role == "host":
            env.update(env_extra)
        config = files.guest_config if role == "guest" else files.host_config
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "train", "--role", role, "--config", str(config),
             "--no-progress"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
            stderr=(logs / f"{role}.log").open("wb"))
    codes = {r: p.wait(90) for r, p in procs.items()}
    errs = {r: (logs / f"{r}.log").read_text() for r in procs}
    assert codes == {"host": 1, "guest": 1}, errs
    assert "peer 'host' at step 'job/commit/prepare'" in errs["guest"], errs["guest"]
    assert "No space left on device" in errs["guest"] and "No space left on device" in errs["host"]
    for out in (files.guest_out, files.host_out):
        state = _state(out)
        assert not any(state.values()), (out, state)
