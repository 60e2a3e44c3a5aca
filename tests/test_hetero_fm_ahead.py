"""The host's work ahead (host_batch.py): the same model with or without it, a guest whose plan the
host did not predict is served from scratch, and layout ``static`` encodes the host's plaintexts once
per run."""

from __future__ import annotations

import types
import warnings
from typing import Any

import pytest
import torch

from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost, packing
from fedrec.transport import MemoryNetwork, run_parties

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def _run(backend: str, ahead: bool, layout: str = "compact") -> tuple[HeteroFMHost, HeteroFMGuest]:
    ds = generate(SyntheticConfig(n_users=60, n_items=30, n_ratings=600, seed=2)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(n_factors=4, epochs=2, batch_size=150, validation="none", label_dp="off",
                         timeout=60, backend=backend, layout=layout)
    net = MemoryNetwork()
    g_ch, h_ch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    guest, host = HeteroFMGuest(g_ch, "host", cfg), HeteroFMHost(h_ch, "guest", cfg, ahead=ahead)

    def play() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            guest.fit(gv.interactions)
        guest.close()

    run_parties({"guest": play, "host": lambda: host.serve(hv.user_features)}, timeout=120)
    return host, guest


def _host_params(host: HeteroFMHost) -> dict[str, torch.Tensor]:
    assert host.params is not None
    return {k: v.detach().clone() for k, v in host.params.state_dict().items()}


def test_plain_model_is_bit_identical_with_and_without_the_work_ahead() -> None:
    a, _ = _run("plain", ahead=True)
    b, _ = _run("plain", ahead=False)
    pa, pb = _host_params(a), _host_params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert "ahead:encode" in a.stages.snapshot()[0] and "ahead:encode" not in b.stages.snapshot()[0]


def test_a_plan_the_host_did_not_predict_is_computed_inline(monkeypatch: Any) -> None:
    from fedrec.protocols.hetero_fm import host_batch

    def one_lane(*args: Any, **kwargs: Any) -> list[packing.ChunkPlan]:  # a prediction the guest won't make
        plans = packing.plan_parts(*args, **kwargs)
        return [packing.ChunkPlan(p.n_users, p.k, max(1, p.users_per_chunk // 2), 1, p.layout) for p in plans]

    proxy = types.ModuleType("packing_as_the_host_predicts")
    proxy.__dict__.update(packing.__dict__)
    proxy.plan_parts = one_lane  # type: ignore[attr-defined]
    monkeypatch.setattr(host_batch, "packing", proxy)
    a, _ = _run("plain", ahead=True)
    monkeypatch.undo()
    b, _ = _run("plain", ahead=False)
    times, counts = a.stages.snapshot()
    assert counts["ahead_plan_mismatch"] >= 4 and "multipliers" not in times  # 2 epochs x 2 batches
    pa, pb = _host_params(a), _host_params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize("ahead", [True, False])
def test_static_layout_encodes_the_host_plaintexts_once_per_run(ahead: bool) -> None:
    """CKKS, 2 epochs x 4 batches: the first batch encodes the host's product plaintexts, the 7 others
    reuse them, with or without the work ahead; the model is the plain backend's within CKKS's noise
    (measured mean |difference| ~4e-5 for both ``compact`` and ``static``, on parameters of mean size
    0.04 that a wrong gradient would move by about that much), and on plain ``static`` trains the
    ``compact`` model up to float summation order (test_hetero_fm_exact: the centralized FM)."""
    a, _ = _run("ckks", ahead=ahead, layout="static")
    times, counts = a.stages.snapshot()
    assert counts["static_reused"] == 7 and counts["products"] > 0
    assert times["ahead:encode"][1] == 1  # one encoding pass in the whole run
    if not ahead:
        return
    p, _ = _run("plain", ahead=True, layout="static")
    c, _ = _run("plain", ahead=True, layout="compact")
    pa, pp, pc = _host_params(a), _host_params(p), _host_params(c)
    for k in pp:
        torch.testing.assert_close(pp[k], pc[k], atol=1e-5, rtol=0)
    diff = max(float((pa[k] - pp[k]).abs().mean()) for k in pp)
    assert diff < 4e-4, diff


def test_static_layout_warns_when_batches_cover_few_aligned_users(caplog: pytest.LogCaptureFixture) -> None:
    """Batches of 40 ratings hold well under 75% of 60 users: ``static`` would encrypt chunks for users
    the batch does not have, and the guest says so once (``compact`` is likely faster there)."""
    ds = generate(SyntheticConfig(n_users=60, n_items=30, n_ratings=600, seed=2)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=40, validation="none", label_dp="off",
                         timeout=60, backend="plain", layout="static")
    net = MemoryNetwork()
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)

    def play() -> None:
        guest.fit(gv.interactions)
        guest.close()

    with caplog.at_level("WARNING", logger="fedrec.protocols.hetero_fm.guest"):
        run_parties({"guest": play, "host": lambda: host.serve(hv.user_features)}, timeout=120)
    said = [r.getMessage() for r in caplog.records if "layout 'static'" in r.getMessage()]
    assert len(said) == 1 and "layout 'compact' encrypts fewer chunks" in said[0]
