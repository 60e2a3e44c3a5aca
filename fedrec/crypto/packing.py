"""Packing layouts for the vertical FM (DESIGN §4.2) on any backend.

Rows layout. The guest packs per-user vectors ``R_u ∈ R^w`` (e.g. ``[Q_u, Δ_u]`` with
``Q_u = Σ_b δ_b e_G(b)``, ``Δ_u = Σ_b δ_b``, so ``w = k + 1``) SIMD into ciphertexts::

    block = next_pow2(w) (CKKS) or w (Paillier, plain)
    rows_per_ct = slots // block (CKKS) or n_rows (others)
    ciphertext t, slots [r·block, r·block + w)  <-  R_{t·rows_per_ct + r};  zero elsewhere

Host gradient ("ciphertext vector × plaintext matrix"). For host features ``X ∈ R^{n×d}``::

    G[f] = Σ_u X[u, f] · R_u  =  (Xᵀ R)[f]      f = 0..d-1

computed per feature as ``Σ_t block_dot(ct_t, X[rows of t, f], block)``: on CKKS one plaintext product
and ``log2(rows_per_ct)`` rotations per (ciphertext, feature), depth 1; the ``d`` results are
ciphertexts of ``block`` values (slots ``≥ w`` hold partial sums: mask them, see
:func:`fedrec.crypto.masks.mask_ciphertext`, which covers all slots). With ``X[:, f] = 1`` this is the
sum over users ``Σ_u R_u`` (:func:`sum_rows`). Error (CKKS): ``error_bound(1, max|X|, rows_per_ct)``
per ciphertext, times ``√n_ct`` for the sum over ciphertexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.crypto.backend import CryptoBackend, CryptoError, EncryptedVector, FloatArray


@dataclass(frozen=True)
class RowLayout:
    n_rows: int
    width: int
    block: int
    rows_per_ct: int

    @property
    def n_cts(self) -> int:
        return -(-self.n_rows // self.rows_per_ct)

    @property
    def ct_size(self) -> int:
        return self.rows_per_ct * self.block


def row_layout(backend: CryptoBackend, n_rows: int, width: int) -> RowLayout:
    """The layout :func:`pack_rows` uses for an ``n_rows × width`` matrix on ``backend``."""
    if n_rows <= 0 or width <= 0:
        raise CryptoError(f"row_layout: need n_rows > 0 and width > 0, got {n_rows} × {width}")
    if backend.name != "ckks":
        return RowLayout(n_rows, width, width, n_rows)
    block = 1 << (width - 1).bit_length()
    if block > backend.slots:
        raise CryptoError(f"row_layout: rows of width {width} do not fit {backend.slots} slots")
    return RowLayout(n_rows, width, block, backend.slots // block)


@dataclass
class PackedRows:
    layout: RowLayout
    cts: list[EncryptedVector]


def pack_rows(backend: CryptoBackend, rows: npt.ArrayLike) -> PackedRows:
    """Encrypt an ``n × w`` matrix in the rows layout."""
    m = np.asarray(rows, dtype=np.float64)
    if m.ndim != 2:
        raise CryptoError(f"pack_rows: expected a 2-D matrix, got shape {m.shape}")
    lay = row_layout(backend, *m.shape)
    padded = np.zeros((lay.n_cts * lay.rows_per_ct, lay.block))
    padded[:lay.n_rows, :lay.width] = m
    flat = padded.reshape(lay.n_cts, lay.ct_size)
    return PackedRows(lay, [backend.encrypt(flat[t]) for t in range(lay.n_cts)])


def serialize_rows(backend: CryptoBackend, packed: PackedRows) -> list[bytes]:
    return [backend.serialize(ct) for ct in packed.cts]


def deserialize_rows(backend: CryptoBackend, frames: list[bytes], n_rows: int, width: int) -> PackedRows:
    """Load the frames of :func:`serialize_rows`; the receiver states the shape it expects."""
    lay = row_layout(backend, n_rows, width)
    if len(frames) != lay.n_cts:
        raise CryptoError(f"deserialize_rows: {len(frames)} frames, expected {lay.n_cts} for {n_rows} rows")
    return PackedRows(lay, [backend.deserialize(f, lay.ct_size, 0) for f in frames])


def outer_sum(backend: CryptoBackend, weights: npt.ArrayLike, packed: PackedRows) -> list[EncryptedVector]:
    """``[Σ_u X[u, f] · R_u for f in range(d)]`` for a plaintext ``X`` (``n_rows × d``)."""
    x = np.asarray(weights, dtype=np.float64)
    lay = packed.layout
    if x.ndim != 2 or x.shape[0] != lay.n_rows or not np.all(np.isfinite(x)):
        raise CryptoError(f"outer_sum: weights must be a finite {lay.n_rows} × d matrix, got {x.shape}")
    padded = np.zeros((lay.n_cts * lay.rows_per_ct, x.shape[1]))
    padded[:lay.n_rows] = x
    out: list[EncryptedVector] = []
    for f in range(x.shape[1]):
        acc: EncryptedVector | None = None
        for t, ct in enumerate(packed.cts):
            w = padded[t * lay.rows_per_ct:(t + 1) * lay.rows_per_ct, f]
            part = backend.block_dot(ct, w, lay.block)
            acc = part if acc is None else backend.add(acc, part)
        assert acc is not None
        out.append(acc)
    return out


def sum_rows(backend: CryptoBackend, packed: PackedRows) -> EncryptedVector:
    """``Σ_u R_u`` (a ciphertext of ``block`` values, level 1)."""
    return outer_sum(backend, np.ones((packed.layout.n_rows, 1)), packed)[0]


def unpack_outer(values: list[FloatArray], width: int) -> FloatArray:
    """Decrypted/released outer-sum results → the ``d × width`` gradient matrix."""
    return np.stack([np.asarray(v)[:width] for v in values])
