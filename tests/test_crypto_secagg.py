"""Secure aggregation primitives (fedrec.crypto.secagg): pair seeds, the ChaCha20 PRG, pairwise and self
masks, Shamir shares, the reveal rule and dropout recovery, in float64 and inside real CKKS uploads."""

from __future__ import annotations

import hashlib
import itertools
import struct

import gmpy2
import numpy as np
import pytest

from fedrec.crypto.backend import CryptoError
from fedrec.crypto.ckks import CKKSBackend
from fedrec.crypto.sealed import X25519Keys, context_bytes, open_sealed, public_key, seal, shared_secret
from fedrec.crypto.secagg import (
    DEFAULT_SCALE,
    PRIME,
    MaskKeys,
    Share,
    ShareKeeper,
    agree,
    check_mask_scale,
    choose_scale,
    expand,
    mask_error_bound,
    new_seed,
    pack_shares,
    pairwise_mask,
    recover_mask_secret,
    self_mask,
    shamir_combine,
    shamir_split,
    unmask_correction,
    unpack_shares,
    upload_mask,
)

CTX = context_bytes("job-7", "fedmf-masks")
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
# ChaCha20 keystream, all-zero 256-bit key and 64-bit nonce (draft-agl-tls-chacha20poly1305 §7, test 1)
CHACHA_ZERO = bytes.fromhex("76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7")


def cohort(n: int) -> dict[int, MaskKeys]:
    return {i: MaskKeys.generate() for i in range(n)}


def peers_of(i: int, keys: dict[int, MaskKeys]) -> dict[int, bytes]:
    return {j: k.public for j, k in keys.items() if j != i}


# ---------------------------------------------------------------------------------------------- agree, PRG
def test_agree_is_symmetric() -> None:
    a, b = MaskKeys.generate(), MaskKeys.generate()
    assert agree(a.secret, b.public, context=CTX) == agree(b.secret, a.public, context=CTX)


def test_agree_known_answer() -> None:
    pa, pb = public_key(ALICE_SK), public_key(BOB_SK)
    lo, hi = sorted((pa, pb))
    h = hashlib.blake2b(digest_size=32, person=b"fedrec/sa/agree")
    h.update(struct.pack("<I", len(CTX)) + CTX + shared_secret(ALICE_SK, pb) + lo + hi)
    assert agree(ALICE_SK, pb, context=CTX) == h.digest()


def test_agree_depends_on_context() -> None:
    a, b = MaskKeys.generate(), MaskKeys.generate()
    assert agree(a.secret, b.public, context=b"job-1") != agree(a.secret, b.public, context=b"job-2")


def test_agree_refuses_small_order_public_key() -> None:
    with pytest.raises(CryptoError, match="small-order"):
        agree(ALICE_SK, bytes(32), context=CTX)


def test_expand_known_answer() -> None:
    words = np.frombuffer(CHACHA_ZERO, dtype="<u8")
    expected = (words >> np.uint64(23)).astype(np.int64) - (1 << 40)
    np.testing.assert_array_equal(expand(bytes(32), 4, scale=2.0 ** 40), expected.astype(np.float64))


def test_expand_is_deterministic_and_seed_dependent() -> None:
    seed = new_seed()
    np.testing.assert_array_equal(expand(seed, 1000), expand(seed, 1000))
    assert not np.array_equal(expand(seed, 1000), expand(new_seed(), 1000))


def test_expand_is_uniform_on_the_grid() -> None:
    scale = 2.0 ** 10
    x = expand(hashlib.sha256(b"a fixed seed").digest(), 200_000, scale=scale)
    assert x.min() >= -scale and x.max() < scale
    units = x / (scale * 2.0 ** -40)
    np.testing.assert_array_equal(units, np.round(units))
    # U[-s, s): mean 0 (sd s/sqrt(3n)), variance s^2/3
    assert abs(x.mean()) < 5 * scale / np.sqrt(3 * x.size)
    assert x.var() == pytest.approx(scale ** 2 / 3, rel=0.01)


@pytest.mark.parametrize("scale", [3.0, 0.0, -4.0, float("inf"), float("nan"), 2.0 ** 61, "big"])
def test_expand_refuses_a_scale_that_is_not_a_power_of_two(scale: object) -> None:
    with pytest.raises(CryptoError, match="scale must be a power of two"):
        expand(new_seed(), 10, scale=scale)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed, length, match", [(b"short", 10, "seed: expected 32 bytes"),
                                                 (bytes(32), 0, "length must be"),
                                                 (bytes(32), 2.5, "length must be")])
def test_expand_validates_its_arguments(seed: bytes, length: object, match: str) -> None:
    with pytest.raises(CryptoError, match=match):
        expand(seed, length)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- masks
def test_pairwise_masks_cancel_exactly_over_a_full_cohort() -> None:
    keys = cohort(6)
    masks = [pairwise_mask(i, keys[i].secret, peers_of(i, keys), length=5000, round_id=3, context=CTX)
             for i in keys]
    assert np.abs(masks[0]).max() > DEFAULT_SCALE / 2  # they are not trivially zero
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4]):
        total = np.zeros(5000)
        for i in order:
            total += masks[i]
        np.testing.assert_array_equal(total, 0.0)


def test_masks_differ_across_rounds() -> None:
    keys, seed = cohort(3), new_seed()
    r1 = upload_mask(0, keys[0], seed, peers_of(0, keys), length=100, round_id=1, context=CTX)
    r2 = upload_mask(0, keys[0], seed, peers_of(0, keys), length=100, round_id=2, context=CTX)
    assert not np.any(r1 == r2)
    np.testing.assert_array_equal(r1, upload_mask(0, keys[0], seed, peers_of(0, keys), length=100,
                                                  round_id=1, context=CTX))


def test_masks_differ_across_contexts() -> None:
    keys = cohort(2)
    a = pairwise_mask(0, keys[0].secret, peers_of(0, keys), length=100, round_id=1, context=b"job-a")
    b = pairwise_mask(0, keys[0].secret, peers_of(0, keys), length=100, round_id=1, context=b"job-b")
    assert not np.any(a == b)


def test_upload_mask_is_self_plus_pairwise() -> None:
    keys, seed = cohort(4), new_seed()
    full = upload_mask(2, keys[2], seed, peers_of(2, keys), length=300, round_id=9, context=CTX)
    parts = (self_mask(seed, length=300, round_id=9, context=CTX)
             + pairwise_mask(2, keys[2].secret, peers_of(2, keys), length=300, round_id=9, context=CTX))
    np.testing.assert_array_equal(full, parts)


def test_pairwise_mask_refuses_itself_as_a_peer() -> None:
    keys = cohort(3)
    with pytest.raises(CryptoError, match="must not contain my_id 0"):
        pairwise_mask(0, keys[0].secret, {0: keys[1].public}, length=10, round_id=1, context=CTX)
    with pytest.raises(CryptoError, match="my own mask public key"):
        pairwise_mask(0, keys[0].secret, {1: keys[0].public}, length=10, round_id=1, context=CTX)


def test_pairwise_mask_refuses_a_bad_peer_key() -> None:
    keys = cohort(2)
    with pytest.raises(CryptoError, match=r"peers\[1\]: expected 32 bytes"):
        pairwise_mask(0, keys[0].secret, {1: b"x" * 31}, length=10, round_id=1, context=CTX)


# ---------------------------------------------------------------------------------------------- Shamir
def test_shamir_field_is_prime() -> None:
    assert PRIME > 2 ** 256 and gmpy2.is_prime(PRIME, 50)


def test_shamir_any_threshold_subset_recovers_the_secret() -> None:
    secret = new_seed()
    shares = shamir_split(secret, 5, 3)
    for subset in itertools.combinations(shares, 3):
        assert shamir_combine(subset) == secret
    assert shamir_combine(shares) == secret


def test_shamir_threshold_one_shares_are_the_secret() -> None:
    secret = new_seed()
    value = int.from_bytes(secret, "big")
    assert all(int.from_bytes(s.y, "big") == value for s in shamir_split(secret, 4, 1))


def test_shamir_below_threshold_is_a_clear_error() -> None:
    shares = shamir_split(new_seed(), 6, 4)
    with pytest.raises(CryptoError, match="3 distinct shares, the threshold is 4"):
        shamir_combine(shares[:3])
    with pytest.raises(CryptoError, match="3 distinct shares"):
        shamir_combine(shares[:3] + [shares[0]])


def test_shamir_shares_at_client_ids() -> None:
    secret = new_seed()
    shares = shamir_split(secret, 3, 2, xs=[17, 4, 1000])
    assert [s.x for s in shares] == [17, 4, 1000]
    assert shamir_combine(shares[1:]) == secret


@pytest.mark.parametrize("kwargs, match", [({"n": 3, "threshold": 4}, "threshold must be"),
                                           ({"n": 3, "threshold": 0}, "threshold must be"),
                                           ({"n": 2, "threshold": 1, "xs": [1, 1]}, "distinct"),
                                           ({"n": 2, "threshold": 1, "xs": [0, 1]}, "xs"),
                                           ({"n": 0, "threshold": 1}, "n must be")])
def test_shamir_split_validates(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(CryptoError, match=match):
        shamir_split(new_seed(), **kwargs)  # type: ignore[arg-type]


def test_shamir_refuses_conflicting_shares() -> None:
    a, b = shamir_split(new_seed(), 3, 2), shamir_split(new_seed(), 3, 3)
    with pytest.raises(CryptoError, match="disagree on the threshold"):
        shamir_combine([a[0], b[1]])
    with pytest.raises(CryptoError, match="two different shares at x=1"):
        shamir_combine([a[0], shamir_split(new_seed(), 3, 2)[0], a[1]])


def test_share_wire_round_trip() -> None:
    share = shamir_split(new_seed(), 300, 200)[-1]
    data = share.to_bytes()
    assert len(data) == 40 and Share.from_bytes(data) == share
    assert "y=<hidden>" in repr(share)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d[:-1], "expected 40 bytes"),
    (lambda d: d + b"\0", "expected 40 bytes"),
    (lambda d: b"\x02" + d[1:], "version 2"),
    (lambda d: d[:1] + b"\0\0" + d[3:], "threshold must be"),
    (lambda d: d[:3] + b"\0\0\0\0" + d[7:], "x must be"),
    (lambda d: d[:7] + b"\xff" * 33, "not a field element"),
])
def test_share_from_hostile_bytes_raises_crypto_error(mutate: object, match: str) -> None:
    data = shamir_split(new_seed(), 3, 2)[0].to_bytes()
    with pytest.raises(CryptoError, match=match):
        Share.from_bytes(mutate(data))  # type: ignore[operator]


def test_share_parsing_fuzz_only_ever_raises_crypto_error() -> None:
    rng = np.random.default_rng(0)
    parsed = 0
    for _ in range(3000):
        data = bytearray(rng.integers(0, 256, size=int(rng.choice([0, 1, 39, 40, 41, 80]))).astype(np.uint8))
        if len(data) == 40:
            data[0] = 1  # a valid version, so the range checks are reached
        try:
            share = Share.from_bytes(bytes(data))
        except CryptoError:
            continue
        assert share.to_bytes() == bytes(data)
        parsed += 1
    assert parsed > 0
    for n in (0, 79, 81):
        with pytest.raises(CryptoError, match="expected 80 bytes"):
            unpack_shares(bytes(n))


def test_share_pair_round_trip_through_a_sealed_box() -> None:
    box = X25519Keys.generate()
    b, s = shamir_split(new_seed(), 4, 3)[2], shamir_split(MaskKeys.generate().secret, 4, 3)[2]
    ctx = context_bytes("job-7", "shares", 5, 0, 2)
    blob = seal(box.public, pack_shares(b, s), context=ctx)
    assert unpack_shares(open_sealed(box.secret, box.public, blob, context=ctx)) == (b, s)


def test_recover_mask_secret_checks_the_public_key() -> None:
    keys = MaskKeys.generate()
    shares = shamir_split(keys.secret, 5, 3)
    assert recover_mask_secret(shares[2:], keys.public) == keys.secret
    forged = Share(shares[2].x, shamir_split(new_seed(), 5, 3)[2].y, 3)
    with pytest.raises(CryptoError, match="wrong shares|32-byte secret"):
        recover_mask_secret([shares[0], shares[1], forged], keys.public)


# ---------------------------------------------------------------------------------------------- reveal rule
def keeper(owners: range, threshold: int) -> ShareKeeper:
    k = ShareKeeper(round_id=4)
    for o in owners:
        k.add(o, shamir_split(new_seed(), 6, threshold)[0], shamir_split(new_seed(), 6, threshold)[0])
    return k


def test_keeper_reveals_b_for_survivors_and_s_for_dropped() -> None:
    k = keeper(range(6), 3)
    out = k.reveal(survivors=[0, 1, 2, 3], dropped=[4, 5])
    assert set(out.b_shares) == {0, 1, 2, 3} and set(out.s_shares) == {4, 5}


def test_keeper_never_reveals_both_shares_of_a_client() -> None:
    k = keeper(range(6), 3)
    k.reveal(survivors=[0, 1, 2, 3], dropped=[4, 5])
    k.reveal(survivors=[0, 1, 2, 3], dropped=[4, 5])  # a retry of the same answer is fine
    with pytest.raises(CryptoError, match=r"other share of clients \[3, 4\]"):
        k.reveal(survivors=[0, 1, 2, 4], dropped=[3, 5])


def test_keeper_refuses_a_client_claimed_both_survived_and_dropped() -> None:
    with pytest.raises(CryptoError, match="both survived and dropped"):
        keeper(range(6), 3).reveal(survivors=[0, 1, 2, 3], dropped=[3])


def test_keeper_refuses_below_threshold() -> None:
    with pytest.raises(CryptoError, match="only 2 survivors, below the threshold 3"):
        keeper(range(6), 3).reveal(survivors=[0, 1], dropped=[2, 3, 4, 5])


def test_keeper_refuses_unknown_clients() -> None:
    with pytest.raises(CryptoError, match=r"no shares held for clients \[9\]"):
        keeper(range(6), 3).reveal(survivors=[0, 1, 2, 9], dropped=[])


def test_keeper_refuses_shares_twice_from_one_owner() -> None:
    k = keeper(range(2), 1)
    b = shamir_split(new_seed(), 2, 1)[0]
    with pytest.raises(CryptoError, match="already holding shares of client 1"):
        k.add(1, b, b)


# ---------------------------------------------------------------------------------------------- a round
def masked_round(n: int, dropped: set[int], threshold: int, gradients: np.ndarray, round_id: int = 11,
                 scale: float = DEFAULT_SCALE) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """One Bonawitz round in plaintext: keys, shares sealed to each peer, masked uploads of everyone but
    ``dropped``, reveal by the survivors, recovery. Returns the uploads and the server's correction."""
    length = gradients.shape[1]
    mask_keys, box_keys = cohort(n), {i: X25519Keys.generate() for i in range(n)}
    b = {i: new_seed() for i in range(n)}
    keepers = {i: ShareKeeper(round_id) for i in range(n)}
    for i in range(n):
        b_shares = shamir_split(b[i], n, threshold, xs=[j + 1 for j in range(n)])
        s_shares = shamir_split(mask_keys[i].secret, n, threshold, xs=[j + 1 for j in range(n)])
        for j in range(n):
            ctx = context_bytes("job-7", "secagg-shares", round_id, i, j)
            blob = seal(box_keys[j].public, pack_shares(b_shares[j], s_shares[j]), context=ctx)
            keepers[j].add(i, *unpack_shares(open_sealed(box_keys[j].secret, box_keys[j].public, blob,
                                                         context=ctx)))
    uploads = {i: gradients[i] + upload_mask(i, mask_keys[i], b[i], peers_of(i, mask_keys), length=length,
                                             round_id=round_id, context=CTX, scale=scale)
               for i in range(n) if i not in dropped}
    survivors = sorted(uploads)
    revealed = [keepers[j].reveal(survivors, dropped) for j in survivors]
    b_rec = {i: shamir_combine([r.b_shares[i] for r in revealed]) for i in survivors}
    s_rec = {d: recover_mask_secret([r.s_shares[d] for r in revealed], mask_keys[d].public) for d in dropped}
    correction = unmask_correction(s_rec, {i: mask_keys[i].public for i in survivors}, b_rec, length=length,
                                   round_id=round_id, context=CTX, scale=scale)
    return uploads, correction


@pytest.mark.parametrize("dropped", [set(), {4}, {1, 5}])
def test_dropout_recovery_in_float64(dropped: set[int]) -> None:
    g = np.random.default_rng(0).normal(0.0, 0.1, size=(6, 2000))
    uploads, correction = masked_round(6, dropped, 3, g)
    survivors = sorted(uploads)
    assert np.abs(uploads[survivors[0]] - g[survivors[0]]).max() > DEFAULT_SCALE / 2
    total = np.sum([uploads[i] for i in survivors], axis=0) + correction
    tol = mask_error_bound(n_uploads=len(survivors), n_peers=5, n_dropped=len(dropped))
    np.testing.assert_allclose(total, g[survivors].sum(axis=0), rtol=0, atol=tol)


def test_dropout_recovery_fails_below_threshold() -> None:
    g = np.zeros((6, 10))
    with pytest.raises(CryptoError, match="below the threshold 4"):
        masked_round(6, {0, 1, 2}, 4, g)


def test_unmask_correction_needs_b_seeds_of_exactly_the_survivors() -> None:
    keys = cohort(3)
    with pytest.raises(CryptoError, match=r"missing \[2\]"):
        unmask_correction({0: keys[0].secret}, {1: keys[1].public, 2: keys[2].public}, {1: new_seed()},
                          length=10, round_id=1, context=CTX)
    with pytest.raises(CryptoError, match="both dropped and survivors"):
        unmask_correction({1: keys[1].secret}, {1: keys[1].public}, {1: new_seed()}, length=10, round_id=1,
                          context=CTX)


# ---------------------------------------------------------------------------------------------- CKKS
def test_dropout_recovery_inside_ckks_uploads(ckks: CKKSBackend) -> None:
    """5 clients encrypt g_i + mask_i; client 3 drops; the server sums ciphertexts and adds the correction."""
    n, length = 5, 1682 * 17
    g = np.random.default_rng(1).normal(0.0, 0.1, size=(n, length))
    uploads, correction = masked_round(n, {3}, 3, g)
    total = None
    for i in sorted(uploads):
        ct = ckks.encrypt(uploads[i])
        total = ct if total is None else ckks.add(total, ct)
    assert total is not None
    decrypted = ckks.decrypt(ckks.add_plain(total, correction))
    tol = mask_error_bound(n_uploads=4, n_peers=4, n_dropped=1)
    assert tol < 1e-5
    np.testing.assert_allclose(decrypted, g[[0, 1, 2, 4]].sum(axis=0), rtol=0, atol=tol)


def test_check_mask_scale_refuses_what_a_ciphertext_cannot_hold(ckks: CKKSBackend) -> None:
    check_mask_scale(ckks, DEFAULT_SCALE, n_peers=999, value_bound=10.0)
    with pytest.raises(CryptoError, match="lower scale"):
        check_mask_scale(ckks, 2.0 ** 40, n_peers=999, value_bound=10.0)


def test_choose_scale_known_values() -> None:
    assert choose_scale(1000) == DEFAULT_SCALE == 2.0 ** 23
    assert choose_scale(100) == 2.0 ** 27 and choose_scale(10) == 2.0 ** 30
    assert mask_error_bound(choose_scale(1000), n_uploads=1000, n_peers=999) <= 1e-5
    assert mask_error_bound(2 * choose_scale(1000), n_uploads=1000, n_peers=999) > 1e-5
