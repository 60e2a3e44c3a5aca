"""Issue #9, defect 6 (PSI): a guest that reconnects while the host waits in the handshake gets the host's
Hello at once instead of waiting for its timeout."""

from __future__ import annotations

import threading
import time
from typing import Any

from fedrec.psi.ids import encode_ids
from fedrec.psi.messages import Hello
from fedrec.psi.protocol import PsiResult, run_psi
from fedrec.transport import MemoryNetwork, Message


def test_a_reconnecting_guest_gets_the_hosts_hello_without_waiting_for_the_timeout() -> None:
    host_ids = encode_ids([f"u{i}" for i in range(0, 60)])
    guest_ids = encode_ids([f"u{i}" for i in range(30, 90)])
    net = MemoryNetwork()
    host_ch = net.channel("host", ["guest"])
    first = net.channel("guest", ["host"])
    hello_sent = threading.Event()

    def on_send(peer: str, step: str, n: int, msg: Message) -> None:
        if isinstance(msg, Hello):
            hello_sent.set()

    host_ch.add_send_listener(on_send)
    out: dict[str, Any] = {}

    def host() -> None:
        try:
            out["host"] = run_psi(host_ch, "guest", host_ids, role="host", chunk_size=16, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            out["host"] = exc

    t = threading.Thread(target=host, daemon=True)
    t.start()
    assert hello_sent.wait(10)  # the host's Hello went to the first guest, which then dies
    net.kill("guest")
    del first
    second = net.channel("guest", ["host"])
    t0 = time.perf_counter()
    guest = run_psi(second, "host", guest_ids, role="guest", chunk_size=16, timeout=20)
    elapsed = time.perf_counter() - t0
    t.join(20)
    host_result = out["host"]
    assert isinstance(host_result, PsiResult), host_result
    assert guest.intersection_size == host_result.intersection_size == 30
    assert guest.ids == host_result.ids
    assert elapsed < 10
