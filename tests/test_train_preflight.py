"""``fedrec train`` checks its output locations and reads its files BEFORE the network opens (issue #9,
defect 6): a read-only ``[output] dir`` fails at once, naming the path, with no peer anywhere (the
configured connect timeout is never waited)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from fedrec.data import SyntheticConfig, generate, vertical_split
from training.cli import main
from training.demo import write_run

PLAIN = {"backend": "plain", "n_factors": 4, "batch_size": 256, "epochs": 1, "timeout": 60.0}


@pytest.mark.parametrize("role", ["host", "guest"])
def test_read_only_output_dir_fails_before_any_network(tmp_path: Path, role: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ds = generate(SyntheticConfig(n_users=40, n_items=20, n_ratings=300, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    files = write_run(gv, hv, tmp_path, PLAIN, timeouts={"connect_timeout": 120.0})
    config = files.guest_config if role == "guest" else files.host_config
    text = re.sub(r'(?m)^dir = .*$', 'dir = "/proc/fedrec-no-such-dir"', config.read_text())
    config.write_text(text)
    t0 = time.monotonic()
    rc = main(["train", "--role", role, "--config", str(config), "--no-progress"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "/proc/fedrec-no-such-dir" in err and "cannot write" in err, err
    assert elapsed < 30, elapsed  # not the 120 s connect timeout: no peer was waited for


@pytest.mark.parametrize(("role", "line", "message"), [
    ("guest", "n_factor = 4", r"unknown key \[model\] n_factor .*n_factors"),
    ("host", 'epochs = "six"', r"\[model\] epochs must be of type int, got a string 'six'"),
])
def test_model_config_errors_fail_before_any_network(tmp_path: Path, role: str, line: str, message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #13, item 6: a ``[model]`` typo or a wrong type is an invalid configuration (exit 2) found
    before the network opens, not after the peer connected."""
    ds = generate(SyntheticConfig(n_users=40, n_items=20, n_ratings=300, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    files = write_run(gv, hv, tmp_path, PLAIN, timeouts={"connect_timeout": 120.0})
    config = files.guest_config if role == "guest" else files.host_config
    key = line.split(" ", 1)[0]
    text = re.sub(rf"(?m)^{key} = .*\n", "", config.read_text())
    config.write_text(text.replace("[model]\n", f"[model]\n{line}\n"))
    t0 = time.monotonic()
    rc = main(["train", "--role", role, "--config", str(config), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"fedrec train ({role}): invalid configuration: {config}" in err
    assert re.search(message, err), err
    assert time.monotonic() - t0 < 30  # no peer was waited for


def test_a_party_that_abandons_the_run_tells_the_peer_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Issue #13, item 6: a party failing after the network opened says why in its goodbye; the peer's
    error carries that reason instead of a bare "closed its channel"."""
    from fedrec.protocols.commit import COORDINATOR, Ledger, coordinator_open
    from fedrec.protocols.messages import Ack
    from fedrec.transport import PeerDiedError
    from fedrec.transport.memory import MemoryNetwork
    from training import hetero_fm_job, party
    from training.config import load_config

    ds = generate(SyntheticConfig(n_users=40, n_items=20, n_ratings=300, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    files = write_run(gv, hv, tmp_path, PLAIN)
    cfg = load_config(files.host_config)
    net = MemoryNetwork()
    guest = net.channel("guest", ["host"])
    host = net.channel("host", ["guest"])
    host.send("guest", Ack("hi"), step="x")  # the guest has heard the host: the host says goodbye to it
    guest.recv("host", Ack, step="x", timeout=5)
    monkeypatch.setattr(party, "open_party_channel", lambda cfg: host)

    def fail(run: object) -> dict[str, object]:
        raise RuntimeError("host: PSI with 'guest' found no common users; nothing to train on")

    monkeypatch.setattr(hetero_fm_job, "run_host", fail)
    # the guest answers the host's opening question (no outputs in doubt), then hears its goodbye
    answer = threading.Thread(target=coordinator_open,
                              args=(guest, ["host"], Ledger(tmp_path / "g", COORDINATOR)),
                              kwargs={"complete": False, "timeout": 10.0}, daemon=True)
    answer.start()
    with pytest.raises(RuntimeError, match="no common users"):
        party.run_party(cfg)
    answer.join(10)
    with pytest.raises(PeerDiedError) as exc:
        guest.recv("host", Ack, step="fm/setup", timeout=5)
    assert ("closed its channel (host (host) abandoned the run: RuntimeError: host: PSI with 'guest' found "
            "no common users") in str(exc.value)
    guest.close()
