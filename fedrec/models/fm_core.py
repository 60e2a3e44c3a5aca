"""The factorization-machine arithmetic over fields (torch), separate from the estimator plumbing.

For a sample ``b`` with sparse features ``x`` (grouped in fields ``f``):

    z(b) = w0 + Σ_j w_j x_j + Σ_{j<l} <v_j, v_l> x_j x_l
         = w0 + Σ_f lin_f + ½ (‖Σ_f e_f‖² − Σ_f sq_f)

with, per field, ``lin_f = Σ_{j∈f} w_j x_j``, ``e_f = Σ_{j∈f} v_j x_j`` and
``sq_f = Σ_{j∈f} ‖v_j‖² x_j²``. Any partition of the fields into groups ``A`` and ``B`` gives

    z = z_A + z_B + <e_A, e_B>,   z_S = [w0 if S holds it] + Σ_{f∈S} lin_f + ½ (‖e_S‖² − Σ_{f∈S} sq_f)

which is used twice: by **party** (guest/host, DESIGN §4.2; ``w0`` belongs to the guest) and by
**side** (user vs item+context: ``score(u, i) = a_u + b_i + <p_u, q_i>`` for recommendation).
Every field keeps its own ``w_f`` and ``V_f`` tensors, so a party's parameters never share a tensor
with another party's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.models.fields import Csr, FieldSpec


@dataclass
class FieldTerms:
    """Per-sample terms of one field: ``lin[B]``, ``e[B, k]``, ``sq[B]`` and its L2 penalty ``reg[B]``."""

    spec: FieldSpec
    lin: torch.Tensor
    e: torch.Tensor
    sq: torch.Tensor
    reg: torch.Tensor


class FMParams(torch.nn.Module):
    """``w0`` plus ``w_f[n_f]`` and ``V_f[n_f, k]`` for every field ``f``.

    Initialisation: ``w0 = init_bias``, ``w_f = 0``, ``V_f = init_std · randn(n_f, k, generator)``
    drawn field by field in field order from ``generator`` (``torch.Generator().manual_seed(seed)``
    gives the same stream as ``torch.manual_seed(seed)`` and the global RNG). ``generator=None`` draws
    from torch's global RNG: avoid it (it is process-wide state, not data).
    """

    def __init__(self, fields: list[FieldSpec], n_factors: int, init_std: float, init_bias: float,
                 l2_factors: dict[str, float], l2_linear: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.fields = fields
        self.n_factors = n_factors
        self.l2_factors = l2_factors
        self.l2_linear = l2_linear
        self.bias = torch.nn.Parameter(torch.tensor(float(init_bias)))
        self.w = torch.nn.ParameterDict()
        self.v = torch.nn.ParameterDict()
        for f in fields:
            self.w[f.name] = torch.nn.Parameter(torch.zeros(f.size))
            draw = torch.randn(f.size, n_factors, generator=generator)
            self.v[f.name] = torch.nn.Parameter(draw * init_std)

    def bag_terms(self, spec: FieldSpec, idx: np.ndarray, val: np.ndarray, offsets: np.ndarray) -> FieldTerms:
        """Terms of a field for bags of ``(idx, val)`` given as flattened arrays + bag ``offsets``."""
        w, v = self.w[spec.name], self.v[spec.name]
        ti = torch.from_numpy(idx)
        tv = torch.from_numpy(val.astype(np.float32, copy=False))
        to = torch.from_numpy(offsets)
        lin_e = F.embedding_bag(ti, torch.cat([w[:, None], v], dim=1), to, mode="sum", per_sample_weights=tv)
        sq_w = torch.stack([(v * v).sum(dim=1), w * w], dim=1)
        sq = F.embedding_bag(ti, sq_w, to, mode="sum", per_sample_weights=tv * tv)
        reg = self.l2_factors[spec.name] * sq[:, 0] + self.l2_linear * sq[:, 1]
        return FieldTerms(spec, lin_e[:, 0], lin_e[:, 1:], sq[:, 0], reg)

    def numeric_terms(self, spec: FieldSpec, x: np.ndarray) -> FieldTerms:
        """Terms of a one-feature numeric (context) field with per-sample value ``x``."""
        w, v = self.w[spec.name], self.v[spec.name]
        tx = torch.from_numpy(x.astype(np.float32, copy=False))
        vv = (v[0] * v[0]).sum()
        reg = tx * tx * (self.l2_factors[spec.name] * vv + self.l2_linear * w[0] * w[0])
        return FieldTerms(spec, w[0] * tx, tx[:, None] * v[0][None, :], tx * tx * vv, reg)

    def entity_terms(self, specs: list[FieldSpec], tables: dict[str, Csr], rows: np.ndarray
                     ) -> list[FieldTerms]:
        """Terms of entity-level fields for per-sample entity ids ``rows`` (computed once per entity)."""
        if not specs:
            return []
        uniq, inv = np.unique(rows, return_inverse=True)
        tinv = torch.from_numpy(inv.astype(np.int64))
        out = []
        for spec in specs:
            t = self.bag_terms(spec, *tables[spec.name].gather(uniq))
            out.append(FieldTerms(spec, t.lin[tinv], t.e[tinv], t.sq[tinv], t.reg[tinv]))
        return out


def combine(terms: list[FieldTerms], bias: torch.Tensor | None, n: int, k: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_S, e_S)`` of a group of fields (``bias`` added when the group holds ``w0``)."""
    z = torch.zeros(n) if bias is None else bias.expand(n).clone()
    e = torch.zeros(n, k)
    sq = torch.zeros(n)
    for t in terms:
        z = z + t.lin
        e = e + t.e
        sq = sq + t.sq
    return z + 0.5 * ((e * e).sum(dim=1) - sq), e


def fm_output(terms: list[FieldTerms], bias: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The full FM output ``z`` for ``n`` samples."""
    z, _ = combine(terms, bias, n, k)
    return z
