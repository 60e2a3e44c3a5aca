"""The party layer: what every protocol does between the transport and its math.

* :class:`Peer` — the driver's handle on one peer: :meth:`Peer.ask` sends a request and returns the
  reply matched by sequence number (:meth:`fedrec.transport.Channel.request`: a retransmit after a
  silent deadline is applied once by the peer's reply cache, a stale answer of an earlier step can
  never be taken for this one), typed by the expected message class; a :class:`Rejected` answer, an
  answer this side could not parse (the transport's ``WireError``) or of another type raises the
  protocol's :class:`PartyError` naming the peer, the step and the field: a malformed answer is the
  peer's failure, for every protocol alike.
* :func:`serve` — the responder's loop, driven by a ``{message type: handler}`` table. A handler raises
  :class:`Rejection` (or the crypto layer a :class:`~fedrec.crypto.backend.CryptoError`) for a request it
  refuses: the peer gets :class:`Rejected` and serving goes on. Anything else a handler raises is a bug
  and propagates (narrow handling: bugs surface as bugs). Dead or silent peers end the loop with the
  transport's error naming the peer and the step.
* :func:`fan_out` — one exchange (any function of the peer's name) with many peers at once,
  ``(results, failures)``: a peer that dies, times out, rejects or answers wrongly is a failure
  (:data:`PEER_FAILURES`), recorded as data (Flower's ``fit_round``/``aggregate_fit``); anything else
  is a bug and propagates. :func:`gather` is the one-request round on top of it: it fails only when
  fewer than ``min_ok`` peers answered. A driver with its own failure policy (the vertical FM's guest
  and its hosts, :mod:`fedrec.protocols.hetero_fm.hosts`) applies it to ``failures``.
* :func:`config_mismatches` / :func:`check_hello` — config agreement at the start of a job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedrec.crypto.backend import CryptoError
from fedrec.protocols.messages import Hello, Rejected
from fedrec.transport.channel import Channel, Received
from fedrec.transport.errors import PeerError, ProtocolError, RemoteError, WireError
from fedrec.transport.wire import Message

__all__ = ["PEER_FAILURES", "Peer", "PartyError", "Rejection", "RoundFailed", "ServeStats", "check_hello",
           "config_mismatches", "fan_out", "gather", "serve"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")
Handler = Callable[[Received[Any]], Message]


class PartyError(RuntimeError):
    """The peer rejected a protocol step, or answered something the protocol does not allow."""

    protocol = "party"

    def __init__(self, peer: str, step: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{self.protocol}: peer {peer!r} at step {step!r}: {detail}")
        self.peer, self.step, self.detail, self.field = peer, step, detail, field


class Rejection(ValueError):
    """Raised by a handler for a request it refuses; ``field`` goes back to the peer in :class:`Rejected`."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


class Peer:
    """The driver's side of a conversation with one peer (see the module docstring)."""

    def __init__(self, channel: Channel, name: str, *, timeout: float, error: type[PartyError] = PartyError,
                 retries: int = 1) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError(f"Peer: need timeout > 0 and retries >= 0, got {timeout}, {retries}")
        self.channel, self.name, self.timeout = channel, name, timeout
        self.error, self.retries = error, retries

    def ask(self, msg: Message, expected: type[M], step: str) -> M:
        """Send ``msg`` for ``step`` and return the peer's ``expected`` reply. The whole exchange,
        retransmits included, waits at most ``timeout`` seconds."""
        try:
            answer = self.channel.request(self.name, msg, Message, step=step,
                                          timeout=self.timeout / (self.retries + 1), retries=self.retries)
        except (WireError, ProtocolError) as exc:  # the peer's answer did not parse: its failure
            raise self.error(self.name, step, f"malformed answer: {exc}") from exc
        if isinstance(answer, Rejected):
            raise self.error(self.name, step, f"rejected field {answer.field!r}: {answer.detail}",
                             answer.field)
        if not isinstance(answer, expected):
            raise self.error(self.name, step, f"answered {type(answer).__name__}, expected "
                                              f"{expected.__name__}")
        return answer


@dataclass
class ServeStats:
    """What a :func:`serve` loop saw: requests answered and refused (by type name)."""

    answered: int = 0
    rejected: int = 0
    rejected_by_type: dict[str, int] = field(default_factory=dict)


def serve(channel: Channel, peer: str, handlers: Mapping[type[Message], Handler], *, timeout: float,
          until: Iterable[type[Message]], stats: ServeStats | None = None, who: str = "party") -> ServeStats:
    """Answer ``peer`` from ``handlers`` until a request of a type in ``until`` was answered.

    A handler returns the reply. :class:`Rejection` / ``CryptoError`` become a :class:`Rejected` reply
    (logged, counted) and serving goes on; a message of a type not in the table is logged, counted and
    skipped, and so is an error report of the peer (``RemoteError``: it refused one of our answers;
    anyone may send one at any time, so it must not end the loop); transport errors about ``peer``
    (dead, silent) propagate, as does any other exception."""
    stats = stats or ServeStats()
    stop = tuple(until)
    types = tuple(handlers)
    while True:
        try:
            rec = channel.recv_any(types, peers=[peer], timeout=timeout)
        except ProtocolError as exc:
            stats.rejected += 1
            log.error("%s: ignored an unexpected message from %r: %s", who, peer, exc)
            continue
        except RemoteError as exc:  # the peer says it refused one of our answers: its word, not our end
            stats.rejected += 1
            if stats.rejected <= 20 or stats.rejected % 1000 == 0:
                log.error("%s: %s", who, exc)
            continue
        handler = handlers[type(rec.msg)]
        try:
            answer = handler(rec)
        except (Rejection, CryptoError) as exc:
            name = type(rec.msg).__name__
            stats.rejected += 1
            stats.rejected_by_type[name] = stats.rejected_by_type.get(name, 0) + 1
            fld = exc.field if isinstance(exc, Rejection) else name
            if stats.rejected <= 20 or stats.rejected % 1000 == 0:
                log.error("%s: rejected %s from %r at step %r: %s [%d rejected]", who, rec.msg.TYPE,
                          rec.peer, rec.step, exc, stats.rejected)
            channel.reply(rec, Rejected(fld, str(exc)))
            continue
        channel.reply(rec, answer)
        stats.answered += 1
        if isinstance(rec.msg, stop):
            return stats


class RoundFailed(RuntimeError):
    """Fewer than ``min_ok`` peers answered a :func:`gather` round; ``failures`` says why, per peer."""

    def __init__(self, step: str, min_ok: int, failures: Mapping[str, BaseException]) -> None:
        why = "; ".join(f"{p}: {e}" for p, e in failures.items())
        super().__init__(f"round {step!r}: fewer than {min_ok} peers answered ({why})")
        self.step, self.min_ok, self.failures = step, min_ok, dict(failures)


#: a peer's failure (it died, went silent, rejected, answered wrongly or malformed: a transport
#: ``WireError``/``ProtocolError`` from a :class:`Peer` subclass that lets one through), as opposed to a
#: bug of this party
PEER_FAILURES = (PeerError, PartyError, WireError, ProtocolError)


def fan_out(names: Iterable[str], fn: Callable[[str], T], *, step: str
            ) -> tuple[dict[str, T], dict[str, BaseException]]:
    """``fn(name)`` for every peer of ``names`` at once (one thread each; a single peer on the caller's
    thread); ``(results, failures)``, both in the order of ``names`` (the first failure is that of the
    first failed peer in that order, whatever finished first). A :data:`PEER_FAILURES` exception is that
    peer's failure; any other is a bug: the first is re-raised here once every thread has ended."""
    order = list(dict.fromkeys(names))
    if len(order) == 1:
        try:
            return {order[0]: fn(order[0])}, {}
        except PEER_FAILURES as exc:
            return {}, {order[0]: exc}
    done: dict[str, T] = {}
    failed: dict[str, BaseException] = {}
    bugs: list[BaseException] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        try:
            out = fn(name)
        except PEER_FAILURES as exc:
            with lock:
                failed[name] = exc
        except BaseException as exc:  # noqa: BLE001 - re-raised below on the caller's thread
            with lock:
                bugs.append(exc)
        else:
            with lock:
                done[name] = out

    threads = [threading.Thread(target=one, args=(n,), name=f"{step}-{n}", daemon=True) for n in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if bugs:
        raise bugs[0]
    return {n: done[n] for n in order if n in done}, {n: failed[n] for n in order if n in failed}


def gather(peers: Mapping[str, Peer], requests: Mapping[str, Message], expected: type[M], *, step: str,
           min_ok: int) -> tuple[dict[str, M], dict[str, BaseException]]:
    """Ask every peer named in ``requests`` at once (:func:`fan_out` of :meth:`Peer.ask`);
    ``(results, failures)`` by peer name, :class:`RoundFailed` if fewer than ``min_ok`` succeed."""
    unknown = sorted(set(requests) - set(peers))
    if unknown:
        raise ValueError(f"gather: no Peer for {unknown}")
    if not 0 <= min_ok <= len(requests):
        raise ValueError(f"gather: min_ok must be in 0..{len(requests)}, got {min_ok}")
    results, failures = fan_out(requests, lambda n: peers[n].ask(requests[n], expected, step), step=step)
    for name, exc in failures.items():
        log.warning("round %r: peer %r failed: %s", step, name, exc)
    if len(results) < min_ok:
        raise RoundFailed(step, min_ok, failures)
    return results, failures


def config_mismatches(mine: Mapping[str, Any], theirs: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    """Names of agreed ``fields`` whose values differ (or are missing on one side), in a stable order,
    then the fields ``theirs`` has beyond them (``"name (unknown field)"``). Numbers compare by value."""
    names = tuple(fields)
    bad = []
    for name in names:
        a, b = mine.get(name, "<missing>"), theirs.get(name, "<missing>")
        if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool) \
                and not isinstance(b, bool):
            if float(a) != float(b):
                bad.append(name)
        elif a != b:
            bad.append(name)
    extra = sorted(set(theirs) - set(names))
    return bad + [f"{e} (unknown field)" for e in extra]


def check_hello(hello: Hello, protocol: str, version: int, mine: Mapping[str, Any], fields: Iterable[str],
                who: str) -> None:
    """Refuse a :class:`Hello` of another protocol/version or whose agreed config differs from ours,
    naming the first field and every difference (``who``: this party's role, for the message)."""
    if hello.protocol != protocol:
        raise Rejection("protocol", f"this {who} speaks {protocol!r}, not {hello.protocol!r}")
    if hello.version != version:
        raise Rejection("version", f"this {who} speaks {protocol} version {version}, not {hello.version}")
    bad = config_mismatches(mine, hello.config, fields)
    if bad:
        names = [b.split(" ")[0] for b in bad]
        details = "; ".join(f"{n}: {who} {mine.get(n)!r} vs peer {hello.config.get(n)!r}" for n in names)
        raise Rejection(bad[0], f"config mismatch ({details})")
