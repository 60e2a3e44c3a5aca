"""Batch primitives of both curves: hashing, blinding, validation, fresh secrets, the thread engine."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.psi import curve25519
from fedrec.psi import group as ristretto
from fedrec.psi.group import CURVES, POINT_BYTES, Engine, InvalidPointError, SecretScalar, session_domain

IDS = [f"user-{i}".encode() for i in range(50)]
PRIMS = {"ristretto255": ristretto, "x25519": curve25519}


@pytest.fixture(params=CURVES)
def curve(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _domain(curve: str, salt: bytes = bytes(range(32))) -> bytes:
    return session_domain(salt, curve)


def _hash_blind(ids: list[bytes], scalar: SecretScalar, domain: bytes | None = None) -> np.ndarray:
    out = np.empty((len(ids), POINT_BYTES), dtype=np.uint8)
    PRIMS[scalar.curve].hash_and_blind_into(out, ids, domain or _domain(scalar.curve), scalar)
    return out


def _blind(points: np.ndarray, scalar: SecretScalar) -> np.ndarray:
    out = np.empty_like(points)
    PRIMS[scalar.curve].blind_into(out, np.ascontiguousarray(points), scalar)
    return out


def test_blinding_commutes(curve: str) -> None:
    a, b = SecretScalar(curve), SecretScalar(curve)
    assert np.array_equal(_blind(_hash_blind(IDS, a), b), _blind(_hash_blind(IDS, b), a))


def test_distinct_ids_give_distinct_points(curve: str) -> None:
    points = _hash_blind(IDS, SecretScalar(curve))
    assert len({p.tobytes() for p in points}) == len(IDS)


def test_session_salt_separates_domains(curve: str) -> None:
    a = SecretScalar(curve)
    other = _domain(curve, bytes(32))
    assert not (_hash_blind(IDS, a) == _hash_blind(IDS, a, other)).all(axis=1).any()


def test_curves_use_different_domains() -> None:
    assert session_domain(bytes(32), "ristretto255") != session_domain(bytes(32), "x25519")


def test_fresh_scalars_give_unrelated_values(curve: str) -> None:
    s1, s2 = SecretScalar(curve), SecretScalar(curve)
    assert not (_hash_blind(IDS, s1) == _hash_blind(IDS, s2)).all(axis=1).any()


def test_salt_must_be_32_bytes(curve: str) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        session_domain(b"short", curve)


def test_unknown_curve_is_refused() -> None:
    with pytest.raises(ValueError, match=r"curve must be one of \('ristretto255', 'x25519'\), got 'p256'"):
        Engine(1, curve="p256")


def test_identity_point_is_rejected_by_blinding(curve: str) -> None:
    points = _hash_blind(IDS[:5], SecretScalar(curve))
    points[3] = 0  # the identity's encoding (ristretto255), u = 0 (x25519: order 2)
    with pytest.raises(InvalidPointError) as err:
        _blind(points, SecretScalar(curve))
    assert err.value.index == 3


def test_non_canonical_point_is_rejected_by_blinding(curve: str) -> None:
    points = _hash_blind(IDS[:5], SecretScalar(curve))
    points[1] = 0xFF  # not a canonical field element
    with pytest.raises(InvalidPointError) as err:
        _blind(points, SecretScalar(curve))
    assert err.value.index == 1


@pytest.mark.parametrize("bad", [bytes(32), b"\xff" * 32, b"\x01" + bytes(31)])
def test_check_points_rejects_identity_and_invalid(curve: str, bad: bytes) -> None:
    points = _hash_blind(IDS[:4], SecretScalar(curve))
    points[2] = np.frombuffer(bad, dtype=np.uint8)
    with pytest.raises(InvalidPointError, match="point 2 "):
        PRIMS[curve].check_points(points)


def test_check_points_accepts_valid_points(curve: str) -> None:
    PRIMS[curve].check_points(_hash_blind(IDS, SecretScalar(curve)))


def test_scalar_repr_hides_the_secret(curve: str) -> None:
    assert repr(SecretScalar(curve)) == "SecretScalar(<hidden>)"


def test_engine_splits_chunks_and_matches_serial_result(curve: str) -> None:
    ids = [str(i).encode() for i in range(2500)]
    a = SecretScalar(curve)
    with Engine(workers=3, curve=curve) as engine:
        job = engine.submit_hash_blind(ids, _domain(curve), a)
        assert len(job.futures) == 2  # 2500 ids // MIN_BATCH(1024)
        assert np.array_equal(job.result(), _hash_blind(ids, a))


def test_engine_reports_bad_point_index_within_whole_chunk(curve: str) -> None:
    ids = [str(i).encode() for i in range(2100)]
    with Engine(workers=2, curve=curve) as engine:
        points = engine.submit_hash_blind(ids, engine.domain(bytes(32)), engine.new_scalar()).result().copy()
        points[2000] = 0
        with pytest.raises(InvalidPointError) as err:
            engine.submit_blind(points, engine.new_scalar()).result()
    assert err.value.index == 2000


def test_engine_refuses_a_scalar_of_the_other_curve() -> None:
    with Engine(1, curve="x25519") as engine, pytest.raises(ValueError, match="a ristretto255 scalar cannot"):
        engine.submit_blind(np.ones((1, POINT_BYTES), np.uint8), SecretScalar("ristretto255"))
