"""Known answer for the host-gradient algebra of :mod:`fedrec.protocols.hetero_fm.packing`.

A small FM (guest: bias + one-hot item field; host: a real-valued user-feature field) is written out
in float64 torch from the equation of :mod:`fedrec.models.fm_core`::

    z_s = w0 + w_G[i_s] + Σ_j x_j(u_s) w_j + ½ (‖e_G(s) + e_H(u_s)‖² − sq_G(s) − Σ_j x_j(u_s)² ‖v_j‖²)
    L   = mean_s (z_s − y_s)² + mean_s R(s),  R(s) = Σ_fields Σ_j x_j² (λ_v,f ‖v_j‖² + λ_w w_j²)

and autograd gives ``∂L/∂v_j``, ``∂L/∂w_j`` of the host field and ``δ_s = ∂L/∂z_s``. The packed path
composes the functions as the parties do (guest ``_batch``: ``residual_rows``; host
``_batch_multipliers``/``_gradients``: ``column_multipliers``, ``encrypt_chunks``, ``host_products``;
guest ``_exchange``: ``lane_sums`` (= user sums + ``fold``); host ``_step``: ``host_gradient``), without
masks, and must give ``N_s`` times the autograd gradient, for every layout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fedrec.crypto.backend import CryptoBackend, make_backend
from fedrec.protocols.hetero_fm import packing

K, N_USERS, N_COLS, N_ITEMS = 3, 7, 5, 6
L2_V, L2_W, L2_G = 0.05, 0.02, 0.03  # host factors (λ_v), linear terms (λ_w, both fields), guest factors
LAYOUTS = packing.LAYOUTS


@dataclass
class Batch:
    """One batch of the small FM, the autograd answer and the guest's scaled per-user sums."""

    x: np.ndarray        # host features [U, d]
    v: np.ndarray        # host factors [d, k]
    w: np.ndarray        # host linear weights [d]
    grad_v: np.ndarray   # autograd ∂L/∂v_H [d, k]
    grad_w: np.ndarray   # autograd ∂L/∂w_H [d]
    q_hat: np.ndarray    # N_s Σ_{s∈u} δ_s (e_G(s) + e_H(u))  [U, k]
    delta_hat: np.ndarray  # N_s Σ_{s∈u} δ_s  [U]
    counts: np.ndarray   # c_u [U]
    n_samples: int


def small_batch(seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (N_USERS, N_COLS)) * (rng.random((N_USERS, N_COLS)) < 0.6)
    x[:, 0] = 1.0  # a one-hot style column every user has (x² = x)
    users = np.concatenate([np.arange(N_USERS), rng.integers(0, N_USERS, 13)])  # every user, some twice+
    items = rng.integers(0, N_ITEMS, users.size)
    y = torch.from_numpy(rng.normal(3.0, 1.0, users.size))

    def param(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.tensor(rng.normal(0.0, scale, shape), dtype=torch.float64, requires_grad=True)

    w0, w_g, v_g = param(1, scale=1.0), param(N_ITEMS), param(N_ITEMS, K)
    w_h, v_h = param(N_COLS), param(N_COLS, K)
    xs = torch.from_numpy(x[users])                                   # host features per sample
    e_g, e_h = v_g[items], xs @ v_h
    sq = (v_g[items] ** 2).sum(dim=1) + (xs ** 2) @ (v_h ** 2).sum(dim=1)
    z = w0 + w_g[items] + xs @ w_h + 0.5 * (((e_g + e_h) ** 2).sum(dim=1) - sq)
    z.retain_grad()
    reg = (L2_G * (v_g[items] ** 2).sum(dim=1) + L2_W * w_g[items] ** 2
           + (xs ** 2) @ (L2_V * (v_h ** 2).sum(dim=1) + L2_W * w_h ** 2))
    loss = ((z - y) ** 2).mean() + reg.mean()
    loss.backward()
    assert z.grad is not None and v_h.grad is not None and w_h.grad is not None

    n_s = users.size
    delta_s = z.grad.numpy()
    per_sample = delta_s[:, None] * (e_g + e_h).detach().numpy()
    q_hat = n_s * np.stack([per_sample[users == u].sum(axis=0) for u in range(N_USERS)])
    delta_hat = n_s * np.bincount(users, weights=delta_s, minlength=N_USERS)
    counts = np.bincount(users, minlength=N_USERS).astype(np.float64)
    return Batch(x, v_h.detach().numpy().copy(), w_h.detach().numpy().copy(), v_h.grad.numpy().copy(),
                 w_h.grad.numpy().copy(), q_hat, delta_hat, counts, n_s)


def packed_gradient(backend: CryptoBackend, b: Batch, layout: str, plan: packing.ChunkPlan
                    ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(∂L/∂v, ∂L/∂w)`` through the packed path, and ``max|R|``, ``max|M|`` (the CKKS error inputs)."""
    rows, clipped = packing.residual_rows(b.q_hat, b.delta_hat, b.counts, L2_V, 1e6, layout)
    assert clipped == 0
    mult = packing.column_multipliers(b.x, b.v, b.w, L2_W, layout)
    chunks = packing.encrypt_chunks(backend, rows, plan)
    results = packing.host_products(backend, chunks, plan, mult)
    released = np.concatenate([packing.lane_sums(backend.decrypt(ct), plan) for ct in results])
    assert released.shape == (plan.n_results(N_COLS) * plan.lanes, packing.released_width(K, layout))
    g_v, g_w = packing.host_gradient(released[:N_COLS], b.v, layout, b.w, L2_W)
    return g_v / b.n_samples, g_w / b.n_samples, float(np.max(np.abs(rows))), float(np.max(np.abs(mult)))


@pytest.fixture(scope="module")
def plain() -> CryptoBackend:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the plain backend's deliberate warning
        return make_backend("plain")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_folded_products_are_the_autograd_host_gradient_on_plain(plain, layout):
    """The plan the guest picks on plain (the CKKS n8192 packing: 7 users fit one chunk)."""
    b = small_batch()
    plan = packing.plan_chunks(plain, N_USERS, K, N_COLS, layout)
    g_v, g_w, _, _ = packed_gradient(plain, b, layout, plan)
    np.testing.assert_allclose(g_v, b.grad_v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_w, b.grad_w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunks_and_lanes_do_not_change_the_gradient(plain, layout):
    """3 users per chunk (3 chunks, the last one padded) × 2 lanes (3 results, the last lane empty)."""
    b = small_batch(1)
    plan = packing.ChunkPlan(N_USERS, K, users_per_chunk=3, lanes=2, layout=layout)
    assert (plan.n_chunks, plan.n_results(N_COLS)) == (3, 3)
    g_v, g_w, _, _ = packed_gradient(plain, b, layout, plan)
    np.testing.assert_allclose(g_v, b.grad_v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_w, b.grad_w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ckks_gradient_within_the_error_bound_of_the_scale(layout):
    """CKKS n8192 (Δ = 2^55, N = 8192): every released value sums ``T = 2·G·n_chunks`` products of
    ``|R| ≤ V`` by ``|M| ≤ P`` (``G`` users per lane, two slots per folded value), so it is within
    ``B_e = error_bound(1, P, T, V) = 4√T (2PV + 32V)·N/Δ`` of the exact value; ``compact`` adds
    ``v_j · B_j`` on the host, hence ``(1 + max|v|)·B_e`` (``static`` as well, and ``2λ_w w_j`` times its
    released ``Σ x² c`` for ``w``); the gradient is that divided by ``N_s``."""
    ckks = make_backend("ckks", preset="n8192")
    b = small_batch(2)
    plan = packing.ChunkPlan(N_USERS, K, users_per_chunk=3, lanes=2, layout=layout)
    g_v, g_w, value_bound, plain_bound = packed_gradient(ckks, b, layout, plan)
    terms = 2 * plan.users_per_chunk * plan.n_chunks
    b_e = ckks.error_bound(1, plain_bound, terms, value_bound)
    tol_v = (1.0 + (np.max(np.abs(b.v)) if layout != "hiding" else 0.0)) * b_e / b.n_samples
    tol_w = (1.0 + (2 * L2_W * np.max(np.abs(b.w)) if layout == "static" else 0.0)) * b_e / b.n_samples
    assert 0 < b_e < 1e-8  # the bound is tight at this scale: the check is not vacuous
    assert np.max(np.abs(g_v - b.grad_v)) <= tol_v
    assert np.max(np.abs(g_w - b.grad_w)) <= tol_w


@pytest.mark.parametrize("layout", LAYOUTS)
def test_residual_rows_clip_to_value_bound_and_count(layout):
    b = small_batch(3)
    rows, _ = packing.residual_rows(b.q_hat, b.delta_hat, b.counts, L2_V, 1e6, layout)
    bound = float(np.median(np.abs(rows)))
    clipped_rows, clipped = packing.residual_rows(b.q_hat, b.delta_hat, b.counts, L2_V, bound, layout)
    assert clipped == int(np.sum(np.abs(rows) > bound)) > 0
    np.testing.assert_array_equal(clipped_rows, np.clip(rows, -bound, bound))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_host_keeps_multipliers_sparse_and_equal_to_the_dense_reference(plain, layout):
    """The host's sparse ``M_j(u)`` (from its CSR rows, a repeated column keeping the row's last value)
    equals the dense ``[d, U, W]`` reference, part by part, and gives the same products."""
    from fedrec.models.fields import Csr
    from fedrec.protocols.hetero_fm.config import HeteroFMConfig
    from fedrec.protocols.hetero_fm.host_batch import HostBatch

    rng = np.random.default_rng(3)
    n_rows, n_feat = 30, 40
    r, c = np.nonzero(rng.random((n_rows, n_feat)) < 0.1)
    vals = rng.uniform(-1.0, 1.0, r.size)
    rows = Csr.from_lists(np.append(r, 4), np.append(c, c[r == 4][0] if (r == 4).any() else 0),
                          np.append(vals, 0.75), n_rows)
    w_all, v_all = rng.normal(size=n_feat), rng.normal(size=(n_feat, K))
    users = rng.choice(n_rows, 12, replace=False)
    users[0] = 4
    cfg = HeteroFMConfig(n_factors=K, layout=layout, l2_linear=L2_W)
    work = HostBatch(0, 0, users)
    work.multipliers(rows, w_all, v_all, cfg)
    assert work.cols is not None and work.mult is not None
    x = np.zeros((len(users), n_feat))
    idx, val, off = rows.gather(users)
    for u in range(len(users)):
        end = off[u + 1] if u + 1 < len(users) else len(idx)
        for j, a in zip(idx[off[u]:end], val[off[u]:end], strict=True):
            x[u, j] = a  # last value wins, as the host does
    x = x[:, work.cols]
    dense = packing.column_multipliers(x, v_all[work.cols], w_all[work.cols], L2_W, layout)
    np.testing.assert_array_equal(work.mult.dense(), dense)
    part = work.mult.users_slice(5, 12)
    np.testing.assert_array_equal(part.dense(), dense[:, 5:12])
    plan = packing.ChunkPlan(7, K, users_per_chunk=3, lanes=4, layout=layout)
    chunks = packing.encrypt_chunks(plain, rng.normal(size=(7, packing.width(K, layout))), plan)
    sparse_out = packing.host_products(plain, chunks, plan, part)
    dense_out = packing.host_products(plain, chunks, plan, dense[:, 5:12])
    assert len(sparse_out) == len(dense_out) == plan.n_results(len(work.cols))
    for a, b in zip(sparse_out, dense_out, strict=True):
        np.testing.assert_array_equal(plain.decrypt(a), plain.decrypt(b))


def test_host_refuses_a_multiplier_beyond_plain_bound():
    from fedrec.models.fields import Csr
    from fedrec.protocols.hetero_fm.config import HeteroFMConfig
    from fedrec.protocols.hetero_fm.host_batch import HostBatch
    from fedrec.protocols.party import Rejection

    rows = Csr.from_lists(np.array([0, 1]), np.array([0, 1]), np.array([1.0, 500.0]), 2)
    work = HostBatch(0, 0, np.array([0, 1]))
    with pytest.raises(Rejection, match="plain_bound"):
        work.multipliers(rows, np.zeros(2), np.zeros((2, K)), HeteroFMConfig(n_factors=K, plain_bound=64.0))


def test_static_releases_compacts_values_with_the_sample_count_sum_apart(plain):
    """What layout ``static`` adds to the host's view (docs/SECURITY.md): its release is ``compact``'s
    ``A_j``, ``B_j`` and, instead of the folded ``G_j``, its two parts ``Σ_u x_j Δ̂_u`` and
    ``Σ_u x_j² c_u`` (``G_j = part + 2λ_w w_j · Σ x² c``); its multipliers hold no parameter."""
    b = small_batch(4)
    released = {}
    for layout in ("compact", "static"):
        plan = packing.plan_chunks(plain, N_USERS, K, N_COLS, layout)
        rows, _ = packing.residual_rows(b.q_hat, b.delta_hat, b.counts, L2_V, 1e6, layout)
        mult = packing.column_multipliers(b.x, b.v, b.w, L2_W, layout)
        results = packing.host_products(plain, packing.encrypt_chunks(plain, rows, plan), plan, mult)
        sums = [packing.lane_sums(plain.decrypt(ct), plan) for ct in results]
        released[layout] = np.concatenate(sums)[:N_COLS]
    c, s = released["compact"], released["static"]
    np.testing.assert_allclose(s[:, :K + 1], c[:, :K + 1], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(s[:, K + 2], (b.x ** 2).T @ b.counts, rtol=1e-12)
    np.testing.assert_allclose(s[:, K + 1] + 2 * L2_W * b.w * s[:, K + 2], c[:, K + 1], rtol=1e-12, atol=1e-9)
    other = packing.column_multipliers(b.x, b.v * 3 + 1, b.w * 5 - 2, L2_W, "static")
    np.testing.assert_array_equal(other, packing.column_multipliers(b.x, b.v, b.w, L2_W, "static"))
