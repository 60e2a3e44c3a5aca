"""fedmf failures are data: a client that rejects, raises, dies or sends a hostile upload is a failure of
its round (named with the step), the server goes on while min_ok clients answer, retries a failed round
with fresh masks, and raises RoundFailed below min_ok; masked sums recover a client dropped mid-round."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedrec.crypto.backend import make_backend
from fedrec.protocols.fedmf import FedMFConfig, fit_reference
from fedrec.protocols.fedmf.messages import RoundRequest, Upload
from fedrec.protocols.fedmf.server import FedMFServer
from fedrec.protocols.fedmf.simulation import (
    DirectPeer,
    build_clients,
    kill_during,
    simulate,
    synthetic_federation,
)
from fedrec.protocols.party import Peer, Rejection, RoundFailed
from fedrec.transport import MemoryNetwork
from fedrec.transport.channel import Received
from fedrec.transport.parties import run_parties
from fedrec.transport.wire import Message

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

SMALL = {"backend": "plain", "n_factors": 4, "rounds": 4, "timeout": 10.0, "masks": False}  # masked tests: on


def federation(n: int = 4) -> tuple[dict[str, Any], list[Any]]:
    clients, catalogue, _ = synthetic_federation(n, n_users=40, n_items=30)
    return clients, catalogue


def replace_round_handler(peer: Peer, handler: Any) -> None:
    assert isinstance(peer, DirectPeer)
    original = peer.handlers[RoundRequest]
    peer.handlers[RoundRequest] = lambda rec: handler(rec, original)


def train_failures(server: FedMFServer) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in server.reports:
        if r.step.startswith("fedmf/train"):
            out.update({f"{r.step}:{n}": e for n, e in r.failed.items()})
    return out


def test_a_client_that_rejects_or_raises_mid_round_is_a_failure_and_training_finishes() -> None:
    clients, catalogue = federation()

    def reject_round_1(rec: Received[RoundRequest], original: Any) -> Message:
        if rec.msg.round == 1:
            raise Rejection("model", "this client refuses round 1")
        return original(rec)

    def prepare(peers: dict[str, Peer]) -> None:
        replace_round_handler(peers["c1"], reject_round_1)
        kill_during(peers["c2"], "fedmf/train/r2/a0/upload")  # dies while computing round 2

    res = simulate(clients, catalogue, FedMFConfig(**SMALL), prepare=prepare)
    fails = train_failures(res.server)
    assert res.server.rounds_done == SMALL["rounds"]
    assert "refuses round 1" in fails["fedmf/train/r1/a0/upload:c1"]
    assert "died" in fails["fedmf/train/r2/a0/upload:c2"] and "c2" in res.server.excluded
    oks = [len(r.ok) for r in res.server.reports if r.step.startswith("fedmf/train")]
    assert oks == [4, 3, 3, 3]  # c1 back in round 2; c2 gone from round 2 on
    assert res.clients["c1"].finished and not res.clients["c2"].finished


def test_a_client_whose_code_raises_is_a_failure_in_memory_and_over_the_twin() -> None:
    clients, catalogue = federation(3)

    def crash(rec: Received[RoundRequest], original: Any) -> Message:
        if rec.msg.round == 1:
            raise RuntimeError("bug in the client")
        return original(rec)

    res = simulate(clients, catalogue, FedMFConfig(**SMALL),
                   prepare=lambda p: replace_round_handler(p["c1"], crash))
    assert res.server.rounds_done == SMALL["rounds"] and "crashed: RuntimeError" in res.server.excluded["c1"]
    # over the in-memory twin the client's serve loop ends with the bug; the server times out on it
    cfg = FedMFConfig(**{**SMALL, "rounds": 3, "timeout": 1.0})
    built = build_clients(clients, catalogue, cfg)
    net = MemoryNetwork()
    for name, c in built.items():
        c.channel = net.channel(name, ["server"])
    original = built["c1"]._on_round
    built["c1"]._on_round = lambda rec: crash(rec, original)  # type: ignore[method-assign]
    server = FedMFServer.over_channel(net.channel("server", list(built)), {n: c.keys.public for n, c in
                                                                          built.items()}, cfg, catalogue)
    out = run_parties({"server": server.run, **{n: c.serve for n, c in built.items()}}, timeout=60,
                      return_exceptions=True)
    assert out["server"] is server and server.rounds_done == 3
    assert isinstance(out["c1"], RuntimeError)
    fails = train_failures(server)
    assert "peer 'c1' during step 'fedmf/train/r1/a0/upload': no Message within" in fails[
        "fedmf/train/r1/a0/upload:c1"]
    assert built["c0"].finished and not built["c1"].finished


@pytest.mark.parametrize("kind", ["wrong length", "wrong backend", "garbage", "wrong round"])
def test_hostile_upload_is_refused_naming_client_and_step_and_the_server_survives(kind: str) -> None:
    clients, catalogue = federation(3)
    cfg = FedMFConfig(**{**SMALL, "backend": "ckks", "rounds": 2})
    other = make_backend("plain" if kind == "wrong backend" else "ckks")

    def hostile(rec: Received[RoundRequest], original: Any) -> Message:
        good = original(rec)
        n = len(catalogue) * (cfg.n_factors + 1)
        blob = {"wrong length": other.serialize(other.encrypt(np.zeros(n - 1))) if kind == "wrong length"
                else b"", "wrong backend": other.serialize(other.encrypt(np.zeros(n))),
                "garbage": b"FRCT" + bytes(5000), "wrong round": good.ciphertext}[kind]
        return Upload("train", rec.msg.round + (kind == "wrong round"), rec.msg.attempt, blob)

    res = simulate(clients, catalogue, cfg, prepare=lambda peers: replace_round_handler(peers["c2"], hostile))
    fails = train_failures(res.server)
    assert set(fails) == {"fedmf/train/r0/a0/upload:c2", "fedmf/train/r1/a0/upload:c2"}
    assert all("invalid upload refused" in e and "'c2'" in e and "fedmf/train/r" in e for e in fails.values())
    assert res.server.rounds_done == 2 and res.clients["c0"].finished


def test_malformed_wire_answer_over_the_twin_is_a_failure_not_a_crash() -> None:
    clients, catalogue = federation(3)
    cfg = FedMFConfig(**{**SMALL, "rounds": 2, "timeout": 1.0})
    built = build_clients(clients, catalogue, cfg)
    net = MemoryNetwork()
    for name, c in built.items():
        c.channel = net.channel(name, ["server"])
    original = built["c2"]._on_round

    def bad_purpose(rec: Received[RoundRequest]) -> Upload:
        up = original(rec)
        return Upload("steal", up.round, up.attempt, up.ciphertext)  # from_wire refuses this purpose

    built["c2"]._on_round = bad_purpose  # type: ignore[method-assign]
    server = FedMFServer.over_channel(net.channel("server", list(built)), {n: c.keys.public for n, c in
                                                                          built.items()}, cfg, catalogue)
    out = run_parties({"server": server.run, **{n: c.serve for n, c in built.items()}}, timeout=60,
                      return_exceptions=True)
    assert out["server"] is server and server.rounds_done == 2
    fails = train_failures(server)
    assert "malformed answer" in fails["fedmf/train/r0/a0/upload:c2"] and "purpose" in fails[
        "fedmf/train/r0/a0/upload:c2"]
    # the hostile client got the server's error reply and kept serving; the others finished
    assert not isinstance(out["c2"], Exception)  # a peer's error report no longer ends a serving loop
    assert built["c0"].finished and built["c1"].finished


def test_fewer_than_min_ok_uploads_raise_round_failed_after_the_retries() -> None:
    clients, catalogue = federation(3)
    cfg = FedMFConfig(**{**SMALL, "min_ok": 3, "retries": 1})
    with pytest.raises(RoundFailed) as err:
        simulate(clients, catalogue, cfg, prepare=lambda peers: kill_during(peers["c0"], "train/r1/a0"))
    assert err.value.step.startswith("fedmf/train/r1/a1")  # the retry failed too: only 2 clients left


def test_a_retried_round_is_computed_once_by_every_client() -> None:
    clients, catalogue = federation(3)
    cfg = FedMFConfig(**{**SMALL, "min_ok": 3, "retries": 1})
    calls = {"n": 0}

    def flaky(rec: Received[RoundRequest], original: Any) -> Message:
        if rec.msg.round == 2 and rec.msg.attempt == 0:
            calls["n"] += 1
            raise Rejection("model", "transient refusal")
        return original(rec)

    res = simulate(clients, catalogue, cfg, prepare=lambda peers: replace_round_handler(peers["c1"], flaky))
    assert calls["n"] == 1 and res.server.rounds_done == cfg.rounds
    assert any(r.step == "fedmf/train/r2/a1/upload" for r in res.server.reports)
    # c0 and c2 computed round 2 twice; they restarted it from their users before it, so the result is the
    # uninterrupted schedule
    ref = fit_reference(clients, catalogue, cfg)
    items = res.clients["c0"].items
    assert items is not None and np.abs(items.q - ref.q).max() == pytest.approx(0.0, abs=1e-10)


def test_masked_round_recovers_a_client_dropped_after_sharing_its_keys() -> None:
    clients, catalogue = federation(5)
    masked = FedMFConfig(**{**SMALL, "masks": True})
    plain = FedMFConfig(**SMALL)

    def drop(peers: dict[str, Peer]) -> None:
        kill_during(peers["c3"], r"fedmf/train/r1/a0/(g0/)?upload$")  # masks: after sharing its keys

    a = simulate(clients, catalogue, masked, prepare=drop)
    b = simulate(clients, catalogue, plain, prepare=drop)
    assert "c3" in a.server.excluded and a.server.rounds_done == SMALL["rounds"]
    unmask = [r for r in a.server.reports if r.step == "fedmf/train/r1/a0/upload"]
    assert unmask and unmask[0].ok == ["c0", "c1", "c2", "c4"]
    qa, qb = a.clients["c0"].items, b.clients["c0"].items
    assert qa is not None and qb is not None
    # the recovered sum equals the unmasked sum of the survivors within the masks' float64 rounding
    assert np.abs(qa.q - qb.q).max() == pytest.approx(0.0, abs=1e-5)
    assert np.abs(qa.q - qb.q).max() > 0  # the masks were really there


def test_a_mask_group_that_cannot_be_unmasked_fails_alone_and_the_round_goes_on() -> None:
    clients, catalogue = federation(6)
    cfg = FedMFConfig(**{**SMALL, "masks": True, "mask_group": 3})  # groups c0-c2, c3-c5; threshold 2

    def drop_two(peers: dict[str, Peer]) -> None:
        for name in ("c3", "c4"):
            kill_during(peers[name], "fedmf/train/r1/a0/g1/upload$")

    res = simulate(clients, catalogue, cfg, prepare=drop_two)
    r1 = next(r for r in res.server.reports if r.step == "fedmf/train/r1/a0/upload")
    assert r1.groups == 2 and r1.ok == ["c0", "c1", "c2"]
    assert "group 1 failed" in r1.failed["c5"] and "died" in r1.failed["c3"]
    assert res.server.rounds_done == SMALL["rounds"] and res.clients["c5"].finished
    later = [r for r in res.server.reports if r.step.startswith("fedmf/train/r3")]
    assert later[0].ok == ["c0", "c1", "c2", "c5"]
