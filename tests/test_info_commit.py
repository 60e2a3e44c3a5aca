"""`fedrec info` on run directories the two-phase commit left unsettled (:mod:`fedrec.protocols.commit`):
the states are made by the real commit functions on the in-memory transport (the guest killed after
writing its decision, before putting anything in place), and `fedrec info` must say what is in doubt
and that re-running `fedrec train` with the same config settles it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_commit import RUN, T, _thread, decided_then_guest_died  # the commit exchange's helpers

from fedrec.protocols.commit import (
    COORDINATOR,
    PARTICIPANT,
    RECORD,
    Ledger,
    Stage,
    coordinator_open,
    participant_open,
    unsettled,
)
from fedrec.transport import MemoryNetwork
from training.cli import main
from training.info_cmd import describe

AGAIN = "re-running `fedrec train` with the same config"


def _stage(out: Path, role: str, *, prepare: bool = True) -> Stage:
    """A stage as `fedrec train` writes it: the outputs and the run summary naming protocol and role."""
    stage = Stage.create(out)
    (stage.path / "model").mkdir()
    (stage.path / "model" / "arrays.npz").write_text(role)
    (stage.path / "summary.json").write_text(json.dumps({"protocol": "hetero_fm", "role": role, "run_id": RUN,
                                                         "peer": "host" if role == "guest" else "guest"}))
    if prepare:
        stage.prepare(RUN)
    return stage


@pytest.fixture
def crashed(tmp_path: Path) -> tuple[Path, Path, str]:
    """The guest decided to commit, then died before putting anything in place; the host voted and is
    left in doubt. Returns the two run directories and the host's attempt."""
    g, h = tmp_path / "guest", tmp_path / "host"
    g.mkdir()
    h.mkdir()
    return g, h, decided_then_guest_died(g, h, _stage, ("guest", "host"))


def test_info_shows_the_participants_outputs_in_doubt_and_what_settles_them(
        crashed: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, h, attempt = crashed
    info = describe(h)
    assert "NOT complete" in info["kind"] and info["role"] == "host"
    [entry] = info["unsettled"]
    assert entry["attempt"] == attempt and entry["run_id"] == RUN
    assert entry["state"] == "in doubt: staged and voted for, awaiting the verdict of the coordinator 'guest'"
    assert entry["next"].startswith(AGAIN) and "put in place" in entry["next"]
    assert main(["info", str(h)]) == 0
    text = capsys.readouterr().out
    assert f"staged attempt {attempt}: in doubt" in text and AGAIN in text


def test_info_shows_a_decided_commit_not_yet_in_place(crashed: tuple[Path, Path, str]) -> None:
    g, _, _ = crashed
    info = describe(g)
    assert "NOT complete" in info["kind"] and info["role"] == "guest"
    states = [u["state"] for u in info["unsettled"]]
    assert states[0] == "committed, not all put in place (interrupted while placing them)"
    assert any("'host' has not confirmed" in s for s in states)


def test_info_follows_the_next_runs_until_nothing_is_unsettled(crashed: tuple[Path, Path, str]) -> None:
    g, h, _ = crashed
    g_book, h_book = Ledger(g, COORDINATOR), Ledger(h, PARTICIPANT)
    assert g_book.recover() is None  # the guest's next run: its outputs in place, the host unconfirmed
    info = describe(g)
    assert info["kind"].startswith("hetero_fm run, role guest (complete); the two-phase commit is not")
    [entry] = info["unsettled"]
    assert entry["participant"] == "host" and entry["next"].startswith(AGAIN)
    assert all(not a["file"].startswith(".") for a in info["artifacts"])  # the record is not an artifact
    doubt = h_book.recover()
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    t, box = _thread(lambda: participant_open(hch, "guest", h_book, doubt, timeout=T))
    assert coordinator_open(gch, ["host"], g_book, complete=True, timeout=T) == {"host": "commit"}
    t.join(T)
    assert box == {"value": True}
    for out in (g, h):
        info = describe(out)
        assert "unsettled" not in info and info["kind"].endswith("(complete)"), info["kind"]


def test_a_coordinators_undecided_and_a_torn_stage_are_deleted_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "guest"
    out.mkdir()
    undecided, torn = _stage(out, "guest"), _stage(out, "guest", prepare=False)
    found = {u["attempt"]: u for u in unsettled(out, COORDINATOR)}
    assert found[undecided.attempt]["state"].endswith("(presumed abort)")
    assert found[torn.attempt]["state"].startswith("incomplete stage")
    assert describe(out)["role"] == "guest"  # the role (hence coordinator) read from the staged summary
    assert all(u["next"] == f"{AGAIN} deletes it and resumes the run" + (
        " (both parties, from their checkpoints)" if a == undecided.attempt else "")
        for a, u in found.items())


def test_info_names_an_unreadable_commit_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "host"
    out.mkdir()
    (out / RECORD).write_text('{"format": "something else"}')
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "unreadable commit record" in text and str(out / RECORD) in text and "--restart" in text


def test_info_shows_a_participant_whose_commit_the_coordinator_has_not_heard(tmp_path: Path) -> None:
    out = tmp_path / "host"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"protocol": "hetero_fm", "role": "host", "run_id": RUN}))
    Ledger(out, PARTICIPANT).write_record({"attempt": "a" * 32, "run_id": RUN, "decision": "commit",
                                           "coordinator": "guest", "acked": False})
    [entry] = describe(out)["unsettled"]
    assert entry["coordinator"] == "guest" and "'guest' has not heard so" in entry["state"]
    assert entry["next"].startswith(AGAIN)
