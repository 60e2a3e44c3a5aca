"""The PSI protocol over the in-memory transport twin: exact results, edge cases, hostile peers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import pytest

from fedrec.psi.group import CURVES, DEFAULT_CURVE, POINT_BYTES, Engine, Job, SecretScalar, blind_into
from fedrec.psi.ids import encode_ids
from fedrec.psi.messages import BlindedChunk, Finish, Hello, run_id
from fedrec.psi.protocol import (
    CHUNK_STEP,
    FINISH_STEP,
    HELLO_STEP,
    PsiPeerError,
    PsiResult,
    finish_check,
    run_psi,
    session_salt,
)
from fedrec.transport import MemoryNetwork, Message, WireError, encode, run_parties
from fedrec.transport.channel import Channel, SendListener

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


@pytest.fixture(params=CURVES)
def curve(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _pair(guest_ids: Sequence[Any], host_ids: Sequence[Any], chunk_size: int = 64,
          guest_listener: SendListener | None = None, curve: str = "ristretto255",
          host_curve: str | None = None) -> tuple[PsiResult, PsiResult]:
    """Run guest and host in two threads over a fresh in-memory network; the first error is re-raised."""
    net = MemoryNetwork()
    guest, host = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    if guest_listener is not None:
        guest.add_send_listener(guest_listener)
    out = run_parties({
        "guest": lambda: run_psi(guest, "host", encode_ids(guest_ids), role="guest", chunk_size=chunk_size,
                                 workers=2, timeout=20, curve=curve),
        "host": lambda: run_psi(host, "guest", encode_ids(host_ids), role="host", chunk_size=chunk_size,
                                workers=2, timeout=20, curve=host_curve or curve),
    }, timeout=45)
    return out["guest"], out["host"]


def _against(host_script: Callable[[], None], guest: Callable[[], T]) -> T:
    """Run a scripted host and a guest in two threads; the script must run to its end, then the guest's
    result is returned or its error re-raised."""
    out = run_parties({"host": host_script, "guest": guest}, timeout=30, return_exceptions=True)
    assert out["host"] is None, f"the host script failed: {out['host']!r}"
    if isinstance(out["guest"], BaseException):
        raise out["guest"]
    return cast(T, out["guest"])


def _check(guest_ids: Sequence[Any], host_ids: Sequence[Any], g: PsiResult, h: PsiResult) -> None:
    g_enc, h_enc = encode_ids(guest_ids), encode_ids(host_ids)
    assert g.ids == h.ids
    assert set(g.ids) == set(g_enc) & set(h_enc)
    assert len(set(g.ids)) == len(g.ids)
    assert [g_enc[r] for r in g.rows] == g.ids
    assert [h_enc[r] for r in h.rows] == h.ids


def test_random_sets_intersect_exactly(curve: str) -> None:
    rng = np.random.default_rng(0)
    guest = [f"u{i}" for i in rng.choice(3000, 700, replace=False)]
    host = [f"u{i}" for i in rng.choice(3000, 500, replace=False)]
    g, h = _pair(guest, host, curve=curve)
    _check(guest, host, g, h)
    assert g.peer_size == 500 and h.peer_size == 700


def test_uneven_chunks_on_both_sides(curve: str) -> None:
    guest, host = list(range(0, 301)), list(range(150, 170)) + list(range(1000, 1129))
    g, h = _pair(guest, host, chunk_size=7, curve=curve)
    _check(guest, host, g, h)
    assert g.intersection_size == 20


def test_disjoint_sets(curve: str) -> None:
    g, h = _pair(["a", "b", "c"], ["d", "e"], curve=curve)
    assert g.ids == h.ids == []
    assert g.rows.size == 0


def test_identical_sets(curve: str) -> None:
    ids = [f"id{i}" for i in range(200)]
    g, h = _pair(ids, ids[::-1], curve=curve)
    _check(ids, ids[::-1], g, h)
    assert g.intersection_size == 200


@pytest.mark.parametrize(("guest", "host"), [([], ["a", "b"]), (["a"], []), ([], [])])
def test_empty_sets(guest: list[str], host: list[str], curve: str) -> None:
    g, h = _pair(guest, host, curve=curve)
    assert g.ids == h.ids == []
    assert (g.peer_size, h.peer_size) == (len(host), len(guest))


def test_duplicates_are_dropped_keeping_the_first_row(caplog: pytest.LogCaptureFixture, curve: str) -> None:
    guest = ["x", "y", "x", "z", "x"]
    host = ["y", "y", "x", "w"]
    with caplog.at_level(logging.WARNING, logger="fedrec.psi.ids"):
        g, h = _pair(guest, host, curve=curve)
    _check(guest, host, g, h)
    assert dict(zip(g.ids, g.rows.tolist(), strict=True)) == {b"x": 0, b"y": 1}
    assert dict(zip(h.ids, h.rows.tolist(), strict=True)) == {b"x": 2, b"y": 0}
    assert (g.n_input, g.n_unique, g.n_duplicates) == (5, 3, 2)
    assert "2 duplicate id row(s)" in caplog.text and "1 duplicate id row(s)" in caplog.text


def test_non_ascii_and_int_ids(curve: str) -> None:
    guest = ["Zoë", "東京", "😀", 42, "e\u0301"]
    host = ["東京", "42", "😀", "é", "zoë"]  # "é" (U+00E9) is not "e\u0301"; case matters
    g, h = _pair(guest, host, curve=curve)
    _check(guest, host, g, h)
    assert {x.decode() for x in g.ids} == {"東京", "😀", "42"}


def _single_points(sink: list[bytes]) -> SendListener:
    """A send listener keeping the single-blinded points a party sends."""

    def listener(peer: str, step: str, n_bytes: int, msg: Message) -> None:
        if isinstance(msg, BlindedChunk) and msg.stage == "single":
            sink.extend(p.tobytes() for p in msg.points)

    return listener


def test_two_runs_send_different_blinded_values(curve: str) -> None:
    runs: list[list[bytes]] = [[], []]
    for sink in runs:
        _pair(["a", "b", "c"], ["b"], guest_listener=_single_points(sink), curve=curve)
    assert len(runs[0]) == len(runs[1]) == 3
    assert not set(runs[0]) & set(runs[1])


HOST_SALT = bytes(32)


def _script_hello(host: Channel, set_size: int, curve: str = DEFAULT_CURVE,
                  chunk_size: int = 4) -> tuple[Hello, Hello, bytes]:
    """A scripted host's handshake: read the guest's Hello, answer with one echoing its salt (the guest
    then starts). Returns (guest Hello, host Hello, run id)."""
    theirs = host.recv("guest", Hello, step=HELLO_STEP, timeout=10)
    mine = Hello(role="host", set_size=set_size, chunk_size=chunk_size, salt=HOST_SALT, curve=curve,
                 peer_salt=theirs.salt)
    host.send("guest", mine, step=HELLO_STEP)
    return theirs, mine, run_id(theirs.salt, HOST_SALT)


def _hostile_host(net: MemoryNetwork, first_points: Callable[[Hello], np.ndarray],
                  index: int = 0, curve: str = DEFAULT_CURVE) -> tuple[Channel, Callable[[], None]]:
    """The guest's channel and the script of a host that says hello properly, then sends
    ``first_points(guest_hello)`` as its single chunk."""
    guest = net.channel("guest", ["host"])
    ch = net.channel("host", ["guest"])

    def play() -> None:
        theirs, _, run = _script_hello(ch, 4, curve)
        ch.send("guest", BlindedChunk("single", index, first_points(theirs), run), step=CHUNK_STEP)

    return guest, play


def _valid_points(hello: Hello, n: int = 4) -> np.ndarray:
    ids = [f"h{i}".encode() for i in range(n)]
    with Engine(1, curve=hello.curve) as engine:
        domain = engine.domain(session_salt(hello.salt, bytes(32)))
        return engine.submit_hash_blind(ids, domain, engine.new_scalar()).result()


@pytest.mark.parametrize(("name", "poison"), [("identity", bytes(32)), ("invalid", b"\xff" * 32),
                                             ("order-2", b"\x01" + bytes(31))])
def test_identity_or_invalid_point_from_peer_is_rejected(name: str, poison: bytes, curve: str) -> None:
    def points(hello: Hello) -> np.ndarray:
        p = _valid_points(hello)
        p[2] = np.frombuffer(poison, np.uint8)
        return p

    net = MemoryNetwork()
    guest, play = _hostile_host(net, points, curve=curve)
    expected = (r"peer 'host' during step 'psi/chunks': single chunk 0: point 2 is not a canonical encoding "
                rf"of a valid non-identity {curve} point")
    with pytest.raises(PsiPeerError, match=expected):
        _against(play, lambda: run_psi(guest, "host", encode_ids(["a", "b"]), role="guest", timeout=10,
                                       workers=1, curve=curve))


def test_chunk_with_wrong_number_of_points_is_rejected() -> None:
    net = MemoryNetwork()
    guest, play = _hostile_host(net, lambda hello: _valid_points(hello, 3))
    with pytest.raises(PsiPeerError, match="single chunk 0 has 3 points, expected 4"):
        _against(play, lambda: run_psi(guest, "host", encode_ids(["a"]), role="guest", timeout=10, workers=1))


def test_chunk_index_beyond_announced_set_is_rejected() -> None:
    net = MemoryNetwork()
    guest, play = _hostile_host(net, _valid_points, index=1)
    with pytest.raises(PsiPeerError, match=r"single chunk index 1 out of range: its set of 4 ids has 1 "):
        _against(play, lambda: run_psi(guest, "host", encode_ids(["a"]), role="guest", timeout=10, workers=1))


def test_garbage_chunk_on_the_wire_is_rejected_with_the_field() -> None:
    net = MemoryNetwork()

    def points(hello: Hello) -> np.ndarray:
        return _valid_points(hello)

    guest = net.channel("guest", ["host"])
    host = net.channel("host", ["guest"])

    def play() -> None:
        hello, _, run = _script_hello(host, 4)
        frames = encode(BlindedChunk("single", 0, points(hello), run), step=CHUNK_STEP, seq=2,
                        session=host._session)
        frames[1] = bytes(frames[1])[:-5]  # truncated points frame: header and frame lengths disagree
        host._transmit("guest", list(frames), step=CHUNK_STEP)  # raw injection, bypassing encode checks

    expected = (r"peer 'host' at step 'psi/chunks' rejected: psi.BlindedChunk: frame 1 has 123 bytes, "
                r"header says 128")
    with pytest.raises(WireError, match=expected):
        _against(play, lambda: run_psi(guest, "host", encode_ids(["a"]), role="guest", timeout=10, workers=1))


def test_both_parties_claiming_the_same_role_fail_clearly() -> None:
    net = MemoryNetwork()
    guest, other = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    out = run_parties({"guest": lambda: run_psi(guest, "host", [b"a"], role="guest", timeout=10, workers=1),
                       "host": lambda: run_psi(other, "guest", [b"a"], role="guest", timeout=10, workers=1)},
                      timeout=30, return_exceptions=True)
    for party in ("guest", "host"):  # each refuses the other's Hello
        assert isinstance(out[party], PsiPeerError)
        assert "both parties claim role 'guest'" in str(out[party])


def test_ids_must_be_encoded_bytes() -> None:
    net = MemoryNetwork()
    with pytest.raises(TypeError, match=r"ids\[1\] is str"):
        run_psi(net.channel("guest", ["host"]), "host", [b"a", "b"], role="guest")  # type: ignore[list-item]


def test_identity_in_returned_double_chunk_is_rejected(curve: str) -> None:
    net = MemoryNetwork()
    guest, host = net.channel("guest", ["host"]), net.channel("host", ["guest"])

    def play() -> None:  # a host with no ids that answers the guest's chunk with identities
        _, _, run = _script_hello(host, 0, curve)
        chunk = host.recv("guest", BlindedChunk, step=CHUNK_STEP, timeout=10)
        host.send("guest", BlindedChunk("double", 0, np.zeros_like(chunk.points), run), step=CHUNK_STEP)

    with pytest.raises(PsiPeerError, match=f"double chunk 0: point 0 is not a canonical encoding of a valid "
                                           f"non-identity {curve} point"):
        _against(play, lambda: run_psi(guest, "host", encode_ids(["a", "b"]), role="guest", timeout=10,
                                       workers=1, curve=curve))


def test_own_chunks_keep_flowing_while_the_peer_waits_for_all_of_them() -> None:
    # regression: with every job finished, the party must submit its next chunk before blocking on the peer
    net = MemoryNetwork()
    guest, host = net.channel("guest", ["host"]), net.channel("host", ["guest"])

    def play() -> None:  # a host with no ids that answers only once it has all three of the guest's chunks
        guest_hello, host_hello, run = _script_hello(host, 0, "ristretto255")
        chunks = [host.recv("guest", BlindedChunk, step=CHUNK_STEP, timeout=10) for _ in range(3)]
        assert {c.run for c in chunks} == {run}
        b = SecretScalar()
        for c in chunks:
            out = np.empty_like(c.points)
            blind_into(out, np.ascontiguousarray(c.points), b)
            host.send("guest", BlindedChunk("double", c.index, out, run), step=CHUNK_STEP)
        host.recv("guest", Finish, step=FINISH_STEP, timeout=10)
        none = np.empty((0, POINT_BYTES), np.uint8)  # the check binds both Hellos and the common values
        check = finish_check(guest_hello, host_hello, none)
        host.send("guest", Finish(guest_hello.salt, HOST_SALT, 0, check), step=FINISH_STEP)

    class FinishedAtOnce(Engine):  # own jobs are done when the session first looks: no timing luck needed
        def submit_hash_blind(self, *args: Any, **kwargs: Any) -> Job:
            job = super().submit_hash_blind(*args, **kwargs)
            job.result()
            return job

    with FinishedAtOnce(workers=1, curve="ristretto255") as engine:
        result = _against(play, lambda: run_psi(guest, "host", encode_ids(["a", "b", "c"]), role="guest",
                                                chunk_size=1, timeout=5, engine=engine))
    assert result.ids == [] and result.peer_size == 0


def test_parties_on_different_curves_fail_clearly() -> None:
    expected = "peer uses curve '(x25519|ristretto255)', this party '(ristretto255|x25519)'; both must run"
    with pytest.raises(PsiPeerError, match=expected):
        _pair(["a", "b"], ["b"], curve="ristretto255", host_curve="x25519")


def test_curve_must_match_a_given_engine() -> None:
    net = MemoryNetwork()
    with Engine(1, curve="x25519") as engine, pytest.raises(ValueError, match="engine given runs 'x25519'"):
        run_psi(net.channel("guest", ["host"]), "host", [b"a"], role="guest", engine=engine,
                curve="ristretto255")


def test_x25519_and_ristretto255_find_the_same_intersection() -> None:
    rng = np.random.default_rng(1)
    guest = [f"u{i}" for i in rng.choice(2000, 400, replace=False)]
    host = [f"u{i}" for i in rng.choice(2000, 400, replace=False)]
    r, _ = _pair(guest, host, curve="ristretto255")
    x, _ = _pair(guest, host, curve="x25519")
    assert set(r.ids) == set(x.ids) and r.intersection_size > 0


def test_the_progress_bar_is_closed_when_the_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #13: a failed run left its bar open, and the error printed on the bar's line."""
    from fedrec import progress

    bars: list[Any] = []

    class Recording(progress.tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self.was_closed = False
            bars.append(self)

        def close(self) -> None:
            self.was_closed = True
            super().close()

    monkeypatch.setattr(progress, "tqdm", Recording)
    net = MemoryNetwork()
    guest, play = _hostile_host(net, lambda hello: _valid_points(hello, 3))
    with pytest.raises(PsiPeerError, match="single chunk 0 has 3 points, expected 4"):
        _against(play, lambda: run_psi(guest, "host", encode_ids(["a"]), role="guest", timeout=10, workers=1,
                                       progress=True))
    assert len(bars) == 1 and bars[0].was_closed
