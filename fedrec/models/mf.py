"""Biased matrix factorization (the model of Surprise's ``SVD``, trained with Adam or SGD).

Model::

    r̂(u, i) = μ + b_u + b_i + <p_u, q_i>

Loss over a mini-batch ``B`` of training ratings (per-sample L2, as in SGD matrix factorization)::

    L = mean_{(u,i)∈B} [ (r̂(u,i) − r_ui)² + λ_b (b_u² + b_i²) + λ (‖p_u‖² + ‖q_i‖²) ]

Update: ``optimizer="adam"`` (default) or ``"sgd"`` with learning rate ``lr`` (the updates are in
:mod:`fedrec.models.training`); ``μ`` starts at the training mean and is learned; ``b = 0``;
``p, q ~ N(0, init_std²)`` drawn (``p`` then ``q``) from ``torch.Generator().manual_seed(seed)``.
Batching order and early stopping as in :mod:`fedrec.models.training` (validation: a DataFrame, or a
random ``validation_fraction`` of the rows, or ``"none"``). Predictions are clipped to the training
rating range.

``row_order="canonical"`` sorts the rows by (user, item, time) before anything else, so the fit
depends on the seed and the rows, not their order (:func:`fedrec.models.base.canonical_order`).

Unknown ids (Surprise-style fallback): an unknown user drops ``b_u`` and ``p_u`` (``μ + b_i``), an
unknown item drops ``b_i`` and ``q_i``; both unknown -> ``μ``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.data.idmap import IdMap
from fedrec.models.base import Recommender, canonical_order, expect_array, factor_scores
from fedrec.models.fm_config import ROW_ORDERS
from fedrec.models.training import OPTIMIZERS, Trainer, TrainHistory, random_holdout


@dataclass
class MFConfig:
    n_factors: int = 64
    lr: float = 3e-3
    optimizer: str = "adam"
    l2: float = 0.05
    l2_bias: float = 0.005
    epochs: int = 60
    batch_size: int = 512
    patience: int = 3
    init_std: float = 0.05
    validation: str = "random"
    validation_fraction: float = 0.05
    clip: bool = True
    seed: int = 0
    show_progress: bool = False
    row_order: str = "input"

    def __post_init__(self) -> None:
        if self.row_order not in ROW_ORDERS:
            raise ValueError(f"BiasedMF: row_order must be {'|'.join(ROW_ORDERS)}, got {self.row_order!r}")
        if self.n_factors < 1 or self.l2 < 0 or self.l2_bias < 0 or self.init_std <= 0:
            raise ValueError(f"BiasedMF: need n_factors >= 1, l2 >= 0, l2_bias >= 0, init_std > 0; got "
                             f"{self.n_factors}, {self.l2}, {self.l2_bias}, {self.init_std}")
        if self.validation not in ("random", "none"):
            raise ValueError(f"BiasedMF: validation must be 'random' or 'none', got {self.validation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"BiasedMF: optimizer must be {'|'.join(OPTIMIZERS)}, got {self.optimizer!r}")


class _MFModule(torch.nn.Module):
    """``μ``, ``b_u``, ``b_i`` and ``p``, ``q ~ N(0, init_std²)`` drawn from ``generator`` (``p`` first)."""

    def __init__(self, n_users: int, n_items: int, k: int, init_std: float, mu: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(float(mu)))
        self.bu = torch.nn.Parameter(torch.zeros(n_users))
        self.bi = torch.nn.Parameter(torch.zeros(n_items))
        self.p = torch.nn.Parameter(torch.randn(n_users, k, generator=generator) * init_std)
        self.q = torch.nn.Parameter(torch.randn(n_items, k, generator=generator) * init_std)


class BiasedMF(Recommender):
    """Biased MF ``r̂ = μ + b_u + b_i + p_u·q_i`` (see module docstring for loss and update)."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        names = {f.name for f in fields(MFConfig)}
        bad = sorted(set(params) - names)
        if bad:
            raise TypeError(f"BiasedMF: unknown argument(s) {bad}; allowed: {sorted(names)}")
        self.config = MFConfig(**params)
        self.module: _MFModule | None = None
        self.rating_scale = (1.0, 5.0)
        self.history = TrainHistory()

    def get_params(self) -> dict[str, Any]:
        return asdict(self.config)

    def _fit(self, interactions: pd.DataFrame, user_features: pd.DataFrame | None,
             item_features: pd.DataFrame | None, validation: object) -> None:
        c = self.config
        if c.row_order == "canonical":
            interactions = canonical_order(interactions)
        if isinstance(validation, pd.DataFrame):
            train, val = interactions, validation
        elif (validation or c.validation) == "random":
            train, val = random_holdout(interactions, c.validation_fraction, c.seed)
        elif (validation or c.validation) == "none":
            train, val = interactions, None
        else:
            raise ValueError(f"validation must be a DataFrame, 'random' or 'none'; got {validation!r}")
        self.user_map = IdMap.from_raw(interactions["user_id"], kind="user")
        self.item_map = IdMap.from_raw(interactions["item_id"], kind="item")
        y_all = interactions["rating"].to_numpy(dtype=np.float64)
        self.rating_scale = (float(y_all.min()), float(y_all.max()))
        u = torch.from_numpy(self.user_map.to_inner(train["user_id"]))
        i = torch.from_numpy(self.item_map.to_inner(train["item_id"]))
        y = torch.from_numpy(train["rating"].to_numpy(dtype=np.float32))
        m = self.module = _MFModule(len(self.user_map), len(self.item_map), c.n_factors, c.init_std,
                                    float(y.mean()), torch.Generator().manual_seed(c.seed))

        def loss_fn(idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
            bu, bi, pu, qi = m.bu[u[idx]], m.bi[i[idx]], m.p[u[idx]], m.q[i[idx]]
            pred = m.mu + bu + bi + (pu * qi).sum(dim=1)
            reg = c.l2_bias * (bu * bu + bi * bi) + c.l2 * ((pu * pu).sum(dim=1) + (qi * qi).sum(dim=1))
            return ((pred - y[idx]) ** 2 + reg).mean()

        val_fn = None
        if val is not None:
            vu = self.user_map.to_inner(val["user_id"], unknown="mask")
            vi = self.item_map.to_inner(val["item_id"], unknown="mask")
            vy = val["rating"].to_numpy(dtype=np.float64)

            def val_fn(epoch: int) -> float:
                return float(np.sqrt(np.mean((self._predict_inner(vu, vi, val) - vy) ** 2)))

        self.history = Trainer(m, len(train), epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, seed=c.seed,
                               patience=c.patience, loss_fn=loss_fn, val_fn=val_fn, optimizer=c.optimizer,
                               show_progress=c.show_progress, desc="BiasedMF").run()

    def _arrays(self) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert self.module is not None
        m = self.module
        return (float(m.mu.detach()), m.bu.detach().numpy().astype(np.float64),
                m.bi.detach().numpy().astype(np.float64), m.p.detach().numpy().astype(np.float64),
                m.q.detach().numpy().astype(np.float64))

    def _predict_inner(self, users: np.ndarray, items: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
        mu, bu, bi, p, q = self._arrays()
        ku, ki = users >= 0, items >= 0
        su, si = np.where(ku, users, 0), np.where(ki, items, 0)
        pred = (mu + np.where(ku, bu[su], 0.0) + np.where(ki, bi[si], 0.0)
                + np.einsum("nk,nk->n", p[su] * ku[:, None], q[si] * ki[:, None]))
        return np.clip(pred, *self.rating_scale) if self.config.clip else pred

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        mu, bu, bi, p, q = self._arrays()
        return factor_scores(users, bu, p, mu + bi, q)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        mu, bu, bi, p, q = self._arrays()
        return ({"mu": np.array([mu]), "bu": bu, "bi": bi, "p": p, "q": q},
                {"rating_scale": list(self.rating_scale), "history": self.history.to_json()})

    def _set_state(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        assert self.user_map is not None and self.item_map is not None
        n_u, n_i, k = len(self.user_map), len(self.item_map), self.config.n_factors
        m = self.module = _MFModule(n_u, n_i, k, self.config.init_std, 0.0, torch.Generator())  # overwritten
        for name, shape in (("mu", (1,)), ("bu", (n_u,)), ("bi", (n_i,)), ("p", (n_u, k)), ("q", (n_i, k))):
            t = torch.from_numpy(expect_array(arrays, name, shape).astype(np.float32))
            getattr(m, name).data = t[0] if name == "mu" else t
        self.rating_scale = (float(state["rating_scale"][0]), float(state["rating_scale"][1]))
