"""The host's half of the vertical FM: :class:`HostHalf` (its parameters, partials and state) and the
artifact of a trained one (:mod:`fedrec.artifacts`).

``arrays.npz``: ``w[n]``, ``v[n, k]`` of the user-feature field (and ``w0 = 0``: the bias is the
guest's); ``meta.json``: the field, its table encoder, the host's config and the run id (the run both
halves and the exported partials share, checked by the scorer). Format ``fedrec.hetero_fm.host``,
version 2 (version 1, written before artifacts carried digests, is read too).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.artifacts import ArtifactError, read_artifact, write_artifact
from fedrec.crypto.dp import GaussianMechanism, PrivacyAccountant
from fedrec.data.idmap import id_keys
from fedrec.models.fields import Csr, FieldSpec, TableEncoder
from fedrec.models.fm_core import FMParams, combine
from fedrec.models.training import make_optimizer
from fedrec.protocols.checkpoint import Checkpointer
from fedrec.protocols.hetero_fm.config import HOST_FIELD, HeteroFMConfig
from fedrec.protocols.hetero_fm.state import HostState

HOST_FORMAT = "fedrec.hetero_fm.host"
HOST_VERSION = 2


def save_host_half(directory: str | Path, params: FMParams, spec: FieldSpec, encoder: TableEncoder,
                   config: HeteroFMConfig, run_id: str | None) -> Path:
    arrays = {"w": params.w[HOST_FIELD].detach().numpy(), "v": params.v[HOST_FIELD].detach().numpy()}
    meta = {"field": spec.to_json(), "encoder": encoder.to_json(), "config": asdict(config), "run_id": run_id}
    write_artifact(directory, HOST_FORMAT, HOST_VERSION, arrays, meta)
    return Path(directory)


def load_host_half(directory: str | Path) -> tuple[FMParams, TableEncoder, HeteroFMConfig, str | None]:
    """``(params, encoder, config, run_id)``; :class:`ArtifactError` naming the file and field."""
    art = read_artifact(directory, HOST_FORMAT, [1, HOST_VERSION], required=("field", "encoder", "config"),
                        require_digest=False)
    meta_path = Path(directory) / "meta.json"
    try:
        raw: dict[str, Any] = dict(art.meta["config"])
        known = {f.name for f in fields(HeteroFMConfig)}
        config = HeteroFMConfig(**{k: v for k, v in raw.items() if k in known})
        encoder = TableEncoder.from_json(art.meta["encoder"])
        spec = FieldSpec.from_json(art.meta["field"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{meta_path}: fields 'config'/'encoder'/'field' are invalid: {exc}") from exc
    if spec.name != HOST_FIELD or spec.size != encoder.size:
        raise ArtifactError(f"{meta_path}: field 'field' is {spec.to_json()}, expected {HOST_FIELD!r} of the "
                            f"encoder's {encoder.size} columns")
    w, v = art.arrays.get("w"), art.arrays.get("v")
    if w is None or v is None or w.shape != (spec.size,) or v.shape != (spec.size, config.n_factors):
        raise ArtifactError(f"{Path(directory) / 'arrays.npz'}: arrays 'w'/'v' must have shapes "
                            f"({spec.size},)/({spec.size}, {config.n_factors})")
    params = FMParams([spec], config.n_factors, config.init_std, 0.0, {HOST_FIELD: config.l2_host_factors},
                      config.l2_linear, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        params.w[HOST_FIELD].copy_(torch.from_numpy(w.astype("float32")))
        params.v[HOST_FIELD].copy_(torch.from_numpy(v.astype("float32")))
    run_id = art.meta.get("run_id")
    return params, encoder, config, run_id if isinstance(run_id, str) else None


class HostHalf:
    """The host's half of the vertical FM and its state between requests: the encoded ``user_features``,
    the parameters of that field (``w``, ``v``), their optimizer and the early-stopping snapshots, the
    partial-DP mechanism and its account, the cursor; its partials (training, serving) and its
    checkpoint state (:class:`~.state.HostState`). :class:`~.host.HeteroFMHost` is this half serving
    the guest's requests (:mod:`.host_session`, :mod:`.host`)."""

    def __init__(self, config: HeteroFMConfig) -> None:
        self.config = config
        self.encoder: TableEncoder | None = None
        self.params: FMParams | None = None
        self.initial_state: dict[str, torch.Tensor] = {}
        c = self.config
        self._dp = (GaussianMechanism(c.dp_host_noise_multiplier, c.dp_host_clip)
                    if c.dp_host_noise_multiplier > 0 else None)
        self.run_id: str | None = None
        #: the cursor resumed from at the last Resume (``None``: started afresh)
        self.resumed_from: tuple[int, int, bool] | None = None
        self._ckpt: Checkpointer | None = None
        self._table: pd.DataFrame | None = None
        self._rows: Csr | None = None
        self._opt: torch.optim.Optimizer | None = None
        #: the host field's optimizer (HeteroFMConfig.host_update: host_optimizer, else optimizer)
        self.optimizer_name = self.config.host_update
        #: parameters after each of the last ``patience + 1`` epochs (1-based; 0 = initial)
        self._snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self._aligned: pd.Index | None = None
        self._cursor = (0, 0)  # (epoch, batches of it already stepped)
        self._final = False
        self._rolled_back: list[list[Any]] = []

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


    # ------------------------------------------------------------------ optimizer step
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


    def _params_copy(self) -> dict[str, torch.Tensor]:
        assert self.params is not None
        return {k: v.detach().clone() for k, v in self.params.state_dict().items()}


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


    def _start_fresh(self) -> None:
        """Initial parameters, a new optimizer, the cursor at the start (a run not resumed)."""
        self._init_params()
        assert self.params is not None
        self._opt = make_optimizer(self.optimizer_name, self.params.parameters(), self.config.lr)
        self._snapshots, self._cursor, self._final = {0: self._params_copy()}, (0, 0), False

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """The host half (:mod:`.host_model`): ``w``/``v`` of the user-feature field, its encoder, the
        config and the run id, one verified artifact (written atomically)."""
        if self.params is None or self.encoder is None:
            raise RuntimeError("HeteroFMHost.save: nothing trained yet")
        return save_host_half(directory, self.params, self.spec, self.encoder, self.config, self.run_id)

