"""Issue #13, item 2: a wrong CURVE peer key is said once per party with key fingerprints, fails fast on
the party that can tell, and every error names the refused key's fingerprint. Two real ``fedrec psi``
processes over ZeroMQ + CURVE; ``fedrec keys`` prints the fingerprint to compare by phone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedrec.transport.keys import fingerprint, write_keypair
from training.cli import main

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 5  # the bar: at most 5 log lines per party


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _psi(tmp: Path, role: str, *args: str) -> subprocess.Popen[str]:
    ids = tmp / f"{role}.csv"
    ids.write_text("user_id\n" + "".join(f"u{i}\n" for i in range(20)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDREC_LOG_LEVEL", None)  # the default: quiet
    return subprocess.Popen([sys.executable, "-m", "training.cli", "psi", "--role", role, "--ids", str(ids),
                             "--column", "user_id", "--out", str(tmp / f"{role}_out.csv"), "--no-progress",
                             "--workers", "1", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("wrong", ["guest holds a wrong host key", "host holds a wrong guest key"])
def test_a_wrong_peer_key_is_said_once_and_the_error_names_the_refused_key(tmp_path: Path,
                                                                            wrong: str) -> None:
    keys = tmp_path / "keys"
    for name in ("guest", "host", "other"):
        write_keypair(keys, name)
    other = str(keys / "other.key")
    guest_holds = other if wrong.startswith("guest") else str(keys / "host.key")
    host_holds = other if wrong.startswith("host") else str(keys / "guest.key")
    addr = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    host = _psi(tmp_path, "host", "--listen", addr, "--key", str(keys / "host.key_secret"),
                "--peer-public-key", host_holds, "--connect-timeout", "5")
    guest = _psi(tmp_path, "guest", "--peer-endpoint", addr, "--key", str(keys / "guest.key_secret"),
                 "--peer-public-key", guest_holds, "--connect-timeout", "60")
    _, g_err = guest.communicate(timeout=60)
    guest_seconds = time.monotonic() - t0
    _, h_err = host.communicate(timeout=60)
    assert guest.returncode == 1 and host.returncode == 1, (g_err, h_err)
    assert len(_lines(g_err)) <= MAX_LINES, g_err
    assert len(_lines(h_err)) <= MAX_LINES, h_err
    assert guest_seconds < 30  # fails fast, not at its 60 s connect timeout
    if wrong.startswith("guest"):
        # the guest names the key it was given for the host, refused by the host; the host names its own
        assert fingerprint(other) in g_err and "'host'" in g_err and "refused the public key" in g_err
        assert fingerprint(keys / "host.key") in h_err and "wrong public key for this party" in h_err
    else:
        # the guest: the host refused its key; the host: which key it refused and which it expected
        assert fingerprint(keys / "guest.key") in g_err and "refused this party's CURVE key" in g_err
        assert fingerprint(keys / "guest.key") in h_err and fingerprint(other) in h_err
        assert "not in the allow-list" in h_err or "refused" in h_err


def test_fedrec_keys_prints_the_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "--out", str(tmp_path), "--name", "bank"]) == 0
    out = capsys.readouterr().out
    fp = fingerprint(tmp_path / "bank.key")
    assert f"fingerprint of the public key: {fp}" in out
    assert len(fp) == 19 and fp.count(":") == 3
