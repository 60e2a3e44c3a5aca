"""The messages every protocol shares (the party layer, :mod:`fedrec.protocols.party`)::

    driver                                                   responder
    Hello(protocol, version, run_id, agreed config)   ──►   checks protocol, version, config field by field
                                                      ◄──   Ack | Rejected(field, detail)
    Resume(run_id, [(cursor, driver digest, responder digest)...])   (only with checkpoints, see
                                                      ──►    fedrec.protocols.checkpoint)
                                                      ◄──   ResumeAt(found, cursor, digest)
    Checkpoint(epoch, batch, final)                   ──►   the responder writes its state at the cursor
                                                      ◄──   Checkpointed(digest)
    ... the protocol's own messages ...
    Done(reason)                                      ──►   ◄── Ack; the responder's serve loop returns

Any request a responder cannot honour is answered with :class:`Rejected` naming the field; the driver
raises :class:`~fedrec.protocols.party.PeerRejected`. A protocol's message set is the tuple
:data:`MESSAGES` plus its own (``fedrec.protocols.hetero_fm.messages.MESSAGES``), registered on the wire
by :func:`fedrec.transport.wire.register_message` where the class is defined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from fedrec.transport.wire import Message, WireReader, WireWriter, register_message

MAX_CHECKPOINTS = 64
#: a cursor counts epochs and batches; nothing a real job runs comes near these
MAX_EPOCH = 1 << 20
MAX_BATCH = 1 << 31


def get_json(r: WireReader, name: str, max_len: int = 65536) -> dict[str, Any]:
    """A JSON object field (config tables); anything else is a wire error naming the field."""
    raw = r.get_str(name, max_len=max_len)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"field {name!r}: not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"field {name!r}: expected a JSON object")
    return obj


@register_message
@dataclass(frozen=True)
class Hello(Message):
    """The driver opens a job: which protocol (and version) it speaks, the run, and the config fields
    both parties must hold identical values for."""

    TYPE: ClassVar[str] = "party.Hello"
    protocol: str
    version: int
    run_id: str
    config: dict[str, Any]

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("protocol", self.protocol)
        w.put_int("version", self.version)
        w.put_str("run_id", self.run_id)
        w.put_str("config", json.dumps(self.config, sort_keys=True))

    @classmethod
    def from_wire(cls, r: WireReader) -> Hello:
        return cls(r.get_str("protocol", max_len=64), r.get_int("version", lo=1, hi=1 << 16),
                   r.get_str("run_id", max_len=64), get_json(r, "config"))


@register_message
@dataclass(frozen=True)
class Ack(Message):
    TYPE: ClassVar[str] = "party.Ack"
    what: str

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("what", self.what[:200])

    @classmethod
    def from_wire(cls, r: WireReader) -> Ack:
        return cls(r.get_str("what", max_len=200))


@register_message
@dataclass(frozen=True)
class Done(Message):
    """The driver ends the job; the responder's serve loop returns after acknowledging it."""

    TYPE: ClassVar[str] = "party.Done"
    reason: str = "done"

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("reason", self.reason[:200])

    @classmethod
    def from_wire(cls, r: WireReader) -> Done:
        return cls(r.get_str("reason", max_len=200))


@register_message
@dataclass(frozen=True)
class Rejected(Message):
    """The responder refused a request: ``field`` names what was wrong (a config field, a shape, a step)."""

    TYPE: ClassVar[str] = "party.Rejected"
    field: str
    detail: str

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("field", self.field[:256])
        w.put_str("detail", self.detail[:2000])

    @classmethod
    def from_wire(cls, r: WireReader) -> Rejected:
        return cls(r.get_str("field", max_len=256), r.get_str("detail", max_len=2000))


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint the driver holds: its cursor and the digests of both parties' states there."""

    epoch: int
    batch: int
    final: bool
    digest: str
    peer_digest: str


@register_message
@dataclass(frozen=True)
class Resume(Message):
    """The driver offers the checkpoints it holds (newest first); the responder picks the newest it
    also holds with the same state digest."""

    TYPE: ClassVar[str] = "party.Resume"
    run_id: str
    checkpoints: list[CheckpointRef]

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("run_id", self.run_id)
        w.put_str("checkpoints", json.dumps([[c.epoch, c.batch, c.final, c.digest, c.peer_digest]
                                              for c in self.checkpoints]))

    @classmethod
    def from_wire(cls, r: WireReader) -> Resume:
        run_id = r.get_str("run_id", max_len=64)
        raw = r.get_str("checkpoints", max_len=MAX_CHECKPOINTS * 200)
        try:
            rows = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field 'checkpoints': not JSON: {exc}") from exc
        if not isinstance(rows, list) or len(rows) > MAX_CHECKPOINTS:
            raise ValueError(f"field 'checkpoints': expected a list of at most {MAX_CHECKPOINTS}")
        refs = []
        for row in rows:
            ok = (isinstance(row, list) and len(row) == 5 and all(type(x) is int for x in row[:2])
                  and type(row[2]) is bool and all(isinstance(x, str) and len(x) <= 64 for x in row[3:]))
            if not ok or not (0 <= row[0] <= MAX_EPOCH and 0 <= row[1] <= MAX_BATCH):
                raise ValueError(f"field 'checkpoints': malformed entry {str(row)[:80]}")
            refs.append(CheckpointRef(*row))
        return cls(run_id, refs)


@register_message
@dataclass(frozen=True)
class ResumeAt(Message):
    """The responder's choice: the cursor both resume from (``found=False``: start afresh)."""

    TYPE: ClassVar[str] = "party.ResumeAt"
    found: bool
    epoch: int = 0
    batch: int = 0
    digest: str = ""

    def to_wire(self, w: WireWriter) -> None:
        w.put_bool("found", self.found)
        w.put_int("epoch", self.epoch)
        w.put_int("batch", self.batch)
        w.put_str("digest", self.digest)

    @classmethod
    def from_wire(cls, r: WireReader) -> ResumeAt:
        return cls(r.get_bool("found"), r.get_int("epoch", lo=0, hi=MAX_EPOCH),
                   r.get_int("batch", lo=0, hi=MAX_BATCH), r.get_str("digest", max_len=64))


@register_message
@dataclass(frozen=True)
class Checkpoint(Message):
    """Write your state at this cursor (``batch`` batches of ``epoch`` done; ``final``: training over)."""

    TYPE: ClassVar[str] = "party.Checkpoint"
    epoch: int
    batch: int
    final: bool

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("epoch", self.epoch)
        w.put_int("batch", self.batch)
        w.put_bool("final", self.final)

    @classmethod
    def from_wire(cls, r: WireReader) -> Checkpoint:
        return cls(r.get_int("epoch", lo=0, hi=MAX_EPOCH), r.get_int("batch", lo=0, hi=MAX_BATCH),
                   r.get_bool("final"))


@register_message
@dataclass(frozen=True)
class Checkpointed(Message):
    TYPE: ClassVar[str] = "party.Checkpointed"
    digest: str

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("digest", self.digest)

    @classmethod
    def from_wire(cls, r: WireReader) -> Checkpointed:
        return cls(r.get_str("digest", max_len=64))


# ------------------------------------------------------------------ the outputs' two-phase commit
# (fedrec.protocols.commit): a participant's staged outputs, the coordinator's verdict, and the
# participant's question about outputs it holds staged from an earlier run (in doubt)
ATTEMPT_LEN = 32  # hex digits of an attempt id


def _attempt(r: WireReader, name: str = "attempt") -> str:
    a = r.get_str(name, max_len=ATTEMPT_LEN)
    if a and (len(a) != ATTEMPT_LEN or any(c not in "0123456789abcdef" for c in a)):
        raise ValueError(f"field {name!r}: expected {ATTEMPT_LEN} hex digits or empty")
    return a


@register_message
@dataclass(frozen=True)
class Prepared(Message):
    """A participant's vote: its outputs of ``attempt`` (training run ``run_id``) are staged and on the
    disk (``ok``), or could not be written (``detail`` says why)."""

    TYPE: ClassVar[str] = "party.Prepared"
    attempt: str
    run_id: str
    ok: bool
    detail: str = ""

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("attempt", self.attempt)
        w.put_str("run_id", self.run_id[:64])
        w.put_bool("ok", self.ok)
        w.put_str("detail", self.detail[:2000])

    @classmethod
    def from_wire(cls, r: WireReader) -> Prepared:
        return cls(_attempt(r), r.get_str("run_id", max_len=64), r.get_bool("ok"),
                   r.get_str("detail", max_len=2000))


@register_message
@dataclass(frozen=True)
class Pending(Message):
    """A participant opens a run by naming the attempt whose staged outputs it holds without a verdict
    (``""``: none)."""

    TYPE: ClassVar[str] = "party.Pending"
    attempt: str
    run_id: str = ""

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("attempt", self.attempt)
        w.put_str("run_id", self.run_id[:64])

    @classmethod
    def from_wire(cls, r: WireReader) -> Pending:
        return cls(_attempt(r), r.get_str("run_id", max_len=64))


@register_message
@dataclass(frozen=True)
class Verdict(Message):
    """The coordinator's decision on ``attempt``: ``commit`` (put the staged outputs in place) or not
    (discard them; ``detail`` says why). ``complete``: the coordinator's run is complete and it will
    not train again (it came only to answer)."""

    TYPE: ClassVar[str] = "party.Verdict"
    attempt: str
    commit: bool
    detail: str = ""
    complete: bool = False

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("attempt", self.attempt)
        w.put_bool("commit", self.commit)
        w.put_str("detail", self.detail[:2000])
        w.put_bool("complete", self.complete)

    @classmethod
    def from_wire(cls, r: WireReader) -> Verdict:
        return cls(_attempt(r), r.get_bool("commit"), r.get_str("detail", max_len=2000),
                   r.get_bool("complete"))


#: the party layer's own messages (every protocol speaks them)
MESSAGES: tuple[type[Message], ...] = (Hello, Ack, Done, Rejected, Resume, ResumeAt, Checkpoint, Checkpointed,
                                       Prepared, Pending, Verdict)
