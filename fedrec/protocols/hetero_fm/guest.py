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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.artifacts import read_json, write_json_atomic
from fedrec.compute.executor import Executor
from fedrec.crypto.backend import CryptoBackend, CryptoError, flood_and_round, make_backend
from fedrec.crypto.dp import PrivacyAccountant, noise_multiplier_for
from fedrec.data.idmap import id_keys
from fedrec.models.base import NO_HOST_PARTIAL, ModelFormatError, Recommender, SeenItems, factor_scores
from fedrec.models.fm import FactorizationMachine
from fedrec.models.fm_core import combine
from fedrec.models.training import EpochContext, StepContext, Trainer, TrainHistory
from fedrec.models.vertical import HostPartials, VerticalFM, combine_partials, join_user_factors
from fedrec.profiling import StageClock
from fedrec.protocols.checkpoint import Checkpointer
from fedrec.protocols.hetero_fm import label_dp, packing
from fedrec.protocols.hetero_fm.config import HOST_FIELD, PROTOCOL, PROTOCOL_VERSION, HeteroFMConfig
from fedrec.protocols.hetero_fm.guest_inference import ask_host_partials
from fedrec.protocols.hetero_fm.hosts import HostLink, HostRounds, journal_name
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

#: layout ``static`` pays for its run-long plaintexts with chunks for every aligned user; below this share
#: of them in a batch the guest warns (measured: ML-100K's batches hold ~80% and train 18% faster in one
#: process; an ML-1M-shaped set's ~66% trained no faster: benchmarks/ckks_floor.py, hetero_fm.py)
STATIC_MIN_COVER = 0.75


class HeteroFMGuest(Recommender):
    """The guest party: ``HeteroFMGuest(channel, host="host", config=cfg).fit(interactions)``.

    A :class:`~fedrec.models.base.Recommender` (``predict``, ``recommend``, unknown-id handling and
    fallback counts as every model), whose scores join the host's partials (:mod:`.guest_inference`):
    it needs its channel to the host for ``fit`` and for scoring. Its saved half (:meth:`save`) loads as
    a :class:`~fedrec.models.fm.FactorizationMachine`, or joined with the host's exported partials as a
    :class:`~fedrec.models.vertical.VerticalFM`."""

    def __init__(self, channel: Channel, host: str | Sequence[str] = "host",
                 config: HeteroFMConfig | None = None, executor: Executor | None = None) -> None:
        super().__init__()
        self.channel = channel
        #: where the CKKS encryption and decryption batches run (``None`` or ``local``: in this process)
        self.executor = executor
        hosts = [host] if isinstance(host, str) else list(host)
        if not hosts or len(set(hosts)) != len(hosts) or not all(isinstance(h, str) and h for h in hosts):
            raise ValueError(f"HeteroFMGuest: host must be a peer name or a list of distinct peer names, got "
                             f"{host!r}")
        #: the hosts in configuration order (one: the single-host protocol)
        self.hosts = hosts
        self.host = hosts[0]
        self.config = config or HeteroFMConfig()
        self.peers = {h: Peer(channel, h, timeout=self.config.timeout, error=HeteroFMError) for h in hosts}
        self.peer = self.peers[self.host]
        self.rounds = HostRounds(self.peers, self.config.host_failure)
        self.links = {h: HostLink(h) for h in hosts}
        params = self.config.fm_params()
        params["use_user_features"] = False
        self.local = FactorizationMachine(**params)
        self.history = TrainHistory()
        self.initial_state: dict[str, torch.Tensor] = {}
        self.clipped_values = 0
        #: layout ``static``: whether this fit already warned that its batches cover few aligned users
        self._sparse_static_warned = False
        self.timings: dict[str, float] = {"epoch_seconds": 0.0}
        #: seconds per stage of the batch loop (torch, encrypt, serialize, waits for the hosts, decrypt, ...)
        self.stages = StageClock()
        #: ``(epoch, seconds)`` of every batch this process ran (the per-epoch times are their sums)
        self.batch_seconds: list[tuple[int, float]] = []
        self.run_id: str | None = None
        #: the cursor (epoch, batch, final) the last fit resumed from; ``None``: it started afresh
        self.resumed_from: tuple[int, int, bool] | None = None
        #: validation releases (label DP): every host learns their outcome, so each host's account has them
        self._val_releases = 0
        #: several hosts: per host, scored rows of known users without that host's partials (zeros)
        self.last_host_fallbacks: dict[str, int] = {}
        self._backend: CryptoBackend | None = None
        self._closed = False
        self._ckpt: Checkpointer | None = None

    # -- the first host's link under the single-host names (one host: what they always were) -----------------
    @property
    def n_host_features(self) -> int:
        return self.links[self.host].n_features

    @property
    def host_row_nnz(self) -> int:
        """The largest number of non-zero host features of one aligned user (label-DP sensitivity)."""
        return self.links[self.host].rows.nnz

    @property
    def host_rows(self) -> label_dp.RowBounds:
        """The host's bounds over its aligned rows (label-DP sensitivity)."""
        return self.links[self.host].rows

    @property
    def _label_dp(self) -> label_dp.LabelDP | None:
        return self.links[self.host].label_dp

    @property
    def _declared(self) -> list[str]:
        return self.links[self.host].declared

    @property
    def _aligned_ids(self) -> dict[str, int]:
        return self.links[self.host].aligned_ids

    @property
    def dropped_hosts(self) -> dict[str, str]:
        """Hosts dropped under ``host_failure="continue"``: name -> the step and error."""
        return dict(self.rounds.dropped)

    @property
    def zero_partials(self) -> dict[str, int]:
        """Per host: batch-user occurrences of training users aligned with another host but not this one
        (they got explicit zero partials for it; several hosts only)."""
        return {h: link.zero_partials for h, link in self.links.items()}

    # ------------------------------------------------------------------ messaging
    def _partials(self, purpose: str, epoch: int, batch: int, pos: dict[str, np.ndarray], step: str
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each host's partials of its aligned positions ``pos[host]`` (the hosts asked at once)."""
        k = self.config.n_factors

        def one(h: str) -> tuple[np.ndarray, np.ndarray]:
            users = pos[h]
            ans = self.peers[h].ask(PartialsRequest(purpose, epoch, batch, users), Partials, step)
            if ans.z.shape != (len(users),) or ans.e.shape != (len(users), k):
                raise HeteroFMError(h, step, f"partials of shape {ans.z.shape}/{ans.e.shape}, expected "
                                             f"({len(users)},)/({len(users)}, {k})")
            return ans.z, ans.e

        return self.rounds.each([h for h in self.rounds.active if h in pos], one, step)

    def _host_inputs(self, purpose: str, epoch: int, batch: int, users: np.ndarray, step: str
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per host: which of the inner ``users`` it has (``on``) and their ``z``/``e`` partials (zeros
        for the others, and for every user of a host that failed under ``host_failure='continue'``)."""
        k = self.config.n_factors
        on, z, e, ask = {}, {}, {}, {}
        for h in self.hosts:
            p = self.links[h].aligned_pos[users]
            on[h] = (p >= 0) & (h in self.rounds.active)
            z[h], e[h] = np.zeros(len(users)), np.zeros((len(users), k))
            if on[h].any():
                ask[h] = p[on[h]]
        got = self._partials(purpose, epoch, batch, ask, step) if ask else {}
        for h in self.hosts:
            if h in got:
                z[h][on[h]], e[h][on[h]] = got[h]
            else:
                on[h] = np.zeros(len(users), dtype=bool)
        if len(self.hosts) > 1 and purpose == "train":
            some = np.any(np.stack([on[h] for h in self.hosts]), axis=0)
            for h in self.hosts:
                self.links[h].zero_partials += int((some & ~on[h]).sum())
        return on, z, e

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

    def _declare(self, aligned_users: Iterable[Any] | None, link: HostLink) -> list[str]:
        """The aligned list sent to ``link``'s host at setup: aligned training users in inner-id order (so
        sorted inner ids map to increasing positions), then aligned users without training rows."""
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
        link.declared = declared
        link.aligned_ids = {u: p for p, u in enumerate(declared)}
        link.aligned_pos = np.array([link.aligned_ids.get(u, -1) for u in train_ids], dtype=np.int64)
        logger.info("guest: %d of %d training users are aligned%s (%d aligned users declared in all)",
                    len(known), len(train_ids), "" if len(self.hosts) == 1 else f" with host {link.name!r}",
                    len(declared))
        return declared

    def _aligned_per_host(self, aligned_users: Any) -> dict[str, Any]:
        """``aligned_users`` per host: one host: the iterable itself; several: a ``{host: ids}``
        mapping naming every host (``None``: every training user for every host)."""
        if len(self.hosts) == 1:
            if isinstance(aligned_users, Mapping):
                return {self.host: aligned_users[self.host]} if set(aligned_users) == {self.host} else \
                    {self.host: aligned_users}
            return {self.host: aligned_users}
        if aligned_users is None:
            return {h: None for h in self.hosts}
        if not isinstance(aligned_users, Mapping) or set(aligned_users) != set(self.hosts):
            got = sorted(aligned_users) if isinstance(aligned_users, Mapping) else type(aligned_users)
            raise TypeError(f"HeteroFMGuest.fit: with hosts {self.hosts}, aligned_users must map every host "
                            f"to its aligned ids (PSI per host), got {got}")
        return dict(aligned_users)

    def _hello(self, run_id: str) -> None:
        self.run_id = run_id
        self.rounds.ask_all(Hello(PROTOCOL, PROTOCOL_VERSION, run_id, self.config.agreed()), Ack, "fm/setup")

    def _offers(self) -> list[tuple[Any, dict[str, str]]]:
        """Our checkpoints of this run made with the current aligned sets (newest first), each with the
        state digest of every host at the same cursor."""
        assert self._ckpt is not None and self.run_id is not None
        out = []
        for info in self._ckpt.list(self.run_id, role="guest"):
            meta = read_json(info.path / "meta.json")
            if meta.get("aligned_sha256") != self._aligned_digest():
                logger.warning("guest: checkpoint %s was made with another aligned set; not offered",
                               info.path.name)
                continue
            digests = meta.get("peer_digests")
            if not isinstance(digests, dict):
                digests = {self.host: str(meta.get("peer_digest", ""))}
            out.append((info, {str(h): str(d) for h, d in digests.items()}))
        return out

    def _aligned_digest(self) -> str:
        """The digest of the aligned set(s) declared (one host: that list's, as always)."""
        if len(self.hosts) == 1:
            return aligned_digest(self._declared)
        return aligned_digest([f"{h}\0{aligned_digest(self.links[h].declared)}" for h in self.hosts])

    def _resume(self) -> GuestState | None:
        """Offer our checkpoints of this run (newest first, only those of these aligned sets); load the
        newest one EVERY active host also holds, or ``None`` to start afresh. Several hosts: each answers
        the newest it holds; while they differ, the offers are cut to the oldest answer and asked again."""
        if self._ckpt is None or self.run_id is None:
            return None
        offers = self._offers()
        while offers:
            hosts = [h for h in self.rounds.active if all(h in d for _, d in offers)]
            if hosts != self.rounds.active:
                missing = sorted(set(self.rounds.active) - set(hosts))
                logger.warning("guest: host(s) %s are not in our checkpoints (dropped earlier?): not resumed "
                               "with them", missing)
                offers = [(i, d) for i, d in offers if all(h in d for h in self.rounds.active)]
                continue
            reqs = {h: Resume(self.run_id, [CheckpointRef(i.epoch, i.batch, i.final, i.digest, d[h])
                                            for i, d in offers]) for h in hosts}
            answers = self.rounds.ask(reqs, ResumeAt, "fm/setup")
            if not all(a.found for a in answers.values()):
                lacking = [h for h, a in answers.items() if not a.found]
                logger.warning("guest: host(s) %s hold none of our %d checkpoint(s); starting afresh",
                               lacking, len(offers))
                break
            cursors = {(a.epoch, a.batch) for a in answers.values()}
            if len(cursors) == 1:
                chosen = [i for i, d in offers if all((i.epoch, i.batch, d[h]) == (a.epoch, a.batch, a.digest)
                                                      for h, a in answers.items())]
                if not chosen:
                    h, a = next(iter(answers.items()))
                    raise HeteroFMError(h, "fm/setup", f"resume at e{a.epoch} b{a.batch}, which we did not "
                                                       f"offer")
                state = GuestState.from_artifact(self._ckpt.load(chosen[0]), self.config)
                self.resumed_from = chosen[0].cursor
                for h in state.dropped:
                    if h in self.rounds.active:
                        self.rounds.active.remove(h)
                        self.rounds.dropped[h] = state.dropped[h]
                logger.info("guest: resuming run %s at epoch %d batch %d%s", self.run_id, *cursors.pop(),
                            " (final)" if chosen[0].final else "")
                return state
            oldest = min(cursors)
            offers = [(i, d) for i, d in offers if (i.epoch, i.batch) <= oldest]
        if len(self.hosts) > 1:  # a host may have picked a checkpoint: a new Hello clears that
            self._hello(self.run_id)
        return None

    def _setup(self, releases: int, n_batches: int) -> None:
        """A fresh key pair and each host's aligned list; label DP calibrated for up to ``releases``
        releases per host."""
        c = self.config
        opts: dict[str, object] = {}
        if c.backend == "ckks":
            opts = {"preset": c.ckks_preset}
        elif c.backend == "paillier":
            opts = {"key_bits": c.paillier_key_bits}
        self._backend = make_backend(c.backend, **opts)
        public = self._backend.public_bytes()
        digest = hashlib.sha256(public).hexdigest()
        acks = self.rounds.ask({h: Setup(public, digest, self.links[h].declared, n_batches)
                                for h in self.rounds.active}, SetupAck, "fm/setup")
        z = c.dp_guest_noise_multiplier
        target = c.label_epsilon
        if target is not None:
            z = noise_multiplier_for(target, c.dp_delta, max(releases, 1), relation="replace")
        if not c.label_dp_on:
            logger.warning("guest: label DP is OFF (label_dp='off'): the host can read labels from columns "
                           "one user touches in a batch (docs/SECURITY.md)")
        for h, ack in acks.items():
            link = self.links[h]
            link.n_features = ack.n_host_features
            link.rows = label_dp.RowBounds(ack.max_row_nnz, ack.max_abs_value, ack.max_row_sq,
                                           ack.max_row_quad)
            link.label_dp = None if not c.label_dp_on else label_dp.LabelDP(z, c.dp_guest_clip, c.dp_delta,
                                                                            c.dp_guest_clip_part)
            if link.label_dp is not None and c.layout == "hiding":
                logger.warning("guest: label DP with layout 'hiding' bounds the host's factor terms by "
                               "plain_bound: the same epsilon costs ~%.0fx the noise of layout 'compact' "
                               "(docs/SECURITY.md)", math.sqrt(c.n_factors) * c.plain_bound
                               / max(ack.max_abs_value * math.sqrt(2.0), 1e-9))
            if link.label_dp is not None:
                logger.info("guest: label DP on%s: noise multiplier %.3g (sigma %.3g) for up to %d "
                            "releases%s",
                            "" if len(self.hosts) == 1 else f" for host {h!r}", z, link.label_dp.sigma,
                            releases, "" if target is None else f": epsilon {target:g} at delta "
                                                                 f"{c.dp_delta:g} for the whole training")
            logger.info("guest: host%s has %d features (at most %d per user) and rows for %d of our %d "
                        "users; context sha256 %s", "" if len(self.hosts) == 1 else f" {h!r}",
                        ack.n_host_features, ack.max_row_nnz, ack.n_matched, len(link.declared), digest)

    # ------------------------------------------------------------------ fit
    def fit(self, interactions: pd.DataFrame | Any, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None, validation: object = None, *,
            aligned_users: Iterable[Any] | Mapping[str, Iterable[Any] | None] | None = None,
            checkpoint: Checkpointer | None = None) -> HeteroFMGuest:
        """Train with the host (see the module docstring); returns ``self``. The arguments of
        :meth:`Recommender.fit`, except that ``user_features`` must be ``None``: they are the host's.
        ``validation`` as in :meth:`FactorizationMachine.fit` (a DataFrame, or ``"random"`` /
        ``"cold"`` / ``"none"``). ``aligned_users``: the raw ids both parties hold (PSI); ``None``:
        every user of ``interactions``. No other user is ever referenced to the host. Several hosts:
        ``{host: ids}`` (each host's PSI intersection). ``checkpoint``:
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
        # weight_column: each row's weight in the guest's loss; the residuals the hosts' gradients are made
        # of carry it (w_s·ℓ'_s / Σw), so the whole model trains on the weighted loss, as centralized (a bad
        # weight is refused here, before anything reaches a host)
        self._w = self.local.row_weights(train)
        if val is not None and c.label_dp_on and not c.label_dp_bounds_validation:
            raise ValueError(f"HeteroFMGuest.fit: label DP with a validation set needs the logistic or "
                             f"clipped regression objective, not {c.objective!r}; pass validation='none'")
        for h, ids in self._aligned_per_host(aligned_users).items():
            self._declare(ids, self.links[h])
        self._hello(checkpoint.run_id if checkpoint is not None else uuid.uuid4().hex)
        self.resumed_from = None
        state = self._resume()
        # one release per batch, and one per epoch for the noisy validation metric (with validation)
        n_batches = -(-len(train) // c.batch_size)  # Trainer.n_batches
        self._setup(releases=c.epochs * (n_batches + (val is not None)), n_batches=n_batches)
        fm = self.local
        assert fm.user_map is not None and fm.item_map is not None and fm.params is not None
        self._u = fm.user_map.to_inner(train["user_id"])
        self._i = fm.item_map.to_inner(train["item_id"])
        self._ts = train["timestamp"].to_numpy(dtype=np.int64)
        self._y = torch.from_numpy(train["rating"].to_numpy(dtype=np.float64).astype(np.float32))
        self.clipped_values = 0
        self._sparse_static_warned = False
        self._val_releases = 0
        # the validation rows and, per epoch, the model's raw outputs on them (the guard's input)
        self._val_frame = val
        self._val_outputs: dict[int, np.ndarray] = {}
        if state is not None:
            self.clipped_values = state.clipped_values
            self.timings["epoch_seconds"] = state.epoch_seconds
            self._val_releases = state.val_releases
            accountants = state.accountants or ({self.host: state.accountant} if state.accountant else {})
            for h, acc in accountants.items():
                dp = self.links[h].label_dp if h in self.links else None
                if dp is not None and acc is not None:
                    dp.restore(acc)
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
        if len(self.hosts) > 1:
            logger.info("guest: zero partials for users aligned with other hosts only (batch-user "
                        "occurrences): %s%s", self.zero_partials,
                        f"; dropped hosts: {self.dropped_hosts}" if self.dropped_hosts else "")

    # ------------------------------------------------------------------ inference (Recommender hooks)
    def _partials_for(self, raw_users: list[Any]) -> HostPartials:
        """The hosts' partials of ``raw_users`` joined (:func:`combine_partials`; one host: its own)."""
        k = self.config.n_factors
        if len(self.hosts) == 1:
            return ask_host_partials(self.peer, self._aligned_ids, k, raw_users)
        got = self.rounds.each(list(self.rounds.active), lambda h: ask_host_partials(
            self.peers[h], self.links[h].aligned_ids, k, raw_users), "fm/predict")
        parts = {}
        for h in self.hosts:  # a dropped host's users: explicit zeros (not found)
            n = len(raw_users)
            parts[h] = got.get(h) or HostPartials(np.asarray(raw_users, dtype=object), np.zeros(n),
                                                  np.zeros((n, k)), np.zeros(n, bool))
        return combine_partials(parts)

    def decision_function(self, pairs: pd.DataFrame) -> np.ndarray:
        """``z = z_G + z_H + <e_G, e_H>``; known users without host partials: ``z_G`` (counted in
        ``last_fallbacks["no_host_partial"]``)."""
        self._require_fitted()
        joined = VerticalFM(self.local, self._partials_for)
        try:
            return joined.decision_function(pairs)
        finally:
            self.last_fallbacks = joined.last_fallbacks
            self.last_host_fallbacks = joined.last_host_fallbacks

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
        if rows.host_found is not None:
            self.last_host_fallbacks = {h: int((known[known] & ~f).sum()) for h, f in rows.host_found.items()}
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
        releases a crash rolled back (made after the resumed checkpoint) stay in the account (one
        journal per host)."""
        for h, link in self.links.items():
            link.rolled_back = []
            if link.label_dp is None or self._ckpt is None or self.run_id is None:
                continue
            journal = self._ckpt.journal(self.run_id, "guest", journal_name(h, len(self.hosts)))
            link.rolled_back = journal.roll_back(len(link.label_dp.accountant.events))
            link.label_dp.accountant.journal = journal.append

    @property
    def _rolled_back(self) -> list[list[Any]]:
        return self.links[self.host].rolled_back

    def _step(self, ctx: StepContext) -> float:
        te = time.perf_counter()
        idx = ctx.idx
        loss = self._batch(ctx.epoch, ctx.batch, self._u[idx], self._i[idx], self._ts[idx], self._y[idx],
                           ctx.sampler, ctx.trainer.optimizer, None if self._w is None else self._w[idx])
        dt = time.perf_counter() - te
        self.timings["epoch_seconds"] += dt
        self.batch_seconds.append((ctx.epoch, dt))
        return loss

    def _after_step(self, ctx: StepContext) -> None:
        done = ctx.batch + 1
        if self._ckpt is not None and self._ckpt.due(done) and done < ctx.trainer.n_batches:
            self._checkpoint(ctx.trainer, ctx.epoch, done, final=False)

    def _on_epoch_end(self, ctx: EpochContext, improved: bool, stop: bool) -> None:
        # the host learns no per-epoch improvement bit, only the result's epoch when training stops
        best = ctx.trainer.history.best_epoch if stop else -1
        self.rounds.ask_all(EpochEnd(ctx.epoch, stop, ctx.n_batches, best), Ack, f"fm/e{ctx.epoch}/end")
        if self._ckpt is not None:
            self._checkpoint(ctx.trainer, ctx.epoch + 1, 0, final=stop)

    def _checkpoint(self, trainer: Trainer, epoch: int, batch: int, final: bool) -> None:
        """The hosts first (they may end up one checkpoint ahead, never behind), then ours."""
        assert self._ckpt is not None and self.run_id is not None
        step = f"fm/e{epoch}/b{batch}/checkpoint" + ("/final" if final else "")
        acks = self.rounds.ask_all(Checkpoint(epoch, batch, final), Checkpointed, step)
        single = len(self.hosts) == 1
        acc = None if self._label_dp is None or not single else self._label_dp.accountant
        accs = None if single else {h: link.label_dp.accountant for h, link in self.links.items()
                                    if link.label_dp is not None}
        state = GuestState(self.run_id, self._aligned_digest(), trainer.checkpoint(), self.clipped_values,
                           acc, self.timings["epoch_seconds"], accs, self._val_releases, self.dropped_hosts)
        arrays, meta = state.to_arrays(self.config)
        if single:
            meta["peer_digest"] = acks[self.host].digest
        else:
            meta["peer_digests"] = {h: a.digest for h, a in acks.items()}
        self._ckpt.save(epoch, batch, final, run_id=self.run_id, role="guest", arrays=arrays, meta=meta)

    def _scores(self, uu: np.ndarray, ii: np.ndarray, tt: np.ndarray, z_h: list[torch.Tensor],
                e_h: list[torch.Tensor], inv: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z = z_G + Σ_j z_Hj + <e_G, E_H> + ½(‖E_H‖² − Σ_j ‖e_Hj‖²)`` per sample (:mod:`.hosts`; one
        host: ``z_G + z_H + <e_G, e_H>``, the single-host computation exactly)."""
        fm = self.local
        assert fm.params is not None
        terms = fm.terms(uu, ii, tt)
        z_g, e_g = combine(terms, fm.params.bias, len(uu), self.config.n_factors)
        reg = torch.zeros(len(uu))
        for t in terms:
            reg = reg + t.reg
        tinv = torch.from_numpy(inv)
        z_users, e_sum = z_h[0], e_h[0]
        for zj, ej in zip(z_h[1:], e_h[1:], strict=True):
            z_users, e_sum = z_users + zj, e_sum + ej
        if len(e_h) > 1:  # the host-host terms, from the partials the guest holds
            z_users = z_users + 0.5 * ((e_sum * e_sum).sum(dim=1) - sum((ej * ej).sum(dim=1) for ej in e_h))
        return z_g + z_users[tinv] + (e_g * e_sum[tinv]).sum(dim=1), reg, e_g

    def _batch(self, epoch: int, b: int, u: np.ndarray, i: np.ndarray, ts: np.ndarray, y: torch.Tensor,
               sampler: np.random.Generator, opt: torch.optim.Optimizer,
               w: torch.Tensor | None = None) -> float:
        step = f"fm/e{epoch}/b{b}"
        clock = self.stages
        with clock("torch"):
            uu, ii, tt = self.local.expand_negatives(u, i, ts, sampler)
            users, inv = np.unique(uu, return_inverse=True)
        # per host: the users it has (the others: z_Hj = e_Hj = 0, no residual row, never sent to it)
        with clock("wait:partials"):
            on, z_np, e_np = self._host_inputs("train", epoch, b, users, f"{step}/partials")
        with clock("torch"):
            loss, z, z_h, e_h, e_g = self._forward_backward(uu, ii, tt, y, u, z_np, e_np, inv, opt, w)
        n_s = len(uu)
        hosts = [h for h in self.hosts if on[h].any()]
        if not hosts:
            return loss
        with clock("residuals"):
            rows = self._residual_rows(step, users, inv, n_s, hosts, on, z, z_h, e_h, e_g, e_np)
        self.rounds.each(hosts, lambda h: self._exchange(h, epoch, b, rows[h], n_s, step), f"{step}/grad")
        return loss

    def _forward_backward(self, uu: np.ndarray, ii: np.ndarray, tt: np.ndarray, y: torch.Tensor,
                          u: np.ndarray, z_np: dict[str, np.ndarray], e_np: dict[str, np.ndarray],
                          inv: np.ndarray, opt: torch.optim.Optimizer, w: torch.Tensor | None = None
                          ) -> tuple[float, torch.Tensor, list[torch.Tensor], list[torch.Tensor],
                                     torch.Tensor]:
        """The guest's torch work on a batch: scores, loss (weighted by ``w``, the batch's row weights),
        backward, its optimizer step."""
        c = self.config
        z_h = [torch.tensor(z_np[h].astype(np.float32), requires_grad=True) for h in self.hosts]
        e_h = [torch.tensor(e_np[h].astype(np.float32), requires_grad=True) for h in self.hosts]
        z, reg, e_g = self._scores(uu, ii, tt, z_h, e_h, inv)
        z.retain_grad()
        ranking = c.objective == "ranking"
        loss = self.local.data_loss(z, None if ranking else y, len(u), w) + reg.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert z.grad is not None
        return float(loss.detach()), z, z_h, e_h, e_g

    def _residual_rows(self, step: str, users: np.ndarray, inv: np.ndarray, n_s: int, hosts: list[str],
                       on: dict[str, np.ndarray], z: torch.Tensor, z_h: list[torch.Tensor],
                       e_h: list[torch.Tensor], e_g: torch.Tensor, e_np: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
        """Per host, the per-user rows ``R_u`` of its aligned batch users (label-DP clipped when on)."""
        c = self.config
        assert z.grad is not None
        e_all = e_np[self.host]
        for h in self.hosts[1:]:
            e_all = e_all + e_np[h]
        counts = np.bincount(inv, minlength=len(users)).astype(np.float64)
        rows: dict[str, np.ndarray] = {}
        for j, h in enumerate(self.hosts):
            if h not in hosts:
                continue
            link = self.links[h]
            if link.label_dp is None:  # Q̂_u = N_s Σ δ_s (e_G + E_H): the same rows for every host
                zg, eg = z_h[j].grad, e_h[j].grad
                assert zg is not None and eg is not None
                delta = zg.numpy().astype(np.float64)
                q_hat = n_s * (eg.numpy().astype(np.float64) + delta[:, None] * e_np[h])
            else:  # per-sample clipping of the label-dependent part, to THIS host's row bounds (label_dp.py)
                e_total = e_g.detach().numpy().astype(np.float64) + e_all[inv]
                clip = label_dp.clip_residuals if c.dp_guest_clip_part == "residual" else label_dp.clip_scaled
                d_s = clip(z.grad.numpy().astype(np.float64), e_total, n_s, c.dp_guest_clip, layout=c.layout,
                           rows=link.rows, plain_bound=c.plain_bound)
                delta = np.bincount(inv, weights=d_s, minlength=len(users)).astype(np.float64)
                q_hat = np.zeros((len(users), c.n_factors))
                np.add.at(q_hat, inv, n_s * d_s[:, None] * e_total)
            sel = on[h]
            rows[h], clipped = packing.residual_rows(q_hat[sel], n_s * delta[sel], counts[sel],
                                                     c.l2_host_factors, c.value_bound, c.layout)
            if c.layout == "static":  # every aligned user in every batch: zero rows for the batch's absent
                full = np.zeros((len(link.declared), rows[h].shape[1]))
                full[link.aligned_pos[users[sel]]] = rows[h]
                cover = len(rows[h]) / max(len(full), 1)
                if cover < STATIC_MIN_COVER and not self._sparse_static_warned:
                    self._sparse_static_warned = True
                    logger.warning("guest: layout 'static' encrypts every aligned user in every batch, but "
                                   "%s has %.0f%% of host %r's aligned users: layout 'compact' encrypts "
                                   "fewer chunks here and is likely faster (docs/CONFIG.md)", step,
                                   100 * cover, h)
                rows[h] = full
            if clipped:
                self.clipped_values += clipped
                logger.warning("guest: %s: %d slot value(s) beyond value_bound %g clipped%s", step, clipped,
                               c.value_bound, "" if len(self.hosts) == 1 else f" (host {h!r})")
        return rows

    def _exchange(self, host: str, epoch: int, b: int, rows: np.ndarray, n_samples: int, step: str) -> None:
        """One host's encrypted gradient round for the batch (several hosts: one thread each; the guest's
        own encryption and decryption are serialised by ``rounds.crypto``)."""
        c, be, link, peer = self.config, self._backend, self.links[host], self.peers[host]
        lock = self.rounds.crypto
        assert be is not None
        try:
            plans = packing.plan_parts(be, len(rows), c.n_factors, link.n_features, c.layout,
                                       c.value_bound, c.plain_bound, c.hiding_bits)
            policy = packing.release_policy(be, plans, c.value_bound, c.plain_bound, c.hiding_bits)
        except CryptoError as exc:
            raise CryptoError(f"{step}: the batch's {len(rows)} aligned users (batch_size={c.batch_size}) "
                              f"cannot be released: {exc}") from exc
        parts = np.array_split(np.arange(len(rows)), len(plans))
        values: np.ndarray | None = None
        clock = self.stages
        for p, (plan, sel) in enumerate(zip(plans, parts, strict=True)):
            with lock:
                blobs = packing.encrypt_part(be, rows[sel], plan, clock, self.executor)
            msg = EncryptedResiduals(epoch, b, n_samples, plan.users_per_chunk, plan.lanes, blobs, p,
                                     len(plans))
            where = f"{step}/grad" if len(plans) == 1 else f"{step}/grad/p{p}"
            with clock("wait:grad"):
                ans = peer.ask(msg, MaskedGradients, where)
            with lock:
                part = packing.decrypt_part(be, ans.results, plan, clock, self.executor)
            if values is not None and part.shape != values.shape:
                raise HeteroFMError(host, where, f"part answered {part.shape[0]} column values, the "
                                                      f"first part {values.shape[0]}")
            values = part if values is None else values + part
        assert values is not None
        with clock("release"):
            if link.label_dp is not None and values.size:  # ONE release per batch and host (all columns);
                values = link.label_dp.noise(values)  # DP noise first, flooding and rounding post-process it
            if values.size:
                values = flood_and_round(values, policy, f"{step} results")
        with clock("wait:release"):
            peer.ask(ReleasedGradients(epoch, b, values), Ack, f"{step}/release")

    # ------------------------------------------------------------------ validation
    def _make_val_fn(self, val: pd.DataFrame) -> Any:
        fm, c = self.local, self.config
        rows = fm.validation_rows(val)
        ranking = c.objective == "ranking"

        def metric(epoch: int) -> float:
            uu, ii, tt = fm.expand_negatives(rows.u, rows.i, rows.ts, None, rows.neg)
            known = np.unique(uu[uu >= 0])
            _, z_np, e_np = self._host_inputs("validate", epoch, 0, known, f"fm/e{epoch}/validate")
            z_h = [torch.from_numpy(np.concatenate([z_np[h], [0.0]]).astype(np.float32)) for h in self.hosts]
            e_h = [torch.from_numpy(np.concatenate([e_np[h], np.zeros((1, c.n_factors))]).astype(np.float32))
                   for h in self.hosts]
            inv = np.where(uu >= 0, np.searchsorted(known, uu), len(known))
            z, reg, _ = self._scores(uu, ii, tt, z_h, e_h, inv)
            value = fm.validation_metric_from_scores(z, None if ranking else rows.y, reg, len(rows.u))
            if not ranking:  # kept for the epochs the loop may still return to (patience)
                self._val_outputs[epoch + 1] = z.detach().numpy().astype(np.float64)
                for old in [e for e in self._val_outputs if e < epoch + 1 - c.patience]:
                    del self._val_outputs[old]
            return value if self._label_dp is None else self._private_metric(value, len(rows.u))

        return metric

    def validation_outputs(self) -> tuple[pd.DataFrame, np.ndarray] | None:
        """The validation rows of the fit and the trained model's raw outputs ``z`` on them: those of the
        best epoch, computed with the partials the hosts sent for that epoch's validation (users
        without host partials: the guest terms, as the scorer gives them). Nothing is asked of a host.
        ``None`` without validation rows, for the ranking objective (sampled negatives, no per-row
        output) and when the best epoch's outputs are not held (a run resumed after it)."""
        val = getattr(self, "_val_frame", None)
        best = self.history.best_epoch if self.history is not None else 0
        if val is None or best not in getattr(self, "_val_outputs", {}):
            return None
        return val, self._val_outputs[best]

    def _private_metric(self, value: float, n_val: int) -> float:
        """With label DP, the early-stopping decisions (and so the stop and best epochs the host learns)
        use one accounted Gaussian release per epoch: the validation loss plus noise of the same
        multiplier, scaled to one validation label's effect on it: log loss clipped at ``p ∈ [1e-7,
        1 − 1e-7]`` moves by at most ``16.2 / n``; the mean squared error of clipped ratings by
        ``(hi − lo)² / n`` (noised before the square root). The training labels' indirect effect
        through the guest's own parameters is not bounded by it (see :mod:`.label_dp`). Several hosts:
        every host learns the stop decision, so the release is in every host's account (drawn once)."""
        assert self._label_dp is not None
        c, n = self.config, max(n_val, 1)
        self._val_releases += 1
        for h, link in self.links.items():
            if h != self.host and link.label_dp is not None:
                link.label_dp.accountant.gaussian(link.label_dp.noise_multiplier, count=1)
                link.label_dp.mechanism.releases += 1
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
        out: dict[str, Any] = {"on": True, "epsilon": self.privacy_spent(), "delta": c.dp_delta,
               "noise_multiplier": self._label_dp.noise_multiplier, "releases": self._label_dp.releases,
               "rolled_back_releases": len(self._rolled_back),
               "validation_covered": "direct" if self.history.val_metric else "no validation"}
        if len(self.hosts) > 1:
            out["epsilon_per_host"] = self.privacy_by_host()
            out["epsilon_if_all_hosts_collude"] = self.privacy_if_hosts_collude()
            out["releases_per_host"] = {h: lk.label_dp.releases for h, lk in self.links.items()
                                        if lk.label_dp is not None}
        return out

    def _events(self, h: str) -> list[Any]:
        link = self.links[h]
        assert link.label_dp is not None
        return list(link.label_dp.accountant.to_json()["events"]) + list(link.rolled_back)

    def _epsilon(self, events: list[Any]) -> float:
        if not events:
            return 0.0
        acc = self._label_dp.accountant if self._label_dp is not None else None
        relation = acc.relation if acc is not None else "replace"
        total = PrivacyAccountant.from_json({"relation": relation, "events": events})
        return total.epsilon(self.config.dp_delta)

    def privacy_spent(self) -> float | None:
        """ε (at ``dp_delta``) of the label-DP noise on every gradient released so far, or ``None``
        without guest DP (``dp_guest_noise_multiplier = 0``); see :mod:`.label_dp`. After a resume it
        also counts the releases a crash rolled back (the host saw them; see ``PrivacyJournal``).
        Several hosts: the largest ε of one host's view (:meth:`privacy_by_host`); hosts that pool
        their transcripts: :meth:`privacy_if_hosts_collude`."""
        if self._label_dp is None:
            return None
        if len(self.hosts) == 1:
            if not self._rolled_back:
                return self._label_dp.epsilon()
            return self._epsilon(self._events(self.host))
        return max(self.privacy_by_host().values())

    def privacy_by_host(self) -> dict[str, float]:
        """ε of what each host sees: its own releases (one per batch with its users) and the validation
        releases (every host learns the stop decision)."""
        return {h: self._epsilon(self._events(h)) for h, lk in self.links.items() if lk.label_dp is not None}

    def privacy_if_hosts_collude(self, hosts: Sequence[str] | None = None) -> float | None:
        """ε when ``hosts`` (default: all) pool their transcripts: their releases compose (each is a
        separate Gaussian release on the same labels); the validation releases count once."""
        names = [h for h in (hosts or self.hosts) if self.links[h].label_dp is not None]
        if not names:
            return None
        events: list[Any] = []
        for n, h in enumerate(names):
            ev = self._events(h)
            if n:  # every Gaussian event of one run has the same multiplier: drop one copy per validation
                ev = ev[self._val_releases:]
            events += ev
        return self._epsilon(events)

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
        if len(self.hosts) > 1:  # the scorer joins one partials file per host, each of this run
            meta["hosts"] = {h: {"aligned_set_sha256": aligned_digest(lk.declared, ordered=False),
                                 "n_aligned": len(lk.declared), "dropped": h in self.rounds.dropped}
                             for h, lk in self.links.items()}
        write_json_atomic(path / "hetero.json", json.loads(json.dumps(meta)))
        return path

    def close(self, reason: str = "done") -> None:
        """Tell the host the job is over (its ``serve`` returns). Idempotent."""
        if not self._closed:
            self.rounds.ask_all(Done(reason), Ack, "fm/done")
            self._closed = True
