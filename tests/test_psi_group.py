"""ristretto255 batch primitives: hashing, blinding, validation, fresh secrets, the thread engine."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.psi.group import (
    POINT_BYTES,
    Engine,
    InvalidPointError,
    SecretScalar,
    blind_into,
    check_points,
    hash_and_blind_into,
    session_domain,
)

DOMAIN = session_domain(bytes(range(32)))
IDS = [f"user-{i}".encode() for i in range(50)]


def _hash_blind(ids: list[bytes], scalar: SecretScalar, domain: bytes = DOMAIN) -> np.ndarray:
    out = np.empty((len(ids), POINT_BYTES), dtype=np.uint8)
    hash_and_blind_into(out, ids, domain, scalar)
    return out


def _blind(points: np.ndarray, scalar: SecretScalar) -> np.ndarray:
    out = np.empty_like(points)
    blind_into(out, np.ascontiguousarray(points), scalar)
    return out


def test_blinding_commutes() -> None:
    a, b = SecretScalar(), SecretScalar()
    assert np.array_equal(_blind(_hash_blind(IDS, a), b), _blind(_hash_blind(IDS, b), a))


def test_distinct_ids_give_distinct_points() -> None:
    points = _hash_blind(IDS, SecretScalar())
    assert len({p.tobytes() for p in points}) == len(IDS)


def test_session_salt_separates_domains() -> None:
    a = SecretScalar()
    other = session_domain(bytes(32))
    assert not (_hash_blind(IDS, a) == _hash_blind(IDS, a, other)).all(axis=1).any()


def test_fresh_scalars_give_unrelated_values() -> None:
    assert not (_hash_blind(IDS, SecretScalar()) == _hash_blind(IDS, SecretScalar())).all(axis=1).any()


def test_salt_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        session_domain(b"short")


def test_identity_point_is_rejected_by_blinding() -> None:
    points = _hash_blind(IDS[:5], SecretScalar())
    points[3] = 0  # the identity's encoding
    with pytest.raises(InvalidPointError) as err:
        _blind(points, SecretScalar())
    assert err.value.index == 3


def test_non_canonical_point_is_rejected_by_blinding() -> None:
    points = _hash_blind(IDS[:5], SecretScalar())
    points[1] = 0xFF  # not a canonical field element
    with pytest.raises(InvalidPointError) as err:
        _blind(points, SecretScalar())
    assert err.value.index == 1


@pytest.mark.parametrize("bad", [bytes(32), b"\xff" * 32, b"\x01" + bytes(31)])
def test_check_points_rejects_identity_and_invalid(bad: bytes) -> None:
    points = _hash_blind(IDS[:4], SecretScalar())
    points[2] = np.frombuffer(bad, dtype=np.uint8)
    with pytest.raises(InvalidPointError, match="point 2 "):
        check_points(points)


def test_check_points_accepts_valid_points() -> None:
    check_points(_hash_blind(IDS, SecretScalar()))


def test_scalar_repr_hides_the_secret() -> None:
    assert repr(SecretScalar()) == "SecretScalar(<hidden>)"


def test_engine_splits_chunks_and_matches_serial_result() -> None:
    ids = [str(i).encode() for i in range(2500)]
    a = SecretScalar()
    with Engine(workers=3) as engine:
        job = engine.submit_hash_blind(ids, DOMAIN, a)
        assert len(job.futures) == 2  # 2500 ids // MIN_BATCH(1024)
        assert np.array_equal(job.result(), _hash_blind(ids, a))


def test_engine_reports_bad_point_index_within_whole_chunk() -> None:
    ids = [str(i).encode() for i in range(2100)]
    with Engine(workers=2) as engine:
        points = engine.submit_hash_blind(ids, DOMAIN, SecretScalar()).result().copy()
        points[2000] = 0
        with pytest.raises(InvalidPointError) as err:
            engine.submit_blind(points, SecretScalar()).result()
    assert err.value.index == 2000
