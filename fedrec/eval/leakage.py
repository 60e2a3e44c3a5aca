"""Label-leakage attacks on what the host of the vertical FM learns, and their evaluation (issue 16).

The host's view (:class:`~fedrec.protocols.hetero_fm.transcript.HostTranscript`): per training batch
``b`` its aligned users ``U_b``, the touched columns ``C_b``, ``N_s`` and its own aggregated gradient.
With ``δ_s = ∂L/∂z_s`` (``L`` the batch-mean loss), ``c_u`` the samples of user ``u`` in the batch and
(:mod:`fedrec.protocols.hetero_fm.packing`)::

    r_u = N_s Σ_{s∈u} δ_s = Σ_{s∈u} ∂ℓ_s/∂z_s            (logistic: Σ σ(z_s) − y_s; regression: 2(z − r))
    Q̂_u = N_s Σ_{s∈u} δ_s (e_G(s) + e_H(u))
    N_s g_w[j] = Σ_{u∈U_b} x_j(u) r_u   + 2 λ_w w_j Σ_u x_j(u)² c_u
    N_s g_v[j] = Σ_{u∈U_b} x_j(u) Q̂_u  + v_j Σ_u x_j(u)² (2 λ_v c_u − r_u)

plus ``N(0, σ²)`` per value with guest label DP. ``r_u`` is the label-dependent residual: a NEGATIVE
``r_u`` means the label is above the model's prediction (logistic: ``y = 1``). Every attack scores
users so that a higher score means "label 1" (``score = −r̂_u`` for residual estimates).

Known to the host: ``X`` (:meth:`HeteroFMHost.aligned_design`), its own parameters at every step
(:class:`HostParams`, replayed from the transcript with its optimizer), ``λ_w, λ_v`` (agreed config).
Not known: ``c_u``; the attacks use ``c̄_b = N_s / |U_b|`` (exact when every batch user has the same
number of samples and all are aligned, e.g. one click per user; the L2 term ``2 λ_w w_j c_u`` is small
next to ``r_u`` anyway). Without ``host_params`` the L2 terms are taken as 0 and attacks that need the
parameters have no opinion. With the corrections (``L_j = Σ_u x_j(u)²`` over ``U_b``)::

    ρ_j = N_s g_w[j] − 2 λ_w w_j c̄_b L_j = Σ_u x_j(u) r_u               (+ noise)
    κ_j = N_s g_v[j] − 2 λ_v c̄_b v_j L_j = Σ_u x_j(u) Q̂_u − v_j Σ_u x_j(u)² r_u

Attacks (:data:`ATTACKS`; each returns :class:`AttackScores`, ``NaN`` = no opinion):

* ``singleton``: a column touched by exactly one batch user ``u`` gives ``r̂_u = ρ_j / x_j(u)``
  (least squares over ``u``'s singleton columns of the batch); mean over releases. Assumes ``r_u``
  keeps its sign across epochs (it does while the model has not fit ``u``'s label).
* ``inversion``: per release, solve ``ρ = X_bᵀ r`` over the batch users: peel columns with one
  unresolved user repeatedly, then an SVD least-squares on each remaining connected component of at
  most ``dense_limit`` entries; only identifiable users (``e_u`` orthogonal to the null space of
  ``X_bᵀ``) get an estimate; mean over releases. Assumes exact linearity (true without DP).
* ``differencing``: the same column in two releases whose user sets differ by ONE user ``u``
  (``S' = S ∪ {u}``, ``|S'| ≤ max_set``): ``r̂_u = (ρ_j(S') − ρ_j(S)) / x_j(u)``; mean over pairs.
  Assumes the other users' ``r`` did not change between the two releases (same user across epochs).
* ``pooled``: every release at once, for every user who appears in one: a user's residual per sample
  ``ē_u`` is taken as constant over training, so ``ρ_j(b) ≈ c̄_b Σ_{u∈U_b} x_j(u) ē_u`` for every
  release ``b`` and touched column ``j``; one ridge least-squares solve (``lsqr``, damping
  ``pooled_damp`` relative to the design's mean column norm) over all of them. The per-release attacks
  need a column one user holds alone in a batch; this one uses that users enter and leave batches, so
  on rating data with coarse host features (every column shared by many users of every batch) it is
  the only gradient attack with an opinion on most users. Assumes ``r_{u,b} ≈ c̄_b ē_u`` (equal
  sample counts; the model's drift over epochs and the sampled composition are noise to it).
* ``norm`` / ``cosine``: Li et al. 2021 ("Label Leakage and Protection in Two-party Split Learning")
  on the per-user gradient of the host's outputs, from singleton columns:
  ``γ_u = [r̂_u, Q̂_u − r̂_u e_H(u)] = N_s [∂L/∂z_H(u), ∂L/∂e_H(u)]`` with
  ``Q̂_u = (κ_j + v_j x² r̂_u) / x`` (raw ``[ρ_j, κ_j]/x`` without ``host_params``). Norm scoring: mean
  ``‖γ_u‖``; cosine scoring: mean ``−cos(γ_u, γ̄)``, ``γ̄`` the mean unit vector. Both assume label 1 is
  the minority class (the model predicts it rarely, so its residuals are large and point away from the
  majority's), as Li et al. do for conversions.
* ``completion``: the host's trained partial ``z_H(u) = Σ w_j x_j + ½(‖Σ v_j x_j‖² − Σ ‖v_j‖² x_j²)``
  from its final parameters (the steps ``−lr·g_w`` pile up ``−r_u``). ``completion_baseline``: the
  same from its initial parameters — the host without the guest (no label information): the lift over
  it is what training with the guest taught the host. ``completion_pseudo``: ridge regression of the
  host's features on the ``inversion`` estimates, out-of-fold (5 folds) for users with an estimate and
  fitted on all of them for the others: what the host generalises to users it never isolated.
* ``early_stopping``: the guest's ``EpochEnd.improved`` bit says whether the validation loss fell;
  to first order ``ΔL ≈ Σ_u (p_u − y_u) Δz_H(u)``, so validation users whose partial rose in an
  improving epoch (fell in a worsening one) lean to ``y = 1``: score ``Σ_{e≥1} s_e (z_H^e(u) −
  z_H^{e−1}(u))``, ``s_e = ±1``. Scores only the users of ``validate`` requests; ``info`` counts the
  bits revealed (at most two per epoch, about the whole validation set jointly: ``stop`` follows from
  the ``improved`` bits and ``patience`` except at the last epoch; none without validation, where
  ``improved``/``stop`` follow the schedule). Guest label DP does not cover these bits: on the test's
  click data with ``dp_guest_noise_multiplier = 50`` and validation this attack measured AUC
  0.50–0.61 over five runs (80 validation users, 3 epochs; mean 0.55, every CI containing 0.5) — weak,
  but outside the accounting; train with ``validation="none"`` for the full label-DP guarantee.

Cost: the inversion peels with sparse products and solves only components of at most ``dense_limit``
entries densely (≈ 40 ms per 512-user release of five one-hot fields); differencing is a Python pass
over the (release, column) supports of at most ``max_set`` users.

Ground truth (:func:`evaluate`) is the caller's: ``truth[n_aligned]`` of 0/1, ``NaN`` = not scorable.
Recommended (:func:`user_truth`): ``"any"`` for conversions (the user has a positive row; with one row
per user this is its label) and ``"mean_above_global"`` for ratings (the user's mean rating above the
global mean), since every attack targets the sign of the residual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import lsqr

from fedrec.eval.metrics import seed_bootstrap, weighted_auc

if TYPE_CHECKING:  # the protocol package (torch, TenSEAL) is imported only by HostParams.from_host
    from fedrec.protocols.hetero_fm.host import HeteroFMHost
    from fedrec.protocols.hetero_fm.transcript import BatchRelease, HostTranscript

__all__ = ["ATTACKS", "AttackScores", "HostParams", "evaluate", "run_attacks", "user_truth"]

ATTACKS = ("singleton", "inversion", "differencing", "pooled", "norm", "cosine", "completion",
           "completion_baseline", "completion_pseudo", "early_stopping")


@dataclass(frozen=True)
class AttackScores:
    """Per-aligned-user ``scores`` (higher = label 1, ``NaN`` = no opinion), what the attack read
    (``uses``), what it assumes, and counts (``info``: estimates, releases used, bits...)."""

    scores: np.ndarray
    uses: tuple[str, ...]
    assumes: str
    info: dict[str, float] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        """Fraction of aligned users with an opinion."""
        return float(np.isfinite(self.scores).mean()) if self.scores.size else 0.0


@dataclass(frozen=True)
class HostParams:
    """The host's own parameters as it knows them: initial, final, before every release's step
    (``before[i]`` = ``(w[cols], v[cols])`` of ``transcript.releases[i]``), after every epoch's
    batches (``epochs[e] = (epoch, w, v)``: what its validation partials used), and its L2 weights."""

    w_init: np.ndarray
    v_init: np.ndarray
    w_final: np.ndarray
    v_final: np.ndarray
    l2_linear: float
    l2_factors: float
    before: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    epochs: tuple[tuple[int, np.ndarray, np.ndarray], ...] = ()

    @classmethod
    def replay(cls, transcript: HostTranscript, w_init: np.ndarray, v_init: np.ndarray, *, optimizer: str,
               lr: float, l2_linear: float, l2_factors: float,
               final: tuple[np.ndarray, np.ndarray] | None = None) -> HostParams:
        """Replay the host's optimizer over the transcript exactly as the host steps (float32, zero
        steps for batches without aligned users, at ``stop`` the parameters of ``best_epoch``).
        ``final``: the host's actual final parameters (default: the replayed ones)."""
        import torch

        from fedrec.models.training import make_optimizer

        w = torch.nn.Parameter(torch.as_tensor(np.asarray(w_init, dtype=np.float32)).clone())
        v = torch.nn.Parameter(torch.as_tensor(np.asarray(v_init, dtype=np.float32)).clone())
        opt = make_optimizer(optimizer, [w, v], lr)

        def step(r: BatchRelease | None) -> None:
            gw, gv = torch.zeros_like(w), torch.zeros_like(v)
            if r is not None:
                cols = torch.from_numpy(np.asarray(r.cols, dtype=np.int64))
                gw[cols] = torch.from_numpy(np.asarray(r.g_w).astype(np.float32))
                gv[cols] = torch.from_numpy(np.asarray(r.g_v).astype(np.float32))
            opt.zero_grad()
            w.grad, v.grad = gw, gv
            opt.step()

        def now() -> tuple[np.ndarray, np.ndarray]:
            return w.detach().numpy().astype(np.float64), v.detach().numpy().astype(np.float64)

        rel = transcript.releases
        if any((a.epoch, a.batch) >= (b.epoch, b.batch) for a, b in zip(rel, rel[1:], strict=False)):
            raise ValueError("HostParams.replay: transcript releases are not in (epoch, batch) order")
        ends = {e: (stop, n, best) for e, stop, n, best in transcript.epoch_ends}
        before: list[tuple[np.ndarray, np.ndarray]] = []
        epochs: list[tuple[int, np.ndarray, np.ndarray]] = []
        kept: dict[int, tuple[np.ndarray, np.ndarray]] = {0: now()}  # 1-based epoch -> parameters
        i = 0
        for e in sorted({r.epoch for r in rel} | set(ends)):
            done = 0
            while i < len(rel) and rel[i].epoch == e:
                r = rel[i]
                for _ in range(r.batch - done):
                    step(None)
                wn, vn = now()
                before.append((wn[r.cols], vn[r.cols]))
                step(r)
                done, i = r.batch + 1, i + 1
            epochs.append((e, *now()))
            if e in ends:
                stop, n_batches, best_epoch = ends[e]
                for _ in range(n_batches - done):
                    step(None)
                kept[e + 1] = now()
                if stop and best_epoch in kept:
                    best = kept[best_epoch]
                    with torch.no_grad():
                        w.copy_(torch.from_numpy(best[0].astype(np.float32)))
                        v.copy_(torch.from_numpy(best[1].astype(np.float32)))
        w_fin, v_fin = now() if final is None else (np.asarray(final[0], np.float64),
                                                    np.asarray(final[1], np.float64))
        return cls(np.asarray(w_init, np.float64), np.asarray(v_init, np.float64), w_fin, v_fin,
                   float(l2_linear), float(l2_factors), tuple(before), tuple(epochs))

    @classmethod
    def from_host(cls, host: HeteroFMHost) -> HostParams:
        """Replay a trained :class:`HeteroFMHost`'s own transcript with its config and initial state."""
        from fedrec.protocols.hetero_fm.config import HOST_FIELD

        if host.transcript is None or host.params is None:
            raise ValueError("HostParams.from_host: the host has no transcript (create it with "
                             "transcript=HostTranscript()) or was never trained")
        c = host.config
        final = (host.params.w[HOST_FIELD].detach().numpy(), host.params.v[HOST_FIELD].detach().numpy())
        return cls.replay(host.transcript, host.initial_state[f"w.{HOST_FIELD}"].numpy(),
                          host.initial_state[f"v.{HOST_FIELD}"].numpy(), optimizer=host.optimizer_name,
                          lr=c.lr, l2_linear=c.l2_linear, l2_factors=c.l2_host_factors, final=final)


# ---------------------------------------------------------------------------------------------- releases
@dataclass
class _Release:
    """One release in the attacks' terms: batch design ``xb`` (``|U_b| × |C_b|``, CSC), ``ρ``, ``κ``."""

    users: np.ndarray
    cols: np.ndarray
    xb: sp.csc_matrix
    rho: np.ndarray
    kappa: np.ndarray
    v: np.ndarray | None
    n_samples: float = 0.0


def _prepare(transcript: HostTranscript, x: sp.csr_matrix, hp: HostParams | None) -> list[_Release]:
    out = []
    for i, r in enumerate(transcript.releases):
        users, cols = np.asarray(r.users, np.int64), np.asarray(r.cols, np.int64)
        xb = x[users][:, cols].tocsc()
        n_s = float(r.n_samples)
        rho = n_s * np.asarray(r.g_w, np.float64)
        kappa = n_s * np.asarray(r.g_v, np.float64)
        v = None
        if hp is not None and len(users):
            w, v = hp.before[i]
            c_bar = n_s / len(users)
            sq = np.asarray(xb.multiply(xb).sum(axis=0)).ravel()
            rho = rho - 2.0 * hp.l2_linear * w * c_bar * sq
            kappa = kappa - 2.0 * hp.l2_factors * c_bar * v * sq[:, None]
        out.append(_Release(users, cols, xb, rho, kappa, v, n_s))
    return out


def _check_inputs(transcript: HostTranscript, x: Any, hp: HostParams | None) -> sp.csr_matrix:
    m = sp.csr_matrix(x, dtype=np.float64)
    m.eliminate_zeros()
    n, d = m.shape
    if transcript.aligned and len(transcript.aligned) != n:
        raise ValueError(f"run_attacks: X has {n} rows but the transcript has {len(transcript.aligned)} "
                         f"aligned users (X must be HeteroFMHost.aligned_design())")
    for r in transcript.releases:
        if len(r.users) and (r.users.min() < 0 or r.users.max() >= n):
            raise ValueError(f"run_attacks: release e{r.epoch} b{r.batch} names users outside X's {n} rows")
        if len(r.cols) and (r.cols.min() < 0 or r.cols.max() >= d):
            raise ValueError(f"run_attacks: release e{r.epoch} b{r.batch} names columns outside X's {d}")
    if hp is not None:
        if len(hp.before) != len(transcript.releases):
            raise ValueError(f"run_attacks: host_params holds {len(hp.before)} steps, the transcript "
                             f"{len(transcript.releases)} releases (replay it from this transcript)")
        if hp.w_final.shape != (d,) or hp.w_init.shape != (d,):
            raise ValueError(f"run_attacks: host_params are for {hp.w_final.shape[0]} columns, X has {d}")
    return m


def _mean_by_user(n: int, users: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-user mean of ``values`` (``NaN`` for users without one)."""
    total = np.bincount(users, weights=values, minlength=n)
    count = np.bincount(users, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------------------------------- attacks
def _singletons(rels: list[_Release]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per (release, user with a singleton column): the user, ``r̂`` and ``γ`` (see the docstring)."""
    users, r_hat, gammas = [], [], []
    for rel in rels:
        xb = rel.xb
        single = np.flatnonzero(np.diff(xb.indptr) == 1)
        if not single.size:
            continue
        row, x = xb.indices[xb.indptr[single]], xb.data[xb.indptr[single]]
        n_u, k = len(rel.users), rel.kappa.shape[1]
        den = np.bincount(row, weights=x * x, minlength=n_u)
        who = np.flatnonzero(den > 0)
        r = np.bincount(row, weights=x * rel.rho[single], minlength=n_u)[who] / den[who]
        q = np.zeros((n_u, k))
        np.add.at(q, row, x[:, None] * rel.kappa[single])
        if rel.v is not None:  # Q̂_u = (κ_j + v_j x² r̂_u) / x, and γ = [r̂, Q̂ − r̂ e_H(u)]
            r_full = np.zeros(n_u)
            r_full[who] = r
            np.add.at(q, row, (x ** 3 * r_full[row])[:, None] * rel.v[single])
            q = q[who] / den[who, None]
            e_h = np.asarray(xb[who] @ rel.v)
            q = q - r[:, None] * e_h
        else:
            q = q[who] / den[who, None]
        users.append(rel.users[who])
        r_hat.append(r)
        gammas.append(np.concatenate([r[:, None], q], axis=1))
    if not users:
        return np.zeros(0, np.int64), np.zeros(0), []
    return np.concatenate(users), np.concatenate(r_hat), gammas


def _dense_solve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-norm least squares of ``a x = b`` and which unknowns are identifiable."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    rank = int(np.sum(s > 1e-9 * (s[0] if s.size else 1.0)))
    sol = vt[:rank].T @ ((u[:, :rank].T @ b) / s[:rank])
    # e_i is orthogonal to the null space iff its projection on the row space has norm 1 (the reduced
    # SVD suffices: no n × n basis of the null space, which cost seconds for 700-user releases)
    null = np.sqrt(np.maximum(0.0, 1.0 - np.sum(vt[:rank] ** 2, axis=0)))
    return sol, null < 1e-6


def _invert(rel: _Release, dense_limit: int) -> np.ndarray:
    """``r̂`` of the identifiable users of one release (``NaN`` for the others)."""
    a = rel.xb.T.tocsr()  # columns (equations) × users (unknowns)
    ind = a.copy()
    ind.data[:] = 1.0
    n_u = a.shape[1]
    known = np.full(n_u, np.nan)
    while True:  # peel: equations with exactly one unresolved user
        open_ = ~np.isfinite(known)
        cnt = ind @ open_.astype(np.float64)
        rows = np.flatnonzero(np.isclose(cnt, 1.0))
        if not rows.size:
            break
        who = (ind[rows] @ (open_ * (np.arange(n_u) + 1.0))).astype(np.int64) - 1
        x = np.asarray(a[rows, who]).ravel()
        rest = rel.rho[rows] - a[rows] @ np.nan_to_num(known)
        den = np.bincount(who, weights=x * x, minlength=n_u)
        num = np.bincount(who, weights=x * rest, minlength=n_u)
        hit = den > 0
        known[hit] = num[hit] / den[hit]
    open_ = ~np.isfinite(known)
    rows = np.flatnonzero(ind @ open_.astype(np.float64) > 0)
    if not rows.size:
        return known
    users = np.flatnonzero(open_)
    sub = a[rows][:, users]
    rhs = rel.rho[rows] - a[rows] @ np.nan_to_num(known)
    n_r = len(rows)
    graph = sp.bmat([[None, sub], [sub.T, None]]).tocsr()
    _, label = connected_components(graph, directed=False)
    for comp in np.unique(label):
        r_sel = np.flatnonzero(label[:n_r] == comp)
        u_sel = np.flatnonzero(label[n_r:] == comp)
        if not u_sel.size or not r_sel.size or r_sel.size * u_sel.size > dense_limit:
            continue
        sol, ident = _dense_solve(sub[r_sel][:, u_sel].toarray(), rhs[r_sel])
        known[users[u_sel[ident]]] = sol[ident]
    return known


def _differencing(rels: list[_Release], max_set: int) -> tuple[np.ndarray, np.ndarray]:
    sets: dict[tuple[int, tuple[int, ...]], list[float]] = {}
    xval: dict[tuple[int, int], float] = {}
    for rel in rels:
        xb = rel.xb
        for c in np.flatnonzero(np.diff(xb.indptr) <= max_set):
            lo, hi = xb.indptr[c], xb.indptr[c + 1]
            members = rel.users[xb.indices[lo:hi]]
            col = int(rel.cols[c])
            order = np.argsort(members)
            key = (col, tuple(int(u) for u in members[order]))
            sets.setdefault(key, []).append(float(rel.rho[c]))
            for u, xv in zip(members.tolist(), xb.data[lo:hi].tolist(), strict=True):
                xval[(col, u)] = xv
    users, est = [], []
    means = {k: float(np.mean(v)) for k, v in sets.items()}
    for (col, members), big in means.items():
        if len(members) < 2:
            continue
        for i, u in enumerate(members):
            small = means.get((col, members[:i] + members[i + 1:]))
            if small is not None:
                users.append(u)
                est.append((big - small) / xval[(col, u)])
    return np.asarray(users, np.int64), np.asarray(est, np.float64)


def _partials(x: sp.csr_matrix, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``z_H = X w + ½ (‖X v‖² − (X∘X) ‖v‖²)`` per row."""
    xv = np.asarray(x @ v)
    return np.asarray(x @ w).ravel() + 0.5 * ((xv ** 2).sum(axis=1) - x.multiply(x) @ (v ** 2).sum(axis=1))


def _ridge_oof(x: sp.csr_matrix, target: np.ndarray, ridge: float, seed: int, folds: int = 5) -> np.ndarray:
    """Ridge predictions of ``target`` (NaN = unlabelled): out-of-fold for labelled rows, fitted on all
    labelled rows for the others."""
    lab = np.flatnonzero(np.isfinite(target))
    t = target[lab]
    t = (t - t.mean()) / (t.std() or 1.0)
    out = np.full(x.shape[0], np.nan)
    fold = np.random.default_rng(seed).permutation(len(lab)) % folds
    damp = float(np.sqrt(ridge))
    for f in range(folds):
        fit, held = lab[fold != f], lab[fold == f]
        beta = lsqr(x[fit], t[fold != f], damp=damp)[0]
        out[held] = x[held] @ beta
    rest = np.setdiff1d(np.arange(x.shape[0]), lab)
    if rest.size:
        out[rest] = x[rest] @ lsqr(x[lab], t, damp=damp)[0]
    return out


def _early_stopping(transcript: HostTranscript, x: sp.csr_matrix, hp: HostParams | None) -> AttackScores:
    n = x.shape[0]
    ends = transcript.epoch_ends
    val = [(e, u) for p, e, u in transcript.requests if p == "validate"]
    users = np.unique(np.concatenate([u for _, u in val])) if val else np.zeros(0, np.int64)
    stops = [(e, best) for e, stop, _, best in ends if stop]
    # what the guest reveals: the stop epoch and the result's epoch, once (no per-epoch bit); without
    # validation both follow the schedule and carry nothing about labels
    n_epochs = max(len(ends), 1)
    bits = 2.0 * math.log2(n_epochs + 1) if (val and stops) else 0.0
    info = {"epoch_ends": float(len(ends)), "bits_revealed": bits, "validation_users": float(users.size)}
    scores = np.full(n, np.nan)
    if hp is not None and users.size and stops:
        stop_epoch, best = stops[-1]
        z = {e + 1: _partials(x[users], w, v) for e, w, v in hp.epochs}
        z[0] = _partials(x[users], hp.w_init, hp.v_init)
        last = stop_epoch + 1
        if best in z and last in z:
            # the validation loss fell from the start to the best epoch and not after it: the change
            # of the validation users' partials before the best epoch points towards their labels
            scores[users] = (z[best] - z[0]) - (z[last] - z[best])
            info["best_epoch"] = float(best)
    return AttackScores(scores, ("epoch_ends", "requests[validate]", "X", "host_params"),
                        "first-order loss change between the start, the best epoch and the stop",
                        info)


def _pooled(rels: list[_Release], n: int, damp: float) -> tuple[np.ndarray, dict[str, float]]:
    """``ē`` per user (``NaN`` for users in no release) from every release's ``ρ`` (see ``pooled``)."""
    rows, cols, vals, rhs = [], [], [], []
    at = 0
    for rel in rels:
        if not len(rel.users) or not rel.xb.nnz:
            continue
        xt = rel.xb.T.tocoo()  # [columns of the release, users of the release]
        rows.append(xt.row + at)
        cols.append(rel.users[xt.col])
        vals.append(rel.n_samples / len(rel.users) * xt.data)  # c̄_b x_j(u)
        rhs.append(rel.rho)
        at += len(rel.cols)
    est = np.full(n, np.nan)
    if not rows:
        return est, {"equations": 0.0, "users": 0.0}
    a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(at, n))
    seen = np.flatnonzero(np.asarray((a != 0).sum(axis=0)).ravel() > 0)
    a = a[:, seen].tocsc()
    scale = float(np.sqrt(a.multiply(a).sum() / max(len(seen), 1)))
    est[seen] = lsqr(a, np.concatenate(rhs), damp=damp * scale, atol=1e-10, btol=1e-10, iter_lim=2000)[0]
    return est, {"equations": float(at), "users": float(len(seen))}


def _residual_attacks(rels: list[_Release], n: int, names: set[str], l2: str, dense_limit: int,
                      max_set: int, pooled_damp: float = 0.1) -> dict[str, AttackScores]:
    """``singleton``, ``norm``, ``cosine``, ``inversion``, ``differencing``, ``pooled`` (those in
    ``names``)."""
    out: dict[str, AttackScores] = {}
    if "pooled" in names:
        est, info = _pooled(rels, n, pooled_damp)
        out["pooled"] = AttackScores(-est, ("releases.g_w", "releases.users", "X", l2),
                                     "a user's residual per sample is about constant over training", info)
    if names & {"singleton", "norm", "cosine"}:
        su, sr, gammas = _singletons(rels)
        g = np.concatenate(gammas) if gammas else np.zeros((0, 1))
        info = {"estimates": float(su.size), "releases": float(len(rels))}
        uses = ("releases.g_w", "releases.g_v", "X", l2)
        out["singleton"] = AttackScores(-_mean_by_user(n, su, sr), ("releases.g_w", "X", l2),
                                        "r_u keeps its sign across epochs", info)
        out["norm"] = AttackScores(_mean_by_user(n, su, np.linalg.norm(g, axis=1)), uses,
                                   "label 1 is the minority class (Li et al. 2021 norm scoring)", info)
        unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
        ref = unit.mean(axis=0) if len(unit) else np.zeros(g.shape[1])
        cos = unit @ ref / max(float(np.linalg.norm(ref)), 1e-300)
        out["cosine"] = AttackScores(_mean_by_user(n, su, -cos), uses,
                                     "label 1 is the minority class: its gradients point away from the "
                                     "mean direction (Li et al. 2021 cosine scoring)", info)
    if names & {"inversion", "completion_pseudo"}:
        per = [(rel.users, _invert(rel, dense_limit)) for rel in rels]
        iu = np.concatenate([u[np.isfinite(k)] for u, k in per]) if per else np.zeros(0, np.int64)
        ik = np.concatenate([k[np.isfinite(k)] for _, k in per]) if per else np.zeros(0)
        out["inversion"] = AttackScores(-_mean_by_user(n, iu, ik), ("releases.g_w", "X", l2),
                                        "exact linear aggregates; r_u keeps its sign across epochs",
                                        {"estimates": float(iu.size), "releases": float(len(rels))})
    if "differencing" in names:
        du, de = _differencing(rels, max_set)
        out["differencing"] = AttackScores(-_mean_by_user(n, du, de), ("releases.g_w", "X", l2),
                                           "the other users' r did not change between the two releases",
                                           {"pairs": float(du.size)})
    return out


def _completion_attacks(x: sp.csr_matrix, hp: HostParams | None, inversion: AttackScores | None,
                        ridge: float, seed: int) -> dict[str, AttackScores]:
    n = x.shape[0]
    out: dict[str, AttackScores] = {}
    for name, which in (("completion", "final"), ("completion_baseline", "init")):
        sc = np.full(n, np.nan)
        if hp is not None:
            sc = _partials(x, *((hp.w_final, hp.v_final) if which == "final" else (hp.w_init, hp.v_init)))
        out[name] = AttackScores(sc, ("X", f"host_params ({which})"),
                                 "higher host partial = label 1 (the steps pile up −r_u)" if which == "final"
                                 else "none: the host without the guest's gradients")
    if inversion is not None:
        inv = inversion.scores
        n_lab = int(np.isfinite(inv).sum())
        sc = _ridge_oof(x, inv, ridge, seed) if n_lab >= 10 else np.full(n, np.nan)
        out["completion_pseudo"] = AttackScores(sc, ("X", "inversion estimates"),
                                                "the host's features predict the residual sign",
                                                {"labelled": float(n_lab)})
    return out


def run_attacks(transcript: HostTranscript, X: Any, *, host_params: HostParams | None = None,
                attacks: Sequence[str] | None = None, dense_limit: int = 250_000, max_set: int = 32,
                ridge: float = 1.0, seed: int = 0, pooled_damp: float = 0.1) -> dict[str, AttackScores]:
    """Run ``attacks`` (default: all of :data:`ATTACKS`) on ``transcript`` and the host's features
    ``X`` (``[n_aligned, n_host_columns]``, row = aligned position), with the host's own parameters
    ``host_params`` when given (:meth:`HostParams.from_host`); returns ``{attack: AttackScores}`` in
    the order asked. ``dense_limit``: largest component (equations × users) the inversion solves by
    SVD; ``max_set``: largest column support differencing compares; ``ridge``: the penalty of
    ``completion_pseudo``; ``pooled_damp``: the ridge of ``pooled`` (relative). See the module docstring
    for each attack."""
    names = list(ATTACKS if attacks is None else attacks)
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise ValueError(f"run_attacks: unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    x = _check_inputs(transcript, X, host_params)
    rels = _prepare(transcript, x, host_params)
    l2 = "host_params (L2 removed)" if host_params is not None else "no host_params (L2 taken as 0)"
    out = _residual_attacks(rels, x.shape[0], set(names), l2, dense_limit, max_set, pooled_damp)
    if {"completion", "completion_baseline", "completion_pseudo"} & set(names):
        pseudo = out.get("inversion") if "completion_pseudo" in names else None
        out.update(_completion_attacks(x, host_params, pseudo, ridge, seed))
    if "early_stopping" in names:
        out["early_stopping"] = _early_stopping(transcript, x, host_params)
    return {a: out[a] for a in names}


# ---------------------------------------------------------------------------------------------- scoring
def evaluate(scores_by_attack: Mapping[str, AttackScores | np.ndarray], truth: np.ndarray, *,
             n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Attack AUC against ``truth`` (``[n_aligned]`` of 0/1, ``NaN`` = not scorable) over the scorable
    users each attack has an opinion on, with a percentile bootstrap CI (users resampled).

    Returns ``{attack: {"auc": {"point", "low", "high"} | None, "coverage": fraction of scorable users
    with an opinion, "n": users scored, "n_pos": positives among them}}``; ``"auc"`` is ``None`` (with
    a ``"reason"``) when the attack has no opinion on any scorable user, or they are all one class —
    never a made-up 0.5. Raises ``ValueError`` when lengths differ, ``truth`` has no scorable user or
    values other than 0/1/NaN, or scores are infinite."""
    t = np.asarray(truth, dtype=np.float64).ravel()
    ok = np.isfinite(t)
    if not ok.any():
        raise ValueError("evaluate: truth has no scorable user (all NaN)")
    if not np.isin(t[ok], (0.0, 1.0)).all():
        bad = np.unique(t[ok][~np.isin(t[ok], (0.0, 1.0))])[:5]
        raise ValueError(f"evaluate: truth must be 0/1 (NaN = not scorable); found {bad.tolist()}")
    out: dict[str, dict[str, Any]] = {}
    for name, s in scores_by_attack.items():
        sc = np.asarray(s.scores if isinstance(s, AttackScores) else s, dtype=np.float64).ravel()
        if sc.shape != t.shape:
            raise ValueError(f"evaluate: attack {name!r} scores {sc.size} users but truth has {t.size}; "
                             "both are indexed by aligned position")
        if np.isinf(sc).any():
            raise ValueError(f"evaluate: attack {name!r} has infinite scores (use NaN for no opinion)")
        m = ok & np.isfinite(sc)
        res: dict[str, Any] = {"auc": None, "coverage": float(m.sum() / ok.sum()), "n": int(m.sum()),
                               "n_pos": int(t[m].sum())}
        if not m.any():
            res["reason"] = "no opinion on any scorable user"
        elif res["n_pos"] in (0, res["n"]):
            res["reason"] = "the users it scores are all one class"
        else:
            # users resampled as multiplicities: the scores are sorted once, not once per resample (a
            # resample with one class has no ordered pair, so no information: 0.5)
            res["auc"] = seed_bootstrap([(int(m.sum()), weighted_auc(t[m], sc[m]))], n_boot=n_boot,
                                        seed=seed, alpha=alpha)
        out[name] = res
    return out


def user_truth(interactions: pd.DataFrame, aligned: Sequence[Any], rule: str = "any") -> np.ndarray:
    """Per aligned user (in ``aligned`` order) the 0/1 truth of ``interactions``' ``rating``:
    ``"any"``: 1 if the user has a row with ``rating == 1`` (conversions; one row per user: its label);
    ``"mean_above_global"``: 1 if the user's mean rating exceeds the global mean (ratings). Users
    without rows: ``NaN``."""
    from fedrec.data.idmap import id_keys

    if rule not in ("any", "mean_above_global"):
        raise ValueError(f"user_truth: rule must be 'any' or 'mean_above_global', got {rule!r}")
    keys = pd.Index(id_keys(interactions["user_id"], source="interactions user_id"))
    y = interactions["rating"].to_numpy(dtype=np.float64)
    by = pd.Series(y, index=keys).groupby(level=0)
    per = (by.max() == 1.0) if rule == "any" else (by.mean() > float(y.mean()))
    got = per.astype(np.float64).reindex(pd.Index(id_keys(aligned, source="aligned")))
    return got.to_numpy(dtype=np.float64)
