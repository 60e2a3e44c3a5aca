"""Item-inference attack on horizontal federated MF: which items a client rated, from what the server sees
of its uploads (DESIGN §4.3, issue 10's leakage test).

Model and loss as in :mod:`fedrec.models.mf`: ``r̂_uj = μ + b_u + b_j + ⟨p_u, q_j⟩``, per-sample L2. The
gradient a client ``u`` computes for the item parameters, for the whole catalogue, is::

    ∂L/∂q_j = Σ_{(u,j) rated} 2 (r̂_uj − r_uj) p_u + 2 λ q_j
    ∂L/∂b_j = Σ_{(u,j) rated} 2 (r̂_uj − r_uj) + 2 λ_b b_j

for a rated item and exactly 0 for an unrated one. So in plaintext federated MF the server reads the rated
set off the non-zero rows whether the client uploads only its rated rows (FedAvg-style sparse uploads, the
rows it did not send count as 0) or the full catalogue: uploading zeros hides nothing without encryption
or masks. A variant with L2 on every item every round (``+ 2 λ q_j`` for unrated items too) is handled by
giving the server's plaintext item parameters (``item_params``): the per-column regularization factor
``c`` is the median over items of ``G_jc / θ_jc`` (the unrated majority has exactly ``G = c θ``) and the
score uses ``G − c θ``.

Scores (higher = more likely rated), one per item:

* :func:`item_scores_plain`: the mean over rounds of the L2 norm of the item's row of the upload.
* :func:`item_centered`: scores minus each item's mean over clients (the layout's common byte pattern).
* :func:`item_scores_ciphertext`: what a server holding only the serialized ciphertexts can compute per
  item: the bytes at the item's proportional position in each upload (CKKS packs values into slots, the
  slots are NTT-transformed, RNS-decomposed and zstd-compressed, so no byte belongs to an item; the naive
  proportional window is as good as any), reduced to their mean value, their fraction of zero bytes, or
  their mean absolute change between consecutive rounds. The upload's size is one number per upload, the
  same for every item, so it cannot rank items (it could only tell clients apart, which is the recording
  transport test's business). All of them should be at chance.

:func:`attack_auc` is the ROC AUC of scores against the true rated set (:func:`fedrec.eval.metrics.auc`)
with a percentile bootstrap CI (:func:`fedrec.eval.metrics.bootstrap_ci`) over items, or over clients for a
``(clients, items)`` matrix (items of one client are not independent). Each resample is a vector of
multiplicities, so its AUC is a weighted AUC over the pre-ranked scores: O(n) per resample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from fedrec.eval.metrics import auc, bootstrap_ci, weighted_auc

logger = logging.getLogger(__name__)

LAYOUTS = ("item_major", "blocks")
CIPHERTEXT_FEATURES = ("byte_mean", "zero_bytes", "round_change")


def _rows(upload: npt.ArrayLike, n_items: int, k: int, layout: str, what: str) -> np.ndarray:
    """An upload as ``(n_items, w)``: ``item_major`` = row j is item j's ``k`` factors (then its bias);
    ``blocks`` = ``n_items·k`` factor values (item-major) then ``n_items`` biases."""
    a = np.asarray(upload, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: contains NaN or inf")
    if a.ndim == 2 and a.shape[0] == n_items and a.shape[1] in (k, k + 1):
        return a
    if a.ndim != 1 or a.size not in (n_items * k, n_items * (k + 1)):
        raise ValueError(f"{what}: expected {n_items * k} or {n_items * (k + 1)} values (n_items={n_items}, "
                         f"k={k}, optionally + biases) or shape ({n_items}, {k}|{k + 1}), got {a.shape}")
    if layout == "blocks" and a.size == n_items * (k + 1):
        return np.column_stack([a[:n_items * k].reshape(n_items, k), a[n_items * k:]])
    return a.reshape(n_items, -1)


def _check_dims(n_items: int, k: int) -> None:
    if isinstance(n_items, bool) or not isinstance(n_items, int | np.integer) or n_items < 2:
        raise ValueError(f"n_items must be an int >= 2, got {n_items!r}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")


def item_scores_plain(uploads: Sequence[npt.ArrayLike], n_items: int, k: int, *,
                      item_params: Sequence[npt.ArrayLike] | None = None,
                      layout: str = "item_major") -> np.ndarray:
    """Per-item score from one client's plaintext uploads (one per round): ``mean_r ‖G_r[j] − c_r θ_r[j]‖``
    (``c_r = 0`` without ``item_params``, the server's plaintext item parameters of round ``r`` in the
    same layout; see the module docstring). Rows a sparse upload did not send must be zeros."""
    _check_dims(n_items, k)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if len(uploads) == 0:
        raise ValueError("uploads: need at least one round")
    if item_params is not None and len(item_params) != len(uploads):
        raise ValueError(f"item_params: {len(item_params)} rounds for {len(uploads)} uploads")
    total = np.zeros(n_items)
    for r, upload in enumerate(uploads):
        g = _rows(upload, n_items, k, layout, f"uploads[{r}]")
        if item_params is not None:
            theta = _rows(item_params[r], n_items, k, layout, f"item_params[{r}]")
            if theta.shape != g.shape:
                raise ValueError(f"item_params[{r}] has shape {theta.shape}, uploads[{r}] {g.shape}")
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(theta != 0, g / theta, np.nan)
            c = np.nan_to_num(np.nanmedian(ratio, axis=0)) if np.isfinite(ratio).any() else 0.0
            g = g - c * theta
        total += np.linalg.norm(g, axis=1)
    return total / len(uploads)


def _windows(data: np.ndarray, n_items: int) -> list[np.ndarray]:
    edges = np.linspace(0, data.size, n_items + 1).astype(np.int64)
    return [data[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def item_scores_ciphertext(upload_bytes: Sequence[bytes], n_items: int, *,
                           feature: str = "byte_mean") -> np.ndarray:
    """Per-item score from one client's serialized ciphertext uploads (one per round), from the bytes at
    the item's proportional position: ``byte_mean``, ``zero_bytes`` (fraction) or ``round_change`` (mean
    ``|Δ byte|`` between consecutive rounds, over the shorter upload's windows; needs two rounds)."""
    _check_dims(n_items, 1)
    if feature not in CIPHERTEXT_FEATURES:
        raise ValueError(f"feature must be one of {CIPHERTEXT_FEATURES}, got {feature!r}")
    blobs: list[np.ndarray] = []
    for r, blob in enumerate(upload_bytes):
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise ValueError(f"upload_bytes[{r}]: expected bytes, got {type(blob).__name__}")
        if len(blob) < n_items:
            raise ValueError(f"upload_bytes[{r}]: {len(blob)} bytes, fewer than n_items={n_items}")
        blobs.append(np.frombuffer(bytes(blob), dtype=np.uint8))
    need = 2 if feature == "round_change" else 1
    if len(blobs) < need:
        raise ValueError(f"feature {feature!r} needs at least {need} upload(s), got {len(blobs)}")
    reduce: Callable[[np.ndarray], float] = (lambda w: float(w.mean())) if feature == "byte_mean" \
        else (lambda w: float(np.mean(w == 0)))
    if feature != "round_change":
        per_round = [[reduce(w) for w in _windows(data, n_items)] for data in blobs]
        return np.asarray(per_round).mean(axis=0)
    out = np.zeros(n_items)
    for before, after in zip(blobs[:-1], blobs[1:], strict=True):
        n = min(before.size, after.size)
        diff = np.abs(before[:n].astype(np.int16) - after[:n].astype(np.int16))
        out += [float(w.mean()) for w in _windows(diff, n_items)]
    return out / (len(blobs) - 1)


def item_centered(scores: npt.ArrayLike) -> np.ndarray:
    """``(clients, items)`` scores minus each item's mean over clients.

    A serialized ciphertext has a fixed byte layout (headers, the unused top bits of each RNS word), so the
    bytes at an item's position can differ between items in the same way for every client, whatever was
    encrypted. Against a popularity-skewed rated mask that common pattern scores above chance even for
    encryptions of zeros (about 0.545 AUC for SEAL's seeded form on the tests' world): it says where an item
    sits in the upload, not what any client rated. A server can subtract it too, so the attack that tests
    a client's data is the one on the centered scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2:
        raise ValueError(f"scores must be (clients >= 2, items), got shape {s.shape}")
    return s - s.mean(axis=0, keepdims=True)


def _weighted_auc(labels: np.ndarray, scores: np.ndarray, rows: np.ndarray,
                  n_rows: int) -> Callable[[np.ndarray], float]:
    """``drawn row indices -> AUC`` with each entry weighted by its row's multiplicity
    (:func:`fedrec.eval.metrics.weighted_auc`: ties count 1/2; 0.5 when the resample has one class)."""
    stat = weighted_auc(labels, scores)
    return lambda drawn: stat(np.bincount(drawn.astype(np.int64), minlength=n_rows).astype(np.float64)[rows])


def attack_auc(scores: npt.ArrayLike, rated_mask: npt.ArrayLike, rng: np.random.Generator, *,
               n_boot: int = 1000, alpha: float = 0.05) -> tuple[float, float, float]:
    """``(auc, lo, hi)`` of ``scores`` against ``rated_mask`` (same shape; 1-D over items, or
    ``(clients, items)`` pooled with clients resampled), percentile bootstrap at level ``alpha``."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(rated_mask)
    if s.shape != t.shape or s.ndim not in (1, 2) or s.size == 0:
        raise ValueError(f"scores {s.shape} and rated_mask {t.shape} must have the same 1-D or 2-D shape")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("rated_mask must be boolean or 0/1")
    labels = t.astype(np.float64).ravel()
    if labels.min() == labels.max():
        raise ValueError("rated_mask has a single class: the AUC is undefined")
    n_rows = s.shape[0]
    rows = np.repeat(np.arange(n_rows), s.size // n_rows)
    point = auc(labels, s.ravel())
    ci = bootstrap_ci(np.arange(n_rows), _weighted_auc(labels, s.ravel(), rows, n_rows), n_boot=n_boot,
                      alpha=alpha, seed=int(rng.integers(2 ** 63)))
    logger.debug("attack AUC %.4f [%.4f, %.4f] over %d entries", point, ci.low, ci.high, labels.size)
    return point, ci.low, ci.high
