"""The centralized twin of the federated MF: the same model, schedule and updates, on all ratings at once.

:func:`fit_reference` trains the biased MF of :mod:`fedrec.protocols.fedmf.core` with the *same SGD
schedule* as the protocol (same initialisation, same client selection per round, same ``E`` local user
steps, the same per-round sum of the selected clients' item gradients, the same final user refit), but
centrally, with its gradients taken by torch autograd (float64) of the losses the module docstring of
:mod:`.core` writes down::

    users of S_t:  L_U = Σ_{(u,i)∈S_t} ½ e_ui² / c_u + Σ_{u∈S_t} (½λ‖p_u‖² + ½λ_b b_u²)
                   (∂L_U/∂p_u = (1/c_u) Σ_i e_ui q_i + λ p_u: the clients' user step)
    items:         L_I = Σ_{(u,i)∈S_t} (½ e_ui² + ½λ‖q_i‖² + ½λ_b b_i²)
                   θ ← θ − η · ∇_θ L_I / (n_i + κ)

It shares nothing with the protocol's code but the initialisation functions (definitions, not
computation), so the equality test (plain backend: 1e-5) checks the protocol's hand-written gradients,
packing, aggregation and message flow against an independent derivation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fedrec.protocols.fedmf.config import FedMFConfig
from fedrec.protocols.fedmf.core import initial_items, initial_user_factors, select_clients

__all__ = ["ReferenceMF", "fit_reference"]


@dataclass
class ReferenceMF:
    """The trained parameters: ``mu``, item ``q[n, k]``, ``b[n]``, and per raw user id (str) ``p``/``bu``."""

    mu: float
    q: np.ndarray
    b: np.ndarray
    user_ids: list[str]
    p: np.ndarray
    bu: np.ndarray
    catalogue: list[str]

    def predict(self, pairs: pd.DataFrame, clip: tuple[float, float] | None = (1.0, 5.0)) -> np.ndarray:
        """``r̂`` for ``pairs[user_id, item_id]``; unknown users/items drop their terms."""
        upos = pd.Index(self.user_ids).get_indexer(pd.Index(pairs["user_id"].astype(str)))
        ipos = pd.Index(self.catalogue).get_indexer(pd.Index(pairs["item_id"].astype(str)))
        ku, ki = upos >= 0, ipos >= 0
        su, si = np.where(ku, upos, 0), np.where(ki, ipos, 0)
        pred = (self.mu + np.where(ku, self.bu[su], 0.0) + np.where(ki, self.b[si], 0.0)
                + np.einsum("nk,nk->n", self.p[su] * ku[:, None], self.q[si] * ki[:, None]))
        return np.clip(pred, *clip) if clip else pred


def fit_reference(clients: Mapping[str, pd.DataFrame], catalogue: Sequence[object],
                  config: FedMFConfig) -> ReferenceMF:
    """Train centrally on ``clients`` (name -> ``user_id, item_id, rating`` rows; a user belongs to one
    client) over ``catalogue``, as the protocol does with every client answering every round.
    Clients are ordered by name, as the server orders them."""
    names = sorted(clients)
    cat = [str(x) for x in catalogue]
    frames = [clients[n].assign(_client=j) for j, n in enumerate(names)]
    df = pd.concat(frames, ignore_index=True)
    df["user_id"] = df["user_id"].astype(str)
    owner = df.groupby("user_id")["_client"].nunique()
    if (owner > 1).any():
        raise ValueError(f"fit_reference: user {owner[owner > 1].index[0]!r} belongs to several clients")
    users = sorted(df["user_id"].unique())
    u = torch.from_numpy(pd.Index(users).get_indexer(pd.Index(df["user_id"])).astype(np.int64))
    ipos = pd.Index(cat).get_indexer(pd.Index(df["item_id"].astype(str)))
    if (ipos < 0).any():
        bad = df["item_id"].iloc[int(np.argmin(ipos))]
        raise ValueError(f"fit_reference: item {bad!r} is not in the catalogue")
    i = torch.from_numpy(ipos.astype(np.int64))
    r = torch.from_numpy(df["rating"].to_numpy(np.float64).copy())
    client = df["_client"].to_numpy()
    n = len(cat)
    mu = float(r.sum() / len(r))
    c_u = torch.bincount(u, minlength=len(users)).to(torch.float64).clamp(min=1.0)
    d_i = torch.bincount(i, minlength=n).to(torch.float64) + config.item_damping
    items = initial_items(n, config)
    q = torch.tensor(items.q, requires_grad=True)
    b = torch.tensor(items.b, requires_grad=True)
    p = torch.tensor(initial_user_factors(users, config), requires_grad=True)
    bu = torch.zeros(len(users), dtype=torch.float64, requires_grad=True)
    lam, lam_b = config.l2, config.l2_bias

    def user_steps(rows: torch.Tensor, epochs: int) -> None:
        active = torch.zeros(len(users), dtype=torch.float64)
        active[u[rows]] = 1.0
        for _ in range(epochs):
            e = mu + bu[u[rows]] + b[i[rows]] + (p[u[rows]] * q[i[rows]]).sum(1) - r[rows]
            loss = (0.5 * e ** 2 / c_u[u[rows]]).sum() + (active * (0.5 * lam * (p ** 2).sum(1)
                                                                     + 0.5 * lam_b * bu ** 2)).sum()
            gp, gb = torch.autograd.grad(loss, [p, bu])
            with torch.no_grad():
                p.sub_(config.user_lr * gp)
                bu.sub_(config.user_lr * gb)

    m = config.selected_per_round(len(names))
    for t in range(config.rounds):
        chosen = {names.index(s) for s in select_clients(names, m, config.seed, t)}
        rows = torch.from_numpy(np.flatnonzero(np.isin(client, sorted(chosen))))
        if not len(rows):
            continue
        user_steps(rows, config.local_epochs)
        e = mu + bu[u[rows]] + b[i[rows]] + (p[u[rows]] * q[i[rows]]).sum(1) - r[rows]
        loss = (0.5 * e ** 2 + 0.5 * lam * (q[i[rows]] ** 2).sum(1) + 0.5 * lam_b * b[i[rows]] ** 2).sum()
        gq, gb_i = torch.autograd.grad(loss, [q, b])
        with torch.no_grad():
            q.sub_(config.lr * gq / d_i[:, None])
            b.sub_(config.lr * gb_i / d_i)
    user_steps(torch.arange(len(r)), config.local_epochs)
    return ReferenceMF(mu, q.detach().numpy().copy(), b.detach().numpy().copy(), users,
                       p.detach().numpy().copy(), bu.detach().numpy().copy(), cat)
