"""The guest of the vertical FM: labels, its own fields, and the only secret key (DESIGN §4.2).

Training replays :func:`fedrec.models.training.train_loop` exactly: the same rows in the same batches
(``default_rng([seed, epoch]).permutation``), the same negatives (``default_rng([seed, epoch, 1])``),
the same losses, Adam, per-sample L2 and early stopping. Per batch::

    z_s = z_G(s) + z_H(u_s) + <e_G(s), e_H(u_s)>          (z_H, e_H from the host, per batch user)
    loss = data(z) + mean_s R_G(s)                        (the host adds its own L2 through c_u)

``z_H``/``e_H`` enter as leaf tensors, so one backward pass gives the guest's own gradient and, as their
gradients, ``Δ_u = Σ_s δ_s`` and ``Q_u = Σ_s δ_s e_G(s)``; the encrypted per-user vector is built from
them (:mod:`fedrec.protocols.hetero_fm.packing`). The guest's fields, tables and id maps are those of a
:class:`~fedrec.models.fm.FactorizationMachine` without ``user_features`` (``self.local``), initialised
after ``torch.manual_seed(seed)`` as that model would be. The reported training loss leaves out the
host's L2 term (the guest never sees the host's parameters); so does the ranking validation loss.

Aligned users only. ``fit(..., aligned_users=ids)`` (the PSI intersection; default: every user of
``interactions``) declares the only users the guest will ever reference to the host. Every other user
is handled locally with ``z_H = 0, e_H = 0`` — exactly what the centralized FM computes for a user
without a host feature row — and gets no row in the encrypted residuals; a batch without aligned users
needs no host round trip (the host zero-steps its Adam for it, see :mod:`.host`). ``predict`` /
``recommend`` likewise ask only for aligned users (the others fall back to the guest terms, counted;
see :mod:`.guest_inference`).

Large batches: the encrypted gradient of a batch is split into as many parts as the CKKS modulus
requires (:func:`packing.plan_parts`); the guest sums the decrypted parts and releases one value per
column, so the host learns the same batch aggregate as without the split.

Validation: after every epoch the guest asks the host for the partials of the aligned validation users
(the others get zero partials, as the centralized model gives them empty user fields) and decides;
``EpochEnd(improved, stop, n_batches)`` makes the host snapshot / restore its parameters in step.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fedrec.crypto.backend import CryptoBackend, CryptoError, flood_and_round, make_backend
from fedrec.models.base import SeenItems, check_frame
from fedrec.models.fm import FactorizationMachine
from fedrec.models.fm_core import combine
from fedrec.models.training import TrainHistory
from fedrec.protocols.hetero_fm import label_dp, packing
from fedrec.protocols.hetero_fm.config import TORCH_RNG_LOCK, HeteroFMConfig
from fedrec.protocols.hetero_fm.guest_inference import _GuestInference
from fedrec.protocols.hetero_fm.messages import (
    Ack,
    Done,
    EncryptedResiduals,
    EpochEnd,
    HeteroFMError,
    MaskedGradients,
    Partials,
    PartialsRequest,
    ProtocolRejected,
    ReleasedGradients,
    Setup,
    SetupAck,
)
from fedrec.transport.channel import Channel
from fedrec.transport.wire import Message

logger = logging.getLogger(__name__)


class HeteroFMGuest(_GuestInference):
    """The guest party: ``HeteroFMGuest(channel, host="host", config=cfg).fit(interactions)``."""

    def __init__(self, channel: Channel, host: str = "host", config: HeteroFMConfig | None = None) -> None:
        self.channel = channel
        self.host = host
        self.config = config or HeteroFMConfig()
        params = self.config.fm_params()
        params["use_user_features"] = False
        self.local = FactorizationMachine(**params)
        self.history = TrainHistory()
        self.initial_state: dict[str, torch.Tensor] = {}
        self.last_fallbacks: dict[str, int] = {}
        self.clipped_values = 0
        self.n_host_features = 0
        self.timings: dict[str, float] = {"epoch_seconds": 0.0}
        self._backend: CryptoBackend | None = None
        self._label_dp: label_dp.LabelDP | None = None
        self._closed = False
        #: per guest inner user id: its position in the aligned list sent at setup, or -1
        self._aligned_pos = np.zeros(0, dtype=np.int64)
        #: raw id (as str) -> position, for every declared (aligned) user
        self._aligned_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ messaging
    def _ask(self, msg: Message, expected: type[Any], step: str) -> Any:
        self.channel.send(self.host, msg, step=step)
        answer = self.channel.recv_any((expected, ProtocolRejected), step=step, peers=[self.host],
                                       timeout=self.config.timeout).msg
        if isinstance(answer, ProtocolRejected):
            raise HeteroFMError(self.host, step, f"rejected field {answer.field!r}: {answer.detail}")
        if not isinstance(answer, expected):
            got = type(answer).__name__
            raise HeteroFMError(self.host, step, f"answered {got}, expected {expected.__name__}")
        return answer

    def _partials(self, purpose: str, epoch: int, batch: int, users: np.ndarray, step: str
                  ) -> tuple[np.ndarray, np.ndarray]:
        ans: Partials = self._ask(PartialsRequest(purpose, epoch, batch, users), Partials, step)
        k = self.config.n_factors
        if ans.z.shape != (len(users),) or ans.e.shape != (len(users), k):
            raise HeteroFMError(self.host, step, f"partials of shape {ans.z.shape}/{ans.e.shape}, expected "
                                                 f"({len(users)},)/({len(users)}, {k})")
        return ans.z, ans.e

    # ------------------------------------------------------------------ setup
    def _prepare(self, interactions: pd.DataFrame, item_features: pd.DataFrame | None, validation: object
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        fm = self.local
        inter = check_frame(interactions, "interactions", ("user_id", "item_id", "rating", "timestamp"))
        if len(inter) == 0:
            raise ValueError("interactions is empty: nothing to fit")
        inter = inter.reset_index(drop=True)
        train, val = fm._prepare_fit(inter, None, item_features, validation)
        with TORCH_RNG_LOCK:  # the centralized FM's init-seed contract, minus the host's field
            fm._init_params(train["rating"].to_numpy(dtype=np.float64))
        assert fm.params is not None and fm.user_map is not None and fm.item_map is not None
        self.initial_state = {k: v.detach().clone() for k, v in fm.params.state_dict().items()}
        fm.seen = SeenItems.from_pairs(fm.user_map.to_inner(inter["user_id"]),
                                       fm.item_map.to_inner(inter["item_id"]), len(fm.user_map))
        return train, val

    def _declare(self, aligned_users: Iterable[Any] | None) -> list[str]:
        """The aligned list sent at setup: aligned training users in inner-id order (so sorted inner ids
        map to increasing positions), then aligned users without training rows."""
        assert self.local.user_map is not None
        train_ids = [str(u) for u in self.local.user_map.raw_ids]
        if aligned_users is None:
            wanted = set(train_ids)
        elif isinstance(aligned_users, (str, bytes)) or not isinstance(aligned_users, Iterable):
            raise TypeError(f"HeteroFMGuest.fit: aligned_users must be an iterable of user ids, got "
                            f"{type(aligned_users).__name__}")
        else:
            wanted = {str(u) for u in aligned_users}
        declared = [u for u in train_ids if u in wanted]
        known = set(declared)
        declared += sorted(u for u in wanted if u not in known)
        self._aligned_ids = {u: p for p, u in enumerate(declared)}
        self._aligned_pos = np.array([self._aligned_ids.get(u, -1) for u in train_ids], dtype=np.int64)
        logger.info("guest: %d of %d training users are aligned (%d aligned users declared in all)",
                    len(known), len(train_ids), len(declared))
        return declared

    def _setup(self, users: list[str]) -> None:
        c = self.config
        opts: dict[str, object] = {}
        if c.backend == "ckks":
            opts = {"preset": c.ckks_preset, "rotations": False}
        elif c.backend == "paillier":
            opts = {"key_bits": c.paillier_key_bits}
        self._backend = make_backend(c.backend, **opts)
        public = self._backend.public_bytes()
        import hashlib

        digest = hashlib.sha256(public).hexdigest()
        ack: SetupAck = self._ask(Setup(c.agreed(), public, digest, users), SetupAck, "fm/setup")
        self.n_host_features = ack.n_host_features
        self._label_dp = None
        if c.dp_guest_noise_multiplier > 0:
            self._label_dp = label_dp.LabelDP(c.dp_guest_noise_multiplier, c.dp_guest_clip, c.plain_bound,
                                              ack.n_host_features, c.dp_delta)
        logger.info("guest: host has %d features and rows for %d of our %d users; context sha256 %s",
                    ack.n_host_features, ack.n_matched, len(users), digest)

    # ------------------------------------------------------------------ fit
    def fit(self, interactions: pd.DataFrame, item_features: pd.DataFrame | None = None,
            validation: object = None, aligned_users: Iterable[Any] | None = None) -> HeteroFMGuest:
        """Train with the host (see the module docstring); returns ``self``. ``validation`` as in
        :meth:`FactorizationMachine.fit` (a DataFrame, or ``"random"`` / ``"cold"`` / ``"none"``).
        ``aligned_users``: the raw ids both parties hold (PSI); ``None``: every user of
        ``interactions``. No other user is ever referenced to the host."""
        c = self.config
        train, val = self._prepare(interactions, item_features, validation)
        self._setup(self._declare(aligned_users))
        fm = self.local
        assert fm.user_map is not None and fm.item_map is not None and fm.params is not None
        u = fm.user_map.to_inner(train["user_id"])
        i = fm.item_map.to_inner(train["item_id"])
        ts = train["timestamp"].to_numpy(dtype=np.int64)
        ty = torch.from_numpy(train["rating"].to_numpy(dtype=np.float64).astype(np.float32))
        opt = torch.optim.Adam(fm.params.parameters(), lr=c.lr)
        val_fn = None if val is None else self._make_val_fn(val)
        hist = TrainHistory()
        best_state = copy.deepcopy(fm.params.state_dict())
        best = np.inf
        t0 = time.perf_counter()
        n_rows = len(train)
        n_batches = -(-n_rows // c.batch_size)
        bar = tqdm(range(c.epochs), desc=f"HeteroFM[{c.backend}]", disable=not c.show_progress)
        for epoch in bar:
            order = np.random.default_rng([c.seed, epoch]).permutation(n_rows)
            sampler = np.random.default_rng([c.seed, epoch, 1])
            fm.params.train()
            total = 0.0
            te = time.perf_counter()
            for b, start in enumerate(range(0, n_rows, c.batch_size)):
                idx = order[start:start + c.batch_size]
                loss = self._batch(epoch, b, u[idx], i[idx], ts[idx], ty[idx], sampler, opt)
                total += loss * len(idx)
            self.timings["epoch_seconds"] += time.perf_counter() - te
            hist.train_loss.append(total / max(n_rows, 1))
            last = epoch + 1 == c.epochs
            if val_fn is None:
                hist.best_epoch = epoch + 1
                best_state = fm.params.state_dict()
                self._ask(EpochEnd(epoch, True, last, n_batches), Ack, f"fm/e{epoch}/end")
                continue
            fm.params.eval()
            with torch.no_grad():
                metric = float(val_fn(epoch))
            hist.val_metric.append(metric)
            bar.set_postfix(train=f"{hist.train_loss[-1]:.4f}", val=f"{metric:.4f}")
            improved = metric < best - 1e-4
            if improved:
                best = metric
                hist.best_epoch = epoch + 1
                best_state = copy.deepcopy(fm.params.state_dict())
            stop = last or (not improved and epoch + 1 - hist.best_epoch >= c.patience)
            self._ask(EpochEnd(epoch, improved, stop, n_batches), Ack, f"fm/e{epoch}/end")
            if stop:
                break
        fm.params.load_state_dict(best_state)
        fm.params.eval()
        hist.seconds = time.perf_counter() - t0
        self.history = fm.history = hist
        logger.info("guest: %d epochs, best epoch %d, %.1fs (%d slot values clipped)", len(hist.train_loss),
                    hist.best_epoch, hist.seconds, self.clipped_values)
        return self

    def _scores(self, uu: np.ndarray, ii: np.ndarray, tt: np.ndarray, z_h: torch.Tensor, e_h: torch.Tensor,
                inv: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fm = self.local
        assert fm.params is not None
        terms = fm._terms(uu, ii, tt)
        z_g, e_g = combine(terms, fm.params.bias, len(uu), self.config.n_factors)
        reg = torch.zeros(len(uu))
        for t in terms:
            reg = reg + t.reg
        tinv = torch.from_numpy(inv)
        return z_g + z_h[tinv] + (e_g * e_h[tinv]).sum(dim=1), reg, e_g

    def _data_loss(self, z: torch.Tensor, y: torch.Tensor | None, n_pos: int) -> torch.Tensor:
        c = self.config
        if c.objective == "regression":
            assert y is not None
            return ((z - y) ** 2).mean()
        if c.objective == "logistic":
            assert y is not None
            return F.binary_cross_entropy_with_logits(z, y)
        zp, zn = z[:n_pos], z[n_pos:].view(n_pos, c.n_negatives)
        if c.loss == "bpr":
            return -F.logsigmoid(zp[:, None] - zn).mean()
        return (F.binary_cross_entropy_with_logits(zp, torch.ones_like(zp))
                + F.binary_cross_entropy_with_logits(zn, torch.zeros_like(zn)))

    def _expand(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray, sampler: np.random.Generator | None,
                neg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.config
        if c.objective != "ranking":
            return u, i, ts
        if neg is None:
            assert sampler is not None and self.local.item_map is not None
            neg = sampler.integers(0, len(self.local.item_map), size=(len(u), c.n_negatives))
        m = neg.shape[1]
        return (np.concatenate([u, np.repeat(u, m)]), np.concatenate([i, neg.ravel()]),
                np.concatenate([ts, np.repeat(ts, m)]))

    def _batch(self, epoch: int, b: int, u: np.ndarray, i: np.ndarray, ts: np.ndarray, y: torch.Tensor,
               sampler: np.random.Generator, opt: torch.optim.Optimizer) -> float:
        c = self.config
        step = f"fm/e{epoch}/b{b}"
        uu, ii, tt = self._expand(u, i, ts, sampler)
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
        loss = self._data_loss(z, y, len(u)) + reg.mean()
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
            kappa = packing.width(c.n_factors, c.layout) - c.n_factors - 1
            d_s = label_dp.clip_residuals(z.grad.numpy().astype(np.float64), e_total, n_s,
                                          c.dp_guest_clip, kappa)
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
            ans: MaskedGradients = self._ask(msg, MaskedGradients, where)
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
        self._ask(ReleasedGradients(epoch, b, values), Ack, f"{step}/release")

    # ------------------------------------------------------------------ validation
    def _make_val_fn(self, val: pd.DataFrame) -> Any:
        fm, c = self.local, self.config
        assert fm.user_map is not None and fm.item_map is not None
        vu = fm.user_map.to_inner(val["user_id"], unknown="mask")
        vi = fm.item_map.to_inner(val["item_id"], unknown="mask")
        vt = val["timestamp"].to_numpy(dtype=np.int64)
        vy = val["rating"].to_numpy(dtype=np.float64)
        neg = None
        if c.objective == "ranking":
            keep = (vu >= 0) & (vi >= 0)
            vu, vi, vt = vu[keep], vi[keep], vt[keep]
            rng = np.random.default_rng([c.seed, 2**31])
            neg = rng.integers(0, len(fm.item_map), (len(vu), c.n_negatives))

        def metric(epoch: int) -> float:
            uu, ii, tt = self._expand(vu, vi, vt, None, neg)
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
            if c.objective == "ranking":
                return float(self._data_loss(z, None, len(vu)) + reg.mean())
            zz = z.numpy().astype(np.float64)
            if c.objective == "regression":
                return float(np.sqrt(np.mean((fm._finish(zz) - vy) ** 2)))
            p = np.clip(1 / (1 + np.exp(-zz)), 1e-7, 1 - 1e-7)
            return float(-np.mean(vy * np.log(p) + (1 - vy) * np.log(1 - p)))

        return metric

    def privacy_spent(self) -> float | None:
        """ε (at ``dp_delta``) of the label-DP noise on every gradient released so far, or ``None``
        without guest DP (``dp_guest_noise_multiplier = 0``); see :mod:`.label_dp`."""
        return None if self._label_dp is None else self._label_dp.epsilon()

    # ------------------------------------------------------------------ persistence / end
    def save(self, directory: str | Path) -> Path:
        """The guest half: a :class:`FactorizationMachine` artifact of the guest fields + ``hetero.json``
        (the scorer adds the host's exported partials: ``z = z_G + z_H + <e_G, e_H>``)."""
        path = self.local.save(directory)
        meta = {"format": "fedrec.hetero_fm.guest", "format_version": 1, "host_field": "user_features",
                "n_factors": self.config.n_factors, "objective": self.config.objective,
                "backend": self.config.backend, "history": self.history.to_json()}
        (path / "hetero.json").write_text(json.dumps(meta, indent=1))
        return path

    def close(self, reason: str = "done") -> None:
        """Tell the host the job is over (its ``serve`` returns). Idempotent."""
        if not self._closed:
            self._ask(Done(reason), Ack, "fm/done")
            self._closed = True
