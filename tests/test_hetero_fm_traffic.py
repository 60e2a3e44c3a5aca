"""The channels' public traffic counters over a protocol run (what benchmarks/hetero_fm.py reads), and
the send listener that sees every message a channel sends."""

from __future__ import annotations

import pytest
import torch

from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.protocols.hetero_fm.messages import Ack
from fedrec.transport import MemoryNetwork, Message, run_parties
from fedrec.transport.control import ErrorReply, Goodbye

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def test_traffic_counters_agree_between_peers_and_with_the_send_listener() -> None:
    ds = generate(SyntheticConfig(n_users=40, n_items=30, n_ratings=400, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=20,
                         validation="none")
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    steps: dict[str, int] = {}
    gch.add_send_listener(lambda peer, step, n, msg: steps.__setitem__(step, steps.get(step, 0) + n))
    host = HeteroFMHost(hch, "guest", cfg)
    guest = HeteroFMGuest(gch, "host", cfg)
    run_parties({"host": lambda: host.serve(hv.user_features),
                 "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features).close()},
                timeout=20)
    g, h = gch.traffic, hch.traffic
    n_batches = -(-len(gv.interactions) // cfg.batch_size)
    # hello + setup, per batch partials/residuals/release, epoch end, done
    assert g.messages_sent == 2 + 3 * n_batches + 1 + 1
    assert (g.bytes_sent, g.messages_sent) == (h.bytes_received, h.messages_received)
    assert (h.bytes_sent, h.messages_sent) == (g.bytes_received, g.messages_received)
    assert sum(steps.values()) == gch.bytes_sent and steps["fm/setup"] > 0
    assert gch.bytes_sent > 0 and hch.bytes_received == gch.bytes_sent


def test_send_listener_gets_each_message_object_error_replies_and_goodbyes_included() -> None:
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    sent: list[tuple[str, str, int, Message]] = []
    hch.add_send_listener(lambda peer, step, n, msg: sent.append((peer, step, n, msg)))
    gch.send("host", Ack("hello"), step="s/1")
    hch.reply(hch.recv_any(Ack, step="s/1"), Ack("back"))
    gch._transmit("host", [b"\xc1 not a header"], step="bad")  # raw injection: the host answers an error
    hch.close()
    assert [(peer, step, type(msg)) for peer, step, _, msg in sent] == [
        ("guest", "s/1", Ack), ("guest", "", ErrorReply), ("guest", "close", Goodbye)]
    assert sent[0][3] == Ack("back")
    error = sent[1][3]
    assert isinstance(error, ErrorReply) and error.code == "malformed"
    assert sum(n for _, _, n, _ in sent) == hch.bytes_sent
