"""docs/DEPLOY.md is executed: every ``bank$`` / ``partner$`` line, in order, each party in its own
working directory (its own "home") with its own keys, the bank at 127.0.0.2 and the partner at
127.0.0.1, from ``fedrec init`` to the campaign file.

Translation of the guide's lines (nothing else is changed): ``~`` is the party's home;
``bank.example.com`` / ``partner.example.com`` are the two loopback addresses (in ``tcp://``
endpoints) or the other home (in ``scp HOST:PATH``); the guide's ports are replaced by free ones;
``scp`` copies between the homes. Consecutive ``fedrec train`` lines run concurrently (the two parties
of one job), as does a ``fedrec psi`` pair. For speed the ``fedrec init`` lines get ``--epochs 1
--backend plain`` (the guide's CKKS run is the same job with encryption: tests/test_hetero_fm_sockets.py).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "DEPLOY.md"
ADDRESS = {"bank": "127.0.0.2", "partner": "127.0.0.1"}
HOSTS = {"bank.example.com": "bank", "partner.example.com": "partner"}
PAIRED = ("train", "psi")  # sub-commands whose consecutive lines are the two parties of one job


def guide_steps(text: str) -> list[tuple[str, str]]:
    """``(party, command line)`` of every ``bank$`` / ``partner$`` line inside code fences."""
    steps, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"^(bank|partner)\$\s+(.*)$", line)
        if fenced and m:
            steps.append((m.group(1), m.group(2)))
    return steps


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Machines:
    def __init__(self, root: Path) -> None:
        self.home = {p: root / p for p in ADDRESS}
        for h in self.home.values():
            h.mkdir()
        self.ports: dict[str, int] = {}
        self.env = {k: v for k, v in os.environ.items() if k != "FEDREC_LOG_LEVEL"}
        self.env["PYTHONPATH"] = str(REPO)

    def port(self, guide_port: str, party: str) -> str:
        if guide_port not in self.ports:
            self.ports[guide_port] = _free_port(ADDRESS[party])
        return str(self.ports[guide_port])

    def translate(self, party: str, line: str) -> list[str]:
        words = shlex.split(line, comments=True)

        def word(w: str) -> str:
            m = re.fullmatch(r"tcp://([\w.]+):(\d+)", w)
            if m:
                host, port = m.groups()
                owner = party if host == "0.0.0.0" else HOSTS[host]  # noqa: S104 - the guide's wildcard
                return f"tcp://{ADDRESS[owner]}:{self.port(port, owner)}"
            if w.startswith("~/"):
                return str(self.home[party] / w[2:])
            m = re.fullmatch(r"([\w.]+\.example\.com):(.*)", w)
            if m:
                return str(self.home[HOSTS[m.group(1)]] / m.group(2))
            return w

        words = [word(w) for w in words]
        if words[:2] == ["fedrec", "init"]:
            words += ["--epochs", "1", "--backend", "plain"]
        return words

    def start(self, party: str, words: list[str]) -> subprocess.Popen[str]:
        assert words[0] == "fedrec", f"the guide runs only fedrec and scp, got {words}"
        return subprocess.Popen([sys.executable, "-m", "training.cli", *words[1:]], cwd=self.home[party],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def scp(self, words: list[str]) -> None:
        *sources, dest = words[1:]
        for src in sources:
            target = Path(dest)
            if target.is_dir():
                target = target / Path(src).name
            shutil.copyfile(src, target)


def _finish(party: str, words: list[str], proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, f"{party}$ {' '.join(words)}\nexit {proc.returncode}\n{out}\n{err}"
    return out


def test_guide_lines_are_what_the_test_understands() -> None:
    steps = guide_steps(GUIDE.read_text(encoding="utf-8"))
    assert len(steps) >= 10
    for _, line in steps:
        assert shlex.split(line)[0] in ("fedrec", "scp"), line
    assert any("fedrec recommend" in line for _, line in steps)


@pytest.mark.slow
def test_the_two_machine_guide_runs_from_keys_to_a_campaign(tmp_path: Path) -> None:
    try:
        socket.create_server(("127.0.0.2", 0)).close()
    except OSError:
        pytest.skip("127.0.0.2 is not a local address on this machine")
    m = Machines(tmp_path)
    steps = guide_steps(GUIDE.read_text(encoding="utf-8"))
    outputs: dict[str, list[str]] = {"bank": [], "partner": []}
    i = 0
    while i < len(steps):
        party, line = steps[i]
        words = m.translate(party, line)
        if words[0] == "scp":
            m.scp(words)
            i += 1
            continue
        group = [(party, words)]
        if words[1] in PAIRED and i + 1 < len(steps):
            other, nxt = steps[i + 1]
            nwords = m.translate(other, nxt)
            if nwords[:2] == words[:2] and other != party:
                group.append((other, nwords))
        t0 = time.perf_counter()
        procs = [(p, w, m.start(p, w)) for p, w in group]
        for p, w, proc in procs:
            outputs[p].append(_finish(p, w, proc, timeout=240))
        print(f"{time.perf_counter() - t0:6.1f}s  {' | '.join(' '.join(w[:3]) for _, w in group)}")
        i += len(group)
    bank, partner = m.home["bank"] / "fedrec-guest", m.home["partner"] / "fedrec-host"
    # each party holds its own secret key only, and the other's public key
    def keys(home: Path) -> list[str]:
        return sorted(x.name for x in (home / "keys").iterdir())

    assert keys(bank) == ["guest.key", "guest.key_secret", "host.key"]
    assert keys(partner) == ["guest.key", "host.key", "host.key_secret"]
    # the fingerprint the partner read is the one the bank's init printed
    fp = re.search(r"fingerprint of your public key: (\S+)", outputs["bank"][0])
    assert fp is not None and any(fp.group(1) in o for o in outputs["partner"])
    # PSI: both parties hold the same overlap
    a, b = pd.read_csv(bank / "overlap.csv"), pd.read_csv(partner / "overlap.csv")
    assert len(a) > 0 and a["id"].tolist() == b["id"].tolist()
    # training completed on both sides, the bank has the partials, and a campaign file exists
    assert (bank / "out" / "summary.json").is_file() and (partner / "out" / "summary.json").is_file()
    campaign = pd.read_csv(bank / "campaign.csv")
    dormant = pd.read_csv(bank / "dormant.csv")
    assert len(dormant) > 0
    assert set(campaign["user_id"]) == set(dormant["user_id"])
    assert list(campaign.columns[:4]) == ["user_id", "rank", "item_id", "score"]
    assert (campaign["fallback"] != "unknown_user").any()
