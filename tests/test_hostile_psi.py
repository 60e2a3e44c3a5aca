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


def test_both_parties_agree_on_success_when_one_cannot_write_its_output(tmp_path: Any) -> None:
    import errno

    import pytest

    from fedrec.artifacts import atomic_file
    from fedrec.psi import PsiPeerError
    from fedrec.transport import run_parties
    from training.psi_cmd import _commit

    net = MemoryNetwork()
    chans = {"guest": net.channel("guest", ["host"]), "host": net.channel("host", ["guest"])}

    def party(me: str, peer: str, full_disk: bool) -> str:
        out = tmp_path / f"{me}.csv"

        def write(tmp: Any = None) -> None:
            if full_disk:
                raise OSError(errno.ENOSPC, "No space left on device")

        with atomic_file(out) as tmp:
            tmp.write_text("aligned_index,id,row_index\n0,a,0\n")
            _commit(chans[me], peer, 10, tmp, write)
        return "written"

    out = run_parties({"guest": lambda: party("guest", "host", False),
                       "host": lambda: party("host", "guest", True)}, timeout=20, return_exceptions=True)
    assert isinstance(out["host"], OSError) and out["host"].errno == errno.ENOSPC
    assert isinstance(out["guest"], PsiPeerError) and "could not write its output" in str(out["guest"])
    assert "psi/commit" in str(out["guest"])
    assert not (tmp_path / "guest.csv").exists() and not (tmp_path / "host.csv").exists()
    with pytest.raises(AssertionError):  # and the temporary files are gone too
        assert list(tmp_path.iterdir())


def test_fedrec_psi_checks_its_output_before_the_network_opens(tmp_path: Any) -> None:
    import subprocess
    import sys

    ids = tmp_path / "ids.csv"
    ids.write_text("user_id\na\nb\n")
    (tmp_path / "out.csv").mkdir()  # --out is a directory: found before any connection attempt
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "training.cli", "psi", "--role", "guest", "--ids", str(ids),
                           "--column", "user_id", "--out", str(tmp_path / "out.csv"), "--insecure",
                           "--peer-endpoint", "tcp://127.0.0.1:9", "--connect-timeout", "60"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "is a directory" in proc.stderr and time.perf_counter() - t0 < 30

