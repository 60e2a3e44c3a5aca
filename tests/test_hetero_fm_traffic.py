"""The channels' public traffic counters over a protocol run (what benchmarks/hetero_fm.py reads)."""

from __future__ import annotations

import threading

import pytest
import torch

from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def test_traffic_counters_agree_between_peers_and_with_the_send_listener() -> None:
    ds = generate(SyntheticConfig(n_users=40, n_items=30, n_ratings=400, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20,
                         validation="none")
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    steps: dict[str, int] = {}
    gch.add_send_listener(lambda peer, step, n: steps.__setitem__(step, steps.get(step, 0) + n))
    host = HeteroFMHost(hch, "guest", cfg)
    th = threading.Thread(target=host.serve, args=(hv.user_features,), daemon=True)
    th.start()
    HeteroFMGuest(gch, "host", cfg).fit(gv.interactions, gv.item_features).close()
    th.join(10)
    g, h = gch.traffic, hch.traffic
    n_batches = -(-len(gv.interactions) // cfg.batch_size)
    # setup, per batch partials/residuals/release, epoch end, done
    assert g.messages_sent == 1 + 3 * n_batches + 1 + 1
    assert (g.bytes_sent, g.messages_sent) == (h.bytes_received, h.messages_received)
    assert (h.bytes_sent, h.messages_sent) == (g.bytes_received, g.messages_received)
    assert sum(steps.values()) == gch.bytes_sent and steps["fm/setup"] > 0
    assert gch.bytes_sent > 0 and hch.bytes_received == gch.bytes_sent
