"""The host of the vertical FM: holds ``user_features`` and the parameters of the ``user_features`` field.

It answers the guest's requests (:mod:`fedrec.protocols.hetero_fm.messages`) until ``Done``:

* partials ``z_H(u) = Σ_j w_j x_j + ½(‖e_H‖² − Σ_j ‖v_j‖² x_j²)`` and ``e_H(u) = Σ_j v_j x_j`` for the
  batch users (optionally clipped to L2 norm ``dp_host_clip`` and Gaussian-noised, ε accounted);
* its gradient on the guest's ciphertexts, masked (:mod:`fedrec.protocols.hetero_fm.packing`);
* the released aggregates: unmask, divide by ``N_s``, Adam step (``torch.optim.Adam``, same ``lr`` and
  defaults as the centralized FM, same per-sample L2, so the plain backend reproduces it).

Users are referenced only inside the aligned set the guest declares at ``Setup`` (the PSI
intersection): ``PartialsRequest`` by position in it, ``PredictRequest`` by raw id; anything outside is
refused. A batch without aligned users never reaches the host; the centralized FM still takes an Adam
step on the host field there (zero gradient, but the moments decay and move the parameters), so the
host replays those steps itself when the next batch or ``EpochEnd(n_batches)`` shows it skipped some.
A batch's encrypted gradient may come in ``n_parts`` parts (slices of the batch users); the host masks
each part's products, keeps the sum of its masks and steps once on the guest's single release.

Initialisation: ``w = 0``, ``v ~ N(0, init_std²)`` from ``torch.Generator().manual_seed(seed)`` (the host's
own stream: the centralized FM draws all fields from one stream, which the host cannot replay without
learning the guest's field sizes; see ``initial_state`` and the exactness test).

A request the host cannot honour is answered with ``ProtocolRejected`` (naming the field) and serving
goes on; only a dead or silent guest (``PeerDiedError`` / ``PeerTimeoutError`` naming peer and step) ends
:meth:`HeteroFMHost.serve` with an error.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.crypto.backend import CryptoBackend, CryptoError, KeyPin, load_public
from fedrec.crypto.dp import PrivacyAccountant
from fedrec.crypto.masks import secure_rng
from fedrec.models.fields import Csr, FieldSpec, TableEncoder
from fedrec.models.fm_core import FMParams, combine
from fedrec.protocols.hetero_fm import packing
from fedrec.protocols.hetero_fm.config import HOST_FIELD, TORCH_RNG_LOCK, HeteroFMConfig, config_mismatches
from fedrec.protocols.hetero_fm.messages import (
    Ack,
    Done,
    EncryptedResiduals,
    EpochEnd,
    MaskedGradients,
    Partials,
    PartialsRequest,
    PredictRequest,
    ProtocolRejected,
    ReleasedGradients,
    Setup,
    SetupAck,
)
from fedrec.transport.channel import Channel, Received
from fedrec.transport.errors import ProtocolError

logger = logging.getLogger(__name__)

_REQUESTS = (Setup, PartialsRequest, PredictRequest, EncryptedResiduals, ReleasedGradients, EpochEnd, Done)


class Rejection(ValueError):
    """A request the host refuses; ``field`` goes back to the guest."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


@dataclass
class _BatchWork:
    """The host's state of the current training batch (users = positions in the aligned list)."""

    epoch: int
    batch: int
    users: np.ndarray
    n_parts: int = 0
    done: int = 0
    lanes: int = 0
    n_samples: int = 0
    cols: np.ndarray | None = None
    mult: np.ndarray | None = None
    v: np.ndarray | None = None
    mask_sums: np.ndarray | None = None


class HeteroFMHost:
    """The host party. ``HeteroFMHost(channel, guest="guest", config=cfg).serve(user_features)``."""

    def __init__(self, channel: Channel, guest: str = "guest", config: HeteroFMConfig | None = None) -> None:
        self.channel = channel
        self.guest = guest
        self.config = config or HeteroFMConfig()
        self.encoder: TableEncoder | None = None
        self.params: FMParams | None = None
        self.initial_state: dict[str, torch.Tensor] = {}
        self.accountant = PrivacyAccountant() if self.config.dp_host_noise_multiplier > 0 else None
        self.rejected = 0
        self._table: pd.DataFrame | None = None
        self._rows: Csr | None = None
        self._backend: CryptoBackend | None = None
        self._opt: torch.optim.Adam | None = None
        self._best: dict[str, Any] | None = None
        self._aligned: pd.Index | None = None
        self._batch: _BatchWork | None = None
        self._cursor = (0, 0)  # (epoch, batches of it already stepped)

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
        table.index = pd.Index([str(i) for i in table.index], name=table.index.name)
        self.encoder = TableEncoder.fit(table, HOST_FIELD, self.config.user_feature_columns)
        self._table = table
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        l2 = {HOST_FIELD: c.l2_host_factors}
        with TORCH_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.params = FMParams([self.spec], c.n_factors, c.init_std, 0.0, l2, c.l2_linear)
        with torch.no_grad():
            draw = torch.randn(self.spec.size, c.n_factors, generator=gen)
            self.params.v[HOST_FIELD].copy_(draw * c.init_std)
        self.initial_state = {k: v.detach().clone() for k, v in self.params.state_dict().items()}

    def _partials_for_rows(self, rows: Csr, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.params is not None
        with torch.no_grad():
            t = self.params.bag_terms(self.spec, *rows.gather(idx))
            z, e = combine([t], None, len(idx), self.config.n_factors)
        return z.numpy().astype(np.float64), e.numpy().astype(np.float64)

    def _noised(self, z: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        if c.dp_host_noise_multiplier <= 0:
            return z, e
        both = np.concatenate([z[:, None], e], axis=1)
        norm = np.maximum(np.linalg.norm(both, axis=1, keepdims=True) / c.dp_host_clip, 1.0)
        both = both / norm + secure_rng().normal(0.0, c.dp_host_noise_multiplier * c.dp_host_clip, both.shape)
        assert self.accountant is not None
        self.accountant.gaussian(c.dp_host_noise_multiplier, count=1)
        return both[:, 0], both[:, 1:]

    def privacy_spent(self) -> float | None:
        """ε (at ``dp_delta``) of the released partials per user, or ``None`` without host DP.

        Each request releases every listed user's partials once; the bound composes all requests
        (a user appears in at most all of them)."""
        return None if self.accountant is None else self.accountant.epsilon(self.config.dp_delta)

    def export_partials(self, user_ids: Any) -> pd.DataFrame:
        """``DataFrame[user_id, z_H, e_H_0..e_H_{k-1}]`` for serving (users without features: absent)."""
        if self.encoder is None or self._table is None:
            raise RuntimeError("HeteroFMHost.export_partials: serve() (training) has not run")
        raw = list(user_ids)
        keys = pd.Index([str(u) for u in raw])
        pos = self._table.index.get_indexer(keys)
        keep = np.flatnonzero(pos >= 0)
        rows = self.encoder.transform(self._table, self._table.index.to_numpy()[pos[keep]], HOST_FIELD)
        z, e = self._partials_for_rows(rows, np.arange(len(keep)))
        out = pd.DataFrame({"user_id": [raw[i] for i in keep], "z_H": z})
        for f in range(e.shape[1]):
            out[f"e_H_{f}"] = e[:, f]
        return out

    # ------------------------------------------------------------------ serving loop
    def serve(self, user_features: pd.DataFrame) -> HeteroFMHost:
        """Answer the guest until it sends ``Done``; returns ``self`` (trained parameters loaded)."""
        self._fit_features(user_features)
        while True:
            try:
                rec = self.channel.recv_any(_REQUESTS, peers=[self.guest], timeout=self.config.timeout)
            except ProtocolError as exc:
                self.rejected += 1
                logger.error("host: ignored an unexpected message from %r: %s", self.guest, exc)
                continue
            try:
                answer = self._handle(rec)
            except (Rejection, CryptoError, ValueError) as exc:
                self.rejected += 1
                field = exc.field if isinstance(exc, Rejection) else type(rec.msg).__name__
                logger.error("host: rejected %s from %r at step %r: %s", rec.msg.TYPE, rec.peer, rec.step,
                             exc)
                self.channel.reply(rec, ProtocolRejected(field, str(exc)))
                continue
            self.channel.reply(rec, answer)
            if isinstance(rec.msg, Done):
                logger.info("host: guest %r is done (%s)", rec.peer, rec.msg.reason)
                return self

    def _handle(self, rec: Received[Any]) -> Any:
        msg = rec.msg
        if isinstance(msg, Setup):
            return self._setup(msg)
        if isinstance(msg, Done):
            return Ack("done")
        if self._backend is None or self._rows is None:
            raise Rejection("step", f"{msg.TYPE} before a successful Setup")
        if isinstance(msg, PredictRequest):
            return self._predict(msg)
        if isinstance(msg, PartialsRequest):
            return self._partials(msg)
        if isinstance(msg, EncryptedResiduals):
            return self._gradients(msg)
        if isinstance(msg, ReleasedGradients):
            return self._step(msg)
        assert isinstance(msg, EpochEnd)
        return self._epoch_end(msg)

    def _setup(self, msg: Setup) -> SetupAck:
        bad = config_mismatches(self.config.agreed(), msg.config)
        if bad:
            mine = self.config.agreed()
            names = [b.split(" ")[0] for b in bad]
            details = "; ".join(f"{n}: host {mine.get(n)!r} vs guest {msg.config.get(n)!r}" for n in names)
            raise Rejection(bad[0], f"config mismatch ({details})")
        pin = KeyPin(self.config.context_sha256, peer=self.guest)
        if msg.context_sha256 != pin.check(msg.public_context):
            raise Rejection("context_sha256", "the announced SHA-256 does not match the public context")
        backend = load_public(msg.public_context, pin)
        if backend.name != self.config.backend:
            raise Rejection("backend", f"public context is {backend.name!r}, config says "
                                       f"{self.config.backend!r}")
        if backend.has_secret_key and backend.name != "plain":
            raise Rejection("public_context", "carries a secret key")
        assert self.encoder is not None and self._table is not None and self.params is not None
        ids = np.asarray(msg.user_ids, dtype=object)
        aligned = pd.Index(ids)
        if not aligned.is_unique:
            dup = int(aligned.duplicated().sum())
            raise Rejection("user_ids", f"{dup} duplicate id(s) in the aligned set")
        pos = self._table.index.get_indexer(aligned)
        self._rows = self.encoder.transform(self._table, ids, HOST_FIELD)
        self._aligned = aligned
        self._backend = backend
        self._opt = torch.optim.Adam(self.params.parameters(), lr=self.config.lr)
        self._best = None
        self._batch = None
        self._cursor = (0, 0)
        logger.info("host: setup with %d aligned users (%d with features), %d host features, backend %s",
                    len(ids), int((pos >= 0).sum()), self.spec.size, backend.name)
        return SetupAck(self.spec.size, int((pos >= 0).sum()))

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

    def _partials(self, msg: PartialsRequest) -> Partials:
        users = np.asarray(msg.users, dtype=np.int64)
        self._check_users(users)
        if msg.purpose == "train":
            self._catch_up(msg.epoch, msg.batch)
            self._batch = _BatchWork(msg.epoch, msg.batch, users.copy())
        return self._answer(users)

    def _predict(self, msg: PredictRequest) -> Partials:
        assert self._aligned is not None
        pos = self._aligned.get_indexer(pd.Index(np.asarray(msg.user_ids, dtype=object)))
        if np.any(pos < 0):
            first = msg.user_ids[int(np.flatnonzero(pos < 0)[0])]
            raise Rejection("user_ids", f"{int((pos < 0).sum())} id(s) outside the aligned set declared at "
                                        f"setup (first: {first!r}); only aligned users are scored")
        return self._answer(pos.astype(np.int64))

    # ------------------------------------------------------------------ gradient and step
    def _catch_up(self, epoch: int, batch: int) -> None:
        """Zero-gradient Adam steps for the batches of ``epoch`` before ``batch`` the host did not see
        (no aligned user), as the centralized FM steps on them."""
        e, done = self._cursor
        if epoch != e or batch < done:
            raise Rejection("batch", f"training batch e{epoch} b{batch}, but the host is at epoch {e} with "
                                     f"{done} batch(es) stepped")
        for _ in range(batch - done):
            self._adam_step(None, None, None)
        self._cursor = (epoch, batch)

    def _adam_step(self, cols: np.ndarray | None, g_v: np.ndarray | None, g_w: np.ndarray | None) -> None:
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

    def _batch_multipliers(self, work: _BatchWork) -> None:
        """Touched columns, ``x`` and the multipliers ``M_j(u)`` of the whole batch (every part uses
        the same columns, so the guest can sum the parts' results column by column)."""
        assert self._rows is not None and self.params is not None
        c, users = self.config, work.users
        idx, val, off = self._rows.gather(users)
        cols = np.unique(idx[val != 0])
        x = np.zeros((len(users), len(cols)))
        which = np.repeat(np.arange(len(users)), np.diff(np.append(off, len(idx))))
        nz = val != 0
        x[which[nz], np.searchsorted(cols, idx[nz])] = val[nz]
        v = self.params.v[HOST_FIELD].detach().numpy().astype(np.float64)[cols]
        w = self.params.w[HOST_FIELD].detach().numpy().astype(np.float64)[cols]
        mult = packing.column_multipliers(x, v, w, c.l2_linear, c.layout)
        if mult.size and np.max(np.abs(mult)) > c.plain_bound:
            top = float(np.max(np.abs(mult)))
            raise Rejection("plain_bound", f"a host multiplier reaches {top:.3g} > plain_bound "
                                           f"{c.plain_bound:g}; raise plain_bound in both configs")
        work.cols, work.mult, work.v = cols, mult, v

    def _gradients(self, msg: EncryptedResiduals) -> MaskedGradients:
        assert self._backend is not None
        c, work = self.config, self._batch
        if work is None or (work.epoch, work.batch) != (msg.epoch, msg.batch):
            current = None if work is None else (work.epoch, work.batch)
            raise Rejection("batch", f"residuals for epoch {msg.epoch} batch {msg.batch}, but the current "
                                     f"batch is {current}")
        if msg.part == 0:
            if msg.n_parts > max(len(work.users), 1):
                raise Rejection("n_parts", f"{msg.n_parts} parts for {len(work.users)} users")
            self._batch_multipliers(work)
            work.n_parts, work.done, work.lanes, work.n_samples = msg.n_parts, 0, msg.lanes, msg.n_samples
            work.mask_sums = None
        elif ((msg.part, msg.n_parts, msg.lanes, msg.n_samples)
              != (work.done, work.n_parts, work.lanes, work.n_samples)):
            raise Rejection("part", f"part {msg.part} of {msg.n_parts} ({msg.lanes} lanes, {msg.n_samples} "
                                    f"samples); expected part {work.done} of {work.n_parts} ({work.lanes} "
                                    f"lanes, {work.n_samples} samples)")
        assert work.cols is not None and work.mult is not None
        sel = np.array_split(np.arange(len(work.users)), work.n_parts)[msg.part]
        plan = packing.ChunkPlan(len(sel), c.n_factors, msg.users_per_chunk, msg.lanes, c.layout)
        packing.check_plan(self._backend, plan, len(msg.chunks))
        chunks = [self._backend.deserialize(b, plan.ct_size, 0) for b in msg.chunks]
        spec = packing.mask_spec(plan, c.value_bound, c.plain_bound, c.hiding_bits)
        results = packing.host_products(self._backend, chunks, plan, work.mult[:, sel, :])
        masked, masks = packing.mask_results(self._backend, results, spec)
        width = packing.released_width(c.n_factors, c.layout)
        sums = np.concatenate([packing.lane_sums(m, plan) for m in masks] or [np.zeros((0, width))])
        sums = sums[:len(work.cols)]
        work.mask_sums = sums if work.mask_sums is None else work.mask_sums + sums
        work.done += 1
        return MaskedGradients([self._backend.serialize(ct) for ct in masked])

    def _step(self, msg: ReleasedGradients) -> Ack:
        work = self._batch
        current = None if work is None else (work.epoch, work.batch)
        if work is None or current != (msg.epoch, msg.batch) or work.done < max(work.n_parts, 1):
            raise Rejection("batch", f"released gradients for epoch {msg.epoch} batch {msg.batch} with no "
                                     f"outstanding masked gradients for it")
        assert work.cols is not None and work.v is not None and work.mask_sums is not None
        k = self.config.n_factors
        want = (-(-len(work.cols) // work.lanes) * work.lanes, packing.released_width(k, self.config.layout))
        if msg.values.shape != want:
            raise Rejection("values", f"expected shape {want}, got {msg.values.shape}")
        g_v, g_w = packing.host_gradient(msg.values[:len(work.cols)] - work.mask_sums, work.v,
                                         self.config.layout)
        self._batch = None
        self._adam_step(work.cols, g_v / work.n_samples, g_w / work.n_samples)
        self._cursor = (msg.epoch, msg.batch + 1)
        return Ack(f"step e{msg.epoch} b{msg.batch}")

    def _epoch_end(self, msg: EpochEnd) -> Ack:
        assert self.params is not None
        self._catch_up(msg.epoch, msg.n_batches)
        if msg.improved:
            self._best = copy.deepcopy(self.params.state_dict())
        if msg.stop and self._best is not None:
            self.params.load_state_dict(self._best)
        self._batch = None
        self._cursor = (msg.epoch + 1, 0)
        return Ack(f"epoch {msg.epoch}")

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """The host half: ``arrays.npz`` (``w``, ``v``) + ``meta.json`` (encoder, config)."""
        if self.params is None or self.encoder is None:
            raise RuntimeError("HeteroFMHost.save: nothing trained yet")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "arrays.npz", w=self.params.w[HOST_FIELD].detach().numpy(),
                 v=self.params.v[HOST_FIELD].detach().numpy())
        meta = {"format": "fedrec.hetero_fm.host", "format_version": 1, "field": self.spec.to_json(),
                "encoder": self.encoder.to_json(), "config": asdict(self.config)}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))
        return path
