"""Issue #9, defect 1 for FedMF: a round, attempt or mask group beyond what the agreed config allows
(rounds, retries, roster) is refused by the client with ``Rejected`` naming the field, and the client keeps
serving: the same job then finishes normally. Over the in-memory twin (the client's real serve loop)."""

from __future__ import annotations

from typing import Any

import pytest

from fedrec.protocols.fedmf import FedMFConfig
from fedrec.protocols.fedmf.messages import MaskRequest
from fedrec.protocols.fedmf.server import FedMFServer
from fedrec.protocols.fedmf.simulation import build_clients, synthetic_federation
from fedrec.protocols.messages import Rejected
from fedrec.transport import MemoryNetwork
from fedrec.transport.parties import run_parties
from fedrec.transport.wire import Message

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

CONFIG = FedMFConfig(backend="plain", n_factors=4, rounds=2, retries=1, timeout=10.0, masks=True)


def test_a_client_refuses_cursors_beyond_the_agreed_setup_and_keeps_serving() -> None:
    ratings, catalogue, _ = synthetic_federation(3, n_users=30, n_items=20)
    built = build_clients(ratings, catalogue, CONFIG)
    net = MemoryNetwork()
    for name, c in built.items():
        c.channel = net.channel(name, ["server"])
    server_ch = net.channel("server", list(built))
    hostile = [  # (request, the field it must name)
        (MaskRequest("train", CONFIG.rounds, 0), "round"),  # rounds are 0 .. rounds-1
        (MaskRequest("train", 1000, 0), "round"),  # within the wire format's bound, beyond the config
        (MaskRequest("train", 0, CONFIG.retries + 1), "attempt"),
        (MaskRequest("train", 0, 0, group=len(built)), "group"),  # a roster of 3 has groups 0..2 at most
        (MaskRequest("stats", 1, 0), "round"),
    ]
    answers: list[tuple[Message, str]] = []
    probed: list[bool] = []

    def probe(peer: str, step: str, n_bytes: int, msg: Message) -> None:
        # once the job has reached the masking phase (c0 holds the roster), ask c0 the hostile requests
        if peer == "c0" and isinstance(msg, MaskRequest) and not probed:
            probed.append(True)  # once (our own requests come through here too)
            for req, field in hostile:
                try:
                    reply: Any = server_ch.request("c0", req, Rejected, step="fedmf/hostile", timeout=10)
                except Exception as exc:  # noqa: BLE001 - reported by the assertions below
                    reply = exc
                answers.append((reply, field))

    server_ch.add_send_listener(probe)
    server = FedMFServer.over_channel(server_ch, {n: c.keys.public for n, c in built.items()}, CONFIG,
                                      catalogue)
    out: dict[str, Any] = run_parties({"server": server.run, **{n: c.serve for n, c in built.items()}},
                                      timeout=120, return_exceptions=True)
    assert len(answers) == len(hostile), out["server"]
    for (reply, field), (req, _) in zip(answers, hostile, strict=True):
        assert isinstance(reply, Rejected) and reply.field == field, (req, reply)
    assert "beyond the agreed 2 round(s)" in answers[0][0].detail  # type: ignore[attr-defined]
    assert "beyond the agreed 1 retr" in answers[2][0].detail  # type: ignore[attr-defined]
    # c0 kept serving: the job finished with every client in every round
    assert out["server"] is server and server.rounds_done == CONFIG.rounds
    assert not server.excluded and all(c.finished for c in built.values())
    assert built["c0"].rounds_done == list(range(CONFIG.rounds))
