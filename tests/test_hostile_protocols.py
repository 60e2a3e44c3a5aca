"""Issue #9, defects 1, 2 (Setup), 7 and the party layer: a malicious but authenticated peer cannot make a
host replay years of optimizer steps, reset a run with a second Setup, slip in key material of another
CKKS preset, or end a FedMF-style round with a malformed answer. Over the in-memory twin (the same
receive path as the sockets; the live processes are exercised by ``benchmarks/fuzz.py``)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

from fedrec.crypto.backend import make_backend
from fedrec.protocols import party
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMHost
from fedrec.protocols.hetero_fm.config import PROTOCOL, PROTOCOL_VERSION
from fedrec.protocols.hetero_fm.messages import (
    EpochEnd,
    HeteroFMError,
    Partials,
    PartialsRequest,
    Setup,
    SetupAck,
)
from fedrec.protocols.messages import Ack, Checkpoint, Checkpointed, Done, Hello
from fedrec.transport import MemoryNetwork, RemoteError, run_parties
from fedrec.transport.memory import MemoryChannel
from fedrec.transport.wire import Message, WireReader, WireWriter, register_message

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

USERS = [f"u{i}" for i in range(12)]
FEATURES = pd.DataFrame({"age": [20 + i % 5 for i in range(12)], "city": ["a", "b", "c"] * 4},
                        index=pd.Index(USERS, name="user_id"))


def _cfg(**kw: Any) -> HeteroFMConfig:
    return HeteroFMConfig(**{"label_dp": "off", "n_factors": 2, "epochs": 2, "batch_size": 4,
                             "backend": "plain", "timeout": 10, **kw})


def _setup(public: bytes, users: list[str] = USERS, n_batches: int = 3) -> Setup:
    return Setup(public, hashlib.sha256(public).hexdigest(), users, n_batches)


def _against_host(cfg: HeteroFMConfig, guest_side: Any) -> tuple[HeteroFMHost, Any]:
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    ch = net.channel("guest", ["host"])
    peer = party.Peer(ch, "host", timeout=10, error=HeteroFMError)

    def guest() -> Any:
        peer.ask(Hello(PROTOCOL, PROTOCOL_VERSION, "run-1", cfg.agreed()), Ack, "fm/setup")
        try:
            return guest_side(peer, ch)
        finally:
            peer.ask(Done("bye"), Ack, "fm/done")

    out = run_parties({"host": lambda: host.serve(FEATURES), "guest": guest}, timeout=30)
    return host, out["guest"]


def _refused(peer: party.Peer, msg: Message, expected: type[Message], step: str) -> HeteroFMError:
    with pytest.raises(HeteroFMError) as info:
        peer.ask(msg, expected, step)
    return info.value


def test_counts_and_cursors_beyond_the_set_up_are_refused_at_once_and_the_host_keeps_serving() -> None:
    public = make_backend("plain").public_bytes()

    def guest(peer: party.Peer, ch: MemoryChannel) -> dict[str, Any]:
        peer.ask(_setup(public), SetupAck, "fm/setup")
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        out["epoch_end"] = _refused(peer, EpochEnd(0, False, (1 << 31) - 1), Ack, "evil/epoch-end")
        out["batch"] = _refused(peer, PartialsRequest("train", 0, 10**9, np.array([0])), Partials, "evil/b")
        out["epoch"] = _refused(peer, PartialsRequest("train", 5, 0, np.array([0])), Partials, "evil/e")
        out["ckpt"] = _refused(peer, Checkpoint(0, 1 << 30, False), Checkpointed, "evil/ckpt")
        out["seconds"] = time.perf_counter() - t0
        with pytest.raises(RemoteError, match="malformed.*n_batches.*outside"):  # beyond the wire's bound
            peer.ask(EpochEnd(0, False, 1 << 40), Ack, "evil/wire")
        out["still_serving"] = peer.ask(PartialsRequest("train", 0, 2, np.array([0, 3])), Partials,
                                        "fm/e0/b2/partials")
        return out

    host, out = _against_host(_cfg(), guest)
    assert out["seconds"] < 5, "a hostile count made the host work"
    assert out["epoch_end"].field == "n_batches" and "declared 3" in str(out["epoch_end"])
    assert out["batch"].field == "batch" and "'evil/b'" in str(out["batch"])
    assert out["epoch"].field == "epoch"
    assert out["ckpt"].field in ("checkpoint", "batch")
    assert out["still_serving"].z.shape == (2,)
    assert host.rejected >= 4


def test_a_different_setup_mid_training_is_refused_and_an_identical_retransmit_is_applied_once() -> None:
    public = make_backend("plain").public_bytes()

    def guest(peer: party.Peer, ch: MemoryChannel) -> dict[str, Any]:
        first = peer.ask(_setup(public), SetupAck, "fm/setup")
        # the host zero-steps batches 0 and 1: cursor (0, 2)
        peer.ask(PartialsRequest("train", 0, 2, np.array([1])), Partials, "fm/e0/b2/partials")
        other = _refused(peer, _setup(public, USERS[::-1]), SetupAck, "fm/setup")
        again = peer.ask(_setup(public), SetupAck, "fm/setup")  # identical, a new sequence number
        behind = _refused(peer, PartialsRequest("train", 0, 1, np.array([1])), Partials, "fm/e0/b1/partials")
        return {"first": first, "other": other, "again": again, "behind": behind}

    _, out = _against_host(_cfg(), guest)
    assert out["other"].field == "step" and "second, different Setup" in str(out["other"])
    assert out["again"] == out["first"]
    # the cursor was not reset: batch 1 is behind the host's 2 batches, so batch 0/1 are never stepped twice
    assert out["behind"].field == "batch" and "2 batch(es) stepped" in str(out["behind"])


def test_key_material_of_another_ckks_preset_is_refused_at_set_up() -> None:
    pytest.importorskip("tenseal")
    public = make_backend("ckks", preset="n4096").public_bytes()

    def guest(peer: party.Peer, ch: MemoryChannel) -> HeteroFMError:
        return _refused(peer, _setup(public), SetupAck, "fm/setup")

    _, err = _against_host(_cfg(backend="ckks", ckks_preset="n8192"), guest)
    assert err.field == "ckks_preset" and "'n4096'" in str(err) and "'n8192'" in str(err)
    assert err.step == "fm/setup" and err.peer == "host"


@register_message
@dataclass(frozen=True)
class _Answer(Message):
    TYPE: ClassVar[str] = "tthostile.Answer"
    value: int

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("value", self.value)

    @classmethod
    def from_wire(cls, r: WireReader) -> _Answer:
        return cls(r.get_int("value", lo=0, hi=10))


def test_gather_counts_a_malformed_answer_as_that_peers_failure() -> None:
    net = MemoryNetwork()
    server = net.channel("server", ["good", "evil"])
    clients = {n: net.channel(n, ["server"]) for n in ("good", "evil")}

    def answer(name: str) -> None:
        rec = clients[name].recv_any(Hello, timeout=10)
        clients[name].reply(rec, _Answer(1 if name == "good" else 99))  # 99: outside the wire's range

    peers = {n: party.Peer(server, n, timeout=5, retries=0) for n in clients}
    hello = Hello("p", 1, "r", {})
    out = run_parties({"gather": lambda: party.gather(peers, {n: hello for n in peers}, _Answer,
                                                      step="round/0", min_ok=1),
                       "good": lambda: answer("good"), "evil": lambda: answer("evil")}, timeout=20)
    results, failures = out["gather"]
    assert set(results) == {"good"} and set(failures) == {"evil"}
    assert isinstance(failures["evil"], party.PartyError) and "round/0" in str(failures["evil"])
    assert "malformed" in str(failures["evil"])
    assert not isinstance(failures["evil"], RemoteError)


def test_an_error_report_from_the_guest_does_not_end_the_hosts_serving_loop() -> None:
    from fedrec.transport.control import ErrorReply

    public = make_backend("plain").public_bytes()

    def guest(peer: party.Peer, ch: MemoryChannel) -> Any:
        peer.ask(_setup(public), SetupAck, "fm/setup")
        for i in range(3):
            ch.send("host", ErrorReply("malformed", "forged", "fm/setup", i), step=f"evil/{i}")
        return peer.ask(PartialsRequest("train", 0, 0, np.array([0])), Partials, "fm/e0/b0/partials")

    host, answer = _against_host(_cfg(), guest)
    assert answer.z.shape == (1,) and host.rejected >= 3


def test_a_model_beside_the_aligned_csv_of_another_run_is_refused(tmp_path: Any) -> None:
    from fedrec.artifacts import ArtifactError
    from fedrec.data.partition import vertical_split
    from fedrec.data.synthetic import SyntheticConfig, generate
    from fedrec.protocols.hetero_fm import HeteroFMGuest
    from serving.export import load_serving_bundle

    ds = generate(SyntheticConfig(n_users=30, n_items=15, n_ratings=200, seed=2)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = _cfg(epochs=1, batch_size=64)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    aligned = sorted(str(u) for u in hv.user_features.index)[:20]

    def guest() -> HeteroFMGuest:
        g = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
        g.fit(gv.interactions, item_features=gv.item_features, validation="none", aligned_users=aligned)
        g.save(tmp_path / "model")
        g.close()
        return g

    run_parties({"host": lambda: host.serve(hv.user_features), "guest": guest}, timeout=60)
    pd.DataFrame({"aligned_index": range(20), "id": aligned[::-1], "row_index": range(20)}).to_csv(
        tmp_path / "aligned.csv", index=False)
    assert load_serving_bundle(tmp_path / "model").run_id  # its own run's set, in any order
    other = aligned[:19] + ["someone-else"]
    pd.DataFrame({"aligned_index": range(20), "id": other, "row_index": range(20)}).to_csv(
        tmp_path / "aligned.csv", index=False)
    with pytest.raises(ArtifactError, match=r"aligned.csv holds another aligned set.*two runs"):
        load_serving_bundle(tmp_path / "model")
