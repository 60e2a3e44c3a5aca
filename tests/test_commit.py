"""The two-phase commit of a run's outputs (:mod:`fedrec.protocols.commit`) on the in-memory transport:
every outcome leaves both parties' outputs in place or neither's, a crash at each phase (a party killed
on the network, its process state dropped) is settled by the next run as the durable decision says."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedrec.protocols.commit import (
    COORDINATOR,
    PARTICIPANT,
    PREPARED,
    RECORD,
    CommitError,
    Ledger,
    Stage,
    coordinator_commit,
    coordinator_open,
    participant_commit,
    participant_confirm,
    participant_open,
)
from fedrec.protocols.messages import Prepared, Verdict
from fedrec.transport import MemoryNetwork

T = 5.0
RUN = "a" * 32


def _stage(out: Path, tag: str, *, prepare: bool = True) -> Stage:
    """A stage holding a model directory, a data file and the summary (the completion marker)."""
    stage = Stage.create(out)
    (stage.path / "model").mkdir()
    (stage.path / "model" / "arrays.npz").write_text(tag)
    (stage.path / "partials.parquet").write_text(tag)
    (stage.path / "summary.json").write_text(json.dumps({"tag": tag}))
    if prepare:
        stage.prepare(RUN)
    return stage


def _placed(out: Path) -> str | None:
    """The tag of the outputs in place (all three agree), ``None`` when none are."""
    files = [out / "model" / "arrays.npz", out / "partials.parquet"]
    if not (out / "summary.json").exists():
        assert not any(f.exists() for f in files), "outputs without the completion marker"
        return None
    tags = {f.read_text() for f in files} | {json.loads((out / "summary.json").read_text())["tag"]}
    assert len(tags) == 1, tags
    return tags.pop()


def _thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - inspected by the test
            box["error"] = err

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def _parties(tmp: Path, hosts: tuple[str, ...] = ("host",)) -> tuple[Path, dict[str, Path]]:
    g = tmp / "guest"
    g.mkdir()
    hs = {h: tmp / h for h in hosts}
    for p in hs.values():
        p.mkdir()
    return g, hs


def test_every_party_commits_and_nothing_is_left_staged(tmp_path: Path) -> None:
    g, hs = _parties(tmp_path, ("h1", "h2"))
    net = MemoryNetwork()
    gch = net.channel("guest", list(hs))
    hch = {h: net.channel(h, ["guest"]) for h in hs}
    threads = [_thread(lambda h=h: participant_commit(hch[h], "guest", Ledger(hs[h], PARTICIPANT),
                                                      _stage(hs[h], h), RUN, failure=None, timeout=T))
               for h in hs]
    late = coordinator_commit(gch, list(hs), Ledger(g, COORDINATOR), _stage(g, "g"), RUN, failure=None,
                              timeout=T)
    for t, box in threads:
        t.join(T)
        assert "error" not in box, box
    assert late == []
    assert _placed(g) == "g" and _placed(hs["h1"]) == "h1" and _placed(hs["h2"]) == "h2"
    for d in (g, *hs.values()):
        assert not list(d.glob(".stage.tmp-*"))
    assert Ledger(g, COORDINATOR).unacked() == []


@pytest.mark.parametrize("who", ["host", "guest"])
def test_a_party_that_cannot_write_makes_nobody_commit_and_both_say_why(tmp_path: Path, who: str) -> None:
    g, hs = _parties(tmp_path)
    h = hs["host"]
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    why = "OSError: [Errno 28] No space left on device"
    host_fail = why if who == "host" else None
    guest_fail = why if who == "guest" else None
    t, box = _thread(lambda: participant_commit(hch, "guest", Ledger(h, PARTICIPANT),
                                                _stage(h, "h", prepare=host_fail is None), RUN,
                                                failure=host_fail, timeout=T))
    with pytest.raises(CommitError, match="No space left on device") as exc:
        coordinator_commit(gch, ["host"], Ledger(g, COORDINATOR), _stage(g, "g", prepare=guest_fail is None),
                           RUN, failure=guest_fail, timeout=T)
    t.join(T)
    assert isinstance(box.get("error"), CommitError), box
    assert "No space left on device" in str(box["error"]) and "no party puts its outputs" in str(exc.value)
    assert _placed(g) is None and _placed(h) is None
    assert not list(g.glob(".stage.tmp-*")) and not list(h.glob(".stage.tmp-*"))
    assert not (g / RECORD).exists() and not (h / RECORD).exists()


def test_a_vote_for_another_training_run_aborts(tmp_path: Path) -> None:
    g, hs = _parties(tmp_path)
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    t, box = _thread(lambda: participant_commit(hch, "guest", Ledger(hs["host"], PARTICIPANT),
                                                _stage(hs["host"], "h"), "b" * 32, failure=None, timeout=T))
    with pytest.raises(CommitError, match="staged outputs of run 'bbbb"):
        coordinator_commit(gch, ["host"], Ledger(g, COORDINATOR), _stage(g, "g"), RUN, failure=None,
                           timeout=T)
    t.join(T)
    assert isinstance(box.get("error"), CommitError)
    assert _placed(g) is None and _placed(hs["host"]) is None


def test_coordinator_lost_before_deciding_leaves_the_host_in_doubt_and_the_next_run_aborts(tmp_path: Path
                                                                                           ) -> None:
    g, hs = _parties(tmp_path)
    h = hs["host"]
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    _stage(g, "g")  # the guest staged, heard the vote, and died before writing its decision
    t, box = _thread(lambda: participant_commit(hch, "guest", Ledger(h, PARTICIPANT), _stage(h, "h"), RUN,
                                                failure=None, timeout=T))
    gch.recv("host", Prepared, step="job/commit/prepare", timeout=T)
    net.kill("guest")
    t.join(T)
    err = box.get("error")
    assert isinstance(err, CommitError) and err.in_doubt, box
    assert "stay staged" in str(err) and _placed(h) is None
    # the next run: the guest drops its undecided stage (presumed abort), the host asks and deletes its own
    g_book, h_book = Ledger(g, COORDINATOR), Ledger(h, PARTICIPANT)
    assert g_book.recover() is None and not list(g.glob(".stage.tmp-*"))
    doubt = h_book.recover()
    assert doubt is not None
    net2 = MemoryNetwork()
    gch2, hch2 = net2.channel("guest", ["host"]), net2.channel("host", ["guest"])
    t, box = _thread(lambda: participant_open(hch2, "guest", h_book, doubt, timeout=T))
    told = coordinator_open(gch2, ["host"], g_book, complete=False, timeout=T)
    t.join(T)
    assert told == {"host": "abort"} and box == {"value": False}
    assert not doubt.path.exists() and _placed(h) is None and _placed(g) is None


def decided_then_guest_died(g: Path, h: Path, stage: Callable[[Path, str], Stage] = _stage,
                            tags: tuple[str, str] = ("g", "h")) -> str:
    """The guest heard the host's vote, wrote its decision (on disk) and died before putting anything in
    place; the host is left in doubt. Returns the host's attempt (``stage(out, tag)`` stages a party)."""
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    g_stage = stage(g, tags[0])
    t, box = _thread(lambda: participant_commit(hch, "guest", Ledger(h, PARTICIPANT), stage(h, tags[1]), RUN,
                                                failure=None, timeout=T))
    vote = gch.recv("host", Prepared, step="job/commit/prepare", timeout=T)
    Ledger(g, COORDINATOR).write_record({"attempt": g_stage.attempt, "run_id": RUN, "decision": "commit",
                                         "participants": {"host": {"attempt": vote.attempt, "acked": False}}})
    net.kill("guest")
    t.join(T)
    assert isinstance(box.get("error"), CommitError) and box["error"].in_doubt
    return vote.attempt


def test_coordinator_lost_after_its_decision_commits_both_on_the_next_run(tmp_path: Path) -> None:
    g, hs = _parties(tmp_path)
    h = hs["host"]
    attempt = decided_then_guest_died(g, h)
    assert _placed(g) is None and _placed(h) is None
    g_book, h_book = Ledger(g, COORDINATOR), Ledger(h, PARTICIPANT)
    assert g_book.recover() is None  # redo: the decided commit is carried out before the network opens
    assert _placed(g) == "g" and g_book.unacked() == ["host"]
    doubt = h_book.recover()
    assert doubt is not None and doubt.attempt == attempt
    net2 = MemoryNetwork()
    gch2, hch2 = net2.channel("guest", ["host"]), net2.channel("host", ["guest"])
    t, box = _thread(lambda: participant_open(hch2, "guest", h_book, doubt, timeout=T))
    told = coordinator_open(gch2, ["host"], g_book, complete=True, timeout=T)
    t.join(T)
    assert told == {"host": "commit"} and box == {"value": True}
    assert _placed(h) == "h" and g_book.unacked() == []
    assert json.loads((h / RECORD).read_text())["attempt"] == attempt


def test_participant_lost_after_its_vote_resolves_against_a_complete_coordinator(tmp_path: Path) -> None:
    g, hs = _parties(tmp_path)
    h = hs["host"]
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    h_stage = _stage(h, "h")
    hch.send("guest", Prepared(h_stage.attempt, RUN, True), step="job/commit/prepare")
    t, box = _thread(lambda: coordinator_commit(gch, ["host"], Ledger(g, COORDINATOR), _stage(g, "g"), RUN,
                                                failure=None, timeout=T))
    hch.recv("guest", Verdict, step="job/commit/verdict", timeout=T)  # heard, then killed before recording
    net.kill("host")
    t.join(T)
    assert box == {"value": ["host"]}  # the guest's outputs are in place; the host did not confirm
    assert _placed(g) == "g" and _placed(h) is None
    h_book = Ledger(h, PARTICIPANT)
    doubt = h_book.recover()
    assert doubt is not None and doubt.attempt == h_stage.attempt
    net2 = MemoryNetwork()
    gch2, hch2 = net2.channel("guest", ["host"]), net2.channel("host", ["guest"])
    t, box = _thread(lambda: participant_open(hch2, "guest", h_book, doubt, timeout=T))
    told = coordinator_open(gch2, ["host"], Ledger(g, COORDINATOR), complete=True, timeout=T)
    assert told == {"host": "commit"}
    t.join(T)
    assert box == {"value": True} and _placed(h) == "h"


def test_participant_killed_while_placing_finishes_alone_from_its_record(tmp_path: Path) -> None:
    h = tmp_path / "host"
    h.mkdir()
    stage = _stage(h, "new")
    book = Ledger(h, PARTICIPANT)
    book.write_record({"attempt": stage.attempt, "run_id": RUN, "decision": "commit", "coordinator": "guest"})
    (stage.path / "partials.parquet").rename(h / "partials.parquet")  # placed; the rest was not
    assert book.recover() is None
    assert _placed(h) == "new" and not stage.path.exists()


def test_a_participant_that_finished_alone_confirms_to_the_complete_coordinator(tmp_path: Path) -> None:
    """Killed between recording the verdict and its Ack: the participant's next run puts its outputs in
    place from its record, then (complete) tells the coordinator, whose record lacked its confirmation:
    both records say confirmed afterwards (before, the coordinator waited for it on every run)."""
    g, hs = _parties(tmp_path)
    h = hs["host"]
    stage = _stage(h, "h")
    h_book, g_book = Ledger(h, PARTICIPANT), Ledger(g, COORDINATOR)
    recorded = {"attempt": stage.attempt, "run_id": RUN, "decision": "commit", "coordinator": "guest"}
    h_book.write_record({**recorded, "acked": False})
    g_book.write_record({"attempt": "c" * 32, "run_id": RUN, "decision": "commit",
                         "participants": {"host": {"attempt": stage.attempt, "acked": False}}})
    assert h_book.recover() is None and _placed(h) == "h"
    assert h_book.unconfirmed() == "guest" and g_book.unacked() == ["host"]
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    t, box = _thread(lambda: participant_confirm(hch, "guest", h_book, timeout=T))
    assert coordinator_open(gch, ["host"], g_book, complete=True, timeout=T) == {"host": "none"}
    t.join(T)
    assert box == {"value": True}
    assert h_book.unconfirmed() is None and g_book.unacked() == []
    # a coordinator training a new run confirms nothing
    h_book.write_record({**recorded, "acked": False})
    t, box = _thread(lambda: participant_confirm(hch, "guest", h_book, timeout=T))
    assert coordinator_open(gch, ["host"], g_book, complete=False, timeout=T) == {"host": "none"}
    t.join(T)
    assert box == {"value": False} and h_book.unconfirmed() == "guest"
    # records of earlier versions (no 'acked') count as confirmed: no network on a complete run
    h_book.write_record(recorded)
    assert h_book.unconfirmed() is None


def test_a_complete_coordinator_tells_a_participant_without_pending_outputs_to_restart(tmp_path: Path
                                                                                      ) -> None:
    g, hs = _parties(tmp_path)
    Ledger(g, COORDINATOR).write_record({"attempt": "c" * 32, "run_id": RUN, "decision": "commit",
                                         "participants": {"host": {"attempt": "d" * 32, "acked": False}}})
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    t, box = _thread(lambda: participant_open(hch, "guest", Ledger(hs["host"], PARTICIPANT), None,
                                              timeout=T))
    told = coordinator_open(gch, ["host"], Ledger(g, COORDINATOR), complete=True, timeout=T)
    assert told == {"host": "none"}
    t.join(T)
    assert isinstance(box.get("error"), CommitError) and "--restart" in str(box["error"])
    assert Ledger(g, COORDINATOR).unacked() == []


def test_recover_deletes_unprepared_and_undecided_stages_and_places_the_summary_last(tmp_path: Path) -> None:
    out = tmp_path / "p"
    out.mkdir()
    torn = _stage(out, "torn", prepare=False)  # died while writing it
    assert not (torn.path / PREPARED).exists()
    assert Ledger(out, PARTICIPANT).recover() is None and not torn.path.exists()
    undecided = _stage(out, "x")  # a coordinator's prepared stage without a decision: presumed abort
    assert Ledger(out, COORDINATOR).recover() is None and not undecided.path.exists()
    stage = _stage(out, "y")
    assert [p.name for p in stage.entries()][-1] == "summary.json"
    with pytest.raises(ValueError, match="role"):
        Ledger(out, "hub")


def test_with_several_hosts_one_that_cannot_write_makes_none_commit(tmp_path: Path) -> None:
    """Multi-host (issue #11): every host that takes part votes; one vote against and nobody, the guest
    and the hosts that could write included, puts anything in place."""
    g, hs = _parties(tmp_path, ("h1", "h2"))
    net = MemoryNetwork()
    gch = net.channel("guest", list(hs))
    hch = {h: net.channel(h, ["guest"]) for h in hs}
    fail = {"h1": None, "h2": "OSError: [Errno 30] Read-only file system"}
    threads = {h: _thread(lambda h=h: participant_commit(hch[h], "guest", Ledger(hs[h], PARTICIPANT),
                                                         _stage(hs[h], h, prepare=fail[h] is None), RUN,
                                                         failure=fail[h], timeout=T))
               for h in hs}
    with pytest.raises(CommitError, match=r"peer 'h2' .*Read-only file system"):
        coordinator_commit(gch, list(hs), Ledger(g, COORDINATOR), _stage(g, "g"), RUN, failure=None,
                           timeout=T)
    for h, (t, box) in threads.items():
        t.join(T)
        assert isinstance(box.get("error"), CommitError), (h, box)
        assert "Read-only file system" in str(box["error"])
    assert _placed(g) is None and _placed(hs["h1"]) is None and _placed(hs["h2"]) is None
    assert not any(list(d.glob(".stage.tmp-*")) for d in (g, *hs.values()))
