"""Checkpoints of a party's protocol state, and how two parties agree on the one to resume from.

A :class:`Checkpointer` owns one directory. Each checkpoint is an artifact (:mod:`fedrec.artifacts`:
arrays + JSON, format ``fedrec.checkpoint``, a content digest, written atomically: complete or absent)
in a sub-directory named by its cursor, ``e000002-b000000040`` (40 batches of epoch 2 done) or
``e000005-b000000000-final`` (training over, best parameters restored). The newest ``keep`` (at least
2) are kept.

Agreement (the party layer's ``Checkpoint``/``Resume`` messages, :mod:`fedrec.protocols.messages`):
the driver decides when to checkpoint (every epoch end, and every ``every_batches`` batches if set)
and asks the responder first; the responder writes its state and answers its digest; then the driver
writes its own, recording the responder's digest. A crash between the two leaves the responder one
checkpoint ahead, never behind, so with ``keep >= 2`` the newest checkpoint of the driver is always
held by the responder too. On a restart the driver offers its checkpoints (cursor, its digest, the
responder's digest) newest first; the responder picks the newest it holds under the same run id with
the same digest, and both load that one. Nothing else is resumed: fresh CKKS keys, fresh masks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.artifacts import (
    Artifact,
    ArtifactError,
    atomic_file,
    read_artifact,
    read_json,
    write_artifact,
    write_json_atomic,
)

__all__ = ["CHECKPOINT_FORMAT", "CheckpointInfo", "Checkpointer", "PrivacyJournal"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fedrec.checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^e(\d{6})-b(\d{9})(-final)?$")


@dataclass(frozen=True, order=True)
class CheckpointInfo:
    """One complete checkpoint on disk (ordered oldest to newest)."""

    epoch: int
    batch: int
    final: bool
    digest: str
    run_id: str
    role: str
    path: Path

    @property
    def cursor(self) -> tuple[int, int, bool]:
        return (self.epoch, self.batch, self.final)


class Checkpointer:
    """``Checkpointer(directory, every_batches=0, keep=2)``: where and how often a party checkpoints.

    ``every_batches = 0``: at every epoch end only; ``N > 0``: also after every ``N`` batches."""

    def __init__(self, directory: str | Path, *, every_batches: int = 0, keep: int = 2) -> None:
        if every_batches < 0:
            raise ValueError(f"Checkpointer: every_batches must be >= 0, got {every_batches}")
        if keep < 2:
            raise ValueError(f"Checkpointer: keep must be >= 2 (a peer may be one checkpoint ahead), "
                             f"got {keep}")
        self.directory = Path(directory)
        self.every_batches = every_batches
        self.keep = keep

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, every_batches={self.every_batches}, keep={self.keep})"

    # ------------------------------------------------------------------ the run
    @property
    def run_id(self) -> str:
        """This directory's run id, made on first use and kept in ``run.json`` (a resumed run keeps it)."""
        path = self.directory / "run.json"
        if path.is_file():
            doc = read_json(path, "checkpoint run file")
            rid = doc.get("run_id")
            if not isinstance(rid, str) or not re.fullmatch(r"[0-9a-f]{32}", rid):
                raise ArtifactError(f"{path}: field 'run_id' must be 32 hex digits, got {rid!r}")
            return rid
        rid = uuid.uuid4().hex
        write_json_atomic(path, {"run_id": rid})
        return rid

    def due(self, batches_done: int) -> bool:
        """Whether to checkpoint after ``batches_done`` batches of an epoch (mid-epoch schedule)."""
        return self.every_batches > 0 and batches_done > 0 and batches_done % self.every_batches == 0

    # ------------------------------------------------------------------ listing
    def list(self, run_id: str | None = None, role: str | None = None) -> list[CheckpointInfo]:
        """Complete checkpoints, newest first (optionally only of ``run_id`` / ``role``). A directory that
        does not read as a checkpoint is skipped with a warning."""
        if not self.directory.is_dir():
            return []
        out = []
        for sub in self.directory.iterdir():
            m = _NAME.match(sub.name)
            if not m or not sub.is_dir():
                continue
            try:
                meta = read_json(sub / "meta.json", "checkpoint metadata")
            except ArtifactError as exc:
                log.warning("checkpoint %s is unreadable, ignored: %s", sub, exc)
                continue
            digest, rid, who = meta.get("content_sha256"), meta.get("run_id"), meta.get("role")
            if not (isinstance(digest, str) and isinstance(rid, str) and isinstance(who, str)):
                log.warning("checkpoint %s lacks content_sha256/run_id/role, ignored", sub)
                continue
            info = CheckpointInfo(int(m.group(1)), int(m.group(2)), bool(m.group(3)), digest, rid, who, sub)
            if (run_id is None or rid == run_id) and (role is None or who == role):
                out.append(info)
        return sorted(out, reverse=True)

    def find(self, epoch: int, batch: int, final: bool, digest: str, run_id: str) -> CheckpointInfo | None:
        for info in self.list(run_id):
            if info.cursor == (epoch, batch, final) and info.digest == digest:
                return info
        return None

    # ------------------------------------------------------------------ write / read
    def save(self, epoch: int, batch: int, final: bool, *, run_id: str, role: str,
             arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> CheckpointInfo:
        """Write one checkpoint atomically, prune the oldest beyond ``keep``; returns it."""
        name = f"e{epoch:06d}-b{batch:09d}" + ("-final" if final else "")
        path = self.directory / name
        doc = {"run_id": run_id, "role": role, "epoch": epoch, "batch": batch, "final": final, **meta}
        digest = write_artifact(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, arrays, doc)
        for old in self.list()[self.keep:]:
            shutil.rmtree(old.path, ignore_errors=True)
        log.info("%s: checkpoint %s written (sha256 %s)", role, name, digest[:12])
        return CheckpointInfo(epoch, batch, final, digest, run_id, role, path)

    def load(self, info: CheckpointInfo) -> Artifact:
        """Read and verify ``info`` (the digest on disk must still be the one listed)."""
        art = read_artifact(info.path, CHECKPOINT_FORMAT, [CHECKPOINT_VERSION], required=("run_id", "role"))
        if art.content_sha256 != info.digest:
            raise ArtifactError(f"{info.path}: changed since it was listed")
        return art

    def journal(self, run_id: str, role: str, what: str) -> PrivacyJournal:
        """The write-ahead journal of this party's DP releases of ``what`` in run ``run_id``."""
        return PrivacyJournal(self.directory / f"privacy-{role}-{what}-{run_id}.jsonl")

    def clear(self) -> None:
        """Delete every checkpoint and the run file (a ``--restart``)."""
        if self.directory.is_dir():
            shutil.rmtree(self.directory)


class PrivacyJournal:
    """Every DP release of one party, on disk before its noise is drawn (one fsynced JSON line each).

    A checkpoint holds the accountant's events up to its cursor; releases made after it and then lost
    to a crash were still seen by the peer. :meth:`roll_back` moves the journal's events beyond the
    ``kept`` ones the resumed accountant has into ``<journal>.rolled_back.json`` (kept for good), so
    ``ε`` = the resumed accountant's events + every rolled-back release: spend is never forgotten, and
    never counted twice (a resumed run's own releases are journaled afresh after the kept ones)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rolled_path = path.with_suffix(".rolled_back.json")

    def append(self, event: tuple[str, float, float, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(list(event)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> list[list[Any]]:
        if not self.path.is_file():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a crash mid-write: the release never happened
                log.warning("%s: line %d is incomplete (a crash while journaling); ignored", self.path, n)
        return out

    def rolled_back(self) -> list[list[Any]]:
        if not self.rolled_path.is_file():
            return []
        doc = read_json(self.rolled_path, "rolled-back DP releases")
        events = doc.get("events")
        if not isinstance(events, list):
            raise ArtifactError(f"{self.rolled_path}: field 'events' must be a list")
        return events

    def roll_back(self, kept: int) -> list[list[Any]]:
        """Releases beyond the first ``kept`` become rolled back; returns all rolled back so far."""
        events = self.events()
        lost = events[kept:]
        rolled = self.rolled_back() + lost
        if lost:
            write_json_atomic(self.rolled_path, {"events": rolled})
            log.warning("%s: %d DP release(s) made after the resumed checkpoint were seen by the peer; "
                        "they stay in the privacy account", self.path.name, len(lost))
        if len(events) != kept or lost:  # durable before the resumed run releases anything
            with atomic_file(self.path) as tmp:
                tmp.write_text("".join(json.dumps(e) + "\n" for e in events[:kept]), encoding="utf-8")
        return rolled
