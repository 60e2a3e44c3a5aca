"""PSI messages: paired wire forms, and malformed fields rejected with the field's name."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fedrec.psi.messages import MAX_CHUNK, MAX_SET_SIZE, MESSAGES, BlindedChunk, BucketHello, Finish, Hello
from fedrec.transport import WireError, decode, encode, roundtrip

HELLO = Hello(role="host", set_size=1, chunk_size=1, salt=bytes(32))
RUN = bytes(range(16))
CHUNK = BlindedChunk("single", 0, np.zeros((4, 32), np.uint8), RUN)


def _tamper(msg: object, **fields: object) -> list[bytes]:
    """Encode ``msg`` and overwrite header fields, as a hostile sender could."""
    frames = [bytes(f) for f in encode(msg, step="psi/test", seq=1)]  # type: ignore[arg-type]
    header = msgpack.unpackb(frames[0])
    header["b"].update(fields)
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


def test_hello_roundtrips() -> None:
    msg = Hello(role="guest", set_size=10, chunk_size=4, salt=bytes(range(32)))
    assert roundtrip(msg) == msg
    assert msg.n_chunks == 3 and msg.chunk_bounds(2) == (8, 10)


def test_chunk_roundtrips() -> None:
    points = np.arange(3 * 32, dtype=np.uint8).reshape(3, 32)
    out = roundtrip(BlindedChunk("double", 7, points, RUN))
    assert (out.stage, out.index, out.run) == ("double", 7, RUN) and np.array_equal(out.points, points)


def test_finish_roundtrips() -> None:
    msg = Finish(b"g" * 32, b"h" * 32, 3, b"d" * 32)
    assert roundtrip(msg) == msg


def test_hello_echoes_the_peers_salt() -> None:
    msg = Hello(role="guest", set_size=1, chunk_size=1, salt=bytes(32), peer_salt=b"p" * 32)
    assert roundtrip(msg).peer_salt == b"p" * 32
    with pytest.raises(WireError, match="peer_salt must be empty or 32 bytes, got 3"):
        decode(_tamper(HELLO, peer_salt=b"abc"))


def test_chunk_without_a_run_id_is_rejected() -> None:
    with pytest.raises(WireError, match="psi.BlindedChunk.run"):
        decode(_tamper(CHUNK, run=None))
    with pytest.raises(WireError, match="run must be 16 bytes, got 2"):
        decode(_tamper(CHUNK, run=b"ab"))


def test_short_salt_is_rejected() -> None:
    with pytest.raises(WireError, match="psi.Hello: invalid content: salt must be 32 bytes, got 5"):
        decode(_tamper(HELLO, salt=b"short"))


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(WireError, match=r"psi.Hello.role: 'admin' is not one of \['guest', 'host'\]"):
        decode(_tamper(HELLO, role="admin"))


def test_hello_carries_the_curve() -> None:
    msg = Hello(role="guest", set_size=1, chunk_size=1, salt=bytes(32), curve="x25519")
    assert roundtrip(msg).curve == "x25519"


def test_unknown_curve_is_rejected() -> None:
    expected = r"psi.Hello.curve: 'p256' is not one of \['ristretto255', 'x25519'\]"
    with pytest.raises(WireError, match=expected):
        decode(_tamper(HELLO, curve="p256"))


def test_version_2_peer_is_rejected() -> None:
    with pytest.raises(WireError, match=r"psi.Hello.version: value 2 outside \[3, 3\]"):
        decode(_tamper(HELLO, version=2))


def test_oversized_chunk_size_is_rejected() -> None:
    with pytest.raises(WireError, match=r"psi.Hello.chunk_size: value 65537 outside \[1, 65536\]"):
        decode(_tamper(HELLO, chunk_size=MAX_CHUNK + 1))


def test_points_that_are_not_32_bytes_wide_are_rejected() -> None:
    bad = _tamper(CHUNK, points={"array": 1, "dtype": "|u1", "shape": [2, 64]})
    with pytest.raises(WireError, match=r"BlindedChunk.points: expected shape \(None, 32\), got \(2, 64\)"):
        decode(bad)


def test_points_frame_shorter_than_its_shape_is_rejected() -> None:
    frames = _tamper(CHUNK)
    frames[0] = msgpack.packb({**msgpack.unpackb(frames[0]), "f": [124]}, use_bin_type=True)
    frames[1] = frames[1][:124]
    with pytest.raises(WireError, match=r"shape \(4, 32\) x 1 bytes != frame length 124"):
        decode(frames)


def test_wrong_dtype_is_rejected() -> None:
    with pytest.raises(WireError, match="BlindedChunk.points: expected dtype uint8, got int8"):
        decode(_tamper(CHUNK, points={"array": 1, "dtype": "|i1", "shape": [4, 32]}))


def test_empty_or_oversized_chunks_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="a chunk holds 1..65536 points, got 0"):
        BlindedChunk("single", 0, np.zeros((0, 32), np.uint8), RUN)
    with pytest.raises(ValueError, match="points must be a uint8 array"):
        BlindedChunk("single", 0, np.zeros((2, 32), np.int16), RUN)


def test_garbage_bytes_are_rejected() -> None:
    with pytest.raises(WireError, match="header is not valid msgpack|header must be a map"):
        decode([b"\xc1garbage", b"x"])


def test_bucket_hello_is_a_psi_message_and_roundtrips() -> None:
    msg = BucketHello(role="guest", set_size=10, bucket_target=4, salt=bytes(range(32)))
    assert roundtrip(msg) == msg and BucketHello in MESSAGES
    fixed = BucketHello(role="guest", set_size=10, bucket_target=4, salt=bytes(32), n_buckets=7)  # --buckets
    assert roundtrip(fixed) == fixed and fixed.n_buckets == 7


def test_bucket_hello_out_of_range_fields_are_rejected_by_name() -> None:
    msg = BucketHello(role="host", set_size=10, bucket_target=4, salt=bytes(32))
    with pytest.raises(WireError, match="BucketHello.bucket_target"):
        decode(_tamper(msg, bucket_target=0))
    with pytest.raises(WireError, match="BucketHello.set_size"):
        decode(_tamper(msg, set_size=MAX_SET_SIZE + 1))
    with pytest.raises(WireError, match="BucketHello.role"):
        decode(_tamper(msg, role="hub"))
    with pytest.raises(WireError, match="BucketHello.n_buckets"):
        decode(_tamper(msg, n_buckets=(1 << 20) + 1))
