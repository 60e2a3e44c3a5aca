#!/usr/bin/env python3
"""Loopback load test of ``fedrec serve``: latency percentiles, throughput, errors, malformed requests.

Starts ``python -m training.cli serve`` in a subprocess on ``127.0.0.1`` (port 0; the port is read
from its first output line) with a random serving bundle of ``--users`` x ``--items`` (10K-item
catalogue, k=32), then, from ``--clients`` keep-alive client threads in this process:

1. **steady**: a paced load of ``--rate`` requests/s in total for ``--seconds`` (each client sends on a
   fixed schedule; latency = send to last byte), ``--unknown-share`` of the users unknown to the model
   (popularity fallback);
2. **saturation**: the same clients back to back for ``--seconds`` (throughput ceiling);
3. **burst**: ``--burst`` simultaneous *new* connections (non-blocking connects issued at once from one
   selector thread), one ``/recommend`` each with ``Connection: close``; latency = connect start to the
   end of the reply; repeated ``--bursts`` times, a second apart (a timeout of 15 s counts as an error),
   each followed by the same burst against a do-nothing asyncio server in another process
   (``floor_p*``: the machine's and the client's own share, which on a loaded machine is most of it);
4. **malformed**: a fixed list of bad requests (missing/garbage parameters, ``k=%C2%B2``, HEAD, OPTIONS,
   a POST whose body holds a second request, raw garbage bytes) — every one must get a 4xx and exactly
   one reply, and ``/health`` must still answer afterwards.

With ``--baseline DIR`` (another checkout, e.g. ``git archive`` of an older commit) its ``fedrec serve``
runs beside this one and every timed phase is cut into ``--rounds`` slices that alternate between the two
servers (and the floor server), so that both see the same moments of a shared machine; without it only
this checkout's (or ``--repo``'s) server is measured.

Everything is bounded: at most ``--max-requests`` per phase and ``--seconds`` per phase; only
127.0.0.1 is contacted. Writes ``benchmarks/results/serving_load.json`` and ``serving_load.png``.
BAR (issue #9): steady p99 < 5 ms with no errors; burst of 200 new connections p99 < 50 ms with no
timeouts; malformed -> 4xx; server alive. Latency is end to end (client send to last byte);
``server_p*`` is the handler's own time (``X-Server-Time-Ms``), which separates the scorer from
scheduling delays on a busy machine (the load average is recorded before and after).

Usage::

    python benchmarks/serving_load.py [--rate 200] [--seconds 20] [--clients 2] [--burst 200]
    git archive 63f2c6f | tar -x -C /tmp/before   # the server before issue #9
    python benchmarks/serving_load.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.artifacts import random_bundle  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
HOST = "127.0.0.1"
MALFORMED = ["/recommend", "/recommend?user=", "/recommend?user=u1&k=abc", "/recommend?user=u1&k=0",
             "/recommend?user=u1&k=100000", "/recommend?user=u1&user=u2", "/recommend?user=u1&x=1",
             "/recommend?%%%", "/nothing-here", "/recommend?user=" + "x" * 5000]
MALFORMED += ["/recommend?user=u1&k=%C2%B2"]
RAW_GARBAGE = [b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/7.0\r\n\r\n", b"NOTAVERB\r\n\r\n",
               b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
               b"POST /recommend?user=u1 HTTP/1.1\r\nHost: x\r\nContent-Length: 46\r\n\r\n"
               b"GET /recommend?user=u1 HTTP/1.1\r\nHost: x\r\n\r\n"]


def start_server(model: Path, repo: Path = REPO) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--model", str(model),
                             "--port", "0", "--host", HOST], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    port = int(line.split(f"http://{HOST}:")[1].split()[0])
    return proc, port


class Client(threading.Thread):
    """Sends GETs over one keep-alive connection; records (latency_s, status)."""

    def __init__(self, port: int, users: list[str], deadline: float, max_requests: int,
                 interval: float | None, offset: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.users, self.deadline = port, users, deadline
        self.max_requests, self.interval, self.offset = max_requests, interval, offset
        self.rng = np.random.default_rng(seed)
        self.records: list[tuple[float, int, float]] = []
        self.failures = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        start = time.perf_counter() + self.offset
        for j in range(self.max_requests):
            if self.interval is not None:
                wait = start + j * self.interval - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            if time.perf_counter() >= self.deadline:
                break
            user = self.users[int(self.rng.integers(len(self.users)))]
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/recommend?user={user}&k=10")
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status if json.loads(body).get("items") else 599
                server_ms = float(resp.getheader("X-Server-Time-Ms") or "nan")
            except (OSError, http.client.HTTPException, ValueError):
                self.failures += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                continue
            self.records.append((time.perf_counter() - t0, status, server_ms))
        conn.close()


Records = list[tuple[float, int, float]]


def _clients(port: int, users: list[str], args: argparse.Namespace, paced: bool, seconds: float,
             max_requests: int) -> tuple[Records, int, float]:
    """One slice of a load phase: (records, failures, wall seconds)."""
    interval = args.clients / args.rate if paced else None
    deadline = time.perf_counter() + seconds
    per_client = max(1, max_requests // args.clients)
    clients = [Client(port, users, deadline, per_client, interval,
                      (interval or 0) * j / args.clients, args.seed + j) for j in range(args.clients)]
    t0 = time.perf_counter()
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    return [r for c in clients for r in c.records], sum(c.failures for c in clients), time.perf_counter() - t0


def _summary(records: Records, failures: int, wall: float, args: argparse.Namespace, paced: bool
             ) -> dict[str, Any]:
    lat = np.array([r[0] for r in records])
    ok = np.array([r[1] == 200 for r in records], dtype=bool)
    out: dict[str, Any] = {"requests": len(lat), "errors": int((~ok).sum()) + failures,
                           "seconds": round(wall, 2), "throughput_rps": round(len(lat) / max(wall, 1e-9), 1),
                           "clients": args.clients}
    if len(lat):
        for q in (50, 90, 99, 99.9):
            out[f"p{q}_ms"] = round(float(np.percentile(lat, q)) * 1e3, 3)
        out["max_ms"] = round(float(lat.max()) * 1e3, 3)
        server = np.array([r[2] for r in records])
        out["server_p50_ms"] = round(float(np.nanpercentile(server, 50)), 3)
        out["server_p99_ms"] = round(float(np.nanpercentile(server, 99)), 3)
    if paced:
        out["target_rps"] = args.rate
    out["_latencies_ms"] = (lat * 1e3).tolist()
    return out


def load_phase(ports: dict[str, int], users: list[str], args: argparse.Namespace, paced: bool
               ) -> dict[str, dict[str, Any]]:
    """Phase 1 (paced) or 2 (back to back), ``args.rounds`` slices per server, alternating."""
    acc: dict[str, tuple[Records, int, float]] = {name: ([], 0, 0.0) for name in ports}
    for r in range(args.rounds):
        for name in (list(ports) if r % 2 == 0 else list(ports)[::-1]):
            recs, fails, wall = _clients(ports[name], users, args, paced, args.seconds / args.rounds,
                                         args.max_requests // args.rounds)
            old = acc[name]
            acc[name] = (old[0] + recs, old[1] + fails, old[2] + wall)
    return {name: _summary(*acc[name], args, paced) for name in ports}


def _burst(port: int, paths: list[str], timeout: float = 15.0) -> tuple[np.ndarray, int]:
    """One burst: a non-blocking connect per path, all issued at once from one thread (a selector, no
    per-connection Python objects beyond the socket), each sends its GET when connected and reads to the
    close. Returns (latency of each in s, connect start to end of reply; inf = timed out) and the number
    of replies that are not 200."""
    sel = selectors.DefaultSelector()
    start, done, data = [0.0] * len(paths), [np.inf] * len(paths), [b""] * len(paths)
    for j in range(len(paths)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        start[j] = time.perf_counter()
        sock.connect_ex((HOST, port))
        sel.register(sock, selectors.EVENT_WRITE, j)
    deadline, left = time.perf_counter() + timeout, len(paths)
    while left and time.perf_counter() < deadline:
        for key, events in sel.select(0.05):
            sock, j = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            try:
                if events & selectors.EVENT_WRITE:
                    sock.send(f"GET {paths[j]} HTTP/1.1\r\nHost: {HOST}\r\n"
                              "Connection: close\r\n\r\n".encode())
                    sel.modify(sock, selectors.EVENT_READ, j)
                    continue
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                data[j] += chunk
                continue
            done[j] = time.perf_counter() - start[j]
            sel.unregister(sock)
            sock.close()
            left -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    not_ok = sum(not d.startswith(b"HTTP/1.1 200") for d in data)
    return np.array(done), not_ok


class _FloorProtocol(asyncio.Protocol):
    """The least an asyncio server can do: a fixed reply once a request head is in (the machine's floor)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            self.transport.close()


def _floor_server(sock: socket.socket, seconds: float) -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_server(_FloorProtocol, sock=sock, backlog=2048)
        await asyncio.sleep(seconds)

    asyncio.run(main())


def _burst_summary(bursts: list[np.ndarray], errors: int, args: argparse.Namespace) -> dict[str, Any]:
    lat = np.where(np.isfinite(np.concatenate(bursts)), np.concatenate(bursts), 15.0)  # timeout = 15 000 ms
    out: dict[str, Any] = {"connections": args.burst, "bursts": len(bursts), "requests": len(lat),
                           "errors": errors, "timeouts": int((lat >= 15.0).sum()),
                           "burst_wall_s": [round(float(np.where(np.isfinite(b), b, 15.0).max()), 3)
                                            for b in bursts]}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = round(float(np.percentile(lat, q)) * 1e3, 3)
    out["max_ms"] = round(float(lat.max()) * 1e3, 3)
    # the median over bursts of each burst's p50: robust to a few bad moments of the machine
    out["median_of_burst_p50_ms"] = round(float(np.median(
        [np.percentile(np.where(np.isfinite(b), b, 15.0), 50) for b in bursts])) * 1e3, 3)
    out["_latencies_ms"] = (lat * 1e3).tolist()
    return out


def burst_phase(ports: dict[str, int], users: list[str], args: argparse.Namespace
                ) -> dict[str, dict[str, Any]]:
    """Phase 3: ``args.bursts`` bursts per server, alternating between the servers and the floor (a
    do-nothing asyncio server in another process: what this machine and this client allow)."""
    import multiprocessing

    paths = [f"/recommend?user={users[j % len(users)]}&k=10" for j in range(args.burst)]
    sock = socket.create_server((HOST, 0), backlog=2048)
    floor_proc = multiprocessing.get_context("fork").Process(target=_floor_server, args=(sock, 1800.0),
                                                             daemon=True)
    floor_proc.start()
    time.sleep(0.5)
    targets = {**ports, "floor": int(sock.getsockname()[1])}
    bursts: dict[str, list[np.ndarray]] = {name: [] for name in targets}
    errors = dict.fromkeys(targets, 0)
    try:
        for r in range(args.bursts):
            for name in (list(targets) if r % 2 == 0 else list(targets)[::-1]):
                lat, bad = _burst(targets[name], paths)
                bursts[name].append(lat)
                errors[name] += bad
                time.sleep(0.5)
    finally:
        floor_proc.terminate()
        sock.close()
    return {name: _burst_summary(bursts[name], errors[name], args) for name in targets}


def malformed_phase(port: int) -> dict[str, Any]:
    statuses: dict[str, int | str] = {}
    for path in MALFORMED:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.request("GET", path)
        statuses[path[:60]] = conn.getresponse().status
        conn.close()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("POST", "/recommend?user=u1")
    statuses["POST /recommend"] = conn.getresponse().status
    conn.close()
    replies_per_request = {}
    for raw in RAW_GARBAGE:
        with socket.create_connection((HOST, port), timeout=10) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except OSError:
                pass
        statuses[repr(raw[:20])] = int(reply.split()[1]) if reply.startswith(b"HTTP/") else "closed"
        replies_per_request[repr(raw[:20])] = reply.count(b"HTTP/1.")
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", "/health")
    alive = conn.getresponse().status == 200
    conn.close()
    all_4xx = all(isinstance(s, int) and 400 <= s < 500 or s == 505 for s in statuses.values())
    return {"statuses": statuses, "all_4xx": all_4xx, "alive_after": alive,
            "replies_per_raw_request": replies_per_request,
            "one_reply_each": all(n <= 1 for n in replies_per_request.values())}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    colors = {"steady": "tab:blue", "saturation": "tab:orange", "burst": "tab:green"}
    for server, style in (("after", "-"), ("before", ":")):
        if server not in result["servers"]:
            continue
        for phase, color in colors.items():
            r = result["servers"][server][phase]
            lat = np.sort(np.array(r["_latencies_ms"]))
            if lat.size and (phase != "saturation" or server == "after"):
                what = (f"{r['throughput_rps']} req/s" if "throughput_rps" in r
                        else f"{r['connections']} at once")
                ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, color=color, ls=style,
                        label=f"{server}: {phase} ({what}), p99 {r.get('p99_ms')} ms")
    floor = np.sort(np.array(result["floor"]["_latencies_ms"]))
    ax.plot(floor, np.arange(1, floor.size + 1) / floor.size, color="grey", ls="--",
            label=f"burst to a do-nothing server (the floor), p99 {result['floor']['p99_ms']} ms")
    ax.axvline(5, color="red", ls="--", lw=1, label="BAR steady p99 < 5 ms")
    ax.axvline(50, color="darkred", ls=":", lw=1, label="BAR burst p99 < 50 ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, loopback; in bursts a timeout counts as 15 s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"fedrec serve: {result['n_items']:,}-item catalogue, {result['clients']} keep-alive "
                 f"clients, "
                 f"load average {result['load_average_before'][0]}-{result['load_average'][0]} on "
                 f"{result['cpus']} cores", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "serving_load.png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100_000,
                   help="users in the served random bundle (default: %(default)s)")
    p.add_argument("--items", type=int, default=10_000,
                   help="items in the served random bundle (default: %(default)s)")
    p.add_argument("--factors", type=int, default=32,
                   help="latent factors of the bundle (default: %(default)s)")
    p.add_argument("--clients", type=int, default=2,
                   help="keep-alive client threads sending requests (default: %(default)s)")
    p.add_argument("--rate", type=float, default=200.0, help="steady phase: total requests/s")
    p.add_argument("--seconds", type=float, default=20.0, help="time per phase and server")
    p.add_argument("--rounds", type=int, default=10,
                   help="slices per timed phase, alternating between servers (default: %(default)s)")
    p.add_argument("--max-requests", type=int, default=20_000, help="request limit per phase and server")
    p.add_argument("--unknown-share", type=float, default=0.05,
                   help="share of requested users unknown to the model, 0..1 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bundle, the requested users and the clients (default: %(default)s)")
    p.add_argument("--burst", type=int, default=200, help="simultaneous new connections (default: 200)")
    p.add_argument("--bursts", type=int, default=10, help="bursts per server (default: 10)")
    p.add_argument("--repo", type=Path, default=REPO,
                   help="checkout whose `fedrec serve` is measured (default: this one)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout whose `fedrec serve` is measured alongside, as 'before'")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder for serving_load.json and serving_load.png (default: benchmarks/results)")
    return p


def _shown(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n_unknown = int(round(args.unknown_share * 1000))
    users = [f"u{j}" for j in rng.integers(0, args.users, 1000 - n_unknown)] + [f"new{j}" for j in
                                                                                range(n_unknown)]
    repos = {"after": args.repo, **({"before": args.baseline} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as tmp:
        random_bundle(args.users, args.items, args.factors, seed=args.seed).save(Path(tmp) / "bundle")
        load_before = [round(x, 2) for x in os.getloadavg()]
        procs, ports = {}, {}
        try:
            for name, repo in repos.items():
                procs[name], ports[name] = start_server(Path(tmp) / "bundle", repo)
            steady = load_phase(ports, users, args, paced=True)
            saturation = load_phase(ports, users, args, paced=False)
            burst = burst_phase(ports, users, args)
            bad = {name: malformed_phase(port) for name, port in ports.items()}
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(timeout=10)
    servers = {name: {"checkout": "this checkout" if repo == REPO else str(repo), "steady": steady[name],
                      "saturation": saturation[name], "burst": burst[name], "malformed": bad[name]}
               for name, repo in repos.items()}
    for name, phases in servers.items():
        for phase in ("steady", "saturation", "burst"):
            print(f"{name:6} {phase:10} {_shown(phases[phase])}", flush=True)
        print(f"{name:6} malformed  all 4xx {phases['malformed']['all_4xx']}, one reply each "
              f"{phases['malformed']['one_reply_each']}, alive after {phases['malformed']['alive_after']}")
    print(f"floor  burst      {_shown(burst['floor'])}")
    result: dict[str, Any] = {
        "load_average_before": load_before, "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "n_users": args.users, "n_items": args.items, "n_factors": args.factors,
        "clients": args.clients, "seconds_per_phase": args.seconds, "rounds": args.rounds,
        "servers": servers, "floor": burst["floor"]}
    a = servers["after"]
    result["bar"] = {"steady p99 < 5 ms": a["steady"].get("p99_ms", 1e9) < 5.0,
                     "steady no errors": a["steady"]["errors"] == 0,
                     "burst p99 < 50 ms": a["burst"]["p99_ms"] < 50.0,
                     "burst no errors or timeouts": a["burst"]["errors"] == 0,
                     "malformed all 4xx": a["malformed"]["all_4xx"],
                     "malformed one reply each": a["malformed"]["one_reply_each"],
                     "alive after malformed": a["malformed"]["alive_after"]}
    print(json.dumps(result["bar"]))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(result, args.out)
    for phases in [*servers.values()]:
        for phase in ("steady", "saturation", "burst"):
            phases[phase].pop("_latencies_ms")
    result["floor"].pop("_latencies_ms")
    (args.out / "serving_load.json").write_text(json.dumps(result, indent=1))
    return 0 if all(result["bar"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
