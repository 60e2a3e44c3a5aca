#!/usr/bin/env python3
"""PSI speed: fedrec's ECDH-PSI on both curves (two processes over loopback, CURVE on) vs ``openmined.psi``.

For every size N, the guest holds ids ``0..N-1`` and the host ``N-K..2N-K-1`` with ``K = overlap * N``
common ids. fedrec runs as two separate OS processes (this script re-invoked with ``--party``) over a real
ZeroMQ TCP socket on 127.0.0.1 with CURVE; ``openmined.psi`` (client/server, ``reveal_intersection=True``,
raw data structure) runs in-process on the same sets. Every run checks the intersection size, and for
fedrec that both parties aligned the same list. fedrec's time runs from the end of the handshake (both
processes connected, salts exchanged) until both parties hold their result; ``process_seconds`` adds
interpreter start-up, id generation and connection set-up. First it measures the primitive
(ristretto255 scalar multiplications/s on 1 thread and on all cores) so the wall time can be compared
with its floor ``4N / rate``.

The machine is shared, so wall times are noisy. Each party process also reports its CPU seconds
(``getrusage(RUSAGE_SELF)``, during the protocol and for the whole process), the load average is recorded
before and after every run, and the primitives are measured in CPU seconds per operation too. A reader can
then estimate the idle-machine time: both parties do the same work on the same 2 cores, so
``idle_estimate = (guest CPU + host CPU) / cores``; ``cpu_floor`` is the CPU the primitives alone need
(``N`` hash+blind and ``N`` blind per party at the measured per-CPU-second rates), and the difference
``cpu - cpu_floor`` is everything else (SHA-512, Python loops, transport, sorting).

    .venv/bin/python benchmarks/psi.py --sizes 10000 100000 1000000 --curves ristretto255 x25519 \
        --repeats 3 --large-repeats 1 --openmined-max 100000

Writes benchmarks/results/psi.json and psi.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
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

from fedrec.psi.group import CURVES, Engine, default_workers  # noqa: E402

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


def _timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def primitive_rate(curve: str, n: int = 8192) -> dict[str, float]:
    """Operations per wall second (1 thread, all cores) and per CPU second, for hash+blind and blind."""
    ids = [b"user-%010d" % i for i in range(n)]
    out: dict[str, float] = {}
    for label, workers in (("1_thread", 1), ("all_cores", default_workers())):
        with Engine(workers, curve) as engine:
            scalar, domain = engine.new_scalar(), engine.domain(bytes(32))
            points = engine.submit_hash_blind(ids, domain, scalar).result()
            wall, cpu = _timed(lambda e=engine, p=points, k=scalar: e.submit_blind(p, k).result())
            out[f"blind_per_s_{label}"] = n / wall
            out[f"blind_per_cpu_s_{label}"] = n / cpu
            wall, cpu = _timed(lambda e=engine, d=domain, k=scalar: e.submit_hash_blind(ids, d, k).result())
            out[f"hash_blind_per_s_{label}"] = n / wall
            out[f"hash_blind_per_cpu_s_{label}"] = n / cpu
    return out


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


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
        cpu0 = _cpu_seconds()
        result = run_psi(ch, peer, ids, role=args.party, chunk_size=args.chunk_size, workers=args.workers,
                         progress=False, curve=args.curve)
        cpu_psi = _cpu_seconds() - cpu0
    report = {
        "role": args.party, "psi_seconds": result.seconds, "process_seconds": time.perf_counter() - t0,
        "cpu_seconds_psi": cpu_psi, "cpu_seconds_process": _cpu_seconds(),
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


def run_fedrec(n: int, overlap: float, keys: Path, chunk_size: int, workers: int | None,
               curve: str) -> dict[str, Any]:
    addr = f"tcp://127.0.0.1:{free_port()}"
    base = [sys.executable, __file__, "--n", str(n), "--overlap", str(overlap), "--addr", addr,
            "--keys", str(keys), "--chunk-size", str(chunk_size), "--curve", curve]
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
    return {"system": f"fedrec-{curve}", "n": n, "psi_seconds": psi_seconds, "process_seconds": wall,
            "ids_per_s": n / psi_seconds, "mults_per_s": 4 * n / psi_seconds, "intersection": expected,
            "workers": g["workers"],
            "cpu_seconds": {"guest": g["cpu_seconds_psi"], "host": h["cpu_seconds_psi"]},
            "cpu_seconds_process": {"guest": g["cpu_seconds_process"], "host": h["cpu_seconds_process"]},
            "load_before": load, "loadavg_after": list(os.getloadavg())}


def run_openmined(n: int, overlap: float) -> dict[str, Any]:
    import private_set_intersection.python as psi

    guest = [x.decode() for x in make_ids(n, overlap, "guest")]
    host = [x.decode() for x in make_ids(n, overlap, "host")]
    load = machine_load()
    t, c = time.perf_counter(), _cpu_seconds()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(0.0, len(guest), host, psi.DataStructure.RAW)
    response = server.ProcessRequest(client.CreateRequest(guest))
    common = client.GetIntersection(setup, response)
    seconds, cpu = time.perf_counter() - t, _cpu_seconds() - c
    expected = int(round(overlap * n))
    if len(common) != expected:
        raise RuntimeError(f"openmined n={n}: {len(common)} common ids, expected {expected}")
    return {"system": "openmined.psi", "n": n, "psi_seconds": seconds, "process_seconds": seconds,
            "ids_per_s": n / seconds, "intersection": expected, "workers": 1,
            "cpu_seconds": {"both (one process)": cpu}, "load_before": load,
            "loadavg_after": list(os.getloadavg())}


def cpu_floor(n: int, prim: dict[str, float]) -> float:
    """CPU seconds one party's primitives need: n hash+blind and n blind at the per-CPU-second rates."""
    return n / prim["hash_blind_per_cpu_s_all_cores"] + n / prim["blind_per_cpu_s_all_cores"]


def summarize(runs: list[dict[str, Any]], prims: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    cores = default_workers()
    for system, n in sorted({(r["system"], r["n"]) for r in runs}, key=lambda k: (k[1], k[0])):
        sel = [r for r in runs if r["system"] == system and r["n"] == n]
        med = statistics.median(r["psi_seconds"] for r in sel)
        cpu = {role: statistics.median(r["cpu_seconds"][role] for r in sel) for role in sel[0]["cpu_seconds"]}
        total = sum(cpu.values())
        row = {"system": system, "n": n, "repeats": len(sel), "median_seconds": med,
               "min_seconds": min(r["psi_seconds"] for r in sel),
               "max_seconds": max(r["psi_seconds"] for r in sel), "ids_per_s": n / med,
               "median_cpu_seconds": cpu, "total_cpu_seconds": total,
               "idle_estimate_seconds": total / cores if system.startswith("fedrec") else total,
               "median_loadavg_1min": statistics.median(r["load_before"]["loadavg"][0] for r in sel)}
        curve = system.removeprefix("fedrec-")
        if curve in prims:
            row["cpu_floor_per_party_seconds"] = cpu_floor(n, prims[curve])
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, system in enumerate(sorted({r["system"] for r in rows})):
        sel = [r for r in rows if r["system"] == system]
        line = ax.loglog([r["n"] for r in sel], [r["median_seconds"] for r in sel], marker="osd^"[i % 4],
                         label=f"{system} (wall)")[0]
        if system.startswith("fedrec"):
            ax.loglog([r["n"] for r in sel], [r["idle_estimate_seconds"] for r in sel], ls=":",
                      color=line.get_color(), label=f"{system} (CPU / {default_workers()} cores)")
    ax.axhline(BAR_SECONDS, color="grey", ls="--", lw=1, label="bar: 120 s at 1M x 1M")
    ax.set_xlabel("ids per party (N x N, half in common)")
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"PSI on {platform.node() or 'this machine'}: {os.cpu_count()} cores, loopback")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000],
                        help="set sizes N (ids per party) to measure (default: %(default)s)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="share of N the two sets have in common, 0..1 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per (N, system) for N < 1,000,000 (default: %(default)s)")
    parser.add_argument("--large-repeats", type=int, default=1,
                        help="repeats for N >= 1,000,000 (each takes minutes; default: 1)")
    parser.add_argument("--openmined-max", type=int, default=100000,
                        help="skip openmined.psi above this N (it runs ~2k ids/s on one core)")
    parser.add_argument("--chunk-size", type=int, default=16384,
                        help="ids per PSI message in fedrec runs (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads per fedrec party for the scalar multiplications (default: all cores)")
    parser.add_argument("--curves", nargs="+", choices=CURVES, default=list(CURVES),
                        help="fedrec PSI groups to measure (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder for psi.json and psi.png (default: benchmarks/results)")
    parser.add_argument("--update", action="store_true",
                        help="keep the runs of --out/psi.json for the (system, N) pairs not measured now")
    parser.add_argument("--append", action="store_true",
                        help="keep all runs of --out/psi.json; medians then cover old and new runs")
    # child mode
    parser.add_argument("--party", choices=("guest", "host"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--addr", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    parser.add_argument("--curve", choices=CURVES, default="ristretto255", help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.party:
        return party_main(args)

    from fedrec.transport import write_keypair

    prims = {curve: primitive_rate(curve) for curve in args.curves}
    for curve, prim in prims.items():
        print(f"{curve:>12}: blind {prim['blind_per_s_1_thread']:7.0f}/s on 1 thread, "
              f"{prim['blind_per_s_all_cores']:7.0f}/s on {default_workers()}, "
              f"{prim['blind_per_cpu_s_all_cores']:7.0f}/CPU-s; hash+blind "
              f"{prim['hash_blind_per_cpu_s_all_cores']:7.0f}/CPU-s (load {os.getloadavg()[0]:.2f})")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_keypair(tmp, "guest")
        write_keypair(tmp, "host")
        for n in args.sizes:
            for _ in range(args.large_repeats if n >= 1_000_000 else args.repeats):
                for curve in args.curves:
                    r = run_fedrec(n, args.overlap, Path(tmp), args.chunk_size, args.workers, curve)
                    runs.append(r)
                    print(f"{r['system']:<20} N={n:>8}: {r['psi_seconds']:8.2f} s  CPU guest "
                          f"{r['cpu_seconds']['guest']:7.1f} s host {r['cpu_seconds']['host']:7.1f} s  "
                          f"(load {r['load_before']['loadavg'][0]:.2f})", flush=True)
                if n <= args.openmined_max:
                    r = run_openmined(n, args.overlap)
                    runs.append(r)
                    print(f"{'openmined.psi':<20} N={n:>8}: {r['psi_seconds']:8.2f} s  CPU "
                          f"{r['cpu_seconds']['both (one process)']:7.1f} s  "
                          f"(load {r['load_before']['loadavg'][0]:.2f})", flush=True)
    for r in runs:
        r["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    old_path = args.out / "psi.json"
    if (args.update or args.append) and old_path.is_file():
        old = json.loads(old_path.read_text())
        measured = set() if args.append else {(r["system"], r["n"]) for r in runs}
        kept = [r for r in old.get("runs", []) if (r["system"], r["n"]) not in measured]
        print(f"keeping {len(kept)} earlier run(s) of {old_path}")
        runs = kept + runs
        prims = {**old.get("primitives", {}), **prims}  # the floor uses the latest primitive rates
    rows = summarize(runs, prims)
    print(f"\n{'system':<20}{'N':>9}{'wall s':>9}{'CPU G+H s':>11}{'CPU/2 s':>9}{'floor/party':>12}"
          f"{'load':>6}{'vs openmined':>14}")
    for row in rows:
        om = next((r for r in rows if r["system"] == "openmined.psi" and r["n"] == row["n"]), None)
        ratio = (f"{om['median_seconds'] / row['median_seconds']:.1f}x"
                 if om and row["system"].startswith("fedrec") else "")
        floor = row.get("cpu_floor_per_party_seconds")
        print(f"{row['system']:<20}{row['n']:>9}{row['median_seconds']:>9.2f}{row['total_cpu_seconds']:>11.1f}"
              f"{row['idle_estimate_seconds']:>9.1f}{'' if floor is None else f'{floor:.1f}':>12}"
              f"{row['median_loadavg_1min']:>6.1f}{ratio:>14}")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "psi", "bar_seconds_at_1M": BAR_SECONDS, "overlap": args.overlap,
           "cpu_count": os.cpu_count(), "cores_used": default_workers(), "python": platform.python_version(),
           "primitives": prims, "summary": rows, "runs": runs,
           "note": "fedrec: two processes, loopback TCP, CURVE; openmined.psi: in-process, one thread. "
                   "cpu_seconds: getrusage(RUSAGE_SELF) of each party during run_psi. idle_estimate = "
                   "(guest + host CPU) / cores. cpu_floor_per_party = N / hash+blind rate + N / blind rate "
                   "(per CPU second, measured first in the same run)."}
    (args.out / "psi.json").write_text(json.dumps(doc, indent=2))
    plot(rows, args.out / "psi.png")
    print(f"wrote {args.out / 'psi.json'} and psi.png")
    return 0


if __name__ == "__main__":
    np.seterr(all="raise")
    sys.exit(main())
