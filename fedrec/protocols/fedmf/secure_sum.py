"""The server's side of one secure sum: ``Enc(Σ x_c)`` over the clients that counted, failures as data.

Without masks a secure sum is one ``gather`` of requests and ``Upload`` answers; every upload must be a
ciphertext of the announced size at the wire level, for this purpose, round and attempt, or it is that
client's failure (named with the step), never an exception that ends the server.

With masks (:mod:`.masking`) the selected clients are cut into groups of at most ``mask_group``
(``numpy.array_split`` of the selection, in roster order), and each group runs the four steps of
Bonawitz et al. on its own (steps ``.../g{group}/masks|shares|upload|unmask``, mask round id
:func:`.masking.mask_round_id` with the group): the masked steps cost ``O(group²)`` per group, so
``O(n · mask_group)`` per round instead of ``O(n²)``. The groups' unmasked sums are then added
homomorphically. What that costs in privacy: the server with a colluding client (who can decrypt)
learns each group's sum instead of only the whole round's; a group smaller than 2 is refused by its
clients. A group that cannot be unmasked (fewer than its threshold of survivors answered) counts as
failed in full; the sum fails (:class:`RoundFailed`) only when fewer than ``min_ok`` clients counted
over all groups.

With a ``[compute]`` executor (``FedMFServer(..., executor=...)``, CKKS): the uploads' bytes, as the
wire layer parsed them, are summed on its workers (a tree of one level: each task loads a slice with the
serial path's checks, adds it and returns its sum as bytes; the server adds the partial sums). A refused
upload is still that client's failure, named as before; the sum is the serial loop's bit for bit
(ciphertext addition is exact), and the server's process loads one ciphertext per task, not per client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from fedrec.compute.executor import Executor, is_parallel
from fedrec.crypto.backend import CryptoBackend, CryptoError, EncryptedVector
from fedrec.profiling import StageClock
from fedrec.protocols.fedmf import keys
from fedrec.protocols.fedmf.config import FedMFConfig
from fedrec.protocols.fedmf.masking import mask_round_id, recover_correction, threshold
from fedrec.protocols.fedmf.messages import (
    FedMFError,
    MaskAdvert,
    MaskRequest,
    SealedShares,
    ShareRequest,
    UnmaskRequest,
    UnmaskShares,
    Upload,
)
from fedrec.protocols.party import RoundFailed
from fedrec.transport.wire import Message

__all__ = ["RequestFactory", "RoundReport", "SecureSum"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
#: ``make_request(participants, mask keys, boxes for this client) -> request``
RequestFactory = Callable[[list[str], list[bytes], list[bytes]], Message]
#: ``gather(requests, expected answer type, step, min_ok) -> (answers, failures)``
Gather = Callable[[Mapping[str, Message], type[Any], str, int],
                  tuple[dict[str, Any], dict[str, BaseException]]]


@dataclass
class RoundReport:
    """One secure sum as the server saw it: who was asked, who counted, who failed and why."""

    step: str
    selected: list[str]
    ok: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    server_crypto_seconds: float = 0.0
    upload_bytes: int = 0
    groups: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "selected": len(self.selected), "ok": len(self.ok), "failed": self.failed,
                "seconds": round(self.seconds, 4), "upload_bytes": self.upload_bytes, "groups": self.groups,
                "server_crypto_seconds": round(self.server_crypto_seconds, 4)}

    def to_state(self) -> dict[str, Any]:
        """Every field, names included (what a server checkpoint keeps for the summary)."""
        return asdict(self)

    @classmethod
    def from_state(cls, doc: Any) -> RoundReport:
        """:meth:`to_state`'s form, validated (``ValueError`` naming the field)."""
        if not isinstance(doc, dict) or set(doc) != {f.name for f in fields(cls)}:
            raise ValueError(f"a round report must have the fields {[f.name for f in fields(cls)]}")
        names = [doc["selected"], doc["ok"]]
        if not isinstance(doc["step"], str) or not all(
                isinstance(v, list) and all(isinstance(n, str) for n in v) for v in names):
            raise ValueError("a round report's 'step', 'selected' or 'ok' is malformed")
        if not isinstance(doc["failed"], dict) or not all(isinstance(v, str) for v in doc["failed"].values()):
            raise ValueError("a round report's 'failed' must map names to reasons")
        return cls(doc["step"], list(doc["selected"]), list(doc["ok"]), dict(doc["failed"]),
                   float(doc["seconds"]), float(doc["server_crypto_seconds"]), int(doc["upload_bytes"]),
                   int(doc["groups"]))


class SecureSum:
    """Secure sums for one job: the agreed ``config``, the server's public ``backend``, its ``gather``,
    the ``roster`` (ids = positions) with the clients' X25519 keys, and the run id (mask contexts)."""

    def __init__(self, config: FedMFConfig, backend: CryptoBackend, gather: Gather, roster: Sequence[str],
                 client_keys: Mapping[str, bytes], run_id: str, stages: StageClock | None = None,
                 executor: Executor | None = None) -> None:
        self.config, self.backend, self.gather, self.run_id = config, backend, gather, run_id
        #: where the uploads are loaded and added (``None`` or ``local``: in this process)
        self.executor = executor
        #: the server's stage clock (deserialize, aggregate, unmask)
        self.stages = stages or StageClock()
        self.roster = list(roster)
        self.ids = {n: (j, client_keys[n]) for j, n in enumerate(self.roster)}

    def ordered(self, names: Any) -> list[str]:
        return [n for n in self.roster if n in names]

    def __call__(self, purpose: str, round_: int, attempt: int, selected: list[str], length: int,
                 make_request: RequestFactory) -> tuple[EncryptedVector, list[str], dict[str, BaseException],
                                                         RoundReport]:
        """``(Enc(Σ x_c), the clients that counted, failures, report)``; :class:`RoundFailed` below
        ``min_ok``."""
        c = self.config
        base = f"fedmf/{purpose}" + (f"/r{round_}" if purpose == "train" else "") + f"/a{attempt}"
        report = RoundReport(f"{base}/upload", list(selected), [])
        t0 = time.perf_counter()
        failures: dict[str, BaseException] = {}
        total: EncryptedVector | None = None
        ok: list[str] = []
        if not c.masks:
            total, ok = self._upload(purpose, round_, attempt, base, selected, length, make_request, {},
                                     {n: [] for n in selected}, failures, report)
        else:
            groups = [list(g) for g in np.array_split(np.asarray(selected, dtype=object),
                                                      -(-len(selected) // c.mask_group)) if len(g)]
            report.groups = len(groups)
            for g, members in enumerate(groups):
                try:
                    acc, got = self._masked(purpose, round_, attempt, g, f"{base}/g{g}", members, length,
                                            make_request, failures, report)
                except RoundFailed as exc:
                    for n in members:
                        failures.setdefault(n, FedMFError(n, exc.step, f"group {g} failed: {exc}"))
                    logger.warning("server: %s/g%d failed: %s", base, g, exc)
                    continue
                if acc is not None:
                    total = acc if total is None else self.backend.add(total, acc)
                    ok += got
        ok = self.ordered(ok)
        if total is None or len(ok) < c.min_ok:
            raise RoundFailed(f"{base}/upload", c.min_ok, failures)
        report.ok, report.seconds = ok, time.perf_counter() - t0
        report.failed = {n: str(e) for n, e in failures.items()}
        return total, ok, failures, report

    def _upload(self, purpose: str, round_: int, attempt: int, step: str, participants: list[str],
                length: int, make_request: RequestFactory, keys_of: Mapping[str, bytes],
                boxes_for: Mapping[str, list[bytes]], failures: dict[str, BaseException], report: RoundReport
                ) -> tuple[EncryptedVector | None, list[str]]:
        pkeys = [keys_of[n] for n in participants] if keys_of else []
        requests = {n: make_request(participants, pkeys, boxes_for[n]) for n in participants}
        uploads, f = self.gather(requests, Upload, f"{step}/upload", 0)
        failures.update(f)
        if is_parallel(self.backend, self.executor) and len(uploads) > 1:
            return self._upload_on(purpose, round_, attempt, step, uploads, length, failures, report)
        cts: dict[str, EncryptedVector] = {}
        tc = time.perf_counter()
        t_deser = tc
        for n, up in uploads.items():
            try:
                if (up.purpose, up.round, up.attempt) != (purpose, round_, attempt):
                    raise CryptoError(f"upload for {up.purpose} r{up.round} a{up.attempt}")
                cts[n] = keys.read_ciphertext(self.backend, up.ciphertext, length)
                report.upload_bytes = max(report.upload_bytes, len(up.ciphertext))
            except CryptoError as exc:
                failures[n] = FedMFError(n, f"{step}/upload", f"invalid upload refused: {exc}", "ciphertext")
                logger.error("server: %s", failures[n])
        self.stages.add("deserialize", time.perf_counter() - t_deser, len(uploads))
        ok = self.ordered(cts)
        acc = None
        with self.stages("aggregate"):
            for n in ok:
                acc = cts[n] if acc is None else self.backend.add(acc, cts[n])
        report.server_crypto_seconds += time.perf_counter() - tc
        return acc, ok

    def _upload_on(self, purpose: str, round_: int, attempt: int, step: str, uploads: Mapping[str, Upload],
                   length: int, failures: dict[str, BaseException], report: RoundReport
                   ) -> tuple[EncryptedVector | None, list[str]]:
        """:meth:`_upload`'s checks and sum with the loading and adding on the executor's workers."""
        from fedrec.compute.ckks import sum_blobs

        assert self.executor is not None
        tc = time.perf_counter()
        blobs: dict[str, bytes] = {}
        for n, up in uploads.items():
            if (up.purpose, up.round, up.attempt) != (purpose, round_, attempt):
                why = f"invalid upload refused: upload for {up.purpose} r{up.round} a{up.attempt}"
                failures[n] = FedMFError(n, f"{step}/upload", why, "ciphertext")
                logger.error("server: %s", failures[n])
                continue
            blobs[n] = bytes(up.ciphertext)
        names = self.ordered(blobs)
        with self.stages("aggregate"):  # load + add, on the workers
            acc, bad = sum_blobs(self.backend, [blobs[n] for n in names], length,
                                 keys.wire_level(self.backend), self.executor)
        for i, why in sorted(bad.items()):
            failures[names[i]] = FedMFError(names[i], f"{step}/upload", f"invalid upload refused: {why}",
                                            "ciphertext")
            logger.error("server: %s", failures[names[i]])
        ok = [n for i, n in enumerate(names) if i not in bad]
        report.upload_bytes = max([report.upload_bytes, *(len(blobs[n]) for n in ok)])
        self.stages.count("uploads", len(names))
        report.server_crypto_seconds += time.perf_counter() - tc
        return acc, ok

    def _masked(self, purpose: str, round_: int, attempt: int, group: int, step: str, members: list[str],
                length: int, make_request: RequestFactory, failures: dict[str, BaseException],
                report: RoundReport) -> tuple[EncryptedVector | None, list[str]]:
        """One group's four steps (:mod:`.masking`); :class:`RoundFailed` if it cannot be unmasked."""
        adverts, f1 = self.gather({n: MaskRequest(purpose, round_, attempt, group) for n in members},
                                  MaskAdvert, f"{step}/masks", 0)
        failures.update(f1)
        u1 = self.ordered(adverts)
        keys_of = {n: adverts[n].mask_key for n in u1}
        t = threshold(self.config, len(u1))
        req = ShareRequest(purpose, round_, attempt, u1, [keys_of[m] for m in u1])
        shares, f2 = self.gather({n: req for n in u1}, SealedShares, f"{step}/shares", 0)
        for n, s in list(shares.items()):
            if len(s.boxes) != len(u1) or s.boxes[u1.index(n)]:
                f2[n] = FedMFError(n, f"{step}/shares", f"{len(s.boxes)} boxes for {len(u1)} clients")
                del shares[n]
        failures.update(f2)
        u2 = self.ordered(shares)
        if len(u2) < max(t, 2):
            raise RoundFailed(f"{step}/shares", max(t, 2), failures)
        boxes_for = {r: [shares[s].boxes[u1.index(r)] for s in u2] for r in u2}
        acc, ok = self._upload(purpose, round_, attempt, step, u2, length, make_request, keys_of, boxes_for,
                               failures, report)
        if acc is None or len(ok) < t:
            raise RoundFailed(f"{step}/upload", t, failures)
        dropped = [n for n in u2 if n not in ok]
        unmask = UnmaskRequest(purpose, round_, attempt, ok, dropped)
        answers, f4 = self.gather({n: unmask for n in ok}, UnmaskShares, f"{step}/unmask", 0)
        failures.update(f4)
        good = {n: (a.survivor_shares, a.dropped_shares) for n, a in answers.items()
                if len(a.survivor_shares) == len(ok) and len(a.dropped_shares) == len(dropped)}
        if len(good) < t:
            raise RoundFailed(f"{step}/unmask", t, failures)
        tc = time.perf_counter()
        try:
            fix = recover_correction(self.run_id, mask_round_id(purpose, round_, attempt, group), self.config,
                                     length, self.ids, keys_of, ok, dropped, good)
        except CryptoError as exc:
            raise RoundFailed(f"{step}/unmask", t, {**failures, "recovery": exc}) from exc
        if dropped:
            logger.warning("server: %s: masks of %d dropped client(s) recovered from %d survivors' shares",
                           step, len(dropped), len(good))
        acc = self.backend.add_plain(acc, fix)
        self.stages.add("unmask", time.perf_counter() - tc)
        report.server_crypto_seconds += time.perf_counter() - tc
        return acc, ok
