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
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.artifacts import ArtifactError
from fedrec.compute.executor import Executor
from fedrec.crypto.backend import CryptoBackend, KeyPin, load_public
from fedrec.crypto.dp import GaussianMechanism, PrivacyAccountant
from fedrec.data.idmap import id_keys
from fedrec.models.fields import Csr, FieldSpec, TableEncoder
from fedrec.models.fm_core import FMParams, combine
from fedrec.models.training import make_optimizer
from fedrec.profiling import StageClock
from fedrec.protocols import party
from fedrec.protocols.checkpoint import Checkpointer, CheckpointInfo
from fedrec.protocols.hetero_fm.config import (
    AGREED_FIELDS,
    HOST_FIELD,
    PROTOCOL,
    PROTOCOL_VERSION,
    HeteroFMConfig,
)
from fedrec.protocols.hetero_fm.host_batch import HostBatch, StaticLayout
from fedrec.protocols.hetero_fm.host_model import load_host_half, save_host_half
from fedrec.protocols.hetero_fm.messages import (
    EncryptedResiduals,
    EpochEnd,
    MaskedGradients,
    Partials,
    PartialsRequest,
    PredictRequest,
    ReleasedGradients,
    Setup,
    SetupAck,
)
from fedrec.protocols.hetero_fm.state import HostState, aligned_digest
from fedrec.protocols.hetero_fm.transcript import BatchRelease, HostTranscript
from fedrec.protocols.messages import Ack, Checkpoint, Checkpointed, Done, Hello, Resume, ResumeAt
from fedrec.protocols.party import Rejection
from fedrec.transport.channel import Channel, Received

logger = logging.getLogger(__name__)


class HeteroFMHost:
    """The host party. ``HeteroFMHost(channel, guest="guest", config=cfg).serve(user_features)``."""

    def __init__(self, channel: Channel | None, guest: str = "guest", config: HeteroFMConfig | None = None,
                 transcript: HostTranscript | None = None, ahead: bool = True,
                 executor: Executor | None = None) -> None:
        self.channel = channel
        #: where the CKKS products run (``None`` or the ``local`` engine: in this process, as always)
        self.executor = executor
        #: prepare each batch's plaintext products and masks while the guest computes (host_batch.py);
        #: ``False``: all of it when the guest's ciphertexts arrive (same results)
        self.ahead = ahead
        #: when set, what this host learns is recorded there (leakage evaluation; :mod:`.transcript`)
        self.transcript = transcript
        self.guest = guest
        self.config = config or HeteroFMConfig()
        self.encoder: TableEncoder | None = None
        self.params: FMParams | None = None
        self.initial_state: dict[str, torch.Tensor] = {}
        c = self.config
        self._dp = (GaussianMechanism(c.dp_host_noise_multiplier, c.dp_host_clip)
                    if c.dp_host_noise_multiplier > 0 else None)
        self.stats = party.ServeStats()
        #: seconds per stage of the requests it serves (``handle:<request>`` around each, and inside:
        #: multipliers, deserialize, products, mask, serialize, step)
        self.stages = StageClock()
        self.run_id: str | None = None
        #: the cursor resumed from at the last Resume (``None``: started afresh)
        self.resumed_from: tuple[int, int, bool] | None = None
        self.closed = False
        self._ckpt: Checkpointer | None = None
        self._table: pd.DataFrame | None = None
        self._rows: Csr | None = None
        self._backend: CryptoBackend | None = None
        self._opt: torch.optim.Optimizer | None = None
        #: the host field's optimizer (HeteroFMConfig.host_update: host_optimizer, else optimizer)
        self.optimizer_name = self.config.host_update
        #: parameters after each of the last ``patience + 1`` epochs (1-based; 0 = initial)
        self._snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self._aligned: pd.Index | None = None
        self._batch: HostBatch | None = None
        #: layout ``static``: the run's layout and plaintexts, kept across batches (made at the first one)
        self._static: StaticLayout | None = None
        self._cursor = (0, 0)  # (epoch, batches of it already stepped)
        self._final = False
        self._hello = False
        self._pending: HostState | None = None
        self._rolled_back: list[list[Any]] = []
        #: batches per epoch declared at Setup: bounds every batch number of the guest
        self._n_batches = 0
        #: the Setup applied since the last Hello (its digest) and its answer: an identical retransmit
        #: gets the same answer without touching the state; any other Setup is refused
        self._setup_done: tuple[str, SetupAck] | None = None
        #: ``progress(batches_done, batches_total, epoch)`` (epoch 1-based: the one in progress, or the one
        #: just ended), called whenever the training cursor moves
        #: (a progress bar, :mod:`training.progress`); at the end of the stopping epoch total == done
        self.progress: Callable[[int, int, int], None] | None = None

    @property
    def rejected(self) -> int:
        """Requests answered with ``Rejected`` or skipped as unexpected."""
        return self.stats.rejected

    @property
    def accountant(self) -> PrivacyAccountant | None:
        return None if self._dp is None else self._dp.accountant

    # ------------------------------------------------------------------ features and partials
    @property
    def spec(self) -> FieldSpec:
        assert self.encoder is not None
        return FieldSpec(HOST_FIELD, "host", "user", self.encoder.size)

    def _fit_features(self, user_features: pd.DataFrame) -> None:
        if not isinstance(user_features, pd.DataFrame) or len(user_features) == 0:
            raise ValueError("HeteroFMHost.serve: user_features must be a non-empty DataFrame indexed by "
                             "user_id")
        table = user_features.copy()
        table.index = pd.Index(id_keys(table.index, source="user_features index"), name=table.index.name)
        self.encoder = TableEncoder.fit(table, HOST_FIELD, self.config.user_feature_columns)
        self._table = table
        self._init_params()

    def _init_params(self) -> None:
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        self.params = FMParams([self.spec], c.n_factors, c.init_std, 0.0, {HOST_FIELD: c.l2_host_factors},
                               c.l2_linear, generator=gen)
        self.initial_state = {k: v.detach().clone() for k, v in self.params.state_dict().items()}

    def _partials_for_rows(self, rows: Csr, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.params is not None
        with torch.no_grad():
            t = self.params.bag_terms(self.spec, *rows.gather(idx))
            z, e = combine([t], None, len(idx), self.config.n_factors)
        return z.numpy().astype(np.float64), e.numpy().astype(np.float64)

    def _noised(self, z: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._dp is None or len(z) == 0:
            return z, e
        both, _ = self._dp.clip_and_noise(np.concatenate([z[:, None], e], axis=1))
        return both[:, 0], both[:, 1:]

    def _journal_releases(self) -> None:
        """With partial DP and checkpoints: journal every release before its noise is drawn; releases a
        crash rolled back (after the resumed checkpoint) stay in the account (``PrivacyJournal``)."""
        self._rolled_back = []
        if self._dp is None or self._ckpt is None or not self.run_id:
            return
        journal = self._ckpt.journal(self.run_id, "host", "partials")
        self._rolled_back = journal.roll_back(len(self._dp.accountant.events))
        self._dp.accountant.journal = journal.append

    def aligned_design(self) -> Any:
        """The host's own feature matrix of the aligned users, ``scipy.sparse.csr_matrix[n_aligned,
        n_host_features]`` (row = position in the aligned list of ``Setup``): what the host can combine
        with its transcript (leakage evaluation)."""
        import scipy.sparse as sp

        if self._rows is None:
            raise RuntimeError("HeteroFMHost.aligned_design: no Setup yet")
        r = self._rows
        n = r.n_rows - 1  # the last row is the empty one of unknown users
        return sp.csr_matrix((r.values[:r.indptr[n]], r.indices[:r.indptr[n]], r.indptr[:n + 1]),
                             shape=(n, self.spec.size))

    def privacy_spent(self) -> float | None:
        """ε (at ``dp_delta``) of the released partials per user, or ``None`` without host DP.

        Each request releases every listed user's partials once; the bound composes all requests
        (a user appears in at most all of them). After a resume it also counts the releases a crash
        rolled back (the guest saw them; see ``PrivacyJournal``)."""
        if self._dp is None:
            return None
        acc = self._dp.accountant
        if not self._rolled_back:
            return acc.epsilon(self.config.dp_delta)
        total = PrivacyAccountant.from_json({"relation": acc.relation,
                                             "events": acc.to_json()["events"] + self._rolled_back})
        return total.epsilon(self.config.dp_delta)

    def export_partials(self, user_ids: Any, user_features: pd.DataFrame | None = None) -> pd.DataFrame:
        """``DataFrame[user_id, z_H, e_H_0..e_H_{k-1}]`` for serving (users without features: absent).

        ``user_features``: the table to encode (e.g. next month's campaign users, with a host loaded by
        :meth:`load`); default: the table the host trained with."""
        table = self._table if user_features is None else user_features.copy()
        if self.encoder is None or self.params is None or table is None:
            raise RuntimeError("HeteroFMHost.export_partials: nothing trained or loaded, and no "
                               "user_features")
        if user_features is not None:
            table.index = pd.Index(id_keys(table.index, source="user_features index"), name=table.index.name)
        raw = list(user_ids)
        keys = pd.Index(id_keys(raw, source="user_ids"))
        pos = table.index.get_indexer(keys)
        keep = np.flatnonzero(pos >= 0)
        rows = self.encoder.transform(table, table.index.to_numpy()[pos[keep]], HOST_FIELD)
        z, e = self._partials_for_rows(rows, np.arange(len(keep)))
        out = pd.DataFrame({"user_id": [raw[i] for i in keep], "z_H": z})
        for f in range(e.shape[1]):
            out[f"e_H_{f}"] = e[:, f]
        return out

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
            self._init_params()
            assert self.params is not None
            self._opt = make_optimizer(self.optimizer_name, self.params.parameters(), self.config.lr)
            self._snapshots, self._cursor, self._final = {0: self._params_copy()}, (0, 0), False
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

    def _opt_step(self, cols: np.ndarray | None, g_v: np.ndarray | None, g_w: np.ndarray | None) -> None:
        assert self.params is not None and self._opt is not None
        gv = torch.zeros(self.spec.size, self.config.n_factors)
        gw = torch.zeros(self.spec.size)
        if cols is not None and g_v is not None and g_w is not None:
            gv[torch.from_numpy(cols)] = torch.from_numpy(g_v.astype(np.float32))
            gw[torch.from_numpy(cols)] = torch.from_numpy(g_w.astype(np.float32))
        self._opt.zero_grad()
        self.params.v[HOST_FIELD].grad = gv
        self.params.w[HOST_FIELD].grad = gw
        self.params.bias.grad = None
        self._opt.step()

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

    def _params_copy(self) -> dict[str, torch.Tensor]:
        assert self.params is not None
        return {k: v.detach().clone() for k, v in self.params.state_dict().items()}

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

    # ------------------------------------------------------------------ state and checkpoints
    def state(self) -> HostState:
        """The host's protocol state now (between batches)."""
        assert self.params is not None and self._opt is not None and self._aligned is not None
        return HostState.capture(self.run_id or "", list(self._aligned), self._cursor,
                                 self._final, self.params, self._opt, self._snapshots,
                                 None if self._dp is None else self._dp.accountant, self.config)

    def _restore(self, state: HostState) -> None:
        assert self.params is not None
        self._opt = make_optimizer(self.optimizer_name, self.params.parameters(), self.config.lr)
        state.apply(self.params, self._opt)
        self._snapshots = dict(state.snapshots)
        self._cursor = (state.epoch, state.batch)
        self._final = state.final
        if self._dp is not None:
            self._dp = GaussianMechanism(self.config.dp_host_noise_multiplier, self.config.dp_host_clip,
                                         accountant=state.accountant)
            self._dp.releases = len(self._dp.accountant.events)
        self.resumed_from = (state.epoch, state.batch, state.final)

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

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """The host half (:mod:`.host_model`): ``w``/``v`` of the user-feature field, its encoder, the
        config and the run id, one verified artifact (written atomically)."""
        if self.params is None or self.encoder is None:
            raise RuntimeError("HeteroFMHost.save: nothing trained yet")
        return save_host_half(directory, self.params, self.spec, self.encoder, self.config, self.run_id)

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
