"""The math of the federated MF: the model, one client's round, the server's step (numpy, float64).

Model (biased MF over an agreed catalogue of ``n`` items, ``k`` factors)::

    r̂(u, i) = μ + b_u + b_i + <p_u, q_i>

``μ`` is the mean training rating, fixed at set-up (a secure sum of every client's ``Σ r`` and count,
see :mod:`fedrec.protocols.fedmf.server`); the server holds ``θ = [vec(Q), b]`` (``Q`` row-major,
``n·k`` values, then the ``n`` item biases) *encrypted*; each client holds its users' ``p_u, b_u`` and
ratings. Per rating, the loss is ``ℓ_ui = ½(r̂ − r)² + ½λ(‖p_u‖² + ‖q_i‖²) + ½λ_b(b_u² + b_i²)``.

A round ``t`` (the server selects clients ``S_t``; :func:`select_clients`). Every selected client:

1. decrypts ``θ_t``;
2. runs ``E = local_epochs`` full-batch gradient steps on its users (all users at once), with
   ``e_ui = r̂(u, i) − r_ui`` and ``c_u`` the user's number of ratings::

       p_u ← p_u − η_u · ( (1/c_u) Σ_{i∈R_u} e_ui q_i + λ p_u )
       b_u ← b_u − η_u · ( (1/c_u) Σ_{i∈R_u} e_ui      + λ_b b_u )

3. with the updated users computes the item gradient for the **whole catalogue** (zero rows for items
   it did not rate, so every upload has the same ``n(k+1)`` values)::

       g_i = Σ_{u∈c, i∈R_u} (e_ui p_u + λ q_i),    h_i = Σ_{u∈c, i∈R_u} (e_ui + λ_b b_i)

4. uploads ``Δ_c = −η · [g_i / d_i ; h_i / d_i]``, ``d_i = n_i + κ`` (``n_i`` = the item's global
   rating count, from the set-up sum; ``κ = item_damping``), clipped to ``|x| <= value_bound``, (masked,
   :mod:`.masking`), encrypted.

The server adds: ``θ_{t+1} = θ_t + Σ_{c∈ok} Δ_c``, ``ok`` the selected clients whose upload arrived.
With every client in every round this is gradient descent on ``Σ_{u,i} ℓ_ui`` for the items,
preconditioned per item by ``1/(n_i + κ)`` (about the mean gradient over its raters: a popular item
would otherwise need a step size ``1/n_i`` times smaller than a rare one), alternated with ``E`` steps on
the users. ``κ`` damps the rarely rated items: with ``1/n_i`` alone an item of one rating steps by
``η(‖p_u‖² + λ)`` along its rater's factors, which exceeds the stability limit 2 for a rater with
``‖p_u‖² > 2/η − λ``; such an item then oscillates, and any rounding difference grows by ~1.5x per
round (measured on ML-100K with ``η = 0.6``, ``κ = 0``: two float orderings of the *same* centralized
computation differ by 7e-9 after 60 rounds and by 1.1 after 100). With ``κ = 2`` a 1e-13 perturbation
of ``θ_0`` stays at 1e-12 after 100 rounds (``η = 1``), and the federated run equals its twin to that
precision. The step is linear in the uploads, so the server applies it to ciphertexts with additions
only (``η`` and ``1/d_i`` are folded in by the clients, in plaintext; see :mod:`.server` for why the
ciphertexts' scale and level never change).

After the last round every client decrypts ``θ_T`` and runs ``E`` more local epochs (its users fit
the final items) before exporting. Initialisation: ``Q ~ N(0, init_std²)`` from
``numpy.random.default_rng([seed, 1])``, ``b = 0``; ``p_u ~ N(0, init_std²)`` from a generator seeded
by ``SHA-256(seed, raw user id)`` (:func:`initial_user_factors`), so a user starts the same on a device
or in a silo; ``b_u = 0``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedrec.protocols.fedmf.config import FedMFConfig

__all__ = ["ClientData", "ItemModel", "UserState", "apply_updates", "initial_items",
           "initial_user_factors", "item_gradient", "local_epochs", "model_size", "select_clients",
           "upload_vector"]


def model_size(n_items: int, k: int) -> int:
    """Values in ``θ = [vec(Q), b]``."""
    return n_items * (k + 1)


@dataclass
class ItemModel:
    """``Q[n, k]`` and ``b[n]`` (plaintext, on a client after decryption)."""

    q: np.ndarray
    b: np.ndarray

    def pack(self) -> np.ndarray:
        return np.concatenate([self.q.ravel(), self.b])

    @classmethod
    def unpack(cls, theta: np.ndarray, n_items: int, k: int) -> ItemModel:
        if theta.shape != (model_size(n_items, k),):
            raise ValueError(f"item model: {theta.shape} values, expected ({model_size(n_items, k)},)")
        return cls(theta[:n_items * k].reshape(n_items, k).copy(), theta[n_items * k:].copy())


def initial_items(n_items: int, config: FedMFConfig) -> ItemModel:
    """``Q ~ N(0, init_std²)`` from ``default_rng([seed, 1])``, ``b = 0``."""
    rng = np.random.default_rng([config.seed, 1])
    return ItemModel(rng.normal(0.0, config.init_std, (n_items, config.n_factors)), np.zeros(n_items))


def initial_user_factors(user_ids: Sequence[str], config: FedMFConfig) -> np.ndarray:
    """``p_u ~ N(0, init_std²)`` per user, from a generator seeded by ``SHA-256(seed ‖ 0 ‖ user id)``."""
    out = np.empty((len(user_ids), config.n_factors))
    for j, uid in enumerate(user_ids):
        digest = hashlib.sha256(f"{config.seed}\0{uid}".encode()).digest()
        words = np.frombuffer(digest, dtype="<u8").tolist()
        out[j] = np.random.default_rng(words).normal(0.0, config.init_std, config.n_factors)
    return out


@dataclass
class ClientData:
    """One client's ratings: ``users`` (raw ids as str, inner order), and per rating (sorted by user,
    then item) the inner user ``u``, the catalogue position ``i`` and the rating ``r``."""

    users: list[str]
    u: np.ndarray
    i: np.ndarray
    r: np.ndarray
    n_items: int

    def __post_init__(self) -> None:
        order = np.lexsort((self.i, self.u))
        self.u, self.i = self.u[order].astype(np.int64), self.i[order].astype(np.int64)
        self.r = self.r[order].astype(np.float64)
        n_u = len(self.users)
        if self.u.size and (self.u.min() < 0 or self.u.max() >= n_u):
            raise ValueError(f"ClientData: user positions outside 0..{n_u - 1}")
        if self.i.size and (self.i.min() < 0 or self.i.max() >= self.n_items):
            raise ValueError(f"ClientData: item positions outside 0..{self.n_items - 1}")
        self.counts = np.bincount(self.u, minlength=n_u).astype(np.float64)
        indptr = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._pattern = (self.i, indptr)

    def matrix(self, values: np.ndarray) -> sp.csr_matrix:
        """The ``users × items`` sparse matrix with ``values`` (one per rating, in this order)."""
        idx, indptr = self._pattern
        return sp.csr_matrix((values, idx, indptr), shape=(len(self.users), self.n_items))

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.i, minlength=self.n_items).astype(np.float64)


@dataclass
class UserState:
    """A client's user factors ``P[n_u, k]`` and biases ``b_u[n_u]``."""

    p: np.ndarray
    bu: np.ndarray

    @classmethod
    def initial(cls, data: ClientData, config: FedMFConfig) -> UserState:
        return cls(initial_user_factors(data.users, config), np.zeros(len(data.users)))

    def copy(self) -> UserState:
        return UserState(self.p.copy(), self.bu.copy())


def _errors(data: ClientData, users: UserState, items: ItemModel, mu: float) -> np.ndarray:
    pu, qi = users.p[data.u], items.q[data.i]
    return mu + users.bu[data.u] + items.b[data.i] + np.einsum("nk,nk->n", pu, qi) - data.r


def local_epochs(data: ClientData, users: UserState, items: ItemModel, mu: float, config: FedMFConfig,
                 epochs: int | None = None) -> None:
    """``E`` full-batch steps on every user of the client (in place); see the module docstring."""
    if not data.u.size:
        return
    c = np.maximum(data.counts, 1.0)
    lam, lam_b, eta = config.l2, config.l2_bias, config.user_lr
    for _ in range(config.local_epochs if epochs is None else epochs):
        em = data.matrix(_errors(data, users, items, mu))
        gp = (em @ items.q) / c[:, None] + lam * users.p
        gb = np.asarray(em.sum(axis=1)).ravel() / c + lam_b * users.bu
        users.p -= eta * gp
        users.bu -= eta * gb


def item_gradient(data: ClientData, users: UserState, items: ItemModel, mu: float, config: FedMFConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(g[n, k], h[n])`` over the client's ratings, zero rows for items it did not rate."""
    n, k = data.n_items, config.n_factors
    if not data.u.size:
        return np.zeros((n, k)), np.zeros(n)
    em = data.matrix(_errors(data, users, items, mu))
    cnt = data.item_counts()
    g = np.asarray(em.T @ users.p) + config.l2 * cnt[:, None] * items.q
    h = np.asarray(em.sum(axis=0)).ravel() + config.l2_bias * cnt * items.b
    return g, h


def upload_vector(g: np.ndarray, h: np.ndarray, item_counts: np.ndarray, config: FedMFConfig
                  ) -> tuple[np.ndarray, int]:
    """``Δ = −η · [g / d_i ; h / d_i]``, ``d_i = n_i + item_damping``, packed like ``θ``, clipped to
    ``±value_bound``; ``(Δ, clipped)``."""
    d = item_counts + config.item_damping
    delta = -config.lr * np.concatenate([(g / d[:, None]).ravel(), h / d])
    clipped = int(np.count_nonzero(np.abs(delta) > config.value_bound))
    if clipped:
        delta = np.clip(delta, -config.value_bound, config.value_bound)
    return delta, clipped


def apply_updates(theta: np.ndarray, uploads: Sequence[np.ndarray]) -> np.ndarray:
    """``θ + Σ Δ`` in the order given (the plaintext twin of the server's ciphertext additions)."""
    out = theta.copy()
    for d in uploads:
        out = out + d
    return out


def select_clients(names: Sequence[str], m: int, seed: int, round_: int, attempt: int = 0) -> list[str]:
    """The clients of round ``round_`` (attempt ``attempt``): all of ``names`` when ``m >= len(names)``,
    else ``m`` of them drawn by ``default_rng([seed, 2, round, attempt]).choice`` without replacement,
    in the order of ``names``."""
    if m >= len(names):
        return list(names)
    pick = np.random.default_rng([seed, 2, round_, attempt]).choice(len(names), size=m, replace=False)
    return [names[j] for j in sorted(pick)]
