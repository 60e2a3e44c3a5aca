"""Align the parties' user ids before training: reuse the alignment both still hold, else run PSI.

What a party keeps in ``[output] dir``::

    aligned.csv      aligned_index, id, row_index (the ``fedrec psi`` format; row k is the same id on
                     both sides, row_index its position among this party's unique input ids)
    alignment.json   written after it: input_sha256 (this party's own unique ids, in input order),
                     aligned_sha256 (the aligned ids, in aligned order), file_sha256 (of aligned.csv),
                     n_aligned, peer

Several peers (a guest with N hosts, issue #11): PSI per host, each alignment kept in
``[output] dir/alignments/<host>/`` (the same two files); one peer: directly in ``[output] dir``.

During a run the alignment lives in the working directory ``[output] dir/.work/`` (same layout); it is
published (copied into the run's stage) together with the model, so the ``aligned.csv`` beside a model
is always the one it was trained on (issue #9: a killed re-run never leaves a new ``aligned.csv`` next
to the previous run's model). An earlier run's published alignment is reused when there is no working one.

Reuse, before PSI (messages ``AlignmentQuery`` / ``AlignmentAnswer`` of :mod:`fedrec.psi.messages`,
step ``psi/reuse``): each party first checks locally that it holds an alignment of the same input
(``input_sha256``) in an unmodified ``aligned.csv`` (``file_sha256``, and every ``row_index`` names
the id it lists); the PSI guest then sends its ``aligned_sha256`` (empty when it holds none) and the
PSI host answers with its own and whether the two are equal. Equal: both load ``aligned.csv`` and skip
PSI. Otherwise both run PSI and store the new alignment. Only the aligned-id digest crosses the wire;
both parties learnt that list in the earlier session. The input digest never leaves the party.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.jobs import WORK, PartyRun, write_atomic

log = logging.getLogger(__name__)

ALIGNED = "aligned.csv"
RECORD = "alignment.json"
REUSE_STEP = "psi/reuse"


@dataclass(frozen=True)
class Alignment:
    """The aligned ids of this party, in aligned order (shared with the peer)."""

    rows: np.ndarray  # int64: position of aligned id k among the party's unique input ids
    ids: list[str]  # the aligned ids, normalised (fedrec.psi.ids rule)
    how: str  # "psi", "reused" or "given" ([psi] enabled = false)
    seconds: float
    peer_size: int | None = None  # the peer's number of unique ids (PSI only)

    def common(self, n: int) -> np.ndarray:
        """Boolean mask over the ``n`` input ids: which are aligned."""
        mask = np.zeros(n, dtype=bool)
        mask[self.rows] = True
        return mask


def ids_digest(ids: Sequence[bytes], label: bytes) -> str:
    """SHA-256 over length-prefixed ids, in order."""
    h = hashlib.sha256(b"fedrec-" + label + b"\x00")
    for x in ids:
        h.update(len(x).to_bytes(4, "big"))
        h.update(x)
    return h.hexdigest()


@dataclass(frozen=True)
class _Held:
    rows: np.ndarray
    ids: list[bytes]
    digest: str


def held_alignment(out: Path, ids: Sequence[bytes]) -> tuple[_Held | None, str]:
    """The alignment of an earlier run kept in ``out`` if it still fits this party's ``ids``; else
    ``None`` and why not."""
    import pandas as pd

    from fedrec.artifacts import ArtifactError, file_sha256, read_json
    from fedrec.data import DataValidationError
    from fedrec.data.tables import read_table

    record_path, aligned_path = out / RECORD, out / ALIGNED
    if not record_path.is_file() or not aligned_path.is_file():
        return None, "no alignment of an earlier run is kept"
    try:
        record = read_json(record_path, "alignment record")
    except ArtifactError as err:
        return None, f"the alignment record is unreadable ({err})"
    if record.get("input_sha256") != ids_digest(ids, b"input-ids"):
        return None, "this party's ids changed since the kept alignment"
    if record.get("file_sha256") != file_sha256(aligned_path):
        return None, f"{aligned_path} was modified since it was written"
    try:  # through the validated reader: a ragged or binary file is a named error, never misread
        frame = read_table(aligned_path, allow_empty=True).frame
        if "id" not in frame.columns or "row_index" not in frame.columns:
            return None, f"{aligned_path} lacks the id/row_index columns"
        rows = pd.to_numeric(frame["row_index"], errors="raise").to_numpy(dtype=np.int64)
    except (DataValidationError, ValueError) as err:
        return None, f"{aligned_path} is not a valid alignment ({err})"
    aligned = [str(x).encode("utf-8") for x in frame["id"].tolist()]
    if len(rows) and (rows.min() < 0 or rows.max() >= len(ids)
                      or any(ids[r] != x for r, x in zip(rows.tolist(), aligned, strict=True))):
        return None, f"{aligned_path} does not match this party's ids"
    digest = ids_digest(aligned, b"aligned-ids")
    if record.get("aligned_sha256") != digest:
        return None, f"{aligned_path} does not match its record"
    return _Held(rows, aligned, digest), "held"


def alignment_dir(run_or_cfg: Any, peer: str, *, published: bool = False) -> Path:
    """Where the alignment with ``peer`` is kept while training (``.work/``; ``published``: where it is
    put with the outputs): the directory itself (one peer) or ``alignments/<peer>`` under it."""
    cfg = getattr(run_or_cfg, "cfg", run_or_cfg)
    base = cfg.output_dir if published else cfg.output_dir / WORK
    return base if len(cfg.peers) == 1 else base / "alignments" / peer


def _held(run: PartyRun, ids: Sequence[bytes], peer: str) -> tuple[_Held | None, str]:
    """The working alignment, else the one published by an earlier complete run."""
    import shutil

    work, public = alignment_dir(run, peer), alignment_dir(run, peer, published=True)
    held, why = held_alignment(work, ids)
    if held is None and not (work / RECORD).is_file():
        held, why = held_alignment(public, ids)
        if held is not None:  # the working copy is what this run publishes with its outputs
            work.mkdir(parents=True, exist_ok=True)
            for name in (ALIGNED, RECORD):
                src = public / name
                write_atomic(work / name, lambda tmp, src=src: shutil.copyfile(src, tmp))  # type: ignore[misc]
    return held, why


def _agree(run: PartyRun, psi_role: str, held: _Held | None, peer: str) -> bool:
    """Ask / answer the peer whether both hold the same alignment (see the module docstring)."""
    from fedrec.psi import PsiPeerError
    from fedrec.psi.messages import AlignmentAnswer, AlignmentQuery

    own = bytes.fromhex(held.digest) if held is not None else b""
    timeout = run.cfg.network.recv_timeout
    if psi_role == "guest":
        ans = run.channel.request(peer, AlignmentQuery(own), AlignmentAnswer, step=REUSE_STEP,
                                  timeout=timeout)
        if ans.reuse and ans.digest != own:
            raise PsiPeerError(peer, REUSE_STEP, "the peer answered 'reuse' for another alignment")
        return ans.reuse
    rec = run.channel.recv_any(AlignmentQuery, step=REUSE_STEP, peers=[peer], timeout=timeout)
    reuse = held is not None and rec.msg.digest == own
    run.channel.reply(rec, AlignmentAnswer(own, reuse))
    return reuse


def _store(run: PartyRun, ids: Sequence[bytes], aligned: Sequence[bytes], rows: np.ndarray,
           peer: str) -> None:
    from fedrec.artifacts import file_sha256
    from fedrec.psi import write_aligned

    out = alignment_dir(run, peer)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORD).unlink(missing_ok=True)  # the record is valid only for the aligned.csv written next
    path = write_atomic(out / ALIGNED, lambda tmp: write_aligned(tmp, aligned, rows), "job/export/aligned")
    record: dict[str, Any] = {
        "input_sha256": ids_digest(ids, b"input-ids"), "aligned_sha256": ids_digest(aligned, b"aligned-ids"),
        "file_sha256": file_sha256(path), "n_aligned": len(aligned), "n_input_ids": len(ids),
        "peers": list(run.cfg.peers), "peer": peer}
    write_atomic(out / RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=1), encoding="utf-8"),
                 "job/export/alignment")


def publish(cfg: Any, stage: Path) -> None:
    """Copy the working alignment(s) into ``stage``: they are put in place with the model."""
    import shutil

    work = cfg.output_dir / WORK
    if work.is_dir():
        shutil.copytree(work, stage, dirs_exist_ok=True)


def align(run: PartyRun, raw_ids: Sequence[Any] | np.ndarray, psi_role: str, peer: str | None = None
          ) -> Alignment:
    """Align ``raw_ids`` (this party's unique user ids, input order) with ``peer`` (default: the one
    peer); stores the result (:func:`alignment_dir`).

    ``psi_role`` (``"guest"`` / ``"host"``) decides who asks in the reuse check and who is who in PSI.
    With ``[psi] enabled = false`` every id is taken as aligned."""
    from fedrec.psi import encode_ids, run_psi

    cfg = run.cfg
    peer = run.peer if peer is None else peer
    t0 = time.perf_counter()
    ids = encode_ids(list(raw_ids), source=f"{cfg.name} user ids")
    if not cfg.psi.enabled:
        log.warning("%s: [psi] enabled = false: all %d ids are taken as aligned", cfg.name, len(ids))
        rows = np.arange(len(ids), dtype=np.int64)
        _store(run, ids, ids, rows, peer)
        return Alignment(rows, [x.decode() for x in ids], "given", time.perf_counter() - t0)
    held, why = _held(run, ids, peer)
    if _agree(run, psi_role, held, peer):
        assert held is not None
        log.info("%s: reused the alignment of an earlier run with %r (%d aligned ids, sha256 %s...); PSI "
                 "skipped", cfg.name, peer, len(held.ids), held.digest[:12])
        return Alignment(held.rows, [x.decode() for x in held.ids], "reused", time.perf_counter() - t0)
    log.info("%s: running PSI with %r (%s)", cfg.name, peer,
             "the peer holds another alignment or none" if held is not None else why)
    result: Any
    if cfg.psi.buckets:  # [psi] buckets = N: one session per bucket pair (fedrec.psi.buckets)
        from fedrec.psi.buckets import run_bucketed_psi

        result = run_bucketed_psi(run.channel, peer, ids, role=psi_role, n_buckets=cfg.psi.buckets,
                                  chunk_size=cfg.psi.chunk_size, workers=cfg.psi.workers or None,
                                  timeout=cfg.network.recv_timeout)
    else:
        result = run_psi(run.channel, peer, ids, role=psi_role, chunk_size=cfg.psi.chunk_size,
                         workers=cfg.psi.workers or None, timeout=cfg.network.recv_timeout,
                         progress=cfg.progress)
    _store(run, ids, result.ids, result.rows, peer)
    log.info("%s: PSI: %d common ids (mine %d, peer %d) in %.1fs", cfg.name, result.intersection_size,
             len(ids), result.peer_size, result.seconds)
    return Alignment(np.asarray(result.rows, dtype=np.int64), [x.decode() for x in result.ids], "psi",
                     time.perf_counter() - t0, result.peer_size)
