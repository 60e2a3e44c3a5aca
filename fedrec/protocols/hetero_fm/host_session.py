"""The host's session with the guest: who it talks to and under which keys, and where training stands.

:class:`HostSession` answers the requests that open, resume, checkpoint and close a run (``Hello``,
``Resume``, ``Setup``, ``Checkpoint``, ``Done``) and checks every batch number the guest sends against
what the set-up declared; the per-batch conversation (partials, encrypted residuals, releases, epoch
ends) is :class:`~.host.HeteroFMHost`'s, the state both change is :class:`~.host_model.HostHalf`'s.

``Setup`` pins the guest's public context (``context_sha256``), refuses one that carries a secret key or
another backend/preset than agreed, takes the aligned list (positions in it are how every later
request names users) and either starts afresh or applies the checkpoint ``Resume`` picked. An identical
``Setup`` again (a retransmit) gets the same answer; any other one needs a new ``Hello``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from fedrec.crypto.backend import CryptoBackend, KeyPin, load_public
from fedrec.models.fields import Csr
from fedrec.protocols import party
from fedrec.protocols.checkpoint import CheckpointInfo
from fedrec.protocols.hetero_fm.config import (
    AGREED_FIELDS,
    HOST_FIELD,
    PROTOCOL,
    PROTOCOL_VERSION,
    HeteroFMConfig,
)
from fedrec.protocols.hetero_fm.host_batch import HostBatch, StaticLayout
from fedrec.protocols.hetero_fm.host_model import HostHalf
from fedrec.protocols.hetero_fm.messages import Setup, SetupAck
from fedrec.protocols.hetero_fm.state import HostState, aligned_digest
from fedrec.protocols.hetero_fm.transcript import HostTranscript
from fedrec.protocols.messages import Ack, Checkpoint, Checkpointed, Done, Hello, Resume, ResumeAt
from fedrec.protocols.party import Rejection
from fedrec.transport.channel import Received

__all__ = ["HostSession"]

#: the host's log lines keep the logger name they always had (a deployment may filter on it)
logger = logging.getLogger("fedrec.protocols.hetero_fm.host")


class HostSession(HostHalf):
    """The host's half with its session: set-up, resume, checkpoints, cursor checks (module docstring)."""

    def __init__(self, guest: str, config: HeteroFMConfig, transcript: HostTranscript | None) -> None:
        super().__init__(config)
        self.guest = guest
        #: when set, what this host learns is recorded there (leakage evaluation; :mod:`.transcript`)
        self.transcript = transcript
        self.closed = False
        self._backend: CryptoBackend | None = None
        self._batch: HostBatch | None = None
        #: layout ``static``: the run's layout and plaintexts, kept across batches (made at the first one)
        self._static: StaticLayout | None = None
        self._hello = False
        self._pending: HostState | None = None
        #: batches per epoch declared at Setup: bounds every batch number of the guest
        self._n_batches = 0
        #: the Setup applied since the last Hello (its digest) and its answer: an identical retransmit
        #: gets the same answer without touching the state; any other Setup is refused
        self._setup_done: tuple[str, SetupAck] | None = None
        #: ``progress(batches_done, batches_total, epoch)`` (epoch 1-based: the one in progress, or the one
        #: just ended), called whenever the training cursor moves
        #: (a progress bar, :mod:`training.progress`); at the end of the stopping epoch total == done
        self.progress: Callable[[int, int, int], None] | None = None

    def _on_hello(self, rec: Received[Hello]) -> Ack:
        msg = rec.msg
        party.check_hello(msg, PROTOCOL, PROTOCOL_VERSION, self.config.agreed(), AGREED_FIELDS, who="host")
        if not msg.run_id or len(msg.run_id) > 64:
            raise Rejection("run_id", "must be 1..64 characters")
        self.run_id = msg.run_id
        self._hello = True
        self._pending = None
        self.resumed_from = None
        self._backend = None
        self._rows = None
        self._setup_done = None
        return Ack("hello")

    def _on_resume(self, rec: Received[Resume]) -> ResumeAt:
        msg = rec.msg
        if not self._hello or msg.run_id != self.run_id:
            raise Rejection("run_id", f"Resume for run {msg.run_id!r}, but the Hello said {self.run_id!r}")
        if self._ckpt is None:
            logger.warning("host: the guest offers to resume run %s but this host keeps no checkpoints; "
                           "starting afresh", msg.run_id)
            return ResumeAt(False)
        for ref in msg.checkpoints:
            info = self._ckpt.find(ref.epoch, ref.batch, ref.final, ref.peer_digest, msg.run_id)
            if info is not None:
                self._pending = HostState.from_artifact(self._ckpt.load(info), self.config)
                logger.info("host: resuming run %s at %s (checkpoint %s)", msg.run_id, info.cursor,
                            info.path.name)
                return ResumeAt(True, info.epoch, info.batch, info.digest)
        logger.warning("host: none of the guest's %d checkpoint(s) of run %s is held here; starting afresh",
                       len(msg.checkpoints), msg.run_id)
        return ResumeAt(False)


    def _on_setup(self, rec: Received[Setup]) -> SetupAck:
        msg = rec.msg
        if not self._hello:
            raise Rejection("step", "Setup before Hello")
        key = _setup_digest(msg)
        if self._setup_done is not None:
            if self._setup_done[0] == key:
                logger.info("host: an identical Setup again (retransmit); answered, nothing reset")
                return self._setup_done[1]
            raise Rejection("step", "a second, different Setup after a successful one in this run; a new "
                                    "set-up starts with a new Hello")
        pin = KeyPin(self.config.context_sha256, peer=self.guest)
        if msg.context_sha256 != pin.check(msg.public_context):
            raise Rejection("context_sha256", "the announced SHA-256 does not match the public context")
        backend = load_public(msg.public_context, pin)
        if backend.name != self.config.backend:
            raise Rejection("backend", f"public context is {backend.name!r}, config says "
                                       f"{self.config.backend!r}")
        preset = getattr(getattr(backend, "preset", None), "name", None)
        if backend.name == "ckks" and preset != self.config.ckks_preset:
            raise Rejection("ckks_preset", f"the guest's public context is CKKS {preset!r}, the agreed "
                                           f"ckks_preset is {self.config.ckks_preset!r}")
        if backend.has_secret_key and backend.name != "plain":
            raise Rejection("public_context", "carries a secret key")
        assert self.encoder is not None and self._table is not None and self.params is not None
        ids = np.asarray(msg.user_ids, dtype=object)
        aligned = pd.Index(ids)
        if not aligned.is_unique:
            dup = int(aligned.duplicated().sum())
            raise Rejection("user_ids", f"{dup} duplicate id(s) in the aligned set")
        state = self._pending
        if state is not None and aligned_digest(msg.user_ids) != state.aligned_sha256:
            raise Rejection("user_ids", "the aligned set differs from the one of the checkpoint being "
                                        "resumed")
        if state is not None and state.batch > msg.n_batches:
            raise Rejection("n_batches", f"{msg.n_batches} batches per epoch, but the checkpoint being "
                                         f"resumed is at batch {state.batch}")
        pos = self._table.index.get_indexer(aligned)
        self._rows = self.encoder.transform(self._table, ids, HOST_FIELD)
        self._static = StaticLayout(self._rows.n_rows - 1) if self.config.layout == "static" else None
        self._aligned = aligned
        self._backend = backend
        self._batch = None
        self._n_batches = msg.n_batches
        if self.transcript is not None:
            self.transcript.aligned = list(msg.user_ids)
        if state is None:
            self._start_fresh()
        else:
            self._restore(state)
        self._journal_releases()
        logger.info("host: setup with %d aligned users (%d with features), %d host features, backend %s%s",
                    len(ids), int((pos >= 0).sum()), self.spec.size, backend.name,
                    "" if state is None else f", resumed at epoch {state.epoch} batch {state.batch}")
        nnz = np.diff(self._rows.indptr)[:len(ids)]
        ack = SetupAck(self.spec.size, int((pos >= 0).sum()), int(nnz.max()) if nnz.size else 0,
                       *_row_bounds(self._rows, len(ids)))
        self._setup_done = (key, ack)
        self._report_progress()
        return ack


    def _report_progress(self, stop: bool = False) -> None:
        if self.progress is None or not self._n_batches:
            return
        epoch, batch = self._cursor
        done = epoch * self._n_batches + batch
        shown = epoch if batch == 0 and epoch > 0 else epoch + 1  # 1-based: in progress, or just ended
        self.progress(done, done if stop else max(self.config.epochs * self._n_batches, done), shown)

    def _on_done(self, rec: Received[Done]) -> Ack:
        logger.info("host: guest %r is done (%s)", rec.peer, rec.msg.reason)
        self.closed = True
        return Ack("done")

    def _require_setup(self, msg: Any) -> None:
        if self._backend is None or self._rows is None:
            raise Rejection("step", f"{msg.TYPE} before a successful Setup")


    def _check_cursor(self, epoch: int, batch: int, *, field: str = "batch", at_end: bool = False) -> None:
        """Refuse an epoch beyond the agreed ``epochs`` or a batch beyond the declared batches per epoch
        (``at_end``: the cursor after the last batch, or the start of the epoch after the last, is
        allowed): a peer's number never drives more work than the set-up allows."""
        c, n = self.config, self._n_batches
        last_epoch = c.epochs if at_end else c.epochs - 1
        if not 0 <= epoch <= last_epoch:
            raise Rejection("epoch", f"epoch {epoch} is beyond the agreed {c.epochs} epoch(s)")
        limit = n if at_end else n - 1
        if epoch == c.epochs:
            limit = 0
        if not 0 <= batch <= limit:
            raise Rejection(field, f"batch {batch} of epoch {epoch}: the set-up declared {n} batch(es) per "
                                   f"epoch")


    def _catch_up(self, epoch: int, batch: int) -> None:
        """Zero-gradient optimizer steps for the batches of ``epoch`` before ``batch`` the host did not
        see (no aligned user), as the centralized FM steps on them."""
        e, done = self._cursor
        if self._final:
            raise Rejection("step", "training is over (final checkpoint); only predictions are served")
        if epoch != e or batch < done:
            raise Rejection("batch", f"training batch e{epoch} b{batch}, but the host is at epoch {e} with "
                                     f"{done} batch(es) stepped")
        for _ in range(batch - done):
            self._opt_step(None, None, None)
        self._cursor = (epoch, batch)


    def _on_checkpoint(self, rec: Received[Checkpoint]) -> Checkpointed:
        msg = rec.msg
        self._require_setup(msg)
        if self._ckpt is None:
            raise Rejection("checkpoint", "this host keeps no checkpoints (no [checkpoint] directory)")
        if self._batch is not None:
            raise Rejection("step", f"checkpoint in the middle of batch e{self._batch.epoch} "
                                    f"b{self._batch.batch}")
        self._check_cursor(msg.epoch, msg.batch, at_end=True)
        if msg.final:
            if (msg.epoch, msg.batch) != self._cursor:
                raise Rejection("epoch", f"final checkpoint at e{msg.epoch} b{msg.batch}, host at "
                                         f"{self._cursor}")
            self._final = True
        else:
            self._catch_up(msg.epoch, msg.batch)
        arrays, meta = self.state().to_arrays()
        info: CheckpointInfo = self._ckpt.save(msg.epoch, msg.batch, msg.final, run_id=self.run_id or "",
                                               role="host", arrays=arrays, meta=meta)
        return Checkpointed(info.digest)


def _setup_digest(msg: Setup) -> str:
    """What makes two Setups the same: the key material, the aligned list and the batches per epoch."""
    h = hashlib.sha256(msg.context_sha256.encode() + b"\0" + str(msg.n_batches).encode() + b"\0")
    h.update(hashlib.sha256(bytes(msg.public_context)).digest())
    h.update(aligned_digest(msg.user_ids).encode())
    return h.hexdigest()


def _row_bounds(rows: Csr, n: int) -> tuple[float, float, float]:
    """``(max |x_j|, max_u Σ_j x_j(u)², max_u Σ_j x_j(u)⁴)`` over the first ``n`` rows (SetupAck)."""
    end = int(rows.indptr[n])
    x = np.asarray(rows.values[:end], dtype=np.float64)
    if not x.size:
        return 0.0, 0.0, 0.0
    starts = rows.indptr[:n][np.diff(rows.indptr[:n + 1]) > 0]
    sq = np.add.reduceat(x ** 2, starts)
    quad = np.add.reduceat(x ** 4, starts)
    return float(np.abs(x).max()), float(sq.max()), float(quad.max())
