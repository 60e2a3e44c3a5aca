"""The stage clock behind the epoch profiles (benchmarks/hetero_fm.py, benchmarks/fedmf.py)."""

from __future__ import annotations

import time
import warnings

import pytest

from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.profiling import StageClock
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties


def test_stage_clock_adds_times_calls_and_counts_and_diffs_snapshots() -> None:
    clock = StageClock()
    with clock("a"):
        time.sleep(0.01)
    before = clock.snapshot()
    for _ in range(2):
        with clock("b"):
            pass
    clock.count("bytes", 100)
    with pytest.raises(RuntimeError), clock("a"):  # an exception still records the stage
        raise RuntimeError("x")
    times, counts = clock.since(before)
    assert set(times) == {"a", "b"} and times["b"][1] == 2 and times["a"][1] == 1
    assert counts == {"bytes": 100}
    all_times, _ = clock.snapshot()
    assert all_times["a"][0] >= 0.01 and all_times["a"][1] == 2


def test_parties_record_their_stages_of_a_ckks_batch_loop() -> None:
    ds = generate(SyntheticConfig(n_users=40, n_items=30, n_ratings=400, seed=5)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=200, validation="none", label_dp="off", timeout=60)
    net = MemoryNetwork()
    g_ch, h_ch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    guest, host = HeteroFMGuest(g_ch, "host", cfg), HeteroFMHost(h_ch, "guest", cfg)

    def play() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            guest.fit(gv.interactions)
        guest.close()

    run_parties({"guest": play, "host": lambda: host.serve(hv.user_features)}, timeout=120)
    g, gc = guest.stages.snapshot()
    h, hc = host.stages.snapshot()
    assert {"torch", "wait:partials", "encrypt", "serialize", "wait:grad", "deserialize", "decrypt",
            "release", "wait:release"} <= set(g)
    assert {"handle:partials", "handle:residuals", "handle:release", "deserialize", "products", "mask",
            "serialize", "step", "ahead:multipliers", "ahead:encode", "ahead:masks", "wait:ahead"} <= set(h)
    assert "multipliers" not in h  # everything was made ahead: the plan the host predicted was the guest's
    assert g["encrypt"][1] == 2  # one per batch (400 rows / 200)
    assert gc["chunks"] >= 2 and gc["results"] >= 2 and gc["chunk_bytes"] > 0
    assert hc["products"] >= hc["product_results"] >= 2 and hc["result_bytes"] > 0
    # the host's work on the residuals is inside the guest's wait for it
    assert h["handle:residuals"][0] <= g["wait:grad"][0]
