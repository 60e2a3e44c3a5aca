"""The rotation-free layout of the host gradient (DESIGN §4.2 step 3–4), its parameters and its error.

Host gradient. With ``N_s`` the samples scored in the batch (positives and sampled negatives),
``δ_s = ∂L/∂z_s``, ``c_u`` the samples of user ``u`` and the guest's scaled per-user sums
(``N_s`` turns the batch mean back into per-sample magnitudes)::

    Q̂_u = N_s Σ_{s∈u} δ_s (e_G(s) + e_H(u))      Δ̂_u = N_s Σ_{s∈u} δ_s      D̂_u = 2 λ_v c_u − Δ̂_u

the host's gradient of ``L = data + mean_s R(s)`` for feature ``j`` (value ``x_j(u)``) is LINEAR in them::

    ∂L/∂v_j = (1/N_s) Σ_u [ x_j(u) Q̂_u + x_j(u)² v_j D̂_u ]
    ∂L/∂w_j = (1/N_s) Σ_u [ x_j(u) Δ̂_u + 2 λ_w w_j x_j(u)² c_u ]

Per-user vector (``W = 2k + 2`` values) and the host's plaintext multiplier for column ``j``::

    R_u   = [ Q̂_u (k) | D̂_u · 1_k (k) | Δ̂_u | c_u ]
    M_j(u)= [ x_j(u) · 1_k | x_j(u)² v_j | x_j(u) | 2 λ_w w_j x_j(u)² ]

so ``Σ_u M_j(u) ⊙ R_u`` folded as ``[a[:k] + a[k:2k], a[2k] + a[2k+1]]`` is ``N_s`` times the
``(k+1)`` gradient of column ``j``. The per-user sample counts ``c_u`` (needed by the per-sample L2)
therefore only ever reach the host inside ciphertexts and inside the folded gradient: the released
vector is exactly the gradient, nothing else (docs/SECURITY.md). This is layout ``hiding`` (opt-in).

Layout ``compact`` (default; ``W = k + 3``, about half the chunks and products)::

    R_u   = [ Q̂_u (k) | D̂_u | Δ̂_u | c_u ]
    M_j(u)= [ x_j(u) · 1_k | x_j(u)² | x_j(u) | 2 λ_w w_j x_j(u)² ]

folded as ``[a[:k], a[k], a[k+1] + a[k+2]]``: the guest releases ``A_j = Σ_u x_j Q̂_u``,
``B_j = Σ_u x_j² D̂_u`` and the ``w`` gradient, and the host forms ``A_j + v_j B_j`` itself
(:func:`host_gradient`). The cost: ``B_j`` is released on its own, and with the ``w`` gradient
``G_j = Σ_u x_j Δ̂_u + 2 λ_w w_j Σ_u x_j² c_u`` it gives the host, for every one-hot column
(``x² = x``), ``E_j = Σ_u x_j(u) c_u = (B_j + G_j) / (2λ_v + 2λ_w w_j)``: the batch's number of
samples per category (per column, per batch; never per user). ``Q̂_u`` already contains
``Δ_u e_H(u)`` (the guest holds ``e_H``), so no layout can drop more slots without releasing more.
Both parties must agree on ``layout`` (it is one of the agreed config fields).

Layout. A chunk ciphertext holds ``lanes`` copies ("lanes") of ``G`` users' ``R_u``:
slot ``(ℓ·G + g)·W + w`` holds ``R_{t·G+g}[w]`` for every lane ``ℓ`` (users past the batch are zero).
For a group of ``lanes`` columns ``j_0..j_{C-1}`` the host computes, with one plaintext product per
chunk and no rotation::

    result = Σ_t chunk_t ⊙ [M_{j_ℓ}(u) at lane ℓ, user slot g]  +  mask (every slot, fresh)

The guest decrypts ``result`` (``C·G·W`` slots, all masked), sums the ``G`` user groups of every lane
ITSELF (the host never sees a per-user or few-user sum, only the ``C`` column aggregates), folds, and
releases ``C × (k+1)`` values, noise-flooded and rounded. The host subtracts the same sums of its masks.
Cost per batch of ``U`` users and ``d`` touched columns: ``⌈U/G⌉`` encryptions, ``⌈U/G⌉·⌈d/C⌉``
products (``≳ U·W·d / slots``), ``⌈d/C⌉`` masks/decryptions; :func:`plan_chunks` picks ``C`` by a
measured cost model. On CKKS the products of one result are accumulated before a single rescale
(:meth:`fedrec.crypto.ckks.CKKSBackend.dot_plain`, ~2.6 ms per product on N = 8192, two thirds of it
plaintext encoding) and a mask is one fresh encryption of zero plus the encoded mask (~7 ms).
``paillier`` (one value per ciphertext) uses ``G = 1, C = 1`` (the host skips users with
``x_j(u) = 0``); ``plain`` packs exactly as CKKS n8192 would (:data:`PLAIN_SLOTS` virtual slots), so a
plain run has the encrypted run's chunks, results and messages (and the host's products, built only
for (result, chunk) pairs that have entries, cost ``~nnz`` rather than ``d·U``).

CKKS parameters (preset ``n8192``, :mod:`fedrec.crypto.ckks`): ``N = 8192`` (4096 slots), modulus
chain ``[60, 43, 55 | 60]`` bits (218 ≤ 218 for 128-bit security), scale ``Δ = 2^55``, depth 1 (one
plaintext product, then additions only; no Galois keys are generated or sent). ``n4096`` has too little
modulus room for 20-bit masks. Keys are fresh per job (per :class:`HeteroFMGuest.fit`).

Error. With ``V = value_bound`` (``|R_u| ≤ V``, the guest clips and counts), ``P = plain_bound``
(``|M_j(u)| ≤ P``, the host refuses larger) and ``T = 2·G·n_chunks`` products summed into one released
value, the CKKS error is ``≤ B_e = error_bound(1, P, T, V)`` (``≈ 4√T (2PV + 32V) N/Δ``; e.g.
``V = 256, P = 64, T = 512``: ``B_e ≈ 8e-7``), flooded with ``σ = 2^16 B_e ≈ 0.05`` and rounded to
the power-of-two grid below ``σ``, on values of order ``N_s·|gradient|`` (per-sample gradients are
O(0.1–10), a column aggregates tens of samples); the host divides by ``N_s``. Masks are uniform in
``±n_chunks·P·V·2^h`` (``h = mask_hiding_bits``, statistical distance ``2^-h`` per slot); the masked
aggregate stays below ``2^46`` (level-1 room) and its float64 resolution below the release grid
(:func:`fedrec.crypto.masks.check_mask_fits`).

Parts. The released bound ``2·G·masked_bound ≈ 2·U·P·V·2^h`` grows with the batch's users ``U``
(16384-row ML-1M batches at ``P = 64`` give 1.56e14 > the 7.04e13 room of n8192). :func:`plan_parts`
then splits the batch into the fewest consecutive user slices whose own release fits; every part
uses the same lanes and the host the same columns for all of them, so the guest sums the parts'
decrypted lane sums (the gradient is linear in the users) and releases ONE flooded vector per column:
its bound is the sum of the parts' bounds, limited only by float64 resolution (``B·2^-52 ≤`` the
release grid, which grows as ``√T``), e.g. ~7000 users at ``P = 64`` leave a 5× margin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.compute.executor import Executor, is_parallel
from fedrec.crypto.backend import CryptoBackend, CryptoError, EncryptedVector, FloatArray, ReleasePolicy
from fedrec.crypto.masks import MaskSpec, check_mask_fits, draw_mask
from fedrec.profiling import StageClock

logger = logging.getLogger(__name__)


LAYOUTS = ("hiding", "compact", "static")

#: the slots the plain backend packs into: those of CKKS n8192, so plain mirrors the encrypted layout
PLAIN_SLOTS = 4096


def width(k: int, layout: str = "hiding") -> int:
    """``W = 2k + 2`` (``hiding``) or ``k + 3`` (``compact``, ``static``) values per user."""
    if layout not in LAYOUTS:
        raise CryptoError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return 2 * k + 2 if layout == "hiding" else k + 3


def released_width(k: int, layout: str = "hiding") -> int:
    """Values the guest releases per host column: ``k + 1`` (``hiding``), ``k + 2`` (``compact``) or
    ``k + 3`` (``static``: nothing folded)."""
    if layout not in LAYOUTS:
        raise CryptoError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return {"hiding": k + 1, "compact": k + 2, "static": k + 3}[layout]


@dataclass(frozen=True)
class ChunkPlan:
    """``users_per_chunk`` users × ``lanes`` lanes × ``W`` values per chunk ciphertext."""

    n_users: int
    k: int
    users_per_chunk: int
    lanes: int
    layout: str = "hiding"

    @property
    def width(self) -> int:
        return width(self.k, self.layout)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_users // self.users_per_chunk)

    @property
    def ct_size(self) -> int:
        return self.lanes * self.users_per_chunk * self.width

    def n_results(self, n_columns: int) -> int:
        return -(-n_columns // self.lanes)


def plan_chunks(backend: CryptoBackend, n_users: int, k: int, n_columns: int,
                layout: str = "hiding") -> ChunkPlan:
    """The guest's choice of ``G`` and ``C`` minimising the measured CKKS cost (n8192, ms): ~10 per
    chunk (encryption, serialization both ways), ~15 per result (mask, serialization, decryption)
    and ~2.6 per product, ``n_chunks · n_results`` of them (every chunk meets every result)."""
    w = width(k, layout)
    if backend.name == "paillier":
        return ChunkPlan(n_users, k, 1, 1, layout)
    slots = _slots(backend)
    if w > slots:
        raise CryptoError(f"n_factors={k}: {w} values per user exceed the {slots} CKKS slots")
    best = ChunkPlan(n_users, k, min(n_users, slots // w), 1, layout)
    best_cost = math.inf
    for lanes in range(1, max(1, min(n_columns, slots // w)) + 1):
        g = min(n_users, slots // (w * lanes))
        plan = ChunkPlan(n_users, k, g, lanes, layout)
        n_res = plan.n_results(n_columns)
        cost = 10.0 * plan.n_chunks + 15.0 * n_res + 2.6 * plan.n_chunks * n_res
        if cost < best_cost:
            best, best_cost = plan, cost
    return best


def _slots(backend: CryptoBackend) -> int:
    return int(backend.slots) if backend.name == "ckks" else PLAIN_SLOTS


def check_plan(backend: CryptoBackend, plan: ChunkPlan, n_chunks: int) -> None:
    """The host's validation of a plan announced by the guest."""
    expect = plan_chunks(backend, plan.n_users, plan.k, 1, plan.layout)
    if backend.name != "paillier":
        if plan.ct_size > _slots(backend) or plan.users_per_chunk > plan.n_users:
            raise CryptoError(f"chunk of {plan.lanes} lanes × {plan.users_per_chunk} users × {plan.width} "
                              f"values does not fit {_slots(backend)} slots for {plan.n_users} users")
    elif (plan.users_per_chunk, plan.lanes) != (expect.users_per_chunk, expect.lanes):
        raise CryptoError(f"backend {backend.name} uses {expect.users_per_chunk} user(s) per chunk and "
                          f"{expect.lanes} lane(s), got {plan.users_per_chunk} and {plan.lanes}")
    if n_chunks != plan.n_chunks:
        raise CryptoError(f"{n_chunks} chunk ciphertexts for {plan.n_users} users at {plan.users_per_chunk} "
                          f"per chunk; expected {plan.n_chunks}")


def residual_rows(q_hat: FloatArray, delta_hat: FloatArray, counts: FloatArray, l2_v: float,
                  value_bound: float, layout: str = "hiding") -> tuple[FloatArray, int]:
    """``R`` (``U × W``) from the guest's scaled sums; values beyond ``value_bound`` are clipped
    (returns how many)."""
    n, k = q_hat.shape
    r = np.empty((n, width(k, layout)))
    d_hat = 2.0 * l2_v * counts - delta_hat
    r[:, :k] = q_hat
    if layout == "hiding":
        r[:, k:2 * k] = d_hat[:, None]
    else:
        r[:, k] = d_hat
    r[:, -2] = delta_hat
    r[:, -1] = counts
    clipped = int(np.sum(np.abs(r) > value_bound))
    if clipped:
        np.clip(r, -value_bound, value_bound, out=r)
    return r, clipped


def chunk_values(rows: FloatArray, plan: ChunkPlan) -> list[FloatArray]:
    """The plaintext slot vectors of the chunks: ``lanes`` copies of ``G`` users' rows each."""
    g, w = plan.users_per_chunk, plan.width
    padded = np.zeros((plan.n_chunks * g, w))
    padded[:plan.n_users] = rows
    return [np.tile(padded[t * g:(t + 1) * g].reshape(-1), plan.lanes) for t in range(plan.n_chunks)]


def encrypt_chunks(backend: CryptoBackend, rows: FloatArray, plan: ChunkPlan) -> list[EncryptedVector]:
    return [backend.encrypt(v) for v in chunk_values(rows, plan)]


def encrypt_part(backend: CryptoBackend, rows: FloatArray, plan: ChunkPlan,
                 clock: StageClock | None = None, executor: Executor | None = None) -> list[bytes]:
    """The guest's work on one part before sending it: its chunks encrypted and serialized (``clock``
    records ``encrypt``/``serialize``). ``executor`` (CKKS, an engine other than ``local``): on its workers,
    with the guest's secret key as here (seeded: the same bytes on the wire), never loaded here."""
    clock = clock or StageClock()
    if is_parallel(backend, executor):
        from fedrec.compute.ckks import encrypt_many, per_task

        assert executor is not None
        values = chunk_values(rows, plan)
        with clock("encrypt"):  # encryption and serialization, on the workers
            out = encrypt_many(backend, np.stack(values), executor, as_bytes=True, secret=True,
                               batch=per_task(len(values), executor, minimum=2))
        clock.count("chunks", len(out))
        clock.count("chunk_bytes", sum(len(b) for b in out))
        return out
    with clock("encrypt"):
        chunks = encrypt_chunks(backend, rows, plan)
    with clock("serialize"):
        out = [backend.serialize(ct) for ct in chunks]
    clock.count("chunks", len(out))
    clock.count("chunk_bytes", sum(len(b) for b in out))
    return out


def decrypt_part(backend: CryptoBackend, results: Sequence[bytes], plan: ChunkPlan,
                 clock: StageClock | None = None, executor: Executor | None = None) -> FloatArray:
    """The guest's work on one part's answer: the masked result ciphertexts deserialized, decrypted and
    summed per lane -> ``[n_results · lanes, released_width]``. ``executor``: the host's bytes are loaded
    (the same checks) and decrypted on its workers, as :func:`encrypt_part`."""
    clock = clock or StageClock()
    if is_parallel(backend, executor) and results:
        from fedrec.compute.ckks import decrypt_blobs, per_task

        assert executor is not None
        with clock("decrypt"):  # deserialization and decryption, on the workers
            values = decrypt_blobs(backend, list(results), plan.ct_size, 1, executor,
                                   batch=per_task(len(results), executor, minimum=2))
        clock.count("results", len(results))
        return np.concatenate([lane_sums(v, plan) for v in values])
    with clock("deserialize"):
        cts = [backend.deserialize(blob, plan.ct_size, 1) for blob in results]
    with clock("decrypt"):
        sums = [lane_sums(backend.decrypt(ct), plan) for ct in cts]
    clock.count("results", len(cts))
    return np.concatenate(sums) if sums else np.zeros((0, released_width(plan.k, plan.layout)))


def mask_spec(plan: ChunkPlan, value_bound: float, plain_bound: float, hiding_bits: int) -> MaskSpec:
    return MaskSpec(value_bound=plan.n_chunks * plain_bound * value_bound, hiding_bits=hiding_bits)


def release_policy(backend: CryptoBackend, plans: ChunkPlan | Sequence[ChunkPlan], value_bound: float,
                   plain_bound: float, hiding_bits: int) -> ReleasePolicy:
    """The guest's flooding/rounding for one released (folded, user-summed) value, summed over the
    parts of a batch (one plan per part, see :func:`plan_parts`).

    Each part's masked values must fit the modulus on their own (the backend's check); the sum over the
    parts happens in float64 after decryption, so only its resolution limits it: the released bound
    ``B = Σ_parts 2·G·masked_bound`` must satisfy ``B·2^-52 ≤ precision``. The error terms of all parts
    add up (``T = Σ 2·G·n_chunks``), and the flooding covers their total."""
    plans = [plans] if isinstance(plans, ChunkPlan) else list(plans)
    specs = [mask_spec(p, value_bound, plain_bound, hiding_bits) for p in plans]
    terms = sum(2 * p.users_per_chunk * p.n_chunks for p in plans)
    bounds = [2 * p.users_per_chunk * s.masked_bound for p, s in zip(plans, specs, strict=True)]
    policy = backend.release_policy(bound=max(bounds), plain_bound=plain_bound, terms=terms, level=1,
                                    value_bound=value_bound)
    total = float(sum(bounds))
    if policy.flood_sigma == 0:  # exact schemes: no finer grid than float64 resolves on masked values
        grid = 2.0 ** math.ceil(math.log2(total * 2.0 ** -50))
        policy = ReleasePolicy(total, 0.0, max(policy.precision, grid))
    elif total * 2.0 ** -52 > policy.precision:
        raise CryptoError(f"released sum over {len(plans)} part(s) bounded by {total:.3g} is beyond float64 "
                          f"resolution at precision {policy.precision:g}")
    else:
        policy = ReleasePolicy(total, policy.flood_sigma, policy.precision)
    for spec in specs:
        check_mask_fits(backend, spec, 1, policy.precision)
    return policy


def plan_parts(backend: CryptoBackend, n_users: int, k: int, n_columns: int, layout: str,
               value_bound: float, plain_bound: float, hiding_bits: int) -> list[ChunkPlan]:
    """Split a batch of ``n_users`` users into the fewest parts whose masked release each fits the
    modulus (the bound grows with a part's users): consecutive slices ``numpy.array_split(users,
    n_parts)``, all with the same ``lanes`` (so their results align column by column and the guest
    can sum them before releasing). One part when the whole batch fits (always for ``plain`` and
    ``paillier``). Raises :class:`CryptoError` when even one user, or the sum, does not fit."""

    def fits(n: int) -> bool:
        try:
            release_policy(backend, plan_chunks(backend, n, k, n_columns, layout), value_bound, plain_bound,
                           hiding_bits)
        except CryptoError:
            return False
        return True

    if fits(n_users):
        return [plan_chunks(backend, n_users, k, n_columns, layout)]
    lo, hi = 1, n_users  # fits(lo) is required; fits(hi) is False
    if not fits(lo):
        release_policy(backend, plan_chunks(backend, 1, k, n_columns, layout), value_bound, plain_bound,
                       hiding_bits)  # raises the backend's own explanation
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    n_parts = -(-n_users // lo)
    sizes = [len(a) for a in np.array_split(np.arange(n_users), n_parts)]
    base = plan_chunks(backend, sizes[0], k, n_columns, layout)
    plans = [ChunkPlan(n, k, min(base.users_per_chunk, n), base.lanes, layout) for n in sizes]
    release_policy(backend, plans, value_bound, plain_bound, hiding_bits)  # the sum must fit too
    logger.debug("packing: %d users split into %d parts of <= %d", n_users, n_parts, sizes[0])
    return plans


def fold(a: FloatArray, k: int, layout: str = "hiding") -> FloatArray:
    """``[..., W] -> [..., released_width]``: ``hiding``: ``[a[:k] + a[k:2k], a[2k] + a[2k+1]]``;
    ``compact``: ``[a[:k], a[k], a[k+1] + a[k+2]]``; ``static``: ``a`` as it is."""
    if layout == "static":
        return np.asarray(a)
    if layout == "hiding":
        head = a[..., :k] + a[..., k:2 * k]
    else:
        head = a[..., :k + 1]
    return np.concatenate([head, a[..., -2:-1] + a[..., -1:]], axis=-1)


def column_multipliers(x: FloatArray, v: FloatArray, w: FloatArray, l2_w: float,
                       layout: str = "hiding") -> FloatArray:
    """``M_j(u)`` for users × columns: ``x[U, d]``, ``v[d, k]``, ``w[d]`` -> ``[d, U, W]`` (dense: the
    reference for tests; the host keeps them sparse, :class:`Multipliers`)."""
    users, cols = np.nonzero(x)
    return Multipliers.build(users, cols, x[users, cols], v, w, l2_w, layout, x.shape[0]).dense()


@dataclass(frozen=True)
class Multipliers:
    """The batch's ``M_j(u)`` kept sparse: one ``W``-vector per user and column with ``x_j(u) ≠ 0``
    (every entry of ``M_j(u)`` is a multiple of ``x_j(u)``, so the rest are zero). Dense ``[d, U, W]``
    would be 135M floats for a 4096-click TalkingData batch touching ~3000 one-hot columns."""

    users: np.ndarray  # [nnz] positions in the batch
    cols: np.ndarray  # [nnz] positions among the touched columns
    values: FloatArray  # [nnz, W]
    n_users: int
    n_cols: int

    @classmethod
    def build(cls, users: np.ndarray, cols: np.ndarray, x: FloatArray, v: FloatArray, w: FloatArray,
              l2_w: float, layout: str, n_users: int) -> Multipliers:
        """From the nonzero ``x[users, cols]`` (``v``/``w`` indexed by touched column)."""
        k = v.shape[1]
        m = np.empty((len(x), width(k, layout)))
        m[:, :k] = x[:, None]
        if layout == "hiding":
            m[:, k:2 * k] = (x * x)[:, None] * v[cols]
        else:
            m[:, k] = x * x
        m[:, -2] = x
        # static: no parameter in the multipliers (the host applies 2 λ_w w_j to the released Σ x² c_u)
        m[:, -1] = x * x if layout == "static" else 2.0 * l2_w * w[cols] * x * x
        return cls(np.asarray(users, np.int64), np.asarray(cols, np.int64), m, n_users, v.shape[0])

    def max_abs(self) -> float:
        return float(np.max(np.abs(self.values))) if self.values.size else 0.0

    def users_slice(self, start: int, stop: int) -> Multipliers:
        """The users ``[start, stop)`` of the batch, renumbered from 0 (a part of a split batch)."""
        keep = (self.users >= start) & (self.users < stop)
        return Multipliers(self.users[keep] - start, self.cols[keep], self.values[keep], stop - start,
                           self.n_cols)

    def dense(self) -> FloatArray:
        out = np.zeros((self.n_cols, self.n_users, self.values.shape[1]))
        out[self.cols, self.users] = self.values
        return out


def host_gradient(released: FloatArray, v: FloatArray, layout: str = "hiding", w: FloatArray | None = None,
                  l2_w: float = 0.0) -> tuple[FloatArray, FloatArray]:
    """Unmasked released aggregates (``d × released_width``) and the ``v`` the multipliers used ->
    ``N_s · (∂L/∂v [d, k], ∂L/∂w [d])``; ``compact`` and ``static`` apply ``v_j · Σ_u x_j² D̂_u`` here,
    ``static`` also ``2 λ_w w_j · Σ_u x_j² c_u`` (``w``, ``l2_w``: the columns' ``w`` and ``λ_w``)."""
    k = v.shape[1]
    gv = released[:, :k] if layout == "hiding" else released[:, :k] + v * released[:, k:k + 1]
    if layout != "static":
        return gv, released[:, -1]
    if w is None:
        raise ValueError("host_gradient: layout 'static' needs the columns' w")
    return gv, released[:, k + 1] + 2.0 * l2_w * w * released[:, k + 2]


def product_terms(plan: ChunkPlan, mult: Multipliers | FloatArray) -> list[list[tuple[int, FloatArray]]]:
    """Per result ciphertext, its ``(chunk index, plaintext multiplier)`` terms: the plaintext of a
    (result, chunk) pair is built only when some user of the chunk has one of the result's columns, and
    only from those entries; a result without any gets one zero term (cannot happen for touched columns)."""
    if not isinstance(mult, Multipliers):  # dense [d, U, W] (tests)
        d, n, _ = mult.shape
        us, cs = np.nonzero(np.any(mult != 0, axis=2).T)
        mult = Multipliers(us, cs, mult[cs, us], n, d)
    g, c, w = plan.users_per_chunk, plan.lanes, plan.width
    size = c * g * w
    n_res = plan.n_results(mult.n_cols)
    key = (mult.cols // c) * plan.n_chunks + mult.users // g
    order = np.argsort(key, kind="stable")
    key, starts = np.unique(key[order], return_index=True)
    bounds = np.append(starts, len(order))
    slot = ((mult.cols % c) * g + mult.users % g) * w
    terms: list[list[tuple[int, FloatArray]]] = [[] for _ in range(n_res)]
    for kk, a, b in zip(key.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        sel = order[a:b]
        vec = np.zeros(size)
        vec[(slot[sel][:, None] + np.arange(w)).reshape(-1)] = mult.values[sel].reshape(-1)
        terms[kk // plan.n_chunks].append((kk % plan.n_chunks, vec))
    return [t or [(0, np.zeros(plan.ct_size))] for t in terms]


def prepare_terms(backend: CryptoBackend, terms: list[list[tuple[int, FloatArray]]]
                  ) -> list[list[tuple[int, object]]]:
    """:func:`product_terms` with every plaintext encoded for level-0 chunks (``backend.prepare_plain``):
    the host does this before the chunks arrive."""
    return [[(t, backend.prepare_plain(m, 0)) for t, m in res] for res in terms]


def host_products(backend: CryptoBackend, chunks: list[EncryptedVector], plan: ChunkPlan,
                  mult: Multipliers | FloatArray, clock: StageClock | None = None,
                  prepared: list[list[tuple[int, object]]] | None = None) -> list[EncryptedVector]:
    """``[Σ_t chunk_t ⊙ M(lanes of result r, users of chunk t)]`` per result ciphertext (unmasked), from
    :func:`product_terms` (or their ``prepared`` encodings, :func:`prepare_terms`)."""
    terms: list[list[tuple[int, object]]] = prepared if prepared is not None else \
        [list(t) for t in product_terms(plan, mult)]
    out = [backend.dot_plain([chunks[t] for t, _ in res], [m for _, m in res]) for res in terms]
    if clock is not None:
        clock.count("products", sum(len(t) for t in terms))
        clock.count("product_results", len(terms))
    return out


def draw_masks(backend: CryptoBackend, n: int, size: int, spec: MaskSpec) -> list[FloatArray]:
    # plain encrypts nothing, so a mask would hide nothing: none, which makes plain runs reproducible
    # bit for bit (a resumed run equals the uninterrupted one exactly)
    return [np.zeros(size) if backend.name == "plain" else draw_mask(size, spec) for _ in range(n)]


def encrypt_masks(backend: CryptoBackend, masks: list[FloatArray], spec: MaskSpec
                  ) -> list[EncryptedVector]:
    """The masks encrypted ahead at the results' level (1), fresh randomness each."""
    return [backend.encrypt_mask(m, spec.mask_range, 1) for m in masks]


def mask_results(backend: CryptoBackend, results: list[EncryptedVector], spec: MaskSpec,
                 prepared: tuple[list[FloatArray], list[EncryptedVector]] | None = None
                 ) -> tuple[list[EncryptedVector], list[FloatArray]]:
    """``results + fresh masks`` (``prepared``: masks and their encryptions made ahead,
    :func:`encrypt_masks`; each is used once)."""
    if prepared is not None:
        masks, enc = prepared
        return [backend.add(ct, m) for ct, m in zip(results, enc, strict=True)], masks
    masks = draw_masks(backend, len(results), results[0].size if results else 0, spec)
    return [backend.add_mask(ct, m, spec.mask_range) for ct, m in zip(results, masks, strict=True)], masks


def lane_sums(values: FloatArray, plan: ChunkPlan) -> FloatArray:
    """Decrypted/mask values of one result (``C·G·W``) -> folded lane aggregates ``[C, k+1]``."""
    a = np.asarray(values).reshape(plan.lanes, plan.users_per_chunk, plan.width).sum(axis=1)
    return fold(a, plan.k, plan.layout)
