"""Protocol behaviour of the vertical FM over the in-memory twin: CKKS accuracy, what the host receives,
config agreement, dead peers, hostile messages, cold users."""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.crypto.backend import KeyPin, load_public
from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.models.fm import FactorizationMachine
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.protocols.hetero_fm.messages import (
    Ack,
    EncryptedResiduals,
    HeteroFMError,
    PartialsRequest,
    PredictRequest,
    ProtocolRejected,
    ReleasedGradients,
)
from fedrec.transport import MemoryNetwork, PeerDiedError
from fedrec.transport.memory import MemoryChannel

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def views(n_users: int = 100, seed: int = 1) -> tuple[Any, Any, Any]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=40, n_ratings=n_users * 10, seed=seed)).dataset
    gv, hv = vertical_split(ds, seed=0)
    return ds, gv, hv


HostRun = tuple[HeteroFMHost, threading.Thread, list[BaseException]]


def start_host(net: MemoryNetwork, cfg: HeteroFMConfig, features: Any) -> HostRun:
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            host.serve(features)
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return host, th, errors


def fit(cfg: HeteroFMConfig, gv: Any, hv: Any, net: MemoryNetwork | None = None) -> tuple[HeteroFMGuest, Any]:
    net = net or MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    guest.fit(gv.interactions, gv.item_features, validation="none")
    return guest, (host, th, errors)


def rmse(model: Any, pairs: Any) -> float:
    return float(np.sqrt(np.mean((model.predict(pairs) - pairs["rating"].to_numpy()) ** 2)))


def test_ckks_rmse_within_0_3_percent_of_plain() -> None:
    ds, gv, hv = views(80)
    test = gv.interactions.sample(200, random_state=0)
    out = {}
    for backend in ("plain", "ckks"):
        cfg = HeteroFMConfig(n_factors=4, epochs=2, batch_size=256, backend=backend, timeout=60)
        guest, (host, th, errors) = fit(cfg, gv, hv)
        out[backend] = rmse(guest, test)
        guest.close()
        th.join(10)
        assert not errors
    assert out["ckks"] == pytest.approx(out["plain"], rel=3e-3)


class Recorder:
    """Wraps the guest's channel: keeps every message it sends to the host."""

    def __init__(self, channel: MemoryChannel) -> None:
        self.inner, self.sent = channel, []
        self.send_inner = channel.send

    def __call__(self, peer: str, msg: Any, *, step: str) -> int:
        self.sent.append(msg)
        return self.send_inner(peer, msg, step=step)


def test_host_never_receives_label_derived_plaintext() -> None:
    ds, gv, hv = views(60)
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=256, backend="ckks", timeout=60)
    net = MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    ch = net.channel("guest", ["host"])
    rec = Recorder(ch)
    ch.send = rec  # type: ignore[method-assign]
    guest = HeteroFMGuest(ch, "host", cfg).fit(gv.interactions, gv.item_features, validation="none")
    guest.close()
    th.join(10)
    assert not errors and host._backend is not None
    assert not host._backend.has_secret_key
    assert guest._backend is not None and guest._backend.has_secret_key
    kinds = {type(m).__name__ for m in rec.sent}
    assert kinds == {"Setup", "PartialsRequest", "EncryptedResiduals", "ReleasedGradients", "EpochEnd",
                     "Done"}
    pub = load_public(rec.sent[0].public_context, KeyPin())
    assert not pub.has_secret_key
    for m in rec.sent:
        if isinstance(m, EncryptedResiduals):
            for blob in m.chunks:
                assert blob[:4] == b"FRCT" and blob[4:8] == b"ckks"
                ct = guest._backend.deserialize(blob, m.lanes * m.users_per_chunk * 10, 0)
                with pytest.raises(Exception, match="no secret key"):
                    pub.decrypt(ct)
        if isinstance(m, PartialsRequest):  # only user indices: no rating, residual or item
            assert m.users.dtype == np.int64 and m.purpose == "train"
        if isinstance(m, ReleasedGradients):  # masked aggregates: |value| is mask-sized, not gradient-sized
            assert m.values.shape[1] == cfg.n_factors + 1
            assert np.median(np.abs(m.values)) > 1e6


def test_config_mismatch_fails_naming_the_field() -> None:
    ds, gv, hv = views(40)
    net = MemoryNetwork()
    host, th, errors = start_host(net, HeteroFMConfig(n_factors=8, backend="plain", timeout=20),
                                  hv.user_features)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host",
                          HeteroFMConfig(n_factors=4, backend="plain", timeout=20))
    with pytest.raises(HeteroFMError, match="n_factors") as info:
        guest.fit(gv.interactions, gv.item_features)
    assert info.value.step == "fm/setup" and info.value.peer == "host"
    guest.close()
    th.join(10)
    assert not errors and host.rejected == 1


def test_dead_host_stops_guest_with_peer_and_step() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(n_factors=4, epochs=50, batch_size=64, backend="plain", timeout=20)
    net = MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    threading.Timer(1.0, lambda: net.kill("host")).start()
    t0 = time.monotonic()
    with pytest.raises(PeerDiedError) as info:
        guest.fit(gv.interactions, gv.item_features, validation="none")
    assert time.monotonic() - t0 < 20
    assert info.value.peer == "host" and str(info.value.step).startswith("fm/")


def test_dead_guest_stops_host_with_peer_and_step() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(n_factors=4, epochs=50, batch_size=64, backend="plain", timeout=20)
    net = MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    def train() -> None:
        with pytest.raises(PeerDiedError):  # the killed party's own sends fail too
            guest.fit(gv.interactions, gv.item_features, validation="none")

    runner = threading.Thread(target=train, daemon=True)
    runner.start()
    time.sleep(1.0)
    net.kill("guest")
    th.join(20)
    assert not th.is_alive() and len(errors) == 1
    assert isinstance(errors[0], PeerDiedError) and errors[0].peer == "guest"


def test_hostile_messages_are_rejected_and_host_keeps_serving() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20)
    net = MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    ch = net.channel("guest", ["host"])
    # before setup, out of order, garbage ciphertexts: each answered with ProtocolRejected
    ch.send("host", PartialsRequest("train", 0, 0, np.array([0, 1])), step="evil/1")
    assert isinstance(ch.recv("host", ProtocolRejected, step="evil/1"), ProtocolRejected)
    guest = HeteroFMGuest(ch, "host", cfg).fit(gv.interactions, gv.item_features, validation="none")
    ch.send("host", EncryptedResiduals(0, 0, 10, 1, 1, [b"garbage"]), step="evil/2")
    assert isinstance(ch.recv("host", ProtocolRejected, step="evil/2"), ProtocolRejected)
    ch.send("host", PartialsRequest("validate", 0, 0, np.array([5, 3])), step="evil/3")
    assert ch.recv("host", ProtocolRejected, step="evil/3").field == "users"
    ch.send("host", ReleasedGradients(7, 7, np.zeros((1, 5))), step="evil/4")
    assert ch.recv("host", ProtocolRejected, step="evil/4").field == "batch"
    ch.send("host", Ack("not a request"), step="evil/5")  # a type the host never accepts
    assert rmse(guest, gv.interactions.head(50)) < 2.0  # host still answers predictions
    guest.close()
    th.join(10)
    assert not errors and host.rejected >= 5


def test_predict_falls_back_explicitly_for_users_without_host_partials() -> None:
    ds, gv, hv = views(40)
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20)
    hv_small = type(hv)(hv.name, hv.user_features.iloc[:20])
    guest, (host, th, errors) = fit(cfg, gv, hv_small)
    pairs = gv.interactions.drop_duplicates("user_id")
    scores = guest.predict(pairs)
    missing = (~pairs["user_id"].astype(str).isin(hv_small.user_features.index.astype(str))).sum()
    assert guest.last_fallbacks == {"host_partials": int(missing)} and missing > 0
    assert np.all(np.isfinite(scores))
    ids, top = guest.recommend(pairs["user_id"].head(3).tolist(), N=5)
    assert ids.shape == (3, 5) and np.all(np.diff(top, axis=1) <= 0)
    guest.close()
    th.join(10)


def test_federated_beats_guest_only_for_cold_users() -> None:
    ds, gv, hv = views(300, seed=3)
    counts = gv.interactions.groupby("user_id").size()
    cold_users = counts.index[counts <= 6]
    inter = gv.interactions
    is_cold_test = inter["user_id"].isin(cold_users) & (inter.groupby("user_id").cumcount() >= 2)
    train, test = inter[~is_cold_test], inter[is_cold_test]
    cfg = HeteroFMConfig(n_factors=4, epochs=8, batch_size=256, lr=1e-2, backend="plain", timeout=60,
                         validation="none", use_history=False)
    net = MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    guest.fit(train, gv.item_features, validation="none")
    params = cfg.fm_params()
    params["use_user_features"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = FactorizationMachine(**params).fit(train, None, gv.item_features, validation="none")
    assert len(test) > 50
    assert rmse(guest, test) < rmse(alone, test)
    guest.close()
    th.join(10)


def test_guest_references_only_aligned_users() -> None:
    ds, gv, hv = views(60)
    inter = gv.interactions
    aligned = {str(u) for u in hv.user_features.index[:6]} & {str(u) for u in inter["user_id"]}
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=16, backend="plain", timeout=20)
    net = MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    ch = net.channel("guest", ["host"])
    rec = Recorder(ch)
    ch.send = rec  # type: ignore[method-assign]
    guest = HeteroFMGuest(ch, "host", cfg).fit(inter, gv.item_features, validation="none",
                                               aligned_users=aligned)
    guest.predict(inter)
    guest.recommend(inter["user_id"].unique()[:10].tolist(), N=3)
    guest.close()
    th.join(10)
    assert not errors and len(aligned) >= 3
    assert set(rec.sent[0].user_ids) == aligned
    train = [m for m in rec.sent if isinstance(m, PartialsRequest) and m.purpose == "train"]
    assert all(m.users.size and m.users.max() < len(aligned) for m in train)
    n_batches = -(-len(inter) // cfg.batch_size)
    assert 0 < len(train) < n_batches  # batches without aligned users: no round trip
    predicted = [u for m in rec.sent if isinstance(m, PredictRequest) for u in m.user_ids]
    assert predicted and set(predicted) <= aligned
    assert guest.last_fallbacks["host_partials"] >= 1


def test_host_refuses_users_outside_the_aligned_set_and_keeps_serving() -> None:
    ds, gv, hv = views(40)
    inter = gv.interactions
    users = sorted({str(u) for u in inter["user_id"]})
    aligned, outside = users[:10], users[10]
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20)
    net = MemoryNetwork()
    host, th, errors = start_host(net, cfg, hv.user_features)
    ch = net.channel("guest", ["host"])
    guest = HeteroFMGuest(ch, "host", cfg).fit(inter, gv.item_features, validation="none",
                                               aligned_users=aligned)
    ch.send("host", PredictRequest([aligned[0], outside]), step="evil/1")
    answer = ch.recv("host", ProtocolRejected, step="evil/1")
    assert answer.field == "user_ids" and "outside the aligned set" in answer.detail
    ch.send("host", PartialsRequest("validate", 0, 0, np.array([len(aligned)])), step="evil/2")
    assert ch.recv("host", ProtocolRejected, step="evil/2").field == "users"
    assert np.all(np.isfinite(guest.predict(inter.head(20))))  # still serving
    guest.close()
    th.join(10)
    assert not errors and host.rejected == 2


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
        cfg = HeteroFMConfig(backend=backend, **base)  # type: ignore[arg-type]
        net = MemoryNetwork()
        host, th, errors = start_host(net, cfg, hv.user_features)
        ch = net.channel("guest", ["host"])
        rec = Recorder(ch)
        ch.send = rec  # type: ignore[method-assign]
        guest = HeteroFMGuest(ch, "host", cfg).fit(inter, gv.item_features, validation="none")
        parts = [m.n_parts for m in rec.sent if isinstance(m, EncryptedResiduals)]
        out[backend] = (guest.predict(test), parts)
        guest.close()
        th.join(10)
        assert not errors
    assert out["plain"][1] == [1]
    assert len(out["ckks"][1]) > 1 and set(out["ckks"][1]) == {len(out["ckks"][1])}
    # Adam's first step moves a parameter by ~lr whatever its gradient's size, so the release's flooding
    # noise can flip the sign of a near-zero gradient: single predictions may move by a few lr (1e-3),
    # while the typical prediction must stay far closer.
    diff = np.abs(out["ckks"][0] - out["plain"][0])
    assert diff.max() < 5e-3
    assert np.median(diff) < 5e-4
