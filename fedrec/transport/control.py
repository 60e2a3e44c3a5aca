"""The transport's own messages: liveness and error reporting. Protocols never send these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedrec.transport.wire import Message, WireReader, WireWriter, register_message

ERROR_CODES = ("malformed", "too_large", "replay", "overloaded", "unexpected")
_DETAIL_MAX = 2000


@register_message
@dataclass(frozen=True)
class Heartbeat(Message):
    """Sent every ``heartbeat_interval`` by a channel's I/O thread; any message also counts as liveness."""

    TYPE: ClassVar[str] = "transport.Heartbeat"

    def to_wire(self, w: WireWriter) -> None:
        pass

    @classmethod
    def from_wire(cls, r: WireReader) -> Heartbeat:
        return cls()


@register_message
@dataclass(frozen=True)
class Goodbye(Message):
    """Sent by ``Channel.close()`` so peers report a closed channel at once instead of after a timeout."""

    TYPE: ClassVar[str] = "transport.Goodbye"
    reason: str = "closed"

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("reason", self.reason[:_DETAIL_MAX])

    @classmethod
    def from_wire(cls, r: WireReader) -> Goodbye:
        return cls(reason=r.get_str("reason", max_len=_DETAIL_MAX))


@register_message
@dataclass(frozen=True)
class ErrorReply(Message):
    """The receiver rejected a message: which step and sequence number, and why."""

    TYPE: ClassVar[str] = "transport.Error"
    code: str
    detail: str
    about_step: str
    about_seq: int | None = None

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"ErrorReply.code must be one of {ERROR_CODES}, got {self.code!r}")

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("code", self.code)
        w.put_str("detail", self.detail[:_DETAIL_MAX])
        w.put_str("about_step", self.about_step)
        if self.about_seq is None:
            w.put_none("about_seq")
        else:
            w.put_int("about_seq", self.about_seq)

    @classmethod
    def from_wire(cls, r: WireReader) -> ErrorReply:
        return cls(
            code=r.get_str("code", choices=ERROR_CODES),
            detail=r.get_str("detail", max_len=_DETAIL_MAX),
            about_step=r.get_str("about_step", max_len=200),
            about_seq=r.get_int("about_seq", lo=0) if r.has("about_seq") else None,
        )
