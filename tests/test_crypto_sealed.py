"""Sealed boxes bound to a context, X25519 keys and the z85 form of CURVE keys (fedrec.crypto.sealed)."""

from __future__ import annotations

import pytest
import zmq
from zmq.utils import z85

from fedrec.crypto.backend import CryptoError
from fedrec.crypto.sealed import (
    SEAL_OVERHEAD,
    TAG_BYTES,
    X25519Keys,
    context_bytes,
    open_sealed,
    public_key,
    raw_key,
    seal,
    shared_secret,
    z85_key,
)

# RFC 7748 §6.1
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
CTX = context_bytes("job-1", "ckks-secret-key", 3)


@pytest.fixture(scope="module")
def keys() -> X25519Keys:
    return X25519Keys.generate()


def test_x25519_known_answer() -> None:
    assert public_key(ALICE_SK) == ALICE_PK
    assert public_key(BOB_SK) == BOB_PK
    assert shared_secret(ALICE_SK, BOB_PK) == shared_secret(BOB_SK, ALICE_PK) == SHARED


def test_shared_secret_refuses_small_order_public_key() -> None:
    with pytest.raises(CryptoError, match="small-order"):
        shared_secret(ALICE_SK, bytes(32))


def test_keys_refuse_a_public_key_of_another_secret() -> None:
    with pytest.raises(CryptoError, match="does not belong"):
        X25519Keys(BOB_PK, ALICE_SK)


def test_keys_repr_hides_the_secret(keys: X25519Keys) -> None:
    assert keys.secret.hex() not in repr(keys) and repr(keys.secret) not in repr(keys)


def test_seal_round_trip(keys: X25519Keys) -> None:
    message = b"the CKKS secret context" * 100
    sealed = seal(keys.public, message, context=CTX)
    assert len(sealed) == SEAL_OVERHEAD + TAG_BYTES + len(message)
    assert open_sealed(keys.secret, keys.public, sealed, context=CTX) == message


def test_seal_empty_plaintext(keys: X25519Keys) -> None:
    assert open_sealed(keys.secret, keys.public, seal(keys.public, b"", context=CTX), context=CTX) == b""


def test_seal_is_randomized(keys: X25519Keys) -> None:
    assert seal(keys.public, b"same", context=CTX) != seal(keys.public, b"same", context=CTX)


@pytest.mark.parametrize("position", [0, 31, 32, 47, 48, 79, 80, -1])
def test_tampered_byte_is_refused(keys: X25519Keys, position: int) -> None:
    sealed = bytearray(seal(keys.public, b"share bytes", context=CTX))
    sealed[position] ^= 0x01
    with pytest.raises(CryptoError, match="authentication failed"):
        open_sealed(keys.secret, keys.public, bytes(sealed), context=CTX)


@pytest.mark.parametrize("length", [0, 1, SEAL_OVERHEAD, SEAL_OVERHEAD + TAG_BYTES - 1])
def test_too_short_blob_is_refused(keys: X25519Keys, length: int) -> None:
    with pytest.raises(CryptoError, match="at least"):
        open_sealed(keys.secret, keys.public, bytes(length), context=CTX)


def test_truncated_blob_is_refused(keys: X25519Keys) -> None:
    sealed = seal(keys.public, b"0123456789", context=CTX)
    with pytest.raises(CryptoError, match="authentication failed"):
        open_sealed(keys.secret, keys.public, sealed[:-1], context=CTX)


def test_wrong_recipient_is_refused(keys: X25519Keys) -> None:
    other = X25519Keys.generate()
    sealed = seal(keys.public, b"for keys only", context=CTX)
    with pytest.raises(CryptoError, match="authentication failed"):
        open_sealed(other.secret, other.public, sealed, context=CTX)


def test_mismatched_recipient_pair_is_refused(keys: X25519Keys) -> None:
    sealed = seal(keys.public, b"x", context=CTX)
    with pytest.raises(CryptoError, match="does not belong"):
        open_sealed(X25519Keys.generate().secret, keys.public, sealed, context=CTX)


def test_wrong_context_is_refused(keys: X25519Keys) -> None:
    sealed = seal(keys.public, b"round 3 shares", context=context_bytes("job-1", "shares", 3))
    with pytest.raises(CryptoError, match="another context"):
        open_sealed(keys.secret, keys.public, sealed, context=context_bytes("job-1", "shares", 4))


def test_empty_context_is_refused(keys: X25519Keys) -> None:
    with pytest.raises(CryptoError, match="context must be non-empty"):
        seal(keys.public, b"x", context=b"")


def test_small_order_recipient_is_refused() -> None:
    with pytest.raises(CryptoError, match="refused the recipient"):
        seal(bytes(32), b"x", context=CTX)


@pytest.mark.parametrize("bad", ["text", None, 12])
def test_non_bytes_plaintext_is_refused(keys: X25519Keys, bad: object) -> None:
    with pytest.raises(CryptoError, match="plaintext: expected bytes"):
        seal(keys.public, bad, context=CTX)  # type: ignore[arg-type]


def test_short_public_key_is_refused() -> None:
    with pytest.raises(CryptoError, match="recipient_public: expected 32 bytes"):
        seal(b"\x01" * 31, b"x", context=CTX)


def test_context_bytes_is_unambiguous() -> None:
    assert context_bytes("ab", "c") != context_bytes("a", "bc")
    assert context_bytes(1) != context_bytes("1") != context_bytes(b"1")
    assert context_bytes("job", 3) == context_bytes("job", 3)


def test_context_bytes_refuses_bool() -> None:
    with pytest.raises(CryptoError, match="part 1"):
        context_bytes("job", True)


def test_raw_key_matches_zmq_for_a_curve_key_pair() -> None:
    public, secret = zmq.curve_keypair()
    assert raw_key(public.decode()) == z85.decode(public)
    assert raw_key(secret.decode()) == z85.decode(secret)
    assert z85_key(raw_key(public.decode())) == public.decode()


def test_curve_key_pair_opens_boxes_sealed_to_it() -> None:
    public, secret = zmq.curve_keypair()
    pk, sk = raw_key(public.decode()), raw_key(secret.decode())
    assert public_key(sk) == pk
    assert open_sealed(sk, pk, seal(pk, b"ckks key", context=CTX), context=CTX) == b"ckks key"


def test_z85_known_answer() -> None:
    assert z85_key(bytes(32)) == "0" * 40
    assert raw_key("0" * 40) == bytes(32)
    assert z85_key(ALICE_PK) == z85.encode(ALICE_PK).decode()


@pytest.mark.parametrize("bad, match", [("0" * 39, "40-character"), ("0" * 41, "40-character"),
                                        ("0" * 39 + "~", "not a z85 character"),
                                        ("#####" + "0" * 35, "more than 32 bits"),
                                        (b"0" * 40, "40-character")])
def test_raw_key_refuses_invalid_z85(bad: object, match: str) -> None:
    with pytest.raises(CryptoError, match=match):
        raw_key(bad)  # type: ignore[arg-type]
