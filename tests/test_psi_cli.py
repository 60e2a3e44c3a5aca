"""``fedrec psi``: help, and two processes aligning real files over loopback with CURVE."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedrec.transport import write_keypair
from training.cli import main

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fedrec(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "training.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["psi", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--role", "--ids", "--column", "--out", "--listen", "--key", "--insecure", "--curve",
                   "--peer-endpoint", "--peer-public-key", "--recv-timeout", "--connect-timeout",
                   "--heartbeat-timeout", "--connect", "--peer-key", "--timeout"):
        assert option in out


# the network flags are spelt like the TOML keys; the older spellings are still accepted
NEW = {"connect": "--peer-endpoint", "peer_key": "--peer-public-key"}
OLD = {"connect": "--connect", "peer_key": "--peer-key"}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("curve", "flags"), [("ristretto255", OLD), ("x25519", NEW)])
def test_two_processes_align_csv_and_parquet_over_curve(tmp_path: Path, curve: str,
                                                         flags: dict[str, str]) -> None:
    keys = tmp_path / "keys"
    write_keypair(keys, "guest")
    write_keypair(keys, "host")
    guest_ids = ["Zoë", "b", "c", "東京", "b", "e"] + [f"g{i}" for i in range(300)]
    host_ids = ["e", "東京", "x", "b", "Zoë"] + [f"h{i}" for i in range(200)]
    pd.DataFrame({"customer": guest_ids, "n": range(len(guest_ids))}).to_csv(tmp_path / "g.csv", index=False)
    pd.DataFrame({"uid": host_ids}).to_parquet(tmp_path / "h.parquet")
    addr = f"tcp://127.0.0.1:{_free_port()}"
    host = _fedrec("psi", "--role", "host", "--ids", str(tmp_path / "h.parquet"), "--column", "uid",
                   "--out", str(tmp_path / "h_out.csv"), "--listen", addr, "--no-progress", "--curve", curve,
                   "--key", str(keys / "host.key_secret"), flags["peer_key"], str(keys / "guest.key"))
    guest = _fedrec("psi", "--role", "guest", "--ids", str(tmp_path / "g.csv"), "--column", "customer",
                    "--out", str(tmp_path / "g_out.parquet"), flags["connect"], addr, "--no-progress",
                    "--curve", curve,
                    "--key", str(keys / "guest.key_secret"), flags["peer_key"], str(keys / "host.key"))
    g_out, g_err = guest.communicate(timeout=50)
    h_out, h_err = host.communicate(timeout=50)
    assert guest.returncode == 0, g_err
    assert host.returncode == 0, h_err
    assert "guest: 4 common ids (mine: 305 unique of 306 rows, peer: 205)" in g_out
    assert "1 duplicate id row(s)" in g_err
    g = pd.read_parquet(tmp_path / "g_out.parquet")
    h = pd.read_csv(tmp_path / "h_out.csv", dtype={"id": str})
    assert list(h.columns) == ["aligned_index", "id", "row_index"]
    assert g["id"].tolist() == h["id"].tolist()
    assert sorted(g["id"]) == sorted(["Zoë", "b", "東京", "e"])
    assert all(guest_ids[r] == i for r, i in zip(g["row_index"], g["id"], strict=True))
    assert all(host_ids[r] == i for r, i in zip(h["row_index"], h["id"], strict=True))
    assert "INSECURE" not in g_err + h_err


def test_missing_column_is_reported_with_exit_status_1(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("a\n1\n")
    code = main(["psi", "--role", "guest", "--ids", str(path), "--column", "uid", "--out",
                 str(tmp_path / "o.csv"), "--connect", "tcp://127.0.0.1:9", "--insecure"])
    assert code == 1
    assert "no column 'uid'; columns are ['a']" in capsys.readouterr().err


def test_keys_are_required_unless_insecure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("uid\n1\n")
    code = main(["psi", "--role", "guest", "--ids", str(path), "--column", "uid", "--out",
                 str(tmp_path / "o.csv"), "--connect", "tcp://127.0.0.1:9"])
    assert code == 1
    assert "--key and --peer-public-key are required (or --insecure" in capsys.readouterr().err


def test_cli_default_curve_is_the_library_default() -> None:
    from fedrec.psi.group import DEFAULT_CURVE
    from training.psi_cmd import DEFAULT_CURVE as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_CURVE


@pytest.mark.timeout(60)
def test_a_listening_party_dumps_its_stacks_on_sigusr1_and_ends_at_its_run_timeout(tmp_path: Path) -> None:
    # the guest connects and never sends its Hello: the host's wait (recv_timeout 30 s) is cut by
    # --run-timeout 4; SIGUSR1 meanwhile prints where it waits and the run carries on
    import signal
    import time

    from fedrec.psi.messages import MESSAGES
    from fedrec.transport import PeerAddress, TransportConfig, open_channel

    (tmp_path / "ids.csv").write_text("uid\n1\n2\n")
    addr = f"tcp://127.0.0.1:{_free_port()}"
    host = _fedrec("psi", "--role", "host", "--ids", str(tmp_path / "ids.csv"), "--column", "uid", "--out",
                   str(tmp_path / "o.csv"), "--listen", addr, "--insecure", "--no-progress",
                   "--recv-timeout", "30", "--run-timeout", "4", "--connect-timeout", "30")
    assert host.stderr is not None
    err = ""
    while "INSECURE" not in err:  # the channel is open (after the SIGUSR1 handler was installed)
        line = host.stderr.readline()
        assert line, err
        err += line
    host.send_signal(signal.SIGUSR1)  # where it waits; it carries on
    silent = open_channel("guest", {"host": PeerAddress(addr, None)}, config=TransportConfig(insecure=True),
                          messages=MESSAGES, connect_timeout=30)
    t0 = time.perf_counter()
    try:
        _, rest = host.communicate(timeout=40)
    finally:
        silent.close()
    err += rest
    assert host.returncode == 1, err
    assert "most recent call first" in err and "psi_cmd.py" in err  # the stacks; then the run went on
    assert "peer 'guest' during step 'psi/hello': the run did not end within run_timeout=4.0 s" in err, err
    assert time.perf_counter() - t0 < 20


def _pair(tmp_path: Path, guest_extra: tuple[str, ...], host_extra: tuple[str, ...]
          ) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    keys = tmp_path / "keys"
    write_keypair(keys, "guest")
    write_keypair(keys, "host")
    pd.DataFrame({"id": [f"u{i}" for i in range(0, 300, 2)]}).to_csv(tmp_path / "g.csv", index=False)
    pd.DataFrame({"id": [f"u{i}" for i in range(0, 300, 3)]}).to_csv(tmp_path / "h.csv", index=False)
    addr = f"tcp://127.0.0.1:{_free_port()}"
    host = _fedrec("psi", "--role", "host", "--ids", str(tmp_path / "h.csv"), "--column", "id", "--out",
                   str(tmp_path / "h_out.csv"), "--listen", addr, "--no-progress", "--key",
                   str(keys / "host.key_secret"), "--peer-public-key", str(keys / "guest.key"),
                   "--recv-timeout", "20", *host_extra)
    guest = _fedrec("psi", "--role", "guest", "--ids", str(tmp_path / "g.csv"), "--column", "id", "--out",
                    str(tmp_path / "g_out.csv"), "--peer-endpoint", addr, "--no-progress", "--key",
                    str(keys / "guest.key_secret"), "--peer-public-key", str(keys / "host.key"),
                    "--recv-timeout", "20", *guest_extra)
    return guest, host


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_buckets_give_the_one_session_intersection_and_must_agree(tmp_path: Path) -> None:
    guest, host = _pair(tmp_path, ("--buckets", "3"), ("--buckets", "3"))
    g_out, g_err = guest.communicate(timeout=60)
    _, h_err = host.communicate(timeout=60)
    assert guest.returncode == 0 and host.returncode == 0, g_err + h_err
    assert "guest: 50 common ids (mine: 150 unique of 150 rows, peer: 100) in 3 buckets of" in g_out
    g = pd.read_csv(tmp_path / "g_out.csv", dtype={"id": str})
    h = pd.read_csv(tmp_path / "h_out.csv", dtype={"id": str})
    assert g["id"].tolist() == h["id"].tolist()  # the same aligned order on both sides
    assert set(g["id"]) == {f"u{i}" for i in range(0, 300, 6)}
    # a different number of buckets on each side stops both, naming both numbers; no output
    other = tmp_path / "mismatch"
    other.mkdir()
    guest, host = _pair(other, ("--buckets", "3"), ("--buckets", "4"))
    _, g_err = guest.communicate(timeout=60)
    _, h_err = host.communicate(timeout=60)
    assert guest.returncode == 1 and host.returncode == 1
    for err in (g_err, h_err):
        assert "the guest asks for 3 buckets, the host for 4: both parties must use the same --buckets" in err
    assert not (other / "g_out.csv").exists() and not (other / "h_out.csv").exists()
    # one party told to bucket, the other not: both stop, the bucketed one says why, the other repeats it
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    guest, host = _pair(mixed, ("--buckets", "3", "--recv-timeout", "5"), ("--recv-timeout", "5"))
    _, g_err = guest.communicate(timeout=60)
    _, h_err = host.communicate(timeout=60)
    assert guest.returncode == 1 and host.returncode == 1
    why = "the peer runs one PSI session, this party a bucketed one (3 buckets): both parties must use"
    assert why in g_err and why in h_err
