"""The AVX-512 IFMA X25519 backend: RFC 7748 vectors, bit-identical to libsodium, hostile points, fallback,
and two ``fedrec psi`` processes on different backends finding the same intersection."""

from __future__ import annotations

import ctypes
import hashlib
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.psi import curve25519, x25519_ifma
from fedrec.psi.curve25519 import P25519, SMALL_ORDER_U, _x25519, elligator2
from fedrec.psi.group import POINT_BYTES, Engine, InvalidPointError, SecretScalar
from fedrec.psi.x25519_ifma import BackendUnavailableError, load, resolve_backend, unavailable_reason
from fedrec.transport import write_keypair

REPO = Path(__file__).resolve().parents[1]
LIB = load()
needs_ifma = pytest.mark.skipif(LIB is None, reason=f"IFMA backend unavailable: {unavailable_reason()}")

# RFC 7748 section 5.2 (the two vectors and the iterated function) and section 6.1 (Alice and Bob)
NINE = bytes([9]) + bytes(31)
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
ALICE_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PUB = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
ITERATED = {1: "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079",
            1000: "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"}


def _ifma(k: bytes, u: bytes) -> bytes:
    assert LIB is not None
    out = ctypes.create_string_buffer(32)
    assert LIB.batch(out, k, u, 1) == 1
    return out.raw


def _sodium(k: bytes, u: bytes) -> bytes | None:
    out = ctypes.create_string_buffer(32)
    return out.raw if _x25519().scalarmult(out, k, u) == 0 else None


@needs_ifma
def test_rfc7748_vectors() -> None:
    for k_hex, u_hex, want in x25519_ifma.RFC7748_VECTORS:
        assert _ifma(bytes.fromhex(k_hex), bytes.fromhex(u_hex)).hex() == want
    assert _ifma(ALICE, NINE).hex() == ALICE_PUB
    assert _ifma(BOB, NINE).hex() == BOB_PUB
    assert _ifma(ALICE, bytes.fromhex(BOB_PUB)).hex() == SHARED == _ifma(BOB, bytes.fromhex(ALICE_PUB)).hex()
    k = u = NINE
    for i in range(1, 1001):
        k, u = _ifma(k, u), k
        if i in ITERATED:
            assert k.hex() == ITERATED[i]


def _edge_points() -> list[bytes]:
    """Small-order u (canonical, + p, with bit 255 set), 0 and p - 1 neighbours, values >= p, all-ones."""
    values = [*SMALL_ORDER_U, *(u + P25519 for u in SMALL_ORDER_U if u + P25519 < 1 << 255),
              P25519 - 2, P25519 + 2, P25519 + 18, (1 << 255) - 1, 2, 9]
    enc = [v.to_bytes(32, "little") for v in values]
    return enc + [e[:31] + bytes([e[31] | 0x80]) for e in enc]


@needs_ifma
@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 1000])
def test_batch_is_bit_identical_to_libsodium_and_flags_small_order(n: int) -> None:
    assert LIB is not None
    rng = np.random.default_rng(n)
    points = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(n)]
    edges = _edge_points()
    points[::3] = (edges * n)[:len(points[::3])]  # every third point is an edge case
    k = os.urandom(32)
    out = ctypes.create_string_buffer(32 * n)
    first_zero = LIB.batch(out, k, b"".join(points), n)
    want_first = n
    for i, u in enumerate(points):
        got = out.raw[32 * i:32 * i + 32]
        ref = _sodium(k, u)
        if ref is None:  # libsodium refuses small-order points (all-zero output): so does the batch
            assert got == bytes(32), i
            want_first = min(want_first, i)
        else:
            assert got == ref, i
    assert first_zero == want_first


@needs_ifma
def test_elligator2_and_hash_batch_match_the_python_path() -> None:
    assert LIB is not None
    n = 515
    digests = bytearray(os.urandom(64 * n))
    for i, r in enumerate([0, 1, P25519 - 1, P25519, P25519 + 5, (1 << 255) - 1, (1 << 256) - 1]):
        digests[64 * i:64 * i + 32] = r.to_bytes(32, "little")  # r = 0, r >= p, top bit set
    ell = np.empty((n, 32), np.uint8)
    LIB.elligator2(ell.ctypes.data, bytes(digests), n)
    assert (ell == elligator2(bytes(digests), n)).all()
    ids = [b"user-%06d" % i for i in range(n)] + ["東京".encode(), b""]
    scalar = SecretScalar("x25519")
    ref = np.empty((len(ids), POINT_BYTES), np.uint8)
    got = np.empty_like(ref)
    curve25519.hash_and_blind_into(ref, ids, b"dom", scalar)
    curve25519.hash_and_blind_into_ifma(got, ids, b"dom", scalar)
    assert (got == ref).all()
    again = np.empty_like(ref)
    curve25519.blind_into(ref, got, scalar)
    curve25519.blind_into_ifma(again, got, scalar)
    assert (again == ref).all()


@needs_ifma
@pytest.mark.parametrize("bad", ["small order", "top bit", "u >= p", "zero"])
def test_hostile_points_are_refused_at_the_same_index_as_libsodium(bad: str) -> None:
    scalar = SecretScalar("x25519")
    points = np.empty((40, 32), np.uint8)
    curve25519.hash_and_blind_into(points, [b"%d" % i for i in range(40)], b"d", scalar)
    poison = {"small order": SMALL_ORDER_U[3].to_bytes(32, "little"),
              "top bit": bytes(points[5][:31]) + bytes([points[5][31] | 0x80]),
              "u >= p": (P25519 + 1).to_bytes(32, "little"), "zero": bytes(32)}[bad]
    points[23] = np.frombuffer(poison, np.uint8)
    for fn in (curve25519.blind_into, curve25519.blind_into_ifma):
        with pytest.raises(InvalidPointError) as err:
            fn(np.empty_like(points), points, scalar)
        assert err.value.index == 23
    # the same through an engine, split over threads: the index is within the whole chunk
    many = np.repeat(points, 100, axis=0)
    with Engine(2, "x25519", "ifma") as engine, pytest.raises(InvalidPointError) as err:
        engine.submit_blind(many, engine.new_scalar()).result()
    assert err.value.index == 2300


@needs_ifma
def test_engines_on_both_backends_commute_with_each_other() -> None:
    ids = [b"id-%d" % i for i in range(3000)]
    with Engine(2, "x25519", "ifma") as fast, Engine(2, "x25519", "sodium") as slow:
        assert (fast.backend, slow.backend) == ("ifma", "sodium")
        a, b = fast.new_scalar(), slow.new_scalar()
        domain = fast.domain(bytes(32))
        xa = fast.submit_hash_blind(ids, domain, a).result()
        xb = slow.submit_hash_blind(ids, domain, b).result()
        xab = slow.submit_blind(xa, b).result()
        xba = fast.submit_blind(xb, a).result()
        assert (xab == xba).all()
        assert (fast.submit_hash_blind(ids, domain, b).result() == xb).all()


def test_backend_choice_and_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("ristretto255") == "sodium"
    assert resolve_backend("x25519", "sodium") == "sodium"
    with pytest.raises(BackendUnavailableError, match="x25519 only, not ristretto255"):
        resolve_backend("ristretto255", "ifma")
    with pytest.raises(ValueError, match="backend must be one of"):
        Engine(1, "x25519", "avx2")
    monkeypatch.setenv(x25519_ifma.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match=r"\$FEDREC_PSI_BACKEND must be one of"):
        Engine(1, "x25519")
    monkeypatch.setenv(x25519_ifma.BACKEND_ENV, "sodium")
    with Engine(1, "x25519") as engine:
        assert engine.backend == "sodium"
    monkeypatch.delenv(x25519_ifma.BACKEND_ENV)
    # a machine where the library cannot be used: auto falls back, an explicit ifma says why
    monkeypatch.setattr(x25519_ifma, "_load", lambda: "this processor has no AVX-512 IFMA")
    assert resolve_backend("x25519") == "sodium"
    with pytest.raises(BackendUnavailableError, match="unavailable: this processor has no AVX-512 IFMA"):
        Engine(1, "x25519", "ifma")
    with Engine(1, "x25519") as engine:
        assert engine.backend == "sodium"
        out = engine.submit_hash_blind([b"a", b"b"], engine.domain(bytes(32)), engine.new_scalar()).result()
        assert out.shape == (2, 32)


def test_build_failure_and_unsafe_cache_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x25519_ifma._load.cache_clear()
    try:
        monkeypatch.setenv("CC", "no-such-compiler")
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cc, gcc or clang either
        reason = x25519_ifma._load()
        assert isinstance(reason, str) and "no C compiler found" in reason
        monkeypatch.undo()
        x25519_ifma._load.cache_clear()
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)  # writable by others: never load a library from it
        assert not x25519_ifma._private_dir(shared)
        private = tmp_path / "private"
        assert x25519_ifma._private_dir(private) and stat.S_IMODE(private.stat().st_mode) == 0o700
    finally:
        monkeypatch.undo()
        x25519_ifma._load.cache_clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fedrec(backend: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), x25519_ifma.BACKEND_ENV: backend}
    return subprocess.Popen([sys.executable, "-m", "training.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@needs_ifma
@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("guest_backend", "host_backend"), [("ifma", "sodium"), ("sodium", "ifma"),
                                                              ("ifma", "ifma")])
def test_two_processes_on_different_backends_find_the_same_intersection(
        tmp_path: Path, guest_backend: str, host_backend: str) -> None:
    keys = tmp_path / "keys"
    write_keypair(keys, "guest")
    write_keypair(keys, "host")
    rng = np.random.default_rng(7)
    universe = [f"c{i}" for i in rng.permutation(20000)]
    guest_ids, host_ids = universe[:6000], universe[4000:9000] + universe[:500]  # 2,500 common
    pd.DataFrame({"id": guest_ids}).to_csv(tmp_path / "g.csv", index=False)
    pd.DataFrame({"id": host_ids}).to_csv(tmp_path / "h.csv", index=False)
    addr = f"tcp://127.0.0.1:{_free_port()}"
    host = _fedrec(host_backend, "psi", "--role", "host", "--ids", str(tmp_path / "h.csv"), "--column", "id",
                   "--out", str(tmp_path / "h_out.csv"), "--listen", addr, "--no-progress", "--curve",
                   "x25519", "--key", str(keys / "host.key_secret"), "--peer-public-key",
                   str(keys / "guest.key"))
    guest = _fedrec(guest_backend, "psi", "--role", "guest", "--ids", str(tmp_path / "g.csv"), "--column",
                    "id", "--out", str(tmp_path / "g_out.csv"), "--peer-endpoint", addr, "--no-progress",
                    "--curve", "x25519", "--key", str(keys / "guest.key_secret"), "--peer-public-key",
                    str(keys / "host.key"))
    g_out, g_err = guest.communicate(timeout=80)
    h_out, h_err = host.communicate(timeout=80)
    assert guest.returncode == 0, g_err
    assert host.returncode == 0, h_err
    g = pd.read_csv(tmp_path / "g_out.csv", dtype={"id": str})
    h = pd.read_csv(tmp_path / "h_out.csv", dtype={"id": str})
    want = set(guest_ids) & set(host_ids)
    assert len(want) == 2500
    assert set(g["id"]) == want
    assert g["id"].tolist() == h["id"].tolist()  # same aligned order on both sides
    assert all(guest_ids[r] == i for r, i in zip(g["row_index"], g["id"], strict=True))
    assert all(host_ids[r] == i for r, i in zip(h["row_index"], h["id"], strict=True))


def test_digest_helper_is_sha512_of_domain_and_id() -> None:
    assert curve25519._digests([b"a", b"bc"], b"D") == (hashlib.sha512(b"Da").digest()
                                                        + hashlib.sha512(b"Dbc").digest())
