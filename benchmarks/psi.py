"""PSI speed: fedrec's ECDH-PSI (two processes over loopback, CURVE on) against ``openmined.psi``.

For every size N, the guest holds ids ``0..N-1`` and the host ``N-K..2N-K-1`` with ``K = overlap * N``
common ids. fedrec runs as two separate OS processes (this script re-invoked with ``--party``) over a real
ZeroMQ TCP socket on 127.0.0.1 with CURVE; ``openmined.psi`` (client/server, ``reveal_intersection=True``,
raw data structure) runs in-process on the same sets. Every run checks the intersection size, and for
fedrec that both parties aligned the same list. fedrec's time runs from the end of the handshake (both
processes connected, salts exchanged) until both parties hold their result; ``process_seconds`` adds
interpreter start-up, id generation and connection set-up. First it measures the primitive
(ristretto255 scalar multiplications/s on 1 thread and on all cores) so the wall time can be compared
with its floor ``4N / rate``.

    .venv/bin/python benchmarks/psi.py --sizes 10000 100000 1000000 --repeats 3 --large-repeats 1 \
        --openmined-max 1000000

Writes benchmarks/results/psi.json and psi.png. The machine is shared: the load average and the busiest
other processes are recorded with every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.psi.group import Engine, SecretScalar, default_workers, session_domain  # noqa: E402

OUT = REPO / "benchmarks" / "results"
BAR_SECONDS = 120.0


def make_ids(n: int, overlap: float, role: str) -> list[bytes]:
    start = 0 if role == "guest" else n - int(round(overlap * n))
    return [b"user-%010d" % i for i in range(start, start + n)]


def machine_load() -> dict[str, Any]:
    """Load average and the busiest other processes (the machine is shared during development)."""
    ps = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True,
                        check=False).stdout.splitlines()[1:6]
    return {"loadavg": list(os.getloadavg()), "top_processes": [line.strip()[:120] for line in ps]}


def x25519_rate(n: int = 4096) -> float:
    """For reference only: X25519 (Montgomery ladder) scalar multiplications/s on one thread, same libsodium.

    fedrec's PSI does not use it; the number says how much a curve25519 x-only variant could gain here.
    """
    import ctypes

    from fedrec.psi.group import _sodium

    fn = _sodium().lib.crypto_scalarmult_curve25519
    fn.argtypes = [ctypes.c_void_p] * 3
    scalar = np.frombuffer(os.urandom(32), np.uint8).copy()
    points = np.frombuffer(os.urandom(32 * n), np.uint8).reshape(n, 32).copy()
    points[:, 31] &= 0x7F
    out = np.empty_like(points)
    k, o, p = scalar.ctypes.data, out.ctypes.data, points.ctypes.data
    t = time.perf_counter()
    for i in range(0, 32 * n, 32):
        fn(o + i, k, p + i)
    return n / (time.perf_counter() - t)


def primitive_rate(n: int = 8192) -> dict[str, float]:
    """Scalar multiplications per second: one thread, and the whole engine (all cores)."""
    ids = [b"%d" % i for i in range(n)]
    domain = session_domain(bytes(32))
    out: dict[str, float] = {"x25519_mults_per_s_1_thread_reference": x25519_rate()}
    for label, workers in (("mults_per_s_1_thread", 1), ("mults_per_s_all_cores", default_workers())):
        with Engine(workers) as engine:
            scalar = SecretScalar()
            points = engine.submit_hash_blind(ids, domain, scalar).result()
            t = time.perf_counter()
            engine.submit_blind(points, scalar).result()
            out[label] = n / (time.perf_counter() - t)
            t = time.perf_counter()
            engine.submit_hash_blind(ids, domain, scalar).result()
            out[label.replace("mults", "hash_and_mults")] = n / (time.perf_counter() - t)
    return out


# ---------------------------------------------------------------- one party (child process)
def party_main(args: argparse.Namespace) -> int:
    from fedrec.psi.protocol import run_psi
    from fedrec.transport import ZmqChannel, load_keypair, load_public_key

    t0 = time.perf_counter()
    ids = make_ids(args.n, args.overlap, args.party)
    keys = load_keypair(Path(args.keys) / f"{args.party}.key_secret")
    peer = "host" if args.party == "guest" else "guest"
    peer_key = load_public_key(Path(args.keys) / f"{peer}.key")
    if args.party == "host":
        ch = ZmqChannel.listen("host", keys, {peer: peer_key}, endpoint=args.addr)
    else:
        ch = ZmqChannel.connect("guest", keys, peer, peer_key, args.addr)
    with ch:
        result = run_psi(ch, peer, ids, role=args.party, chunk_size=args.chunk_size, workers=args.workers,
                         progress=False)
    report = {
        "role": args.party, "psi_seconds": result.seconds, "process_seconds": time.perf_counter() - t0,
        "intersection": result.intersection_size, "aligned_sha256": hashlib.sha256(b"\n".join(result.ids))
        .hexdigest(), "rows_ok": all(ids[r] == x for r, x in zip(result.rows, result.ids, strict=True)),
        **result.stats,
    }
    print(json.dumps(report), flush=True)
    return 0


# ---------------------------------------------------------------- runs (parent)
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_fedrec(n: int, overlap: float, keys: Path, chunk_size: int, workers: int | None) -> dict[str, Any]:
    addr = f"tcp://127.0.0.1:{free_port()}"
    base = [sys.executable, __file__, "--n", str(n), "--overlap", str(overlap), "--addr", addr,
            "--keys", str(keys), "--chunk-size", str(chunk_size)]
    if workers:
        base += ["--workers", str(workers)]
    load = machine_load()
    t = time.perf_counter()
    procs = {role: subprocess.Popen([*base, "--party", role], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for role in ("host", "guest")}
    outs = {role: p.communicate(timeout=3600) for role, p in procs.items()}
    wall = time.perf_counter() - t
    reports = {}
    for role, (out, err) in outs.items():
        if procs[role].returncode != 0:
            raise RuntimeError(f"fedrec {role} failed (n={n}):\n{err[-3000:]}")
        reports[role] = json.loads(out.strip().splitlines()[-1])
    g, h = reports["guest"], reports["host"]
    expected = int(round(overlap * n))
    ok = (g["intersection"] == h["intersection"] == expected and g["aligned_sha256"] == h["aligned_sha256"]
          and g["rows_ok"] and h["rows_ok"])
    if not ok:
        raise RuntimeError(f"fedrec n={n}: wrong result {g} / {h}, expected {expected} common ids")
    psi_seconds = max(g["protocol_seconds"], h["protocol_seconds"])  # both connected -> both done
    return {"system": "fedrec", "n": n, "psi_seconds": psi_seconds, "process_seconds": wall,
            "ids_per_s": n / psi_seconds, "mults_per_s": 4 * n / psi_seconds, "intersection": expected,
            "workers": g["workers"], "load_before": load}


def run_openmined(n: int, overlap: float) -> dict[str, Any]:
    import private_set_intersection.python as psi

    guest = [x.decode() for x in make_ids(n, overlap, "guest")]
    host = [x.decode() for x in make_ids(n, overlap, "host")]
    load = machine_load()
    t = time.perf_counter()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(0.0, len(guest), host, psi.DataStructure.RAW)
    response = server.ProcessRequest(client.CreateRequest(guest))
    common = client.GetIntersection(setup, response)
    seconds = time.perf_counter() - t
    expected = int(round(overlap * n))
    if len(common) != expected:
        raise RuntimeError(f"openmined n={n}: {len(common)} common ids, expected {expected}")
    return {"system": "openmined.psi", "n": n, "psi_seconds": seconds, "process_seconds": seconds,
            "ids_per_s": n / seconds, "intersection": expected, "workers": 1, "load_before": load}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for system, n in sorted({(r["system"], r["n"]) for r in runs}, key=lambda k: (k[1], k[0])):
        sel = [r for r in runs if r["system"] == system and r["n"] == n]
        med = statistics.median(r["psi_seconds"] for r in sel)
        rows.append({"system": system, "n": n, "repeats": len(sel), "median_seconds": med,
                     "min_seconds": min(r["psi_seconds"] for r in sel),
                     "max_seconds": max(r["psi_seconds"] for r in sel), "ids_per_s": n / med})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for system, marker in (("fedrec", "o"), ("openmined.psi", "s")):
        sel = [r for r in rows if r["system"] == system]
        if sel:
            ax.loglog([r["n"] for r in sel], [r["median_seconds"] for r in sel], marker=marker, label=system)
    ax.axhline(BAR_SECONDS, color="grey", ls="--", lw=1, label="bar: 120 s at 1M x 1M")
    ax.set_xlabel("ids per party (N x N, half in common)")
    ax.set_ylabel("wall time, s (median)")
    ax.set_title(f"PSI on {platform.node() or 'this machine'}: {os.cpu_count()} cores, loopback")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--large-repeats", type=int, default=1,
                        help="repeats for N >= 1,000,000 (each takes minutes; default: 1)")
    parser.add_argument("--openmined-max", type=int, default=100000,
                        help="skip openmined.psi above this N (it runs ~2k ids/s on one core)")
    parser.add_argument("--chunk-size", type=int, default=16384)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    # child mode
    parser.add_argument("--party", choices=("guest", "host"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--addr", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.party:
        return party_main(args)

    from fedrec.transport import write_keypair

    prim = primitive_rate()
    print(f"primitive: {prim['mults_per_s_1_thread']:.0f} scalar mults/s on 1 thread, "
          f"{prim['mults_per_s_all_cores']:.0f} on {default_workers()} threads")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_keypair(tmp, "guest")
        write_keypair(tmp, "host")
        for n in args.sizes:
            for _ in range(args.large_repeats if n >= 1_000_000 else args.repeats):
                r = run_fedrec(n, args.overlap, Path(tmp), args.chunk_size, args.workers)
                runs.append(r)
                print(f"fedrec        N={n:>8}: {r['psi_seconds']:8.2f} s  {r['ids_per_s']:9.0f} ids/s  "
                      f"(load {r['load_before']['loadavg'][0]:.2f})", flush=True)
                if n <= args.openmined_max:
                    r = run_openmined(n, args.overlap)
                    runs.append(r)
                    print(f"openmined.psi N={n:>8}: {r['psi_seconds']:8.2f} s  {r['ids_per_s']:9.0f} ids/s  "
                          f"(load {r['load_before']['loadavg'][0]:.2f})", flush=True)
    rows = summarize(runs)
    floor = {n: 4 * n / prim["mults_per_s_all_cores"] for n in args.sizes}
    print(f"\n{'system':<14}{'N':>9}{'median s':>10}{'ids/s':>10}{'floor s':>9}{'vs openmined':>14}")
    for row in rows:
        om = next((r for r in rows if r["system"] == "openmined.psi" and r["n"] == row["n"]), None)
        fast = om and row["system"] == "fedrec"
        ratio = f"{om['median_seconds'] / row['median_seconds']:.1f}x" if om and fast else ""
        print(f"{row['system']:<14}{row['n']:>9}{row['median_seconds']:>10.2f}{row['ids_per_s']:>10.0f}"
              f"{floor[row['n']]:>9.1f}{ratio:>14}")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "psi", "bar_seconds_at_1M": BAR_SECONDS, "overlap": args.overlap,
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "primitive": prim,
           "floor_seconds_4n_over_rate": floor, "summary": rows, "runs": runs,
           "note": "fedrec: two processes, loopback TCP, CURVE; openmined.psi: in-process, one thread. "
                   "floor = 4N scalar multiplications at the all-cores primitive rate measured first."}
    (args.out / "psi.json").write_text(json.dumps(doc, indent=2))
    plot(rows, args.out / "psi.png")
    print(f"wrote {args.out / 'psi.json'} and psi.png")
    return 0


if __name__ == "__main__":
    np.seterr(all="raise")
    sys.exit(main())
