"""The guest of the vertical FM: labels, its own fields, and the only secret key (DESIGN §4.2).

Training runs the one training loop, :class:`fedrec.models.training.Trainer`, exactly as the
centralized :class:`~fedrec.models.fm.FactorizationMachine` does: the same rows in the same batches
(``default_rng([seed, epoch]).permutation``), the same negatives (``default_rng([seed, epoch, 1])``),
the same losses, optimizer, per-sample L2 and early stopping. Only its ``step`` hook differs: per
batch::

    z_s = z_G(s) + z_H(u_s) + <e_G(s), e_H(u_s)>          (z_H, e_H from the host, per batch user)
    loss = data(z) + mean_s R_G(s)                        (the host adds its own L2 through c_u)

``z_H``/``e_H`` enter as leaf tensors, so one backward pass gives the guest's own gradient and, as their
gradients, ``Δ_u = Σ_s δ_s`` and ``Q_u = Σ_s δ_s e_G(s)``; the encrypted per-user vector is built from
them (:mod:`fedrec.protocols.hetero_fm.packing`). The guest's fields, tables and id maps are those of a
:class:`~fedrec.models.fm.FactorizationMachine` without ``user_features`` (``self.local``), initialised
from ``torch.Generator().manual_seed(seed)`` as that model would be. The reported training loss leaves
out the host's L2 term (the guest never sees the host's parameters); so does the ranking validation
loss.

Aligned users only. ``fit(..., aligned_users=ids)`` (the PSI intersection; default: every user of
``interactions``) declares the only users the guest will ever reference to the host. Every other user
is handled locally with ``z_H = 0, e_H = 0`` — exactly what the centralized FM computes for a user
without a host feature row — and gets no row in the encrypted residuals; a batch without aligned users
needs no host round trip (the host zero-steps its optimizer for it, see :mod:`.host`). ``predict`` /
``recommend`` likewise ask only for aligned users (the others fall back to the guest terms, counted;
see :mod:`.guest_inference`).

Large batches: the encrypted gradient of a batch is split into as many parts as the CKKS modulus
requires (:func:`packing.plan_parts`); the guest sums the decrypted parts and releases one value per
column, so the host learns the same batch aggregate as without the split.

Validation: after every epoch the guest asks the host for the partials of the aligned validation users
(the others get zero partials, as the centralized model gives them empty user fields) and decides;
``EpochEnd(stop, n_batches, best_epoch)`` keeps the host in step: it keeps its parameters of the last
``patience + 1`` epochs and, at the stop, restores the best epoch's; it learns no per-epoch bit.

Checkpoints (``fit(..., checkpoint=Checkpointer(...))``): at every epoch end, and every
``every_batches`` batches if set, the guest asks the host to checkpoint, then writes its own
:class:`~.state.GuestState` (see :mod:`fedrec.protocols.checkpoint` for the agreement). A ``fit`` with
checkpoints present resumes from the newest one both parties hold; a fresh CKKS key is made anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.artifacts import read_json, write_json_atomic
from fedrec.crypto.backend import CryptoBackend, CryptoError, flood_and_round, make_backend
from fedrec.crypto.dp import PrivacyAccountant, noise_multiplier_for
from fedrec.data.idmap import id_keys
from fedrec.models.base import NO_HOST_PARTIAL, ModelFormatError, Recommender, SeenItems, factor_scores
from fedrec.models.fm import FactorizationMachine
from fedrec.models.fm_core import combine
from fedrec.models.training import EpochContext, StepContext, Trainer, TrainHistory
from fedrec.models.vertical import HostPartials, VerticalFM, join_user_factors
from fedrec.protocols.checkpoint import Checkpointer
from fedrec.protocols.hetero_fm import label_dp, packing
from fedrec.protocols.hetero_fm.config import HOST_FIELD, PROTOCOL, PROTOCOL_VERSION, HeteroFMConfig
from fedrec.protocols.hetero_fm.guest_inference import ask_host_partials
from fedrec.protocols.hetero_fm.messages import (
    Ack,
    Done,
    EncryptedResiduals,
    EpochEnd,
    HeteroFMError,
    MaskedGradients,
    Partials,
    PartialsRequest,
    ReleasedGradients,
    Setup,
    SetupAck,
)
from fedrec.protocols.hetero_fm.state import GuestState, aligned_digest
from fedrec.protocols.messages import Checkpoint, Checkpointed, CheckpointRef, Hello, Resume, ResumeAt
from fedrec.protocols.party import Peer
from fedrec.transport.channel import Channel

logger = logging.getLogger(__name__)


class HeteroFMGuest(Recommender):
    """The guest party: ``HeteroFMGuest(channel, host="host", config=cfg).fit(interactions)``.

    A :class:`~fedrec.models.base.Recommender` (``predict``, ``recommend``, unknown-id handling and
    fallback counts as every model), whose scores join the host's partials (:mod:`.guest_inference`):
    it needs its channel to the host for ``fit`` and for scoring. Its saved half (:meth:`save`) loads as
    a :class:`~fedrec.models.fm.FactorizationMachine`, or joined with the host's exported partials as a
    :class:`~fedrec.models.vertical.VerticalFM`."""

    def __init__(self, channel: Channel, host: str = "host", config: HeteroFMConfig | None = None) -> None:
        super().__init__()
        self.channel = channel
        self.host = host
        self.config = config or HeteroFMConfig()
        self.peer = Peer(channel, host, timeout=self.config.timeout, error=HeteroFMError)
        params = self.config.fm_params()
        params["use_user_features"] = False
        self.local = FactorizationMachine(**params)
        self.history = TrainHistory()
        self.initial_state: dict[str, torch.Tensor] = {}
        self.clipped_values = 0
        self.n_host_features = 0
        #: the largest number of non-zero host features of one aligned user (label-DP sensitivity)
        self.host_row_nnz = 0
        #: the host's bounds over its aligned rows (label-DP sensitivity)
        self.host_rows = label_dp.RowBounds(0, 0.0, 0.0, 0.0)
        self.timings: dict[str, float] = {"epoch_seconds": 0.0}
        self.run_id: str | None = None
        #: the cursor (epoch, batch, final) the last fit resumed from; ``None``: it started afresh
        self.resumed_from: tuple[int, int, bool] | None = None
        self._backend: CryptoBackend | None = None
        self._label_dp: label_dp.LabelDP | None = None
        self._closed = False
        self._ckpt: Checkpointer | None = None
        self._declared: list[str] = []
        #: per guest inner user id: its position in the aligned list sent at setup, or -1
        self._aligned_pos = np.zeros(0, dtype=np.int64)
        #: raw id (as str) -> position, for every declared (aligned) user
        self._aligned_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ messaging
    def _partials(self, purpose: str, epoch: int, batch: int, users: np.ndarray, step: str
                  ) -> tuple[np.ndarray, np.ndarray]:
        ans = self.peer.ask(PartialsRequest(purpose, epoch, batch, users), Partials, step)
        k = self.config.n_factors
        if ans.z.shape != (len(users),) or ans.e.shape != (len(users), k):
            raise HeteroFMError(self.host, step, f"partials of shape {ans.z.shape}/{ans.e.shape}, expected "
                                                 f"({len(users)},)/({len(users)}, {k})")
        return ans.z, ans.e

    # ------------------------------------------------------------------ setup
    def _prepare(self, inter: pd.DataFrame, item_features: pd.DataFrame | None, validation: object
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The guest's fields, id maps and initial parameters, exactly as the centralized FM without the
        host's field (``inter`` was checked by :meth:`Recommender.fit`)."""
        fm = self.local
        train, val = fm.prepare_fit(inter, None, item_features, validation)
        fm.init_params(train["rating"].to_numpy(dtype=np.float64))
        assert fm.params is not None and fm.user_map is not None and fm.item_map is not None
        self.initial_state = {k: v.detach().clone() for k, v in fm.params.state_dict().items()}
        self.user_map, self.item_map = fm.user_map, fm.item_map
        return train, val

    def _declare(self, aligned_users: Iterable[Any] | None) -> list[str]:
        """The aligned list sent at setup: aligned training users in inner-id order (so sorted inner ids
        map to increasing positions), then aligned users without training rows."""
        assert self.local.user_map is not None
        train_ids = id_keys(self.local.user_map.raw_ids, source="interactions user_id")
        if aligned_users is None:
            wanted = set(train_ids)
        elif isinstance(aligned_users, (str, bytes)) or not isinstance(aligned_users, Iterable):
            raise TypeError(f"HeteroFMGuest.fit: aligned_users must be an iterable of user ids, got "
                            f"{type(aligned_users).__name__}")
        else:
            wanted = set(id_keys(aligned_users, source="aligned_users"))
        declared = [u for u in train_ids if u in wanted]
        known = set(declared)
        declared += sorted(u for u in wanted if u not in known)
        self._aligned_ids = {u: p for p, u in enumerate(declared)}
        self._aligned_pos = np.array([self._aligned_ids.get(u, -1) for u in train_ids], dtype=np.int64)
        logger.info("guest: %d of %d training users are aligned (%d aligned users declared in all)",
                    len(known), len(train_ids), len(declared))
        return declared

    def _hello(self, run_id: str) -> None:
        self.run_id = run_id
        self.peer.ask(Hello(PROTOCOL, PROTOCOL_VERSION, run_id, self.config.agreed()), Ack, "fm/setup")

    def _resume(self, declared: list[str]) -> GuestState | None:
        """Offer our checkpoints of this run (newest first, only those of this aligned set); load the
        one the host also holds, or ``None`` to start afresh."""
        ckpt = self._ckpt
        if ckpt is None or self.run_id is None:
            return None
        digest = aligned_digest(declared)
        offers: list[tuple[CheckpointRef, Any]] = []
        for info in ckpt.list(self.run_id, role="guest"):
            meta = read_json(info.path / "meta.json")
            if meta.get("aligned_sha256") != digest:
                logger.warning("guest: checkpoint %s was made with another aligned set; not offered",
                               info.path.name)
                continue
            offers.append((CheckpointRef(info.epoch, info.batch, info.final, info.digest,
                                         str(meta.get("peer_digest", ""))), info))
        if not offers:
            return None
        at = self.peer.ask(Resume(self.run_id, [o for o, _ in offers]), ResumeAt, "fm/setup")
        if not at.found:
            logger.warning("guest: the host holds none of our %d checkpoint(s); starting afresh",
                           len(offers))
            return None
        want = (at.epoch, at.batch, at.digest)
        chosen = [i for o, i in offers if (o.epoch, o.batch, o.peer_digest) == want]
        if not chosen:
            raise HeteroFMError(self.host, "fm/setup", f"resume at e{at.epoch} b{at.batch}, which we did not "
                                                       f"offer")
        state = GuestState.from_artifact(ckpt.load(chosen[0]), self.config)
        self.resumed_from = chosen[0].cursor
        logger.info("guest: resuming run %s at epoch %d batch %d%s", self.run_id, at.epoch, at.batch,
                    " (final)" if chosen[0].final else "")
        return state

    def _setup(self, users: list[str], releases: int, n_batches: int) -> None:
        """A fresh key pair and the aligned list; label DP calibrated for up to ``releases`` releases."""
        c = self.config
        opts: dict[str, object] = {}
        if c.backend == "ckks":
            opts = {"preset": c.ckks_preset}
        elif c.backend == "paillier":
            opts = {"key_bits": c.paillier_key_bits}
        self._backend = make_backend(c.backend, **opts)
        public = self._backend.public_bytes()
        digest = hashlib.sha256(public).hexdigest()
        ack = self.peer.ask(Setup(public, digest, users, n_batches), SetupAck, "fm/setup")
        self.n_host_features = ack.n_host_features
        self.host_row_nnz = ack.max_row_nnz
        self.host_rows = label_dp.RowBounds(ack.max_row_nnz, ack.max_abs_value, ack.max_row_sq,
                                            ack.max_row_quad)
        self._label_dp = None
        z = c.dp_guest_noise_multiplier
        target = c.label_epsilon
        if target is not None:
            z = noise_multiplier_for(target, c.dp_delta, max(releases, 1), relation="replace")
        if not c.label_dp_on:
            logger.warning("guest: label DP is OFF (label_dp='off'): the host can read labels from columns "
                           "one user touches in a batch (docs/SECURITY.md)")
        else:
            self._label_dp = label_dp.LabelDP(z, c.dp_guest_clip, c.dp_delta)
            if c.layout == "hiding":
                logger.warning("guest: label DP with layout 'hiding' bounds the host's factor terms by "
                               "plain_bound: the same epsilon costs ~%.0fx the noise of layout 'compact' "
                               "(docs/SECURITY.md)", math.sqrt(c.n_factors) * c.plain_bound
                               / max(ack.max_abs_value * math.sqrt(2.0), 1e-9))
            logger.info("guest: label DP on: noise multiplier %.3g (sigma %.3g) for up to %d releases%s",
                        z, self._label_dp.sigma, releases,
                        "" if target is None else f": epsilon {target:g} at delta {c.dp_delta:g} for the "
                                                  f"whole training")
        logger.info("guest: host has %d features (at most %d per user) and rows for %d of our %d users; "
                    "context sha256 %s", ack.n_host_features, ack.max_row_nnz, ack.n_matched, len(users),
                    digest)

    # ------------------------------------------------------------------ fit
    def fit(self, interactions: pd.DataFrame | Any, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None, validation: object = None, *,
            aligned_users: Iterable[Any] | None = None, checkpoint: Checkpointer | None = None
            ) -> HeteroFMGuest:
        """Train with the host (see the module docstring); returns ``self``. The arguments of
        :meth:`Recommender.fit`, except that ``user_features`` must be ``None``: they are the host's.
        ``validation`` as in :meth:`FactorizationMachine.fit` (a DataFrame, or ``"random"`` /
        ``"cold"`` / ``"none"``). ``aligned_users``: the raw ids both parties hold (PSI); ``None``:
        every user of ``interactions``. No other user is ever referenced to the host. ``checkpoint``:
        write checkpoints there and resume from the newest one both parties hold."""
        if user_features is not None:
            raise TypeError("HeteroFMGuest.fit: user_features are the host's and never reach the guest; "
                            "pass item features as item_features=...")
        self._fit_args = (aligned_users, checkpoint)
        return super().fit(interactions, None, item_features, validation)

    def _fit(self, interactions: pd.DataFrame, user_features: pd.DataFrame | None,
             item_features: pd.DataFrame | None, validation: object) -> None:
        c = self.config
        aligned_users, checkpoint = self._fit_args
        self._ckpt = checkpoint
        train, val = self._prepare(interactions, item_features, validation)
        if val is not None and c.label_dp_on and not c.label_dp_bounds_validation:
            raise ValueError(f"HeteroFMGuest.fit: label DP with a validation set needs the logistic or "
                             f"clipped regression objective, not {c.objective!r}; pass validation='none'")
        self._declared = self._declare(aligned_users)
        self._hello(checkpoint.run_id if checkpoint is not None else uuid.uuid4().hex)
        self.resumed_from = None
        state = self._resume(self._declared)
        # one release per batch, and one per epoch for the noisy validation metric (with validation)
        n_batches = -(-len(train) // c.batch_size)  # Trainer.n_batches
        self._setup(self._declared, releases=c.epochs * (n_batches + (val is not None)), n_batches=n_batches)
        fm = self.local
        assert fm.user_map is not None and fm.item_map is not None and fm.params is not None
        self._u = fm.user_map.to_inner(train["user_id"])
        self._i = fm.item_map.to_inner(train["item_id"])
        self._ts = train["timestamp"].to_numpy(dtype=np.int64)
        self._y = torch.from_numpy(train["rating"].to_numpy(dtype=np.float64).astype(np.float32))
        self.clipped_values = 0
        if state is not None:
            self.clipped_values = state.clipped_values
            self.timings["epoch_seconds"] = state.epoch_seconds
            if self._label_dp is not None and state.accountant is not None:
                self._label_dp.restore(state.accountant)
        self._journal_releases()
        trainer = Trainer(fm.params, len(train), epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                          seed=c.seed, patience=c.patience,
                          val_fn=None if val is None else self._make_val_fn(val),
                          optimizer=c.optimizer, step=self._step, after_step=self._after_step,
                          on_epoch_end=self._on_epoch_end, state=None if state is None else state.loop,
                          show_progress=c.show_progress, desc=f"HeteroFM[{c.backend}]")
        self.history = fm.history = trainer.run()
        fm.seen = SeenItems.from_pairs(fm.user_map.to_inner(interactions["user_id"]),
                                       fm.item_map.to_inner(interactions["item_id"]), len(fm.user_map))
        logger.info("guest: %d epochs, best epoch %d, %.1fs (%d slot values clipped)",
                    len(self.history.train_loss), self.history.best_epoch, self.history.seconds,
                    self.clipped_values)

    # ------------------------------------------------------------------ inference (Recommender hooks)
    def _partials_for(self, raw_users: list[Any]) -> HostPartials:
        return ask_host_partials(self.peer, self._aligned_ids, self.config.n_factors, raw_users)

    def decision_function(self, pairs: pd.DataFrame) -> np.ndarray:
        """``z = z_G + z_H + <e_G, e_H>``; known users without host partials: ``z_G`` (counted in
        ``last_fallbacks["no_host_partial"]``)."""
        self._require_fitted()
        joined = VerticalFM(self.local, self._partials_for)
        try:
            return joined.decision_function(pairs)
        finally:
            self.last_fallbacks = joined.last_fallbacks

    def _predict_inner(self, users: np.ndarray, items: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
        counts = dict(self.last_fallbacks)
        z = self.decision_function(pairs)
        self.last_fallbacks = {**counts, NO_HOST_PARTIAL: self.last_fallbacks.get(NO_HOST_PARTIAL, 0)}
        return self.local.finish(z)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        """``score(u, i) = (a_u + z_H + <p_u, e_H>) + b_i + <p_u + e_H, q_i>`` for inner ``users``."""
        assert self.user_map is not None
        f = self.local.scoring_factors()
        known = users >= 0
        safe = np.where(known, users, 0)
        raw = np.empty(len(users), dtype=object)
        raw[known] = self.user_map.to_raw(users[known])
        rows = self._partials_for(list(raw[known]))
        found = np.zeros(len(users), dtype=bool)
        found[known] = rows.found if rows.found is not None else False
        full = HostPartials(raw, np.zeros(len(users)), np.zeros((len(users), self.config.n_factors)), found)
        full.z_h[known], full.e_h[known] = rows.z_h, rows.e_h
        a, p = join_user_factors(np.where(known, f.a_u[safe], 0.0), f.p_u[safe] * known[:, None], full)
        missing = int((known & ~found).sum())
        self.last_fallbacks[NO_HOST_PARTIAL] = self.last_fallbacks.get(NO_HOST_PARTIAL, 0) + missing
        return factor_scores(np.arange(len(users)), a, p, f.b_i, f.q_i)

    def get_params(self) -> dict[str, Any]:
        """The config's fields (a twin needs a channel too: ``HeteroFMGuest(channel, host, config)``)."""
        return asdict(self.config)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self.local._state()

    def _set_state(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        raise ModelFormatError("a HeteroFMGuest needs its host and is not loaded from disk: load its saved "
                               "half with FactorizationMachine.load, or VerticalFM.load(dir, partials)")

    def _journal_releases(self) -> None:
        """With label DP and checkpoints: every release is journaled before its noise is drawn, and the
        releases a crash rolled back (made after the resumed checkpoint) stay in the account."""
        self._rolled_back: list[list[Any]] = []
        if self._label_dp is None or self._ckpt is None or self.run_id is None:
            return
        journal = self._ckpt.journal(self.run_id, "guest", "label_dp")
        self._rolled_back = journal.roll_back(len(self._label_dp.accountant.events))
        self._label_dp.accountant.journal = journal.append

    def _step(self, ctx: StepContext) -> float:
        te = time.perf_counter()
        idx = ctx.idx
        loss = self._batch(ctx.epoch, ctx.batch, self._u[idx], self._i[idx], self._ts[idx], self._y[idx],
                           ctx.sampler, ctx.trainer.optimizer)
        self.timings["epoch_seconds"] += time.perf_counter() - te
        return loss

    def _after_step(self, ctx: StepContext) -> None:
        done = ctx.batch + 1
        if self._ckpt is not None and self._ckpt.due(done) and done < ctx.trainer.n_batches:
            self._checkpoint(ctx.trainer, ctx.epoch, done, final=False)

    def _on_epoch_end(self, ctx: EpochContext, improved: bool, stop: bool) -> None:
        # the host learns no per-epoch improvement bit, only the result's epoch when training stops
        best = ctx.trainer.history.best_epoch if stop else -1
        self.peer.ask(EpochEnd(ctx.epoch, stop, ctx.n_batches, best), Ack, f"fm/e{ctx.epoch}/end")
        if self._ckpt is not None:
            self._checkpoint(ctx.trainer, ctx.epoch + 1, 0, final=stop)

    def _checkpoint(self, trainer: Trainer, epoch: int, batch: int, final: bool) -> None:
        """The host first (it may end up one checkpoint ahead, never behind), then ours."""
        assert self._ckpt is not None and self.run_id is not None
        step = f"fm/e{epoch}/b{batch}/checkpoint" + ("/final" if final else "")
        host = self.peer.ask(Checkpoint(epoch, batch, final), Checkpointed, step)
        acc = None if self._label_dp is None else self._label_dp.accountant
        state = GuestState(self.run_id, aligned_digest(self._declared), trainer.checkpoint(),
                           self.clipped_values, acc, self.timings["epoch_seconds"])
        arrays, meta = state.to_arrays(self.config)
        meta["peer_digest"] = host.digest
        self._ckpt.save(epoch, batch, final, run_id=self.run_id, role="guest", arrays=arrays, meta=meta)

    def _scores(self, uu: np.ndarray, ii: np.ndarray, tt: np.ndarray, z_h: torch.Tensor, e_h: torch.Tensor,
                inv: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fm = self.local
        assert fm.params is not None
        terms = fm.terms(uu, ii, tt)
        z_g, e_g = combine(terms, fm.params.bias, len(uu), self.config.n_factors)
        reg = torch.zeros(len(uu))
        for t in terms:
            reg = reg + t.reg
        tinv = torch.from_numpy(inv)
        return z_g + z_h[tinv] + (e_g * e_h[tinv]).sum(dim=1), reg, e_g

    def _batch(self, epoch: int, b: int, u: np.ndarray, i: np.ndarray, ts: np.ndarray, y: torch.Tensor,
               sampler: np.random.Generator, opt: torch.optim.Optimizer) -> float:
        c = self.config
        step = f"fm/e{epoch}/b{b}"
        uu, ii, tt = self.local.expand_negatives(u, i, ts, sampler)
        users, inv = np.unique(uu, return_inverse=True)
        pos = self._aligned_pos[users]
        on = pos >= 0  # the others: z_H = e_H = 0 (no host row), no residual row, not sent
        z_np, e_np = np.zeros(len(users)), np.zeros((len(users), c.n_factors))
        if on.any():
            z_np[on], e_np[on] = self._partials("train", epoch, b, pos[on], f"{step}/partials")
        z_h = torch.tensor(z_np.astype(np.float32), requires_grad=True)
        e_h = torch.tensor(e_np.astype(np.float32), requires_grad=True)
        z, reg, e_g = self._scores(uu, ii, tt, z_h, e_h, inv)
        z.retain_grad()
        ranking = c.objective == "ranking"
        loss = self.local.data_loss(z, None if ranking else y, len(u)) + reg.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert z_h.grad is not None and e_h.grad is not None and z.grad is not None
        n_s = len(uu)
        if self._label_dp is None:
            delta = z_h.grad.numpy().astype(np.float64)
            q_hat = n_s * (e_h.grad.numpy().astype(np.float64) + delta[:, None] * e_np)
        else:  # per-sample clipping of the label-dependent part (label_dp.py)
            e_total = e_g.detach().numpy().astype(np.float64) + e_np[inv]
            d_s = label_dp.clip_residuals(z.grad.numpy().astype(np.float64), e_total, n_s, c.dp_guest_clip,
                                          layout=c.layout, rows=self.host_rows, plain_bound=c.plain_bound)
            delta = np.bincount(inv, weights=d_s, minlength=len(users)).astype(np.float64)
            q_hat = np.zeros((len(users), c.n_factors))
            np.add.at(q_hat, inv, n_s * d_s[:, None] * e_total)
        if not on.any():
            return float(loss.detach())
        counts = np.bincount(inv, minlength=len(users)).astype(np.float64)
        rows, clipped = packing.residual_rows(q_hat[on], n_s * delta[on], counts[on], c.l2_host_factors,
                                              c.value_bound, c.layout)
        if clipped:
            self.clipped_values += clipped
            logger.warning("guest: %s: %d slot value(s) beyond value_bound %g clipped", step, clipped,
                           c.value_bound)
        self._exchange(epoch, b, rows, n_s, step)
        return float(loss.detach())

    def _exchange(self, epoch: int, b: int, rows: np.ndarray, n_samples: int, step: str) -> None:
        c, be = self.config, self._backend
        assert be is not None
        try:
            plans = packing.plan_parts(be, len(rows), c.n_factors, self.n_host_features, c.layout,
                                       c.value_bound, c.plain_bound, c.hiding_bits)
            policy = packing.release_policy(be, plans, c.value_bound, c.plain_bound, c.hiding_bits)
        except CryptoError as exc:
            raise CryptoError(f"{step}: the batch's {len(rows)} aligned users (batch_size={c.batch_size}) "
                              f"cannot be released: {exc}") from exc
        width = packing.released_width(c.n_factors, c.layout)
        parts = np.array_split(np.arange(len(rows)), len(plans))
        values: np.ndarray | None = None
        for p, (plan, sel) in enumerate(zip(plans, parts, strict=True)):
            chunks = packing.encrypt_chunks(be, rows[sel], plan)
            msg = EncryptedResiduals(epoch, b, n_samples, plan.users_per_chunk, plan.lanes,
                                     [be.serialize(ct) for ct in chunks], p, len(plans))
            where = f"{step}/grad" if len(plans) == 1 else f"{step}/grad/p{p}"
            ans = self.peer.ask(msg, MaskedGradients, where)
            sums = [packing.lane_sums(be.decrypt(be.deserialize(blob, plan.ct_size, 1)), plan)
                    for blob in ans.results]
            part = np.concatenate(sums) if sums else np.zeros((0, width))
            if values is not None and part.shape != values.shape:
                raise HeteroFMError(self.host, where, f"part answered {part.shape[0]} column values, the "
                                                      f"first part {values.shape[0]}")
            values = part if values is None else values + part
        assert values is not None
        if self._label_dp is not None and values.size:  # ONE release per batch (all columns); DP noise
            values = self._label_dp.noise(values)       # first, flooding and rounding post-process it
        if values.size:
            values = flood_and_round(values, policy, f"{step} results")
        self.peer.ask(ReleasedGradients(epoch, b, values), Ack, f"{step}/release")

    # ------------------------------------------------------------------ validation
    def _make_val_fn(self, val: pd.DataFrame) -> Any:
        fm, c = self.local, self.config
        rows = fm.validation_rows(val)
        ranking = c.objective == "ranking"

        def metric(epoch: int) -> float:
            uu, ii, tt = fm.expand_negatives(rows.u, rows.i, rows.ts, None, rows.neg)
            known = np.unique(uu[uu >= 0])
            pos = self._aligned_pos[known]
            on = pos >= 0
            z_np, e_np = np.zeros(len(known)), np.zeros((len(known), c.n_factors))
            if on.any():
                z_np[on], e_np[on] = self._partials("validate", epoch, 0, pos[on], f"fm/e{epoch}/validate")
            z_h = torch.from_numpy(np.concatenate([z_np, [0.0]]).astype(np.float32))
            e_h = torch.from_numpy(np.concatenate([e_np, np.zeros((1, c.n_factors))]).astype(np.float32))
            inv = np.where(uu >= 0, np.searchsorted(known, uu), len(known))
            z, reg, _ = self._scores(uu, ii, tt, z_h, e_h, inv)
            value = fm.validation_metric_from_scores(z, None if ranking else rows.y, reg, len(rows.u))
            return value if self._label_dp is None else self._private_metric(value, len(rows.u))

        return metric

    def _private_metric(self, value: float, n_val: int) -> float:
        """With label DP, the early-stopping decisions (and so the stop and best epochs the host learns)
        use one accounted Gaussian release per epoch: the validation loss plus noise of the same
        multiplier, scaled to one validation label's effect on it: log loss clipped at ``p ∈ [1e-7,
        1 − 1e-7]`` moves by at most ``16.2 / n``; the mean squared error of clipped ratings by
        ``(hi − lo)² / n`` (noised before the square root). The training labels' indirect effect
        through the guest's own parameters is not bounded by it (see :mod:`.label_dp`)."""
        assert self._label_dp is not None
        c, n = self.config, max(n_val, 1)
        if c.objective == "logistic":
            return self._label_dp.noise_scalar(value, -math.log(1e-7) / n)
        if c.objective == "regression" and c.clip:
            lo, hi = self.local.rating_scale
            mse = self._label_dp.noise_scalar(value ** 2, (hi - lo) ** 2 / n)
            return math.sqrt(max(mse, 0.0))
        raise AssertionError("unreachable: fit refuses label DP with validation for other objectives")

    def label_privacy(self) -> dict[str, Any]:
        """What protected the labels in this run, for the artifacts and the run's summary."""
        c = self.config
        if self._label_dp is None:
            return {"on": False}
        return {"on": True, "epsilon": self.privacy_spent(), "delta": c.dp_delta,
                "noise_multiplier": self._label_dp.noise_multiplier, "releases": self._label_dp.releases,
                "rolled_back_releases": len(getattr(self, "_rolled_back", [])),
                "validation_covered": "direct" if self.history.val_metric else "no validation"}

    def privacy_spent(self) -> float | None:
        """ε (at ``dp_delta``) of the label-DP noise on every gradient released so far, or ``None``
        without guest DP (``dp_guest_noise_multiplier = 0``); see :mod:`.label_dp`. After a resume it
        also counts the releases a crash rolled back (the host saw them; see ``PrivacyJournal``)."""
        if self._label_dp is None:
            return None
        rolled = getattr(self, "_rolled_back", [])
        if not rolled:
            return self._label_dp.epsilon()
        acc = self._label_dp.accountant
        total = PrivacyAccountant.from_json({"relation": acc.relation,
                                             "events": acc.to_json()["events"] + rolled})
        return total.epsilon(self.config.dp_delta)

    # ------------------------------------------------------------------ persistence / end
    def save(self, directory: str | Path) -> Path:
        """The guest half: a :class:`FactorizationMachine` artifact of the guest fields + ``hetero.json``
        (the scorer adds the host's exported partials: ``z = z_G + z_H + <e_G, e_H>``; the ``run_id`` ties
        both halves and the partials to one training run)."""
        path = self.local.save(directory)
        meta = {"format": "fedrec.hetero_fm.guest", "format_version": 1, "host_field": HOST_FIELD,
                "n_factors": self.config.n_factors, "objective": self.config.objective,
                "backend": self.config.backend, "run_id": self.run_id, "history": self.history.to_json(),
                "label_dp": self.label_privacy(),
                # the aligned set this half was trained on (sorted ids): a later aligned.csv of another
                # run beside it is refused by the scorer (issue #9: no mixture of two runs' outputs)
                "aligned_set_sha256": aligned_digest(self._declared, ordered=False),
                "n_aligned": len(self._declared)}
        write_json_atomic(path / "hetero.json", json.loads(json.dumps(meta)))
        return path

    def close(self, reason: str = "done") -> None:
        """Tell the host the job is over (its ``serve`` returns). Idempotent."""
        if not self._closed:
            self.peer.ask(Done(reason), Ack, "fm/done")
            self._closed = True
