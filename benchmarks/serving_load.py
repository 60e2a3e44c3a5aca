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
   end of the reply; repeated ``--bursts`` times, a second apart (a timeout of 15 s counts as an error);
   then the same bursts against a do-nothing asyncio server (``floor_p*``: the machine's and the
   client's own share, which on a loaded machine is most of it);
4. **malformed**: a fixed list of bad requests (missing/garbage parameters, ``k=%C2%B2``, HEAD, OPTIONS,
   a POST whose body holds a second request, raw garbage bytes) — every one must get a 4xx and exactly
   one reply, and ``/health`` must still answer afterwards.

Everything is bounded: at most ``--max-requests`` per phase and ``--seconds`` per phase; only
127.0.0.1 is contacted. Writes ``benchmarks/results/serving_load.json`` and ``serving_load.png``.
BAR (issue #9): steady p99 < 5 ms with no errors; burst of 200 new connections p99 < 50 ms with no
timeouts; malformed -> 4xx; server alive. Latency is end to end (client send to last byte);
``server_p*`` is the handler's own time (``X-Server-Time-Ms``), which separates the scorer from
scheduling delays on a busy machine (the load average is recorded before and after).

Usage::

    python benchmarks/serving_load.py [--rate 200] [--seconds 20] [--clients 2] [--burst 200]
    python benchmarks/serving_load.py --repo /tmp/old-checkout --out /tmp/before   # another version's server
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


def load_phase(port: int, users: list[str], args: argparse.Namespace, paced: bool) -> dict[str, Any]:
    interval = args.clients / args.rate if paced else None
    deadline = time.perf_counter() + args.seconds
    per_client = args.max_requests // args.clients
    clients = [Client(port, users, deadline, per_client, interval,
                      (interval or 0) * j / args.clients, args.seed + j) for j in range(args.clients)]
    t0 = time.perf_counter()
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    wall = time.perf_counter() - t0
    lat = np.array([r[0] for c in clients for r in c.records])
    ok = np.array([r[1] == 200 for c in clients for r in c.records])
    errors = int((~ok).sum()) + sum(c.failures for c in clients)
    out = {"requests": len(lat), "errors": errors, "seconds": round(wall, 2),
           "throughput_rps": round(len(lat) / wall, 1), "clients": args.clients}
    if len(lat):
        for q in (50, 90, 99, 99.9):
            out[f"p{q}_ms"] = round(float(np.percentile(lat, q)) * 1e3, 3)
        out["max_ms"] = round(float(lat.max()) * 1e3, 3)
        server = np.array([r[2] for c in clients for r in c.records])
        out["server_p50_ms"] = round(float(np.nanpercentile(server, 50)), 3)
        out["server_p99_ms"] = round(float(np.nanpercentile(server, 99)), 3)
    if paced:
        out["target_rps"] = args.rate
    out["_latencies_ms"] = (lat * 1e3).tolist()
    return out


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


def burst_phase(port: int, users: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``args.burst`` connections opened at once, ``args.bursts`` times (module docstring, phase 3), and
    the same bursts against a do-nothing asyncio server in another process (``floor``: what this machine
    and this client allow at this moment, whatever the server)."""
    import multiprocessing

    paths = [f"/recommend?user={users[j % len(users)]}&k=10" for j in range(args.burst)]
    lat, errors, walls = [], 0, []
    for _ in range(args.bursts):
        one, bad = _burst(port, paths)
        lat.append(one)
        errors += bad
        walls.append(round(float(one[np.isfinite(one)].max(initial=0.0)), 3))
        time.sleep(1.0)
    sock = socket.create_server((HOST, 0), backlog=2048)
    floor_proc = multiprocessing.get_context("fork").Process(target=_floor_server, args=(sock, 120.0),
                                                             daemon=True)
    floor_proc.start()
    time.sleep(0.5)
    try:
        floor = np.concatenate([_burst(sock.getsockname()[1], paths)[0] for _ in range(args.bursts)])
    finally:
        floor_proc.terminate()
        sock.close()
    all_lat = np.concatenate(lat)
    all_lat = np.where(np.isfinite(all_lat), all_lat, 15.0)  # a timed-out request counts as 15 000 ms
    floor = np.where(np.isfinite(floor), floor, 15.0)
    out: dict[str, Any] = {"connections": args.burst, "bursts": args.bursts, "requests": len(all_lat),
                           "errors": errors, "timeouts": int((all_lat >= 15.0).sum()),
                           "burst_wall_s": walls}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = round(float(np.percentile(all_lat, q)) * 1e3, 3)
        out[f"floor_p{q}_ms"] = round(float(np.percentile(floor, q)) * 1e3, 3)
    out["max_ms"] = round(float(all_lat.max()) * 1e3, 3)
    out["_latencies_ms"] = (np.minimum(all_lat, 60.0) * 1e3).tolist()
    return out


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

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for name in ("steady", "saturation", "burst"):
        lat = np.sort(np.array(result[name]["_latencies_ms"]))
        if lat.size:
            rate = (f"{result[name]['throughput_rps']} req/s" if "throughput_rps" in result[name] else
                    f"{result[name]['connections']} new connections at once")
            label = f"{name} ({rate}, p99 {result[name].get('p99_ms')} ms)"
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=label)
    ax.axvline(5, color="red", ls="--", lw=1, label="BAR steady p99 < 5 ms")
    ax.axvline(50, color="darkred", ls=":", lw=1, label="BAR burst p99 < 50 ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, loopback)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"fedrec serve ({result['server']}): {result['n_items']:,}-item catalogue, "
                 f"{result['clients']} clients", fontsize=9)
    ax.legend(fontsize=7)
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
    p.add_argument("--seconds", type=float, default=20.0, help="time limit per phase")
    p.add_argument("--max-requests", type=int, default=20_000, help="request limit per phase")
    p.add_argument("--unknown-share", type=float, default=0.05,
                   help="share of requested users unknown to the model, 0..1 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bundle, the requested users and the clients (default: %(default)s)")
    p.add_argument("--burst", type=int, default=200, help="simultaneous new connections (default: 200)")
    p.add_argument("--bursts", type=int, default=5, help="bursts in the burst phase (default: 5)")
    p.add_argument("--repo", type=Path, default=REPO,
                   help="checkout whose `fedrec serve` is measured (default: this one)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder for serving_load.json and serving_load.png (default: benchmarks/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n_unknown = int(round(args.unknown_share * 1000))
    users = [f"u{j}" for j in rng.integers(0, args.users, 1000 - n_unknown)] + [f"new{j}" for j in
                                                                                range(n_unknown)]
    with tempfile.TemporaryDirectory() as tmp:
        random_bundle(args.users, args.items, args.factors, seed=args.seed).save(Path(tmp) / "bundle")
        load_before = [round(x, 2) for x in os.getloadavg()]
        proc, port = start_server(Path(tmp) / "bundle", args.repo)
        try:
            steady = load_phase(port, users, args, paced=True)
            print(f"steady:     {({k: v for k, v in steady.items() if not k.startswith('_')})}", flush=True)
            saturation = load_phase(port, users, args, paced=False)
            shown = {k: v for k, v in saturation.items() if not k.startswith("_")}
            print(f"saturation: {shown}", flush=True)
            burst = burst_phase(port, users, args)
            print(f"burst:      {({k: v for k, v in burst.items() if not k.startswith('_')})}", flush=True)
            bad = malformed_phase(port)
            print(f"malformed:  all 4xx {bad['all_4xx']}, alive after {bad['alive_after']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    server = "this checkout" if args.repo == REPO else str(args.repo)
    result = {"server": server, "load_average_before": load_before,
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "n_users": args.users, "n_items": args.items, "n_factors": args.factors,
              "clients": args.clients, "steady": steady, "saturation": saturation, "burst": burst,
              "malformed": bad}
    result["bar"] = {"steady p99 < 5 ms": steady.get("p99_ms", 1e9) < 5.0,
                     "steady no errors": steady["errors"] == 0,
                     "burst p99 < 50 ms": burst["p99_ms"] < 50.0,
                     "burst no errors or timeouts": burst["errors"] == 0,
                     "malformed all 4xx": bad["all_4xx"], "malformed one reply each": bad["one_reply_each"],
                     "alive after malformed": bad["alive_after"]}
    print(json.dumps(result["bar"]))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(result, args.out)
    for phase in ("steady", "saturation", "burst"):
        result[phase].pop("_latencies_ms")
    (args.out / "serving_load.json").write_text(json.dumps(result, indent=1))
    return 0 if all(result["bar"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
