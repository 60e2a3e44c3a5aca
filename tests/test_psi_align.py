"""Intersection of double-blinded values and the aligned order."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.psi.align import DuplicateValueError, align


def _values(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32), dtype=np.uint8)


def test_align_finds_exactly_the_common_values_sorted() -> None:
    own, extra = _values(300, 1), _values(200, 2)
    peer = np.concatenate([own[::3], extra])[::-1].copy()
    idx = align(own, peer)
    assert set(idx.tolist()) == set(range(0, 300, 3))
    keys = [own[i].tobytes() for i in idx]
    assert keys == sorted(keys)


def test_both_sides_derive_the_same_order() -> None:
    common, a_only, b_only = _values(50, 3), _values(40, 4), _values(30, 5)
    a = np.concatenate([a_only, common])
    b = np.concatenate([common[::-1], b_only])
    assert np.array_equal(a[align(a, b)], b[align(b, a)])


def test_shared_8_byte_prefix_falls_back_to_exact_comparison() -> None:
    own = _values(20, 6)
    own[1, :8] = own[0, :8]  # same prefix, different value
    peer = own[[1, 5, 7]].copy()
    idx = align(own, peer)
    assert sorted(idx.tolist()) == [1, 5, 7]
    keys = [own[i].tobytes() for i in idx]
    assert keys == sorted(keys)


def test_duplicate_values_from_the_peer_are_rejected() -> None:
    own = _values(10, 7)
    peer = np.concatenate([own[:3], own[:1]])
    with pytest.raises(DuplicateValueError, match="peer"):
        align(own, peer)


def test_empty_sets_align_to_nothing() -> None:
    assert align(np.empty((0, 32), np.uint8), _values(5, 8)).size == 0
    assert align(_values(5, 8), np.empty((0, 32), np.uint8)).size == 0


def test_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="own must be a uint8 array"):
        align(np.zeros((3, 31), np.uint8), _values(3, 9))
