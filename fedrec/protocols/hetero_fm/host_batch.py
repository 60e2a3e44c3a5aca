"""The host's work on one training batch: multipliers, encrypted products with fresh masks, and the
unmasked aggregated gradient (the algebra is in :mod:`fedrec.protocols.hetero_fm.packing`).

A :class:`HostBatch` lives from the batch's ``PartialsRequest`` to its ``ReleasedGradients``: it is never
checkpointed (checkpoints are taken between batches). Each part of a split batch uses the same touched
columns, so the guest can sum the parts' results column by column and release once; the host keeps
the sum of its masks and removes it from that single release.

Work ahead (:meth:`HostBatch.prepare`, on a helper thread started when the host answers the batch's
partials): everything of the host's products that does not depend on the guest's ciphertexts is known
then — the batch users, the parameters (the last step was the previous batch's release), and the plan
the guest will choose (:func:`packing.plan_parts` is a function of numbers both parties hold). So
while the guest computes its loss and encrypts, the host builds its multipliers, encodes the plaintext
of every (result, chunk) product (two thirds of a product's cost) and encrypts its masks; when the
chunks arrive only the ciphertext-plaintext products, one rescale per result and the mask additions
are left. A part whose announced plan differs from the predicted one (a guest with another plan
rule) is computed as before; the parameters are the same either way (no step happens in between).

On an executor (``[compute] engine`` other than ``local``, CKKS only; :mod:`fedrec.compute.ckks`): the
work ahead keeps the product terms as arrays and encrypts the masks on the workers (bytes); when the
chunks arrive, their bytes go to the workers as the wire layer parsed them, each worker loads the
chunks its slice of results uses (the serial path's checks), computes the ragged products, adds the
masks and serializes: the host's process loads no ciphertext. Plaintexts are encoded in the workers
then (a SEAL plaintext cannot leave its process), so a worker does the whole product. The ``local``
engine runs the code below unchanged.

Layout ``static`` (:class:`StaticLayout`): the chunks hold every aligned user in every batch (the users
without samples in it have zero rows) and the results every host column an aligned user has, and the
multipliers hold no parameter; so every batch's product plaintexts are the same, and the host encodes
them once per run (up to :data:`STATIC_PLAINTEXTS`) instead of once per batch. The gradient is still
applied to the batch's own columns only, as in ``compact``.
"""


from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec.compute.executor import Executor, ExecutorError, is_parallel
from fedrec.crypto.backend import CryptoBackend, CryptoError
from fedrec.models.fields import Csr
from fedrec.profiling import StageClock
from fedrec.protocols.hetero_fm import packing
from fedrec.protocols.hetero_fm.config import HeteroFMConfig
from fedrec.protocols.hetero_fm.messages import EncryptedResiduals, MaskedGradients, ReleasedGradients
from fedrec.protocols.party import Rejection

__all__ = ["HostBatch", "StaticLayout"]

logger = logging.getLogger(__name__)

#: plaintexts encoded ahead per batch at most (n8192 level 0: 0.2 MB each); later results encode inline
AHEAD_PLAINTEXTS = 1024
#: plaintexts layout ``static`` keeps for the whole run at most (~400 MB at n8192); later results are
#: encoded in every batch, as in ``compact``
STATIC_PLAINTEXTS = 2048


def _entries(rows: Csr, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(cols, user, col, value)``: the columns with a non-zero value among ``users``' rows, and one entry
    per (user position, column position) with that value (the row's last for a repeated column)."""
    idx, val, off = rows.gather(users)
    which = np.repeat(np.arange(len(users)), np.diff(np.append(off, len(idx))))
    nz = val != 0
    which, idx, val = which[nz], idx[nz], val[nz].astype(np.float64)
    cols = np.unique(idx)
    pos = np.searchsorted(cols, idx)
    _, last = np.unique((which * len(cols) + pos)[::-1], return_index=True)
    keep = np.sort(len(which) - 1 - last)
    return cols, which[keep], pos[keep], val[keep]


class StaticLayout:
    """The host's side of layout ``static`` for one run (module docstring): its ``n_users`` aligned users,
    the columns any of them has, the multipliers (no parameter in them) and the encoded product terms of
    each part, made by the first batch and reused by every later one (bounded by
    :data:`STATIC_PLAINTEXTS`; a SEAL plaintext is deterministic in its values, so reuse is exact)."""

    def __init__(self, n_users: int) -> None:
        self.n_users = n_users
        self.cols: np.ndarray | None = None
        self.mult: packing.Multipliers | None = None
        self._terms: dict[tuple[int, packing.ChunkPlan], list[Any]] = {}
        self._budget = STATIC_PLAINTEXTS  # plaintexts it may still keep
        self._lock = threading.Lock()

    def ensure(self, rows: Csr, c: HeteroFMConfig) -> packing.Multipliers:
        """The multipliers of every aligned user and column, built once; refuses one beyond
        ``plain_bound`` (as :meth:`HostBatch.multipliers`)."""
        with self._lock:
            if self.mult is None:
                cols, users, pos, val = _entries(rows, np.arange(self.n_users))
                zeros = np.zeros((len(cols), c.n_factors))
                mult = packing.Multipliers.build(users, pos, val, zeros, zeros[:, 0], 0.0, "static",
                                                 self.n_users)
                if (top := mult.max_abs()) > c.plain_bound:
                    raise Rejection("plain_bound", f"a host multiplier reaches {top:.3g} > plain_bound "
                                                   f"{c.plain_bound:g}; raise plain_bound in both configs")
                self.cols, self.mult = cols, mult
            return self.mult

    def terms(self, backend: CryptoBackend, part: int, plan: packing.ChunkPlan, mult: packing.Multipliers,
              clock: StageClock) -> list[Any]:
        """Part ``part``'s encoded terms per result (``None`` past the budget: encoded inline), encoded the
        first time they are asked for."""
        key = (part, plan)
        with self._lock:
            if key in self._terms:
                clock.count("static_reused", 1)
                return self._terms[key]
            out, self._budget = _encode_ahead(backend, plan, mult, self._budget, clock)
            self._terms[key] = out
            return out


@dataclass
class PartAhead:
    """One part's work made ahead: its predicted plan, encoded product terms (``None`` for results past
    :data:`AHEAD_PLAINTEXTS`), masks and their encryptions. On an executor: the terms as arrays and the
    encrypted masks as bytes (module docstring)."""

    plan: packing.ChunkPlan
    terms: list[Any]
    masks: list[np.ndarray]
    enc_masks: list[Any]


@dataclass
class HostBatch:
    """Batch ``batch`` of ``epoch``: its aligned ``users`` (positions in the aligned list)."""

    epoch: int
    batch: int
    users: np.ndarray
    n_parts: int = 0
    done: int = 0
    lanes: int = 0
    n_samples: int = 0
    cols: np.ndarray | None = None
    mult: packing.Multipliers | None = None
    v: np.ndarray | None = None
    mask_sums: np.ndarray | None = None
    ahead: list[PartAhead] | None = None
    #: layout ``static``: the run's layout (every aligned user and column); ``None`` for the others
    static: StaticLayout | None = None
    w: np.ndarray | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def prepare_async(self, backend: CryptoBackend, rows: Csr, w_all: np.ndarray, v_all: np.ndarray,
                      c: HeteroFMConfig, n_features: int, clock: StageClock,
                      executor: Executor | None = None) -> None:
        """Start :meth:`prepare` on a helper thread (copies of the parameters: nothing steps meanwhile,
        but the arrays must not be shared with the optimizer). Not a daemon: a host that stops (its guest
        died) finishes this bounded work before the interpreter exits, instead of being torn down in it."""
        w, v = w_all.copy(), v_all.copy()
        self._thread = threading.Thread(target=self.prepare,
                                        args=(backend, rows, w, v, c, n_features, clock, executor),
                                        name=f"host-ahead-e{self.epoch}b{self.batch}", daemon=False)
        self._thread.start()

    def prepare(self, backend: CryptoBackend, rows: Csr, w_all: np.ndarray, v_all: np.ndarray,
                c: HeteroFMConfig, n_features: int, clock: StageClock,
                executor: Executor | None = None) -> None:
        """The work ahead (module docstring). Failures leave ``ahead`` unset: the products then do it all
        and raise what is wrong (a multiplier beyond ``plain_bound``, a batch that cannot be released)."""
        try:
            with clock("ahead:multipliers"):
                self.multipliers(rows, w_all, v_all, c)
            assert self.mult is not None
            n = self.layout_users
            plans = packing.plan_parts(backend, n, c.n_factors, n_features, c.layout,
                                       c.value_bound, c.plain_bound, c.hiding_bits)
            budget, out = AHEAD_PLAINTEXTS, []
            slices = np.array_split(np.arange(n), len(plans))
            for p, (plan, sel) in enumerate(zip(plans, slices, strict=True)):
                part = self.mult.users_slice(int(sel[0]), int(sel[-1]) + 1) if len(sel) else \
                    self.mult.users_slice(0, 0)
                spec = packing.mask_spec(plan, c.value_bound, c.plain_bound, c.hiding_bits)
                if is_parallel(backend, executor):
                    from fedrec.compute.ckks import encrypt_masks_many

                    assert executor is not None
                    masks = packing.draw_masks(backend, plan.n_results(part.n_cols), plan.ct_size, spec)
                    with clock("ahead:masks"):
                        blobs = encrypt_masks_many(backend, masks, spec.mask_range, 1, executor)
                    out.append(PartAhead(plan, [], masks, blobs))
                    continue
                terms: list[Any]
                if self.static is not None:
                    terms = self.static.terms(backend, p, plan, part, clock)
                else:
                    terms, budget = _encode_ahead(backend, plan, part, budget, clock)
                masks = packing.draw_masks(backend, len(terms), plan.ct_size, spec)
                with clock("ahead:masks"):
                    enc = packing.encrypt_masks(backend, masks, spec)
                out.append(PartAhead(plan, terms, masks, enc))
            self.ahead = out
        except (Rejection, CryptoError, ValueError, ExecutorError) as exc:
            logger.debug("host: e%d b%d: nothing prepared ahead (%s); the products will do it all",
                         self.epoch, self.batch, exc)
            self.cols = self.mult = self.v = self.w = None
            self.ahead = None

    def join_ahead(self) -> None:
        """Wait for the work ahead, if any was started."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def layout_users(self) -> int:
        """The users the chunks hold: the batch's, or (``static``) every aligned user."""
        return self.static.n_users if self.static is not None else len(self.users)

    def layout_cols(self) -> np.ndarray:
        """The columns the results hold: the batch's touched columns, or (``static``) the run's."""
        cols = self.static.cols if self.static is not None else self.cols
        assert cols is not None
        return cols

    def multipliers(self, rows: Csr, w_all: np.ndarray, v_all: np.ndarray, c: HeteroFMConfig) -> None:
        """Touched columns, ``x`` and the multipliers ``M_j(u)`` of the whole batch (``static``: the run's);
        refuses a multiplier beyond ``plain_bound`` (it would void the release's error bound)."""
        cols, users, pos, val = _entries(rows, self.users)
        v, w = v_all.astype(np.float64)[cols], w_all.astype(np.float64)[cols]
        if self.static is not None:
            self.cols, self.mult, self.v, self.w = cols, self.static.ensure(rows, c), v, w
            return
        mult = packing.Multipliers.build(users, pos, val, v, w, c.l2_linear, c.layout, len(self.users))
        if (top := mult.max_abs()) > c.plain_bound:
            raise Rejection("plain_bound", f"a host multiplier reaches {top:.3g} > plain_bound "
                                           f"{c.plain_bound:g}; raise plain_bound in both configs")
        self.cols, self.mult, self.v, self.w = cols, mult, v, w

    def check_part(self, msg: EncryptedResiduals) -> bool:
        """Whether ``msg`` is the first part (``True``) or the expected next one; refuses anything else."""
        if (self.epoch, self.batch) != (msg.epoch, msg.batch):
            raise Rejection("batch", f"residuals for epoch {msg.epoch} batch {msg.batch}, but the current "
                                     f"batch is {(self.epoch, self.batch)}")
        if msg.part == 0:
            if msg.n_parts > max(self.layout_users, 1):
                raise Rejection("n_parts", f"{msg.n_parts} parts for {self.layout_users} users")
            return True
        if (msg.part, msg.n_parts, msg.lanes, msg.n_samples) != (self.done, self.n_parts, self.lanes,
                                                                  self.n_samples):
            raise Rejection("part", f"part {msg.part} of {msg.n_parts} ({msg.lanes} lanes, {msg.n_samples} "
                                    f"samples); expected part {self.done} of {self.n_parts} ({self.lanes} "
                                    f"lanes, {self.n_samples} samples)")
        return False

    def start(self, msg: EncryptedResiduals) -> None:
        self.n_parts, self.done, self.lanes, self.n_samples = msg.n_parts, 0, msg.lanes, msg.n_samples
        self.mask_sums = None

    def products(self, backend: CryptoBackend, msg: EncryptedResiduals, c: HeteroFMConfig,
                 clock: StageClock | None = None, executor: Executor | None = None) -> MaskedGradients:
        """``Σ_u M_j(u) ⊙ R_u + mask`` of this part's users; the masks' lane sums are kept. ``executor``
        (CKKS): on its workers (module docstring)."""
        assert self.cols is not None and self.mult is not None
        clock = clock or StageClock()
        sel = np.array_split(np.arange(self.layout_users), self.n_parts)[msg.part]
        try:
            plan = packing.ChunkPlan(len(sel), c.n_factors, msg.users_per_chunk, msg.lanes, c.layout)
        except ValueError as exc:  # a plan the guest's numbers cannot make
            raise Rejection("lanes", str(exc)) from exc
        packing.check_plan(backend, plan, len(msg.chunks))
        if is_parallel(backend, executor):
            assert executor is not None
            return self._products_on(executor, backend, msg, plan, sel, c, clock)
        with clock("deserialize"):
            chunks = [backend.deserialize(b, plan.ct_size, 0) for b in msg.chunks]
        spec = packing.mask_spec(plan, c.value_bound, c.plain_bound, c.hiding_bits)
        part = self.mult.users_slice(int(sel[0]), int(sel[-1]) + 1) if len(sel) else \
            self.mult.users_slice(0, 0)
        ahead = self._ahead_for(msg, plan, clock)
        made = ahead.terms if ahead is not None else \
            self.static.terms(backend, msg.part, plan, part, clock) if self.static is not None else None
        with clock("products"):
            if made is None:
                results = packing.host_products(backend, chunks, plan, part, clock)
            else:
                terms: list[list[tuple[int, object]]] = []
                inline: list[list[tuple[int, np.ndarray]]] = []
                for r, t in enumerate(made):  # results past the budget: encoded in dot_plain
                    if t is None:
                        inline = inline or packing.product_terms(plan, part)
                    terms.append(t if t is not None else list(inline[r]))
                results = packing.host_products(backend, chunks, plan, part, clock, prepared=terms)
        with clock("mask"):
            masked, masks = packing.mask_results(backend, results, spec, None if ahead is None else
                                                 (ahead.masks, ahead.enc_masks))
        self._keep_mask_sums(masks, plan, c)
        with clock("serialize"):
            blobs = [backend.serialize(ct) for ct in masked]
        clock.count("result_bytes", sum(len(b) for b in blobs))
        return MaskedGradients(blobs)

    def _ahead_for(self, msg: EncryptedResiduals, plan: packing.ChunkPlan, clock: StageClock
                   ) -> PartAhead | None:
        """The part's work made ahead, if any and made for the plan the guest announced."""
        ahead = self.ahead[msg.part] if self.ahead is not None and len(self.ahead) == self.n_parts else None
        if ahead is not None and ahead.plan != plan:
            logger.debug("host: e%d b%d part %d: the guest's plan differs from the predicted one; computed "
                         "inline", self.epoch, self.batch, msg.part)
            clock.count("ahead_plan_mismatch")
            ahead = None
        return ahead

    def _keep_mask_sums(self, masks: list[np.ndarray], plan: packing.ChunkPlan, c: HeteroFMConfig) -> None:
        width = packing.released_width(c.n_factors, c.layout)
        sums = np.concatenate([packing.lane_sums(m, plan) for m in masks] or [np.zeros((0, width))])
        sums = sums[:len(self.layout_cols())]
        self.mask_sums = sums if self.mask_sums is None else self.mask_sums + sums
        self.done += 1

    def _products_on(self, executor: Executor, backend: CryptoBackend, msg: EncryptedResiduals,
                     plan: packing.ChunkPlan, sel: np.ndarray, c: HeteroFMConfig, clock: StageClock
                     ) -> MaskedGradients:
        """:meth:`products` on the executor's workers: the chunks' bytes go to them unloaded."""
        from fedrec.compute.ckks import ragged_products_many

        assert self.mult is not None
        spec = packing.mask_spec(plan, c.value_bound, c.plain_bound, c.hiding_bits)
        part = self.mult.users_slice(int(sel[0]), int(sel[-1]) + 1) if len(sel) else \
            self.mult.users_slice(0, 0)
        ahead = self._ahead_for(msg, plan, clock)
        if ahead is not None:
            masks, wire = ahead.masks, ahead.enc_masks
        else:
            masks = packing.draw_masks(backend, plan.n_results(part.n_cols), plan.ct_size, spec)
            wire = list(masks)
        counts, uses = _term_counts(plan, part)
        clock.count("products", int(sum(counts)))
        clock.count("product_results", len(counts))
        lanes = plan.lanes

        def terms_of(a: int, b: int) -> tuple[Any, tuple[Any, ...]]:  # sparse: built in the worker
            keep = (part.cols >= a * lanes) & (part.cols < b * lanes)
            return _part_terms, (plan, part.users[keep], part.cols[keep] - a * lanes, part.values[keep],
                                 min(part.n_cols, b * lanes) - a * lanes)

        with clock("products"):  # terms, load, products, masks and serialization, on the workers
            blobs = ragged_products_many(backend, list(msg.chunks), plan.ct_size, counts, uses, terms_of,
                                         wire, executor, pad_range=spec.mask_range)
        self._keep_mask_sums(masks, plan, c)
        clock.count("result_bytes", sum(len(b) for b in blobs))
        return MaskedGradients(blobs)

    def gradient(self, msg: ReleasedGradients, c: HeteroFMConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cols, g_v, g_w)``: the batch's aggregated gradient of the touched columns (unmasked, ÷ N_s)."""
        if (self.epoch, self.batch) != (msg.epoch, msg.batch) or self.done < max(self.n_parts, 1):
            raise Rejection("batch", f"released gradients for epoch {msg.epoch} batch {msg.batch} with no "
                                     f"outstanding masked gradients for it")
        assert self.cols is not None and self.v is not None and self.mask_sums is not None
        n_cols = len(self.layout_cols())
        want = (-(-n_cols // self.lanes) * self.lanes, packing.released_width(c.n_factors, c.layout))
        if msg.values.shape != want:
            raise Rejection("values", f"expected shape {want}, got {msg.values.shape}")
        released = msg.values[:n_cols] - self.mask_sums
        if self.static is not None:  # the run's columns -> the batch's (the others are not stepped)
            released = released[np.searchsorted(self.layout_cols(), self.cols)]
        g_v, g_w = packing.host_gradient(released, self.v, c.layout, self.w, c.l2_linear)
        return self.cols, g_v / self.n_samples, g_w / self.n_samples


def _encode_ahead(backend: CryptoBackend, plan: packing.ChunkPlan, part: packing.Multipliers, budget: int,
                  clock: StageClock) -> tuple[list[Any], int]:
    """A part's terms encoded ahead per result while ``budget`` plaintexts last (``None``: inline later)."""
    terms: list[Any] = []
    with clock("ahead:encode"):
        for res in packing.product_terms(plan, part):
            if len(res) <= budget:
                terms.extend(packing.prepare_terms(backend, [res]))
                budget -= len(res)
            else:
                terms.append(None)
    return terms, budget


def _term_counts(plan: packing.ChunkPlan, mult: packing.Multipliers) -> tuple[list[int], list[list[int]]]:
    """Per result of :func:`packing.product_terms`: its number of terms and the chunks they use (without
    building them: the workers do, from the sparse multipliers)."""
    n_res = plan.n_results(mult.n_cols)
    key = np.unique((mult.cols // plan.lanes) * plan.n_chunks + mult.users // plan.users_per_chunk)
    res, chunk = key // plan.n_chunks, key % plan.n_chunks
    bounds = np.searchsorted(res, np.arange(n_res + 1))
    uses = [chunk[bounds[r]:bounds[r + 1]].tolist() or [0] for r in range(n_res)]  # none: one zero term
    return [len(u) for u in uses], uses


def _part_terms(plan: packing.ChunkPlan, users: np.ndarray, cols: np.ndarray, values: np.ndarray,
                n_cols: int) -> list[list[tuple[int, np.ndarray]]]:
    """A worker's terms of consecutive results (their columns renumbered from 0; a task of
    :func:`fedrec.compute.ckks.ragged_products_many`): :func:`packing.product_terms` of that slice."""
    return packing.product_terms(plan, packing.Multipliers(users, cols, values, plan.n_users, n_cols))
