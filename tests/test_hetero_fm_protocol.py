"""Protocol behaviour of the vertical FM over the in-memory twin: CKKS accuracy, what the host receives,
config agreement, dead peers, hostile messages, cold users."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import pytest
import torch

from fedrec.crypto.backend import KeyPin, load_public
from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.models.fm import FactorizationMachine
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost, packing
from fedrec.protocols.hetero_fm.messages import (
    Ack,
    EncryptedResiduals,
    HeteroFMError,
    PartialsRequest,
    PredictRequest,
    ProtocolRejected,
    ReleasedGradients,
    Setup,
)
from fedrec.protocols.messages import Hello
from fedrec.transport import MemoryNetwork, Message, PeerDiedError, run_parties
from fedrec.transport.memory import MemoryChannel

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

T = TypeVar("T")


def views(n_users: int = 100, seed: int = 1) -> tuple[Any, Any, Any]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=40, n_ratings=n_users * 10, seed=seed)).dataset
    gv, hv = vertical_split(ds, seed=0)
    return ds, gv, hv


def pair(cfg: HeteroFMConfig, net: MemoryNetwork | None = None) -> tuple[HeteroFMHost, MemoryChannel]:
    """A host on ``net`` (default: a new network) and the channel a guest talks to it through."""
    net = net or MemoryNetwork()
    return HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg), net.channel("guest", ["host"])


def run(host: HeteroFMHost, features: Any, guest_side: Callable[[], T], timeout: float = 60) -> T:
    """``guest_side`` against ``host.serve(features)``, each in its own thread; returns what the guest side
    returned. An error on either side is re-raised here; a side still running after ``timeout`` fails."""
    out = run_parties({"host": lambda: host.serve(features), "guest": guest_side}, timeout=timeout)
    assert out["host"] is host
    return cast(T, out["guest"])


def record(ch: MemoryChannel) -> list[Message]:
    """Every message ``ch`` sends from now on (through its send listener)."""
    sent: list[Message] = []
    ch.add_send_listener(lambda peer, step, n_bytes, msg: sent.append(msg))
    return sent


def on_nth(ch: MemoryChannel, kind: type[Message], n: int, action: Callable[[], None]) -> None:
    """Run ``action`` on the sending thread once ``ch`` has sent its ``n``-th ``kind`` message."""
    count = itertools.count(1)

    def listener(peer: str, step: str, n_bytes: int, msg: Message) -> None:
        if isinstance(msg, kind) and next(count) == n:
            action()

    ch.add_send_listener(listener)


def fit_then(host: HeteroFMHost, ch: MemoryChannel, cfg: HeteroFMConfig, interactions: Any, items: Any,
             features: Any, then: Callable[[HeteroFMGuest], T]) -> T:
    """Fit a guest on ``ch`` against ``host``, return ``then(guest)`` (run while the host still serves)."""
    guest = HeteroFMGuest(ch, "host", cfg)

    def guest_side() -> T:
        guest.fit(interactions, item_features=items, validation="none")
        out = then(guest)
        guest.close()
        return out

    return run(host, features, guest_side)


def fit_and_score(cfg: HeteroFMConfig, interactions: Any, items: Any, features: Any, test: Any) -> float:
    host, ch = pair(cfg)
    return fit_then(host, ch, cfg, interactions, items, features, lambda guest: rmse(guest, test))


def rmse(model: Any, pairs: Any) -> float:
    return float(np.sqrt(np.mean((model.predict(pairs) - pairs["rating"].to_numpy()) ** 2)))


def test_ckks_rmse_within_0_3_percent_of_plain() -> None:
    ds, gv, hv = views(80)
    test = gv.interactions.sample(200, random_state=0)
    out = {backend: fit_and_score(HeteroFMConfig(label_dp="off", n_factors=4, epochs=2, batch_size=256,
                                                 backend=backend,
                                                 timeout=60), gv.interactions, gv.item_features,
                                  hv.user_features, test)
           for backend in ("plain", "ckks")}
    assert out["ckks"] == pytest.approx(out["plain"], rel=3e-3)


def test_host_never_receives_label_derived_plaintext() -> None:
    ds, gv, hv = views(60)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=256, backend="ckks", timeout=60)
    host, ch = pair(cfg)
    sent = record(ch)
    guest = HeteroFMGuest(ch, "host", cfg)
    run(host, hv.user_features,
        lambda: guest.fit(gv.interactions, item_features=gv.item_features, validation="none").close())
    assert host._backend is not None
    assert not host._backend.has_secret_key
    assert guest._backend is not None and guest._backend.has_secret_key
    kinds = {type(m).__name__ for m in sent}
    assert kinds == {"Hello", "Setup", "PartialsRequest", "EncryptedResiduals", "ReleasedGradients",
                     "EpochEnd", "Done"}
    assert isinstance(sent[0], Hello) and isinstance(sent[1], Setup)  # config first, then key material
    pub = load_public(sent[1].public_context, KeyPin())
    assert not pub.has_secret_key
    for m in sent:
        if isinstance(m, EncryptedResiduals):
            for blob in m.chunks:
                assert blob[:4] == b"FRCT" and blob[4:8] == b"ckks"
                width = m.lanes * m.users_per_chunk * packing.width(4, cfg.layout)
                ct = guest._backend.deserialize(blob, width, 0)
                with pytest.raises(Exception, match="no secret key"):
                    pub.decrypt(ct)
        if isinstance(m, PartialsRequest):  # only user indices: no rating, residual or item
            assert m.users.dtype == np.int64 and m.purpose == "train"
        if isinstance(m, ReleasedGradients):  # masked aggregates: |value| is mask-sized, not gradient-sized
            assert m.values.shape[1] == packing.released_width(cfg.n_factors, cfg.layout)
            assert np.median(np.abs(m.values)) > 1e6


def test_config_mismatch_fails_naming_the_field() -> None:
    ds, gv, hv = views(40)
    host, ch = pair(HeteroFMConfig(label_dp="off", n_factors=8, backend="plain",
                                   timeout=20))
    guest = HeteroFMGuest(ch, "host", HeteroFMConfig(label_dp="off", n_factors=4, backend="plain",
                                                     timeout=20))

    def guest_side() -> None:
        try:
            guest.fit(gv.interactions, item_features=gv.item_features)
        finally:
            guest.close()

    out = run_parties({"host": lambda: host.serve(hv.user_features), "guest": guest_side}, timeout=20,
                      return_exceptions=True)
    error = out["guest"]
    assert isinstance(error, HeteroFMError) and "n_factors" in str(error)
    assert error.step == "fm/setup" and error.peer == "host"
    assert out["host"] is host and host.rejected == 1


def test_dead_host_stops_guest_with_peer_and_step() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=50, batch_size=64, backend="plain", timeout=20)
    net = MemoryNetwork()
    host, ch = pair(cfg, net)
    on_nth(ch, PartialsRequest, 3, lambda: net.kill("host"))  # mid-epoch, the host's reply still due
    guest = HeteroFMGuest(ch, "host", cfg)
    t0 = time.monotonic()
    out = run_parties({"host": lambda: host.serve(hv.user_features),
                       "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features,
                                                  validation="none")},
                      timeout=30, return_exceptions=True)
    assert time.monotonic() - t0 < 20  # the death was seen, not waited out (timeout=20)
    error = out["guest"]
    assert isinstance(error, PeerDiedError)
    assert error.peer == "host" and str(error.step).startswith("fm/")
    own = out["host"]  # the killed party's own calls fail too
    assert isinstance(own, PeerDiedError) and own.peer == "host"


def test_dead_guest_stops_host_with_peer_and_step() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=50, batch_size=64, backend="plain", timeout=20)
    net = MemoryNetwork()
    host, ch = pair(cfg, net)
    on_nth(ch, PartialsRequest, 3, lambda: net.kill("guest"))
    guest = HeteroFMGuest(ch, "host", cfg)
    out = run_parties({"host": lambda: host.serve(hv.user_features),
                       "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features,
                                                  validation="none")},
                      timeout=20, return_exceptions=True)
    error = out["host"]
    assert isinstance(error, PeerDiedError) and error.peer == "guest"
    assert str(error.step).startswith("fm/")
    own = out["guest"]  # the killed party's own calls fail too
    assert isinstance(own, PeerDiedError) and own.peer == "guest"


def test_hostile_messages_are_rejected_and_host_keeps_serving() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20)
    host, ch = pair(cfg)

    def guest_side() -> tuple[dict[str, ProtocolRejected], float]:
        answers = {}
        # before setup, out of order, garbage ciphertexts: each answered with ProtocolRejected
        ch.send("host", PartialsRequest("train", 0, 0, np.array([0, 1])), step="evil/1")
        answers["evil/1"] = ch.recv("host", ProtocolRejected, step="evil/1")
        guest = HeteroFMGuest(ch, "host", cfg).fit(gv.interactions, item_features=gv.item_features,
                                                   validation="none")
        ch.send("host", EncryptedResiduals(0, 0, 10, 1, 1, [b"garbage"]), step="evil/2")
        answers["evil/2"] = ch.recv("host", ProtocolRejected, step="evil/2")
        ch.send("host", PartialsRequest("validate", 0, 0, np.array([5, 3])), step="evil/3")
        answers["evil/3"] = ch.recv("host", ProtocolRejected, step="evil/3")
        ch.send("host", ReleasedGradients(7, 7, np.zeros((1, 5))), step="evil/4")
        answers["evil/4"] = ch.recv("host", ProtocolRejected, step="evil/4")
        ch.send("host", Ack("not a request"), step="evil/5")  # a type the host never accepts
        score = rmse(guest, gv.interactions.head(50))  # the host still answers predictions
        guest.close()
        return answers, score

    answers, score = run(host, hv.user_features, guest_side)
    assert all(isinstance(a, ProtocolRejected) for a in answers.values()) and len(answers) == 4
    assert answers["evil/3"].field == "users" and answers["evil/4"].field == "batch"
    assert score < 2.0
    assert host.rejected >= 5


def test_predict_falls_back_explicitly_for_users_without_host_partials() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20)
    hv_small = type(hv)(hv.name, hv.user_features.iloc[:20])
    pairs = gv.interactions.drop_duplicates("user_id")
    host, ch = pair(cfg)
    guest = HeteroFMGuest(ch, "host", cfg)

    def guest_side() -> tuple[np.ndarray, dict[str, int], np.ndarray, np.ndarray]:
        guest.fit(gv.interactions, item_features=gv.item_features, validation="none")
        scores = guest.predict(pairs)
        fallbacks = dict(guest.last_fallbacks)
        ids, top = guest.recommend(pairs["user_id"].head(3).tolist(), k=5)
        guest.close()
        return scores, fallbacks, ids, top

    scores, fallbacks, ids, top = run(host, hv_small.user_features, guest_side)
    missing = (~pairs["user_id"].astype(str).isin(hv_small.user_features.index.astype(str))).sum()
    assert fallbacks == {"unknown_user": 0, "unknown_item": 0, "no_host_partial": int(missing)}
    assert missing > 0
    assert np.all(np.isfinite(scores))
    assert ids.shape == (3, 5) and np.all(np.diff(top, axis=1) <= 0)


def test_federated_beats_guest_only_for_cold_users() -> None:
    ds, gv, hv = views(300, seed=3)
    counts = gv.interactions.groupby("user_id").size()
    cold_users = counts.index[counts <= 6]
    inter = gv.interactions
    is_cold_test = inter["user_id"].isin(cold_users) & (inter.groupby("user_id").cumcount() >= 2)
    train, test = inter[~is_cold_test], inter[is_cold_test]
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=8, batch_size=256, lr=1e-2, backend="plain",
                         timeout=60,
                         validation="none", use_history=False)
    federated = fit_and_score(cfg, train, gv.item_features, hv.user_features, test)
    params = cfg.fm_params()
    params["use_user_features"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = FactorizationMachine(**params).fit(train, None, gv.item_features, validation="none")
    assert len(test) > 50
    assert federated < rmse(alone, test)


def test_guest_references_only_aligned_users() -> None:
    ds, gv, hv = views(60)
    inter = gv.interactions
    aligned = {str(u) for u in hv.user_features.index[:6]} & {str(u) for u in inter["user_id"]}
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=16, backend="plain", timeout=20)
    host, ch = pair(cfg)
    sent = record(ch)
    guest = HeteroFMGuest(ch, "host", cfg)

    def guest_side() -> None:
        guest.fit(inter, item_features=gv.item_features, validation="none", aligned_users=aligned)
        guest.predict(inter)
        guest.recommend(inter["user_id"].unique()[:10].tolist(), k=3)
        guest.close()

    run(host, hv.user_features, guest_side)
    assert len(aligned) >= 3
    assert isinstance(sent[1], Setup) and set(sent[1].user_ids) == aligned
    train = [m for m in sent if isinstance(m, PartialsRequest) and m.purpose == "train"]
    assert all(m.users.size and m.users.max() < len(aligned) for m in train)
    n_batches = -(-len(inter) // cfg.batch_size)
    assert 0 < len(train) < n_batches  # batches without aligned users: no round trip
    predicted = [u for m in sent if isinstance(m, PredictRequest) for u in m.user_ids]
    assert predicted and set(predicted) <= aligned
    assert guest.last_fallbacks["no_host_partial"] >= 1


def test_host_refuses_users_outside_the_aligned_set_and_keeps_serving() -> None:
    ds, gv, hv = views(40)
    inter = gv.interactions
    users = sorted({str(u) for u in inter["user_id"]})
    aligned, outside = users[:10], users[10]
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20)
    host, ch = pair(cfg)

    def guest_side() -> tuple[ProtocolRejected, ProtocolRejected, np.ndarray]:
        guest = HeteroFMGuest(ch, "host", cfg).fit(inter, item_features=gv.item_features, validation="none",
                                                   aligned_users=aligned)
        ch.send("host", PredictRequest([aligned[0], outside]), step="evil/1")
        first = ch.recv("host", ProtocolRejected, step="evil/1")
        ch.send("host", PartialsRequest("validate", 0, 0, np.array([len(aligned)])), step="evil/2")
        second = ch.recv("host", ProtocolRejected, step="evil/2")
        scores = guest.predict(inter.head(20))  # still serving
        guest.close()
        return first, second, scores

    first, second, scores = run(host, hv.user_features, guest_side)
    assert first.field == "user_ids" and "outside the aligned set" in first.detail
    assert second.field == "users"
    assert np.all(np.isfinite(scores))
    assert host.rejected == 2


def test_ckks_batch_beyond_the_modulus_is_split_and_matches_plain() -> None:
    ds, gv, hv = views(200)
    inter = gv.interactions
    test = inter.sample(200, random_state=0)
    # plain_bound 2048 makes the single-release bound exceed the n8192 modulus for ~60+ users
    base = dict(n_factors=2, epochs=1, batch_size=len(inter), plain_bound=2048.0, timeout=60,
                validation="none", use_history=False)
    from fedrec.crypto.backend import CryptoError, make_backend
    from fedrec.protocols.hetero_fm import packing

    be = make_backend("ckks", preset="n8192", rotations=False)
    n_users = inter["user_id"].nunique()
    with pytest.raises(CryptoError, match="modulus room"):  # what a one-part release did before
        packing.release_policy(be, packing.plan_chunks(be, n_users, 2, 30), 256.0, 2048.0, 20)
    out = {}
    for backend in ("plain", "ckks"):
        cfg = HeteroFMConfig(label_dp="off", backend=backend, **base)  # type: ignore[arg-type]
        host, ch = pair(cfg)
        sent = record(ch)
        predictions = fit_then(host, ch, cfg, inter, gv.item_features, hv.user_features,
                               lambda guest: guest.predict(test))
        parts = [m.n_parts for m in sent if isinstance(m, EncryptedResiduals)]
        out[backend] = (predictions, parts)
    assert out["plain"][1] == [1]
    assert len(out["ckks"][1]) > 1 and set(out["ckks"][1]) == {len(out["ckks"][1])}
    # Adam's first step moves a parameter by ~lr whatever its gradient's size, so the release's flooding
    # noise can flip the sign of a near-zero gradient: single predictions may move by a few lr (1e-3),
    # while the typical prediction must stay far closer.
    diff = np.abs(out["ckks"][0] - out["plain"][0])
    assert diff.max() < 5e-3
    assert np.median(diff) < 5e-4
