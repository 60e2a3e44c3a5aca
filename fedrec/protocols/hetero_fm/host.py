"""The host of the vertical FM: holds ``user_features`` and the parameters of the ``user_features`` field.

It answers the guest's requests (:mod:`fedrec.protocols.hetero_fm.messages`) through the party layer's
:func:`~fedrec.protocols.party.serve` until ``Done``:

* partials ``z_H(u) = Σ_j w_j x_j + ½(‖e_H‖² − Σ_j ‖v_j‖² x_j²)`` and ``e_H(u) = Σ_j v_j x_j`` for the
  batch users (optionally clipped to L2 norm ``dp_host_clip`` and Gaussian-noised, ε accounted:
  :class:`fedrec.crypto.dp.GaussianMechanism`);
* its gradient on the guest's ciphertexts, masked (:mod:`fedrec.protocols.hetero_fm.packing`);
  with a ``[compute]`` executor (``HeteroFMHost(..., executor=...)``, CKKS) the products, masks and
  serialization run on its workers (:mod:`.host_batch`);
* the released aggregates: unmask, divide by ``N_s``, optimizer step (Adam or SGD, same ``lr`` and
  defaults as the centralized FM, same per-sample L2, so the plain backend reproduces it).

Users are referenced only inside the aligned set the guest declares at ``Setup`` (the PSI
intersection): ``PartialsRequest`` by position in it, ``PredictRequest`` by raw id; anything outside is
refused. A batch without aligned users never reaches the host; the centralized FM still takes an
optimizer step on the host field there (zero gradient, but Adam's moments decay and move the
parameters), so the host replays those steps itself when the next batch, ``EpochEnd(n_batches)`` or a
``Checkpoint`` shows it skipped some. A batch's encrypted gradient may come in ``n_parts`` parts (slices
of the batch users); the host masks each part's products, keeps the sum of its masks and steps once on
the guest's single release.

Initialisation: ``w = 0``, ``v ~ N(0, init_std²)`` from ``torch.Generator().manual_seed(seed)`` (the host's
own stream: the centralized FM draws all fields from one stream, which the host cannot replay without
learning the guest's field sizes; see ``initial_state`` and the exactness test).

State and resume: everything the host must keep between requests is :class:`~.state.HostState`
(cursor, parameters, optimizer, best snapshot, aligned set, DP events). With a
:class:`~fedrec.protocols.checkpoint.Checkpointer` the host writes it when the guest asks
(``Checkpoint``), and on ``Resume`` picks the newest checkpoint both hold (see
:mod:`fedrec.protocols.checkpoint`).

Code: this module is the per-batch conversation (partials, encrypted residuals, releases, epoch ends)
and the serving loop; :mod:`.host_session` opens, resumes, checkpoints and closes the run and checks
the guest's batch numbers; :mod:`.host_model` holds the half itself (parameters, partials, optimizer
step, state capture and restore, the saved artifact); :mod:`.host_batch` one batch's encrypted work.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrec.artifacts import ArtifactError
from fedrec.compute.executor import Executor
from fedrec.profiling import StageClock
from fedrec.protocols import party
from fedrec.protocols.checkpoint import Checkpointer
from fedrec.protocols.hetero_fm.config import HOST_FIELD, HeteroFMConfig
from fedrec.protocols.hetero_fm.host_batch import HostBatch
from fedrec.protocols.hetero_fm.host_model import load_host_half
from fedrec.protocols.hetero_fm.host_session import HostSession, _row_bounds  # noqa: F401 (imported from here)
from fedrec.protocols.hetero_fm.messages import (
    EncryptedResiduals,
    EpochEnd,
    MaskedGradients,
    Partials,
    PartialsRequest,
    PredictRequest,
    ReleasedGradients,
    Setup,
)
from fedrec.protocols.hetero_fm.state import HostState, aligned_digest
from fedrec.protocols.hetero_fm.transcript import BatchRelease, HostTranscript
from fedrec.protocols.messages import Ack, Checkpoint, Done, Hello, Resume
from fedrec.protocols.party import Rejection
from fedrec.transport.channel import Channel, Received

logger = logging.getLogger(__name__)


class HeteroFMHost(HostSession):
    """The host party. ``HeteroFMHost(channel, guest="guest", config=cfg).serve(user_features)``."""

    def __init__(self, channel: Channel | None, guest: str = "guest", config: HeteroFMConfig | None = None,
                 transcript: HostTranscript | None = None, ahead: bool = True,
                 executor: Executor | None = None) -> None:
        super().__init__(guest, config or HeteroFMConfig(), transcript)
        self.channel = channel
        #: where the CKKS products run (``None`` or the ``local`` engine: in this process, as always)
        self.executor = executor
        #: prepare each batch's plaintext products and masks while the guest computes (host_batch.py);
        #: ``False``: all of it when the guest's ciphertexts arrive (same results)
        self.ahead = ahead
        self.stats = party.ServeStats()
        #: seconds per stage of the requests it serves (``handle:<request>`` around each, and inside:
        #: multipliers, deserialize, products, mask, serialize, step)
        self.stages = StageClock()

    @property
    def rejected(self) -> int:
        """Requests answered with ``Rejected`` or skipped as unexpected."""
        return self.stats.rejected

    # ------------------------------------------------------------------ serving loop
    def serve(self, user_features: pd.DataFrame, checkpoint: Checkpointer | None = None) -> HeteroFMHost:
        """Answer the guest until it sends ``Done``; returns ``self`` (trained parameters loaded).
        ``checkpoint``: where to write the state when the guest asks, and to resume from."""
        if self.channel is None:
            raise RuntimeError("HeteroFMHost.serve: this host was loaded without a channel")
        self._fit_features(user_features)
        self._ckpt = checkpoint
        handlers: dict[type[Any], party.Handler] = {
            Hello: self._on_hello, Resume: self._on_resume, Setup: self._on_setup,
            PartialsRequest: self._on_partials, PredictRequest: self._on_predict,
            EncryptedResiduals: self._on_residuals, ReleasedGradients: self._on_release,
            EpochEnd: self._on_epoch_end, Checkpoint: self._on_checkpoint, Done: self._on_done,
        }
        party.serve(self.channel, self.guest, handlers, timeout=self.config.timeout, until=(Done,),
                    stats=self.stats, who="host")
        return self


    def _check_users(self, users: np.ndarray) -> None:
        assert self._rows is not None
        n = self._rows.n_rows - 1
        if users.size and (users.min() < 0 or users.max() >= n):
            raise Rejection("users", f"user indices must be in [0, {n}), got {users.min()}..{users.max()}")
        if users.size > 1 and np.any(np.diff(users) <= 0):
            raise Rejection("users", "user indices must be strictly increasing (unique)")

    def _answer(self, users: np.ndarray) -> Partials:
        """Partials (noised when configured) of aligned positions ``users``."""
        assert self._rows is not None
        z, e = self._noised(*self._partials_for_rows(self._rows, users))
        lens = np.diff(self._rows.indptr)[users] if users.size else np.zeros(0, np.int64)
        return Partials(z, e, lens > 0)


    def _on_partials(self, rec: Received[PartialsRequest]) -> Partials:
        with self.stages("handle:partials"):
            return self._partials_answer(rec)

    def _partials_answer(self, rec: Received[PartialsRequest]) -> Partials:
        msg = rec.msg
        self._require_setup(msg)
        if msg.purpose == "train":
            self._check_cursor(msg.epoch, msg.batch)
        elif msg.epoch > self.config.epochs or msg.batch != 0:
            raise Rejection("epoch", f"{msg.purpose} partials for epoch {msg.epoch} batch {msg.batch}: "
                                     f"expected batch 0 of an epoch up to {self.config.epochs}")
        users = np.asarray(msg.users, dtype=np.int64)
        self._check_users(users)
        if msg.purpose == "train":
            self._catch_up(msg.epoch, msg.batch)
            self._batch = HostBatch(msg.epoch, msg.batch, users.copy(), static=self._static)
        elif self.transcript is not None:
            self.transcript.record_request(msg.purpose, msg.epoch, users)
        answer = self._answer(users)
        if msg.purpose == "train" and self._batch is not None and users.size and self.ahead:
            assert self._backend is not None and self._rows is not None and self.params is not None
            self._batch.prepare_async(self._backend, self._rows, self.params.w[HOST_FIELD].detach().numpy(),
                                      self.params.v[HOST_FIELD].detach().numpy(), self.config, self.spec.size,
                                      self.stages, self.executor)
        return answer

    def _on_predict(self, rec: Received[PredictRequest]) -> Partials:
        msg = rec.msg
        self._require_setup(msg)
        assert self._aligned is not None
        pos = self._aligned.get_indexer(pd.Index(np.asarray(msg.user_ids, dtype=object)))
        if np.any(pos < 0):
            first = msg.user_ids[int(np.flatnonzero(pos < 0)[0])]
            raise Rejection("user_ids", f"{int((pos < 0).sum())} id(s) outside the aligned set declared at "
                                        f"setup (first: {first!r}); only aligned users are scored")
        if self.transcript is not None:
            self.transcript.record_request("predict", self._cursor[0], pos)
        return self._answer(pos.astype(np.int64))

    # ------------------------------------------------------------------ gradient and step
    def _on_residuals(self, rec: Received[EncryptedResiduals]) -> MaskedGradients:
        with self.stages("handle:residuals"):
            return self._residuals_answer(rec)

    def _residuals_answer(self, rec: Received[EncryptedResiduals]) -> MaskedGradients:
        msg = rec.msg
        self._require_setup(msg)
        assert self._backend is not None and self._rows is not None and self.params is not None
        work = self._batch
        if work is None:
            raise Rejection("batch", f"residuals for epoch {msg.epoch} batch {msg.batch}, but no batch is "
                                     f"open")
        limit = self.config.batch_size * (1 + max(self.config.n_negatives, 0))
        if msg.n_samples > limit:
            raise Rejection("n_samples", f"{msg.n_samples} samples in one batch; batch_size "
                                         f"{self.config.batch_size} with {self.config.n_negatives} "
                                         f"negative(s) allows {limit}")
        if work.check_part(msg):
            with self.stages("wait:ahead"):
                work.join_ahead()
            if work.mult is None:  # nothing made ahead (or it failed: this raises what is wrong)
                with self.stages("multipliers"):
                    work.multipliers(self._rows, self.params.w[HOST_FIELD].detach().numpy(),
                                     self.params.v[HOST_FIELD].detach().numpy(), self.config)
            work.start(msg)
        return work.products(self._backend, msg, self.config, self.stages, self.executor)

    def _on_release(self, rec: Received[ReleasedGradients]) -> Ack:
        with self.stages("handle:release"):
            return self._release_answer(rec)

    def _release_answer(self, rec: Received[ReleasedGradients]) -> Ack:
        msg = rec.msg
        self._require_setup(msg)
        work = self._batch
        if work is None:
            raise Rejection("batch", f"released gradients for epoch {msg.epoch} batch {msg.batch} with no "
                                     f"outstanding masked gradients for it")
        cols, g_v, g_w = work.gradient(msg, self.config)
        self._batch = None
        if self.transcript is not None:
            self.transcript.record_release(BatchRelease(msg.epoch, msg.batch, work.users, cols,
                                                        work.n_samples, g_v, g_w))
        with self.stages("step"):
            self._opt_step(cols, g_v, g_w)
        self._cursor = (msg.epoch, msg.batch + 1)
        self._report_progress()
        return Ack(f"step e{msg.epoch} b{msg.batch}")

    def _on_epoch_end(self, rec: Received[EpochEnd]) -> Ack:
        msg = rec.msg
        self._require_setup(msg)
        assert self.params is not None
        self._check_cursor(msg.epoch, 0)
        if msg.n_batches != self._n_batches:
            raise Rejection("n_batches", f"epoch {msg.epoch} ends after {msg.n_batches} batch(es); the "
                                         f"set-up declared {self._n_batches}")
        self._catch_up(msg.epoch, msg.n_batches)
        if self.transcript is not None:
            self.transcript.record_epoch_end(msg.epoch, msg.stop, msg.n_batches, msg.best_epoch)
        self._snapshots[msg.epoch + 1] = self._params_copy()
        for old in [e for e in self._snapshots if e < msg.epoch + 1 - self.config.patience]:
            del self._snapshots[old]
        if msg.stop:
            best = self._snapshots.get(msg.best_epoch)
            if best is None:
                raise Rejection("best_epoch", f"epoch {msg.best_epoch}'s parameters are not kept (epochs "
                                              f"{sorted(self._snapshots)} are; patience "
                                              f"{self.config.patience})")
            self.params.load_state_dict(best)
            self._snapshots = {msg.best_epoch: best}
        self._batch = None
        self._cursor = (msg.epoch + 1, 0)
        self._report_progress(stop=msg.stop)
        return Ack(f"epoch {msg.epoch}")

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, directory: str | Path) -> HeteroFMHost:
        """A host half saved by :meth:`save`, ready for :meth:`export_partials` with a features table
        (e.g. next month's campaign users; DESIGN §6) without retraining. No channel."""
        params, encoder, config, run_id = load_host_half(directory)
        host = cls(None, config=config)
        host.encoder, host.params, host.run_id = encoder, params, run_id
        return host

    @classmethod
    def restore_final(cls, checkpoint: Checkpointer, user_features: pd.DataFrame, config: HeteroFMConfig,
                      run_id: str | None = None) -> HeteroFMHost | None:
        """The trained host from the newest *final* checkpoint in ``checkpoint`` (of ``run_id`` if given),
        or ``None``: lets a job whose training is over export again after a crash, without the guest.
        ``user_features``: the aligned users' rows, in any order (checked as a set against the
        checkpoint's aligned set); the restored host exports partials, it does not serve the guest."""
        finals = [i for i in checkpoint.list(run_id, role="host") if i.final]
        if not finals:
            return None
        host = cls(None, config=config)
        host._fit_features(user_features)
        state = HostState.from_artifact(checkpoint.load(finals[0]), config)
        assert host._table is not None
        if aligned_digest(host._table.index, ordered=False) != state.aligned_set_sha256:
            raise ArtifactError(f"{finals[0].path}: the final checkpoint was trained on another aligned set "
                                f"than the {len(host._table)} users given (aligned.csv changed?)")
        host._aligned = host._table.index
        host.run_id = state.run_id
        host._restore(state)
        return host
