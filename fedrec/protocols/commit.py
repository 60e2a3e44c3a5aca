"""Both parties agree on success before either puts its outputs in place: a two-phase commit whose
decision is durable (issue #9, defect 6).

A federated run ends with files on every side (the vertical FM: the guest's model half, the host's
half and its partials, each side's ``aligned.csv``, ``summary.json``). They are one result: the
scorer joins them, so one side's files without the other's (or next to another run's) are a wrong
result, not half of a right one. So every party writes its final outputs into a **stage** first
(``[output] dir/.stage.tmp-<attempt>/``, the outputs under their final names), fsyncs them and says so;
one party, the **coordinator** (the vertical guest, which drives the training), decides::

    participant (each host)                          coordinator (guest)
    stage + fsync, write .prepared.json
    Prepared(attempt, run_id, ok, detail)  ──►        stages its own; hears every participant
                                                      all ok?  writes the DECISION (.commit.json, fsynced)
                                           ◄──        Verdict(attempt, commit | abort + why)
    commit: records it (.commit.json),                puts its own outputs in place (summary.json last)
    puts its outputs in place, Ack         ──►        marks the participant done in .commit.json

The decision is the coordinator's ``.commit.json``: written (and fsynced) before anything is put in
place, so after a crash anywhere the outcome is known and is carried out, never redone differently:

* Local recovery (:meth:`Ledger.recover`, before the network opens): a stage whose attempt a
  ``.commit.json`` says is committed is put in place (redo: renames are idempotent per entry). A
  stage without ``.prepared.json`` (the party died while writing it) is deleted. A coordinator's stage
  without a decision is deleted too: no decision written means abort (presumed abort; the coordinator
  never commits an attempt of an earlier process). A participant's prepared stage without a verdict
  is **in doubt** and kept.
* A participant in doubt asks at the start of its next run (``Pending(attempt)``, answered with a
  ``Verdict`` from the coordinator's ``.commit.json``): commit puts the staged outputs in place and
  the run is complete without training again; abort deletes them and the run goes on (it resumes
  from the checkpoints both hold and prepares again).
* A coordinator whose run is complete but which has not heard a participant's ``Ack`` answers that
  participant when ``fedrec train`` runs it again (it opens the channel to those participants only);
  a participant that asks a complete coordinator without a pending attempt is told the run is
  complete (``--restart`` to train again).
* A participant stopped after recording the verdict but before its ``Ack`` finishes alone from its
  record (its ``.commit.json`` says ``acked: false``); on its next (complete) run it tells the
  coordinator (:func:`participant_confirm`: ``Pending("")``, answered by the complete coordinator,
  which records the participant as confirmed), so the coordinator stops waiting for it.

So after any crash the parties hold both outputs of one run or neither; a participant can hold
outputs *staged* (in doubt) while the coordinator's are in place, until its next run puts them in
place. A party that cannot write (full disk, read-only directory) votes ``Prepared(ok=False,
detail)``: nobody puts anything in place and both exit 1, each naming the party and why.

Steps: ``job/commit/pending`` (participant → coordinator at the start), ``job/commit/resolve`` (the
answer), ``job/commit/prepare``, ``job/commit/verdict``, ``job/commit/ack``. Fault points
(:mod:`fedrec.faults`): ``job/commit/staged`` (both, after the stage is prepared),
``job/commit/decided`` (coordinator, after the decision is on disk), ``job/commit/recorded`` /
``job/commit/placed`` (participant, after recording the verdict / putting outputs in place); and every
send of the steps above.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec import faults
from fedrec.artifacts import ArtifactError, fsync_path, fsync_tree, read_json, replace_path, write_json_atomic
from fedrec.protocols.messages import Ack, Pending, Prepared, Verdict
from fedrec.protocols.party import PartyError
from fedrec.transport.channel import Channel
from fedrec.transport.errors import TransportError

log = logging.getLogger(__name__)

__all__ = ["COORDINATOR", "PARTICIPANT", "CommitError", "Ledger", "Stage", "coordinator_commit",
           "coordinator_open", "participant_commit", "participant_confirm", "participant_open", "unsettled"]

COORDINATOR, PARTICIPANT = "coordinator", "participant"
STAGE_PREFIX = ".stage.tmp-"
RECORD = ".commit.json"
PREPARED = ".prepared.json"
RECORD_FORMAT = "fedrec.commit"
#: placed after every other entry: its presence says the run is complete
LAST = "summary.json"

PENDING_STEP = "job/commit/pending"
RESOLVE_STEP = "job/commit/resolve"
PREPARE_STEP = "job/commit/prepare"
VERDICT_STEP = "job/commit/verdict"
ACK_STEP = "job/commit/ack"


class CommitError(PartyError):
    """The run's outputs were not put in place (``in_doubt``: they are staged, awaiting the
    coordinator's verdict, and the next run of this party settles them)."""

    protocol = "commit"

    def __init__(self, peer: str, step: str, detail: str, *, in_doubt: bool = False) -> None:
        super().__init__(peer, step, detail)
        self.in_doubt = in_doubt


# ---------------------------------------------------------------------------------------------- disk
@dataclass(frozen=True)
class Stage:
    """The staged outputs of one attempt: ``out/.stage.tmp-<attempt>/`` with their final names."""

    out: Path
    attempt: str

    @classmethod
    def create(cls, out: Path) -> Stage:
        out.mkdir(parents=True, exist_ok=True)
        stage = cls(out, secrets.token_hex(16))
        stage.path.mkdir(mode=0o700)
        return stage

    @property
    def path(self) -> Path:
        return self.out / (STAGE_PREFIX + self.attempt)

    def prepare(self, run_id: str) -> None:
        """On the disk (fsync; a full disk fails here, before the vote), then marked prepared: only now may
        the party vote yes."""
        fsync_tree(self.path)
        write_json_atomic(self.path / PREPARED, {"format": RECORD_FORMAT, "attempt": self.attempt,
                                                 "run_id": run_id})  # fsync + rename + fsync of the stage

    def prepared(self) -> dict[str, Any] | None:
        try:
            doc = read_json(self.path / PREPARED, "staged outputs marker")
        except ArtifactError:
            return None
        return doc if doc.get("attempt") == self.attempt else None

    def entries(self) -> list[Path]:
        """What is placed, in order (``summary.json`` last; markers are not outputs)."""
        items = [p for p in self.path.iterdir() if not p.name.startswith(".")] if self.path.is_dir() else []
        return sorted(items, key=lambda p: (p.name == LAST, p.name))

    def place(self) -> None:
        """Rename every entry onto ``out / name`` (a directory replaces the old one; ``summary.json``
        last), then delete the stage. Idempotent: after a crash half-way, what is left is placed."""
        for tmp in self.entries():
            replace_path(tmp, self.out / tmp.name, sync=False)
        fsync_path(self.out)
        shutil.rmtree(self.path, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Ledger:
    """One party's commit state in its ``[output] dir``: its stages and its ``.commit.json`` (the last
    decision it made (coordinator) or was told (participant), written before anything is placed)."""

    def __init__(self, out: Path, role: str) -> None:
        if role not in (COORDINATOR, PARTICIPANT):
            raise ValueError(f"Ledger: role must be {COORDINATOR!r} or {PARTICIPANT!r}, got {role!r}")
        self.out, self.role = Path(out), role

    @property
    def record_path(self) -> Path:
        return self.out / RECORD

    def record(self) -> dict[str, Any] | None:
        if not self.record_path.is_file():
            return None
        doc = read_json(self.record_path, "commit record")
        if doc.get("format") != RECORD_FORMAT or doc.get("decision") != "commit" \
                or not isinstance(doc.get("attempt"), str):
            raise ArtifactError(f"{self.record_path}: not a commit record of {RECORD_FORMAT!r} (fields "
                                "'format', 'decision', 'attempt'); delete it only with `fedrec train "
                                "--restart` on every party")
        return doc

    def write_record(self, doc: Mapping[str, Any]) -> None:
        write_json_atomic(self.record_path, {"format": RECORD_FORMAT, **doc})  # fsync + rename + fsync dir

    def stages(self) -> list[Stage]:
        if not self.out.is_dir():
            return []
        return [Stage(self.out, p.name[len(STAGE_PREFIX):]) for p in sorted(self.out.glob(STAGE_PREFIX + "*"))
                if p.is_dir()]

    def committed(self, attempt: str) -> bool:
        rec = self.record()
        return rec is not None and rec["attempt"] == attempt

    def recover(self) -> Stage | None:
        """Carry out what is decided, drop what cannot have been committed (module docstring); returns
        a participant's stage in doubt (prepared, no verdict), else ``None``."""
        in_doubt: list[Stage] = []
        for stage in self.stages():
            if self.committed(stage.attempt):
                log.warning("%s: putting in place the outputs of attempt %s (committed before an "
                            "interruption)",
                            self.out, stage.attempt)
                stage.place()
            elif self.role == PARTICIPANT and stage.prepared() is not None:
                in_doubt.append(stage)
            else:
                log.info("%s: deleting staged outputs of attempt %s (never committed)", self.out,
                         stage.attempt)
                stage.discard()
        if len(in_doubt) > 1:  # one run prepares once: only the newest can be pending (the others aborted)
            in_doubt.sort(key=lambda s: s.path.stat().st_mtime)
            for stage in in_doubt[:-1]:
                stage.discard()
        return in_doubt[-1] if in_doubt else None

    def unacked(self) -> list[str]:
        """Participants the coordinator's last commit has not heard confirm (it answers them on its
        next run)."""
        rec = self.record()
        if rec is None or self.role != COORDINATOR:
            return []
        return sorted(p for p, st in rec.get("participants", {}).items() if not st.get("acked"))

    def unconfirmed(self) -> str | None:
        """A participant's: the coordinator it has not told that its outputs of the recorded commit are in
        place (killed between recording the verdict and its ``Ack``), else ``None``. Records of earlier
        fedrec versions (no ``acked`` field) count as confirmed."""
        rec = self.record()
        if rec is None or self.role != PARTICIPANT or rec.get("acked", True):
            return None
        return str(rec.get("coordinator") or "") or None

    def confirm(self) -> None:
        """A participant's record: the coordinator heard that the outputs are in place."""
        rec = self.record()
        if rec is not None and rec.get("acked") is False:
            self.write_record({**{k: v for k, v in rec.items() if k != "format"}, "acked": True})

    def mark_acked(self, names: Iterable[str]) -> None:
        rec = self.record()
        if rec is None:
            return
        parts = rec.get("participants", {})
        for n in names:
            if n in parts:
                parts[n]["acked"] = True
        self.write_record({k: v for k, v in rec.items() if k != "format"})


# ---------------------------------------------------------------------------------------------- inspect
def _staged_summary(stage: Stage) -> dict[str, Any]:
    try:
        return read_json(stage.path / LAST, "staged run summary")
    except ArtifactError:
        return {}


def unsettled(out: Path, role: str | None = None) -> list[dict[str, Any]]:
    """What the commit left unfinished in ``out``, read only (``fedrec info``; nothing is changed): one
    entry per staged attempt (``attempt``, ``run_id``, ``state``, ``next``: what the next ``fedrec
    train`` of this party with the same config does with it, as :meth:`Ledger.recover` and
    :func:`participant_open` would) and, for a coordinator, one per participant that has not confirmed.
    ``role``: this party's commit role; ``None`` reads it from ``.commit.json`` (``participants``: the
    coordinator's, ``coordinator``: a participant's) when there is one."""
    book = Ledger(out, role or PARTICIPANT)
    try:
        rec = book.record()
    except ArtifactError as err:
        return [{"state": "unreadable commit record", "detail": str(err),
                 "next": "`fedrec train` stops on it: `fedrec train --restart` on every party settles it"}]
    if role is None and rec is not None:
        role = COORDINATOR if "participants" in rec else PARTICIPANT if "coordinator" in rec else None
    again = "re-running `fedrec train` with the same config"
    found: list[dict[str, Any]] = []
    stages = book.stages()
    doubt = [s for s in stages if s.prepared() is not None and not (rec and rec["attempt"] == s.attempt)]
    newest = max(doubt, key=lambda s: s.path.stat().st_mtime) if doubt else None
    for stage in stages:
        prep = stage.prepared()
        run_id = (prep or {}).get("run_id") or _staged_summary(stage).get("run_id") or ""
        entry: dict[str, Any] = {"attempt": stage.attempt, "path": str(stage.path), "run_id": str(run_id)}
        if rec is not None and rec["attempt"] == stage.attempt:
            entry["state"] = "committed, not all put in place (interrupted while placing them)"
            entry["next"] = f"{again} puts them in place before anything else; the run is then complete"
        elif prep is None:
            entry["state"] = "incomplete stage (the party stopped while writing it), never voted for"
            entry["next"] = f"{again} deletes it and resumes the run"
        elif role == COORDINATOR:
            entry["state"] = "staged, no commit decision written (presumed abort)"
            entry["next"] = f"{again} deletes it and resumes the run (both parties, from their checkpoints)"
        elif stage is not newest:
            entry["state"] = "in doubt, superseded by a newer attempt"
            entry["next"] = f"{again} deletes it"
        else:
            peer = rec.get("coordinator") if rec else _staged_summary(stage).get("peer")
            who = "the coordinator" + (f" {peer!r}" if peer else "")
            entry["state"] = f"in doubt: staged and voted for, awaiting the verdict of {who}" + (
                "" if role == PARTICIPANT else " (if this party is a participant; a coordinator deletes it)")
            entry["next"] = (f"{again} asks {who} first: on its commit the outputs are put in place and "
                             "the run is complete without training again; otherwise they are deleted and "
                             "the run resumes")
        found.append(entry)
    if rec is not None and role == COORDINATOR:
        for p in Ledger(out, COORDINATOR).unacked():
            found.append({"participant": p, "attempt": rec["participants"][p].get("attempt"),
                          "run_id": rec.get("run_id"),
                          "state": f"committed here; {p!r} has not confirmed putting its outputs in place",
                          "next": f"{again} on this party answers {p!r} when it runs `fedrec train` too "
                                  "(its staged outputs are then put in place, or, already in place, its "
                                  "confirmation is recorded on both sides)"})
    coordinator = book.unconfirmed() if role == PARTICIPANT else None
    if rec is not None and coordinator is not None:
        found.append({"coordinator": coordinator, "attempt": rec["attempt"], "run_id": rec.get("run_id"),
                      "state": f"outputs in place here; the coordinator {coordinator!r} has not heard so",
                      "next": f"{again} tells it when it runs `fedrec train` too (both then record it)"})
    return found


# ---------------------------------------------------------------------------------------------- start
def participant_open(channel: Channel, coordinator: str, ledger: Ledger, in_doubt: Stage | None, *,
                     timeout: float) -> bool:
    """First exchange of a participant's run: name the attempt in doubt (if any) and carry out the
    coordinator's verdict on it. Returns ``True`` when that verdict completed this party's run (its
    outputs, ``summary.json`` included, are now in place); raises :class:`CommitError` when the
    coordinator's run is complete and there is nothing to train with it."""
    prep = in_doubt.prepared() if in_doubt is not None else None
    run_id = str(prep.get("run_id", "")) if prep else ""
    channel.send(coordinator, Pending(in_doubt.attempt if in_doubt else "", run_id), step=PENDING_STEP)
    verdict = channel.recv(coordinator, Verdict, step=RESOLVE_STEP, timeout=timeout)
    if in_doubt is not None:
        if verdict.commit and verdict.attempt == in_doubt.attempt:
            _record_and_place(ledger, in_doubt, run_id, coordinator)
            _ack(channel, coordinator, ledger)
            log.warning("%s: the outputs staged by run %s were committed by %r: put in place", ledger.out,
                        run_id, coordinator)
            return True
        log.warning("%s: %r did not commit the staged outputs of attempt %s (%s): deleted; this run "
                    "produces them again", ledger.out, coordinator, in_doubt.attempt, verdict.detail)
        in_doubt.discard()
    if verdict.commit:
        raise CommitError(coordinator, RESOLVE_STEP, "committed an attempt this party did not name")
    if verdict.complete:
        raise CommitError(coordinator, RESOLVE_STEP, f"its run is complete and it will not train again "
                                                     f"({verdict.detail}); to train again run `fedrec train "
                                                     "--restart` on every party")
    return False


def coordinator_open(channel: Channel, participants: Iterable[str], ledger: Ledger, *, complete: bool,
                     timeout: float) -> dict[str, str]:
    """First exchange of the coordinator's run: answer every participant's ``Pending`` from the decision
    on disk (``complete``: this run is complete and only answers). Returns what each participant was
    told (``"commit"``, ``"abort"``, ``"none"``)."""
    rec = ledger.record()
    parts: dict[str, Any] = rec.get("participants", {}) if rec else {}
    told: dict[str, str] = {}
    acked: list[str] = []
    for p in participants:
        pending = channel.recv(p, Pending, step=PENDING_STEP, timeout=timeout)
        mine = parts.get(p, {}).get("attempt")
        commit = bool(pending.attempt) and pending.attempt == mine
        if commit:
            detail = ""
        elif pending.attempt:
            detail = f"no commit decision for attempt {pending.attempt} here (presumed abort)"
        else:
            detail = "the run in " + str(ledger.out) + " is complete" if complete else ""
        channel.send(p, Verdict(pending.attempt, commit, detail, complete), step=RESOLVE_STEP)
        told[p] = "commit" if commit else ("abort" if pending.attempt else "none")
        if commit:
            try:
                channel.recv(p, Ack, step=ACK_STEP, timeout=timeout)
                acked.append(p)
            except TransportError as err:
                log.warning("%s: %r did not confirm it put its outputs in place: %s", ledger.out, p, err)
        elif complete and p in parts:
            acked.append(p)  # nothing of ours is pending there (it committed earlier or restarted)
    if acked:
        ledger.mark_acked(acked)
    return told


# ---------------------------------------------------------------------------------------------- end
def _record_and_place(ledger: Ledger, stage: Stage, run_id: str, coordinator: str) -> None:
    ledger.write_record({"attempt": stage.attempt, "run_id": run_id, "decision": "commit",
                         "coordinator": coordinator, "acked": False})
    faults.reached("job/commit/recorded")
    stage.place()
    faults.reached("job/commit/placed")


def _ack(channel: Channel, coordinator: str, ledger: Ledger) -> None:
    try:
        channel.send(coordinator, Ack("committed"), step=ACK_STEP)
    except TransportError as err:  # it answers the next run: the outputs are in place either way
        log.warning("could not confirm the commit to %r: %s", coordinator, err)
        return
    ledger.confirm()


def participant_confirm(channel: Channel, coordinator: str, ledger: Ledger, *, timeout: float) -> bool:
    """A complete participant whose record is not confirmed (:meth:`Ledger.unconfirmed`) tells the
    coordinator now: ``Pending("")`` answered by a complete coordinator, which marks this participant
    confirmed (:func:`coordinator_open`); then this record says so too. Returns ``False`` when the
    coordinator is not complete (it is training a new run: nothing is confirmed)."""
    rec = ledger.record()
    channel.send(coordinator, Pending("", str(rec.get("run_id") or "") if rec else ""), step=PENDING_STEP)
    verdict = channel.recv(coordinator, Verdict, step=RESOLVE_STEP, timeout=timeout)
    if not verdict.complete:
        return False
    ledger.confirm()
    return True


def participant_commit(channel: Channel, coordinator: str, ledger: Ledger, stage: Stage, run_id: str, *,
                       failure: str | None, timeout: float) -> None:
    """Vote (``failure``: why this party's outputs could not be staged; ``None``: ``stage`` is
    prepared), then carry out the coordinator's verdict. Raises :class:`CommitError` unless committed."""
    channel.send(coordinator, Prepared(stage.attempt, run_id, failure is None, failure or ""),
                 step=PREPARE_STEP)
    if failure is not None:
        stage.discard()
        raise CommitError(coordinator, PREPARE_STEP,
                          f"this party could not write its outputs ({failure}); told the coordinator: no "
                          "party puts its outputs in place")
    try:
        verdict = channel.recv(coordinator, Verdict, step=VERDICT_STEP, timeout=timeout)
    except TransportError as err:
        raise CommitError(coordinator, VERDICT_STEP,
                          f"lost before its verdict ({err}); this party's outputs stay staged in "
                          f"{stage.path} "
                          "(in doubt): the next `fedrec train` of this party asks for the verdict and puts "
                          "them in place or deletes them", in_doubt=True) from err
    if not (verdict.commit and verdict.attempt == stage.attempt):
        stage.discard()
        raise CommitError(coordinator, VERDICT_STEP, f"the run's outputs are not put in place "
                                                     f"({verdict.detail or 'aborted'}); nor are this party's")
    _record_and_place(ledger, stage, run_id, coordinator)
    _ack(channel, coordinator, ledger)


def coordinator_commit(channel: Channel, participants: Iterable[str], ledger: Ledger, stage: Stage,
                       run_id: str, *, failure: str | None, timeout: float) -> list[str]:
    """Hear every participant's vote, decide, make the decision durable, put this party's outputs in
    place and tell the participants. Returns the participants that have not confirmed (answered on the
    next run); raises :class:`CommitError` naming the first party that could not write."""
    names = list(participants)
    votes: dict[str, str] = {}
    failures: dict[str, str] = {}
    for p in names:
        try:
            v = channel.recv(p, Prepared, step=PREPARE_STEP, timeout=timeout)
        except TransportError as err:
            failures[p] = f"lost before it said its outputs were written ({err})"
            continue
        if not v.ok:
            failures[p] = f"could not write its outputs ({v.detail})"
        elif v.run_id != run_id:
            failures[p] = f"staged outputs of run {v.run_id!r}, not of this run {run_id!r}"
        else:
            votes[p] = v.attempt
    if failure is not None or failures:
        who, why = (channel.name, failure) if failure is not None else next(iter(failures.items()))
        reason = f"{who}: {why}"
        for p in names:
            try:
                channel.send(p, Verdict(votes.get(p, ""), False, reason), step=VERDICT_STEP)
            except TransportError:
                pass
        stage.discard()
        raise CommitError(channel.name if failure is not None else who, PREPARE_STEP,
                          f"{reason}; no party puts its outputs of this run in place")
    ledger.write_record({"attempt": stage.attempt, "run_id": run_id, "decision": "commit",
                         "participants": {p: {"attempt": a, "acked": False} for p, a in votes.items()}})
    faults.reached("job/commit/decided")
    stage.place()
    for p, a in votes.items():
        try:
            channel.send(p, Verdict(a, True), step=VERDICT_STEP)
        except TransportError as err:
            log.warning("commit: verdict to %r not delivered (%s); it asks on its next run", p, err)
    acked = []
    for p in votes:
        try:
            channel.recv(p, Ack, step=ACK_STEP, timeout=timeout)
            acked.append(p)
        except TransportError as err:
            log.warning("commit: %r did not confirm it put its outputs in place (%s); `fedrec train` of this "
                        "party answers it on its next run", p, err)
    ledger.mark_acked(acked)
    return sorted(set(votes) - set(acked))
