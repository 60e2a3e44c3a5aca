"""Intersection of double-blinded values and the aligned order both parties derive from it.

Each party ends with ``own`` (its ids blinded by both secrets, returned by the peer in its own order) and
``peer`` (the peer's ids blinded by both secrets, computed locally). The common ids are the rows of
``own`` whose value occurs in ``peer``; both parties sort them by the 32-byte value (lexicographic), which
is the same list on both sides, so position ``k`` of each party's output is the same id. The values are
pseudorandom, so the aligned order reveals nothing about either party's row order.

Fast path: match and sort on the first 8 bytes (big-endian ``uint64``) and confirm full 32-byte equality;
if two values in one set share those 8 bytes (probability ~``n^2 / 2^65``), fall back to sorting the full
values. Duplicate values in either set cannot come from an honest peer and raise :class:`DuplicateValueError`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedrec.psi.group import POINT_BYTES


class DuplicateValueError(ValueError):
    """A set of double-blinded values holds the same value twice (``which`` says which set)."""

    def __init__(self, which: str, index: int) -> None:
        super().__init__(f"{which} double-blinded values: value {index} occurs more than once")
        self.which = which
        self.index = index


def _prefix(points: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(points[:, :8]).view(">u8").ravel().astype(np.uint64)


def _has_repeats(sorted_keys: np.ndarray) -> bool:
    return bool(len(sorted_keys) > 1 and (sorted_keys[1:] == sorted_keys[:-1]).any())


def _as_bytes32(points: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(points).view(f"S{POINT_BYTES}").ravel()


def _check_unique_exact(values: np.ndarray, which: str) -> None:
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    if (counts > 1).any():
        raise DuplicateValueError(which, int(first[np.argmax(counts > 1)]))


def _align_exact(own: np.ndarray, peer: np.ndarray) -> np.ndarray:
    a, b = _as_bytes32(own), _as_bytes32(peer)
    _check_unique_exact(a, "own")
    _check_unique_exact(b, "peer")
    common = np.flatnonzero(np.isin(a, b))
    return common[np.argsort(a[common], kind="stable")]


def align(own: np.ndarray, peer: np.ndarray) -> np.ndarray:
    """Indices into ``own`` of the values that also occur in ``peer``, sorted by value (the aligned order).

    ``own`` and ``peer`` are ``(n, 32)`` and ``(m, 32)`` uint8 arrays.
    """
    for name, arr in (("own", own), ("peer", peer)):
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != POINT_BYTES:
            raise ValueError(f"align: {name} must be a uint8 array of shape (n, {POINT_BYTES}), "
                             f"got {arr.dtype} {arr.shape}")
    if len(own) == 0 or len(peer) == 0:
        return np.empty(0, dtype=np.int64)
    ka, kb = _prefix(own), _prefix(peer)
    order_b = np.argsort(kb, kind="stable")
    sorted_b = kb[order_b]
    if _has_repeats(sorted_b) or _has_repeats(np.sort(ka)):
        return _align_exact(own, peer)
    pos = np.minimum(np.searchsorted(sorted_b, ka), len(sorted_b) - 1)
    cand = np.flatnonzero(sorted_b[pos] == ka)
    full = (own[cand] == peer[order_b[pos[cand]]]).all(axis=1)
    common = cand[full]
    # prefixes are unique within ``own``, so ordering by prefix is ordering by the full value
    return common[np.argsort(ka[common], kind="stable")].astype(np.int64)


def digest(values: np.ndarray) -> bytes:
    """SHA-256 over the concatenated 32-byte values in the given order (both parties compare it)."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).digest()
