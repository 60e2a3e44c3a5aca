"""The party layer: ask (typed, matched by sequence number), serve (handler table, narrow rejection),
gather (failures as data), config agreement; and the Checkpointer's listing, pruning and refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.artifacts import ArtifactError
from fedrec.protocols.checkpoint import Checkpointer, PrivacyJournal
from fedrec.protocols.messages import Ack, Done, Hello, Rejected
from fedrec.protocols.party import (
    PartyError,
    Peer,
    Rejection,
    RoundFailed,
    check_hello,
    config_mismatches,
    fan_out,
    gather,
    serve,
)
from fedrec.transport import MemoryNetwork, run_parties
from fedrec.transport.channel import Received
from fedrec.transport.errors import PeerDiedError, PeerTimeoutError


def _echo_server(net: MemoryNetwork, name: str, driver: str = "driver") -> Any:
    ch = net.channel(name, [driver])

    def on_hello(rec: Received[Hello]) -> Ack:
        if rec.msg.config.get("bad"):
            raise Rejection("bad", "refused on purpose")
        return Ack(f"{name}:{rec.msg.run_id}")

    def on_done(rec: Received[Done]) -> Ack:
        return Ack("bye")

    return lambda: serve(ch, driver, {Hello: on_hello, Done: on_done}, timeout=10, until=(Done,), who=name)


def test_ask_returns_the_typed_reply_and_rejections_name_peer_step_and_field() -> None:
    net = MemoryNetwork()
    driver = net.channel("driver", ["a"])
    peer = Peer(driver, "a", timeout=10)

    def drive() -> tuple[Ack, PartyError]:
        ok = peer.ask(Hello("p", 1, "r1", {}), Ack, "s/1")
        with pytest.raises(PartyError) as info:
            peer.ask(Hello("p", 1, "r2", {"bad": True}), Ack, "s/2")
        peer.ask(Done(), Ack, "s/done")
        return ok, info.value

    out = run_parties({"a": _echo_server(net, "a"), "driver": drive}, timeout=20)
    ok, err = out["driver"]  # type: ignore[misc]
    assert ok == Ack("a:r1")
    assert (err.peer, err.step, err.field) == ("a", "s/2", "bad") and "refused on purpose" in str(err)
    assert out["a"].answered == 2 and out["a"].rejected == 1  # type: ignore[union-attr]


def test_ask_matches_replies_by_sequence_not_by_step() -> None:
    net = MemoryNetwork()
    driver, server = net.channel("driver", ["a"]), net.channel("a", ["driver"])
    server.send("driver", Ack("stale answer of the same step"), step="s/1")  # not a reply to anything

    def answer() -> None:
        rec = server.recv_any(Hello, timeout=10)
        server.reply(rec, Ack("the real answer"))

    out = run_parties({"a": answer, "driver": lambda: Peer(driver, "a", timeout=10).ask(
        Hello("p", 1, "r", {}), Ack, "s/1")}, timeout=20)
    assert out["driver"] == Ack("the real answer")


def test_ask_refuses_an_answer_of_another_type() -> None:
    net = MemoryNetwork()
    driver, server = net.channel("driver", ["a"]), net.channel("a", ["driver"])

    def answer() -> None:
        server.reply(server.recv_any(Hello, timeout=10), Done("not an ack"))

    def drive() -> None:
        with pytest.raises(PartyError, match="answered Done, expected Ack"):
            Peer(driver, "a", timeout=10).ask(Hello("p", 1, "r", {}), Ack, "s/1")

    run_parties({"a": answer, "driver": drive}, timeout=20)


def test_serve_skips_unexpected_types_and_lets_bugs_surface() -> None:
    net = MemoryNetwork()
    driver, server = net.channel("driver", ["a"]), net.channel("a", ["driver"])

    def buggy(rec: Received[Hello]) -> Ack:
        raise KeyError("a bug, not a protocol error")

    def drive() -> None:
        driver.send("a", Ack("not a request"), step="x/1")  # unexpected type: skipped, counted
        driver.send("a", Hello("p", 1, "r", {}), step="x/2")

    out = run_parties({"a": lambda: serve(server, "driver", {Hello: buggy}, timeout=10, until=(Done,)),
                       "driver": drive}, timeout=20, return_exceptions=True)
    assert isinstance(out["a"], KeyError)


def test_gather_returns_results_and_failures_as_data() -> None:
    net = MemoryNetwork()
    driver = net.channel("driver", ["a", "b", "c"])
    peers = {n: Peer(driver, n, timeout=5) for n in ("a", "b", "c")}
    net.channel("c", ["driver"])  # c connects, then dies before answering
    net.kill("c")

    def drive() -> tuple[dict[str, Ack], dict[str, BaseException]]:
        res = gather(peers, {"a": Hello("p", 1, "r", {}), "b": Hello("p", 1, "r", {"bad": True}),
                             "c": Hello("p", 1, "r", {})}, Ack, step="round/1", min_ok=1)
        for n in ("a", "b"):
            peers[n].ask(Done(), Ack, "round/done")
        return res

    out = run_parties({"a": _echo_server(net, "a"), "b": _echo_server(net, "b"), "driver": drive}, timeout=20)
    results, failures = out["driver"]  # type: ignore[misc]
    assert results == {"a": Ack("a:r")}
    assert set(failures) == {"b", "c"}
    assert isinstance(failures["b"], PartyError) and failures["b"].field == "bad"
    assert isinstance(failures["c"], PeerDiedError) and failures["c"].peer == "c"


def test_gather_fails_the_round_below_min_ok_naming_every_failure() -> None:
    net = MemoryNetwork()
    driver = net.channel("driver", ["a", "b"])
    for n in ("a", "b"):
        net.channel(n, ["driver"])
        net.kill(n)
    peers = {n: Peer(driver, n, timeout=5) for n in ("a", "b")}
    with pytest.raises(RoundFailed, match="fewer than 1 peers") as info:
        gather(peers, {"a": Done(), "b": Done()}, Ack, step="round/1", min_ok=1)
    assert set(info.value.failures) == {"a", "b"}
    with pytest.raises(ValueError, match="min_ok"):
        gather(peers, {"a": Done()}, Ack, step="round/2", min_ok=2)


def test_fan_out_orders_failures_as_named_and_reraises_a_bug() -> None:
    """Peers fail in the reverse of their order; the failures come back in the order of the names (the
    first one is what a policy names), and a non-peer exception is a bug raised on the caller's thread."""
    import threading
    import time

    threads: dict[str, str] = {}

    def exchange(name: str) -> str:
        threads[name] = threading.current_thread().name
        if name == "ok":
            return "answer"
        time.sleep({"a": 0.2, "b": 0.1, "c": 0.0}[name])
        raise PeerTimeoutError(name, f"x/{name}", "silent")

    results, failures = fan_out(["a", "ok", "b", "c"], exchange, step="x")
    assert results == {"ok": "answer"} and list(failures) == ["a", "b", "c"]
    assert all(isinstance(e, PeerTimeoutError) and e.peer == n for n, e in failures.items())
    assert len(set(threads.values())) == 4 and threading.current_thread().name not in threads.values()
    assert fan_out(["c"], exchange, step="x")[1].keys() == {"c"}
    assert threads["c"] == threading.current_thread().name  # one peer: on the caller's thread

    def buggy(name: str) -> str:
        if name == "b":
            raise KeyError("a bug of this party")
        raise PeerTimeoutError(name, "x", "silent")

    with pytest.raises(KeyError, match="a bug of this party"):
        fan_out(["a", "b"], buggy, step="x")


def test_config_agreement_names_every_differing_field() -> None:
    mine = {"lr": 0.01, "k": 4, "layout": "hiding"}
    assert config_mismatches(mine, {"lr": 0.01, "k": 4.0, "layout": "hiding"}, mine) == []
    bad = config_mismatches(mine, {"lr": 0.02, "k": 4, "x": 1}, mine)
    assert bad == ["lr", "layout", "x (unknown field)"]
    with pytest.raises(Rejection, match="config mismatch") as info:
        check_hello(Hello("p", 1, "r", {"lr": 0.02, "k": 4, "layout": "hiding"}), "p", 1, mine, mine, "host")
    assert info.value.field == "lr" and "host 0.01 vs peer 0.02" in info.value.detail
    with pytest.raises(Rejection) as proto:
        check_hello(Hello("q", 1, "r", mine), "p", 1, mine, mine, "host")
    assert proto.value.field == "protocol"
    with pytest.raises(Rejection) as version:
        check_hello(Hello("p", 3, "r", mine), "p", 1, mine, mine, "host")
    assert version.value.field == "version"


def test_rejected_round_trips_on_the_wire() -> None:
    net = MemoryNetwork()
    a, b = net.channel("a", ["b"]), net.channel("b", ["a"])
    a.send("b", Rejected("users", "out of range"), step="s")
    assert b.recv("a", Rejected, step="s") == Rejected("users", "out of range")


# ---------------------------------------------------------------------------------------------- checkpoints
def _save(ck: Checkpointer, epoch: int, batch: int, final: bool = False, run_id: str = "r") -> str:
    return ck.save(epoch, batch, final, run_id=run_id, role="guest", arrays={"x": np.arange(3.0)},
                   meta={"note": epoch}).digest


def test_checkpointer_lists_newest_first_and_keeps_the_newest_k(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep=2)
    _save(ck, 0, 2)
    _save(ck, 1, 0)
    d = _save(ck, 1, 2, final=True)
    infos = ck.list()
    assert [i.cursor for i in infos] == [(1, 2, True), (1, 0, False)]
    assert ck.find(1, 2, True, d, "r") is not None and ck.find(1, 2, True, d, "other") is None
    assert ck.load(infos[0]).meta["note"] == 1
    assert ck.due(4) is False and Checkpointer(tmp_path, every_batches=2).due(4) is True


def test_checkpointer_refuses_keep_below_two_and_a_tampered_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep must be >= 2"):
        Checkpointer(tmp_path, keep=1)
    ck = Checkpointer(tmp_path)
    _save(ck, 0, 1)
    info = ck.list()[0]
    npz = info.path / "arrays.npz"
    raw = bytearray(npz.read_bytes())
    raw[-30] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="content_sha256"):
        ck.load(info)


def test_checkpointer_run_id_is_made_once_and_kept(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    rid = ck.run_id
    assert len(rid) == 32 and Checkpointer(tmp_path).run_id == rid
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "not hex"}))
    with pytest.raises(ArtifactError, match="run_id"):
        _ = ck.run_id
    ck.clear()
    assert not tmp_path.exists()


def test_privacy_journal_rolls_back_what_a_checkpoint_does_not_hold(tmp_path: Path) -> None:
    j = PrivacyJournal(tmp_path / "p.jsonl")
    for _ in range(5):
        j.append(("gaussian", 2.0, 1.0, 1))
    with open(j.path, "a") as f:
        f.write('["gauss')  # a line torn by a crash
    assert len(j.roll_back(3)) == 2 and len(j.events()) == 3
    j.append(("gaussian", 2.0, 1.0, 1))
    assert len(j.roll_back(4)) == 2  # nothing new lost; the earlier loss is kept
    assert len(j.roll_back(1)) == 5
