#!/usr/bin/env python3
"""PSI speed: fedrec's ECDH-PSI per curve and X25519 backend (two processes, loopback) vs openmined.psi.

Systems: ``fedrec-x25519-sodium`` (X25519 through libsodium, one ctypes call per point: the path before
issue #17), ``fedrec-x25519-ifma`` (the same group and bytes, 8 points per instruction with AVX-512 IFMA,
:mod:`fedrec.psi.x25519_ifma`), optionally ``fedrec-ristretto255``, and ``openmined.psi`` (guarded import;
it is in the ``dev`` extra). The table's ``vs sodium`` column is the wall-time ratio to
``fedrec-x25519-sodium`` at the same N in the same run (issue #17's bar: >= 1.5x at 1M x 1M).

For every size N, the guest holds ids ``0..N-1`` and the host ``N-K..2N-K-1`` with ``K = overlap * N``
common ids. fedrec runs as two separate OS processes (this script re-invoked with ``--party``) over a real
ZeroMQ TCP socket on 127.0.0.1 with CURVE; ``openmined.psi`` (client/server, ``reveal_intersection=True``,
raw data structure) runs in-process on the same sets. Every run checks the intersection size, and for
fedrec that both parties aligned the same list (and, across systems, the same intersection). fedrec's
time runs from the end of the handshake (both processes connected, salts exchanged) until both parties
hold their result; ``process_seconds`` adds interpreter start-up, id generation and connection set-up.
The systems of one repeat run one after another in a rotating order, so load drifts hit all of them.

First it measures the primitives in operations per CPU second on one thread (``--primitives-only`` stops
there): X25519 through libsodium by ctypes (today's loop), the IFMA batch, ristretto255 (libsodium), and,
when importable, PyNaCl's ``crypto_scalarmult`` / ``crypto_scalarmult_ristretto255`` and the
``cryptography`` package's X25519 objects (neither is a dependency: put them on ``PYTHONPATH`` from a
throwaway ``pip install --target DIR pynacl cryptography``).

The machine is shared, so wall times are noisy. Each party process also reports its CPU seconds
(``getrusage(RUSAGE_SELF)``, during the protocol and for the whole process) and the load average is
recorded before and after every run; ``idle_estimate = (guest CPU + host CPU) / cores``; ``cpu_floor``
is the CPU one party's primitives alone need (``N`` hash+blind and ``N`` blind at the measured
per-CPU-second rates).

    nice -n 10 .venv/bin/python benchmarks/psi.py --sizes 100000 1000000 --repeats 3 --large-repeats 3 \
        --openmined-max 1000000 --openmined-large-repeats 1

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

from fedrec.psi import curve25519  # noqa: E402
from fedrec.psi import group as ristretto  # noqa: E402
from fedrec.psi.group import CURVES, Engine, SecretScalar, default_workers  # noqa: E402
from fedrec.psi.x25519_ifma import load as load_ifma  # noqa: E402
from fedrec.psi.x25519_ifma import unavailable_reason  # noqa: E402

OUT = REPO / "benchmarks" / "results"
BAR_SPEEDUP = 1.5  # issue #17: at 1M x 1M, at least 1.5x faster than fedrec-x25519-sodium in the same run
BASELINE = "fedrec-x25519-sodium"
X25519_BACKENDS = ("sodium", "ifma")


def make_ids(n: int, overlap: float, role: str) -> list[bytes]:
    start = 0 if role == "guest" else n - int(round(overlap * n))
    return [b"user-%010d" % i for i in range(start, start + n)]


def common_digest(ids: list[bytes]) -> str:
    """SHA-256 of the sorted common ids: equal for every system that found the same intersection."""
    return hashlib.sha256(b"\n".join(sorted(ids))).hexdigest()


def true_common_digest(n: int, overlap: float) -> str:
    return common_digest(sorted(set(make_ids(n, overlap, "guest")) & set(make_ids(n, overlap, "host"))))


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


def primitive_rate(curve: str, backend: str, n: int = 8192) -> dict[str, float]:
    """Engine operations per wall second (1 thread, all cores) and per CPU second, hash+blind and blind."""
    ids = [b"user-%010d" % i for i in range(n)]
    out: dict[str, float] = {}
    for label, workers in (("1_thread", 1), ("all_cores", default_workers())):
        with Engine(workers, curve, backend) as engine:
            scalar, domain = engine.new_scalar(), engine.domain(bytes(32))
            points = engine.submit_hash_blind(ids, domain, scalar).result()
            wall, cpu = _timed(lambda e=engine, p=points, k=scalar: e.submit_blind(p, k).result())
            out[f"blind_per_s_{label}"] = n / wall
            out[f"blind_per_cpu_s_{label}"] = n / cpu
            wall, cpu = _timed(lambda e=engine, d=domain, k=scalar: e.submit_hash_blind(ids, d, k).result())
            out[f"hash_blind_per_s_{label}"] = n / wall
            out[f"hash_blind_per_cpu_s_{label}"] = n / cpu
    return out


def primitive_micro(n: int = 4096) -> dict[str, dict[str, Any]]:
    """One variable-base scalar multiplication, per CPU second on one thread, for every implementation at
    hand (the ones whose package is missing are recorded as such)."""
    rng = np.random.default_rng(1)
    x_scalar = SecretScalar("x25519")
    x_points = np.empty((n, 32), np.uint8)
    curve25519.hash_and_blind_into(x_points, [b"%d" % i for i in range(n)], b"micro", x_scalar)
    r_scalar = SecretScalar("ristretto255")
    r_points = np.empty((n, 32), np.uint8)
    ristretto.hash_and_blind_into(r_points, [b"%d" % i for i in range(n)], b"micro", r_scalar)
    k_bytes = bytes(rng.integers(0, 256, 32, dtype=np.uint8))
    x_list = [bytes(p) for p in x_points]
    out_buf = np.empty_like(x_points)
    cases: dict[str, tuple[str, Any]] = {
        "x25519 libsodium, ctypes call per point (fedrec before #17)":
            ("rbcl", lambda: curve25519.blind_into(out_buf, x_points, x_scalar)),
        "ristretto255 libsodium, ctypes call per point":
            ("rbcl", lambda: ristretto.blind_into(out_buf, r_points, r_scalar)),
    }
    if load_ifma() is not None:
        cases["x25519 AVX-512 IFMA batch, 8 points per instruction (fedrec.psi.x25519_ifma)"] = (
            "fedrec", lambda: curve25519.blind_into_ifma(out_buf, x_points, x_scalar))
    try:
        from nacl import bindings as nacl

        cases["x25519 PyNaCl crypto_scalarmult (libsodium, Python call per point)"] = (
            "pynacl", lambda: [nacl.crypto_scalarmult(k_bytes, u) for u in x_list])
        # PyNaCl 1.6 has no ristretto255 bindings (crypto_scalarmult_ristretto255 is rbcl's, above)
    except ImportError:
        cases["x25519 PyNaCl crypto_scalarmult"] = ("pynacl", None)
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

        def crypto_objects() -> None:
            key = X25519PrivateKey.from_private_bytes(k_bytes)
            for u in x_list:
                key.exchange(X25519PublicKey.from_public_bytes(u))

        cases["x25519 cryptography (OpenSSL) objects, exchange per point"] = ("cryptography", crypto_objects)
    except ImportError:
        cases["x25519 cryptography (OpenSSL) objects"] = ("cryptography", None)
    result: dict[str, dict[str, Any]] = {}
    for name, (package, fn) in cases.items():
        if fn is None:
            result[name] = {"package": package, "per_cpu_second": None, "note": f"{package} not importable"}
            continue
        fn()  # warm up
        cpus = [_timed(fn)[1] for _ in range(3)]
        result[name] = {"package": package, "per_cpu_second": n / statistics.median(cpus)}
    return result


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
                         progress=False, curve=args.curve, backend=args.backend)
        cpu_psi = _cpu_seconds() - cpu0
    report = {
        "role": args.party, "psi_seconds": result.seconds, "process_seconds": time.perf_counter() - t0,
        "cpu_seconds_psi": cpu_psi, "cpu_seconds_process": _cpu_seconds(),
        "intersection": result.intersection_size, "aligned_sha256": hashlib.sha256(b"\n".join(result.ids))
        .hexdigest(), "common_sha256": common_digest(result.ids),
        "rows_ok": all(ids[r] == x for r, x in zip(result.rows, result.ids, strict=True)),
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


def system_name(curve: str, backend: str) -> str:
    return f"fedrec-{curve}-{backend}" if curve == "x25519" else f"fedrec-{curve}"


def run_fedrec(n: int, overlap: float, keys: Path, chunk_size: int, workers: int | None,
               curve: str, backend: str) -> dict[str, Any]:
    addr = f"tcp://127.0.0.1:{free_port()}"
    base = [sys.executable, __file__, "--n", str(n), "--overlap", str(overlap), "--addr", addr,
            "--keys", str(keys), "--chunk-size", str(chunk_size), "--curve", curve, "--backend", backend]
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
          and g["rows_ok"] and h["rows_ok"] and g["common_sha256"] == true_common_digest(n, overlap))
    if not ok:
        raise RuntimeError(f"fedrec n={n}: wrong result {g} / {h}, expected {expected} common ids")
    if g["backend"] != backend or h["backend"] != backend:
        raise RuntimeError(f"fedrec n={n}: asked for backend {backend}, the parties ran {g['backend']} / "
                           f"{h['backend']}")
    psi_seconds = max(g["protocol_seconds"], h["protocol_seconds"])  # both connected -> both done
    return {"system": system_name(curve, backend), "n": n, "psi_seconds": psi_seconds,
            "process_seconds": wall, "common_sha256": g["common_sha256"],
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
    if common_digest(sorted(guest[i].encode() for i in common)) != true_common_digest(n, overlap):
        raise RuntimeError(f"openmined n={n}: the intersection differs from the true one")
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
        key = system.removeprefix("fedrec-")
        if key in prims:
            row["cpu_floor_per_party_seconds"] = cpu_floor(n, prims[key])
        rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["system"] == BASELINE and r["n"] == row["n"]), None)
        if base is not None:
            row["speedup_vs_sodium"] = base["median_seconds"] / row["median_seconds"]
            row["cpu_ratio_vs_sodium"] = base["total_cpu_seconds"] / row["total_cpu_seconds"]
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    systems = sorted({r["system"] for r in rows})
    for i, system in enumerate(systems):
        sel = [r for r in rows if r["system"] == system]
        line = ax.loglog([r["n"] for r in sel], [r["median_seconds"] for r in sel], marker="osd^"[i % 4],
                         label=f"{system} (wall)")[0]
        if system.startswith("fedrec"):
            ax.loglog([r["n"] for r in sel], [r["idle_estimate_seconds"] for r in sel], ls=":",
                      color=line.get_color(), label=f"{system} (CPU / {default_workers()} cores)")
        with_ratio = [r for r in sel if "speedup_vs_sodium" in r]
        if with_ratio and system != BASELINE:
            bx.semilogx([r["n"] for r in with_ratio], [r["speedup_vs_sodium"] for r in with_ratio],
                        marker="osd^"[i % 4], color=line.get_color(), label=system)
    ax.set_xlabel("ids per party (N x N, half in common)")
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"PSI on {os.cpu_count()} cores, loopback + CURVE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    bx.axhline(BAR_SPEEDUP, color="grey", ls="--", lw=1, label=f"bar: {BAR_SPEEDUP}x at 1M x 1M")
    bx.axhline(1.0, color="black", lw=0.6)
    bx.set_xlabel("ids per party")
    bx.set_ylabel(f"wall-time speedup vs {BASELINE}")
    bx.set_title("same run, medians")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=7)
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
    parser.add_argument("--openmined-large-repeats", type=int, default=1,
                        help="openmined.psi runs for N >= 1,000,000 (~10 min each here; default: 1)")
    parser.add_argument("--chunk-size", type=int, default=16384,
                        help="ids per PSI message in fedrec runs (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads per fedrec party for the scalar multiplications (default: all cores)")
    parser.add_argument("--curves", nargs="+", choices=CURVES, default=["x25519"],
                        help="fedrec PSI groups to measure (default: %(default)s)")
    parser.add_argument("--backends", nargs="+", choices=X25519_BACKENDS, default=list(X25519_BACKENDS),
                        help="X25519 implementations to measure: sodium (libsodium, the path before "
                             "issue #17), ifma (AVX-512 IFMA batch) (default: %(default)s)")
    parser.add_argument("--primitives-only", action="store_true",
                        help="measure the primitives (operations per CPU second) and stop")
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
    parser.add_argument("--backend", choices=X25519_BACKENDS, default="sodium", help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.party:
        return party_main(args)

    from fedrec.transport import write_keypair

    print(f"load before: {os.getloadavg()[0]:.2f}; ifma: "
          f"{'available' if load_ifma() is not None else unavailable_reason()}")
    micro = primitive_micro()
    print(f"\n{'primitive (1 thread)':<80}{'ops/CPU-s':>11}")
    for name, m in micro.items():
        rate = m["per_cpu_second"]
        print(f"{name:<80}{'-' if rate is None else f'{rate:.0f}':>11}{'  ' + m.get('note', '')}")
    configs = [(curve, backend) for curve in args.curves
               for backend in (args.backends if curve == "x25519" else ("sodium",))]
    if ("x25519", "ifma") in configs and load_ifma() is None:
        print(f"skipping fedrec-x25519-ifma: {unavailable_reason()}")
        configs.remove(("x25519", "ifma"))
    prims = {system_name(c, b).removeprefix("fedrec-"): primitive_rate(c, b) for c, b in configs}
    print()
    for key, prim in prims.items():
        print(f"{key:>20}: blind {prim['blind_per_s_1_thread']:7.0f}/s on 1 thread, "
              f"{prim['blind_per_s_all_cores']:7.0f}/s on {default_workers()}, "
              f"{prim['blind_per_cpu_s_all_cores']:7.0f}/CPU-s; hash+blind "
              f"{prim['hash_blind_per_cpu_s_all_cores']:7.0f}/CPU-s (load {os.getloadavg()[0]:.2f})")
    if args.primitives_only:
        return 0
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_keypair(tmp, "guest")
        write_keypair(tmp, "host")
        for n in args.sizes:
            large = n >= 1_000_000
            for rep in range(args.large_repeats if large else args.repeats):
                order = configs[rep % len(configs):] + configs[:rep % len(configs)] if configs else []
                for curve, backend in order:
                    r = run_fedrec(n, args.overlap, Path(tmp), args.chunk_size, args.workers, curve, backend)
                    runs.append(r)
                    print(f"{r['system']:<22} N={n:>8}: {r['psi_seconds']:8.2f} s  CPU guest "
                          f"{r['cpu_seconds']['guest']:7.1f} s host {r['cpu_seconds']['host']:7.1f} s  "
                          f"(load {r['load_before']['loadavg'][0]:.2f})", flush=True)
                om_repeats = args.openmined_large_repeats if large else args.repeats
                if n <= args.openmined_max and rep < om_repeats:
                    try:
                        r = run_openmined(n, args.overlap)
                    except ImportError as err:
                        print(f"openmined.psi not importable ({err}); pip install openmined.psi (dev extra)")
                        args.openmined_max = 0
                        continue
                    runs.append(r)
                    print(f"{'openmined.psi':<22} N={n:>8}: {r['psi_seconds']:8.2f} s  CPU "
                          f"{r['cpu_seconds']['both (one process)']:7.1f} s  "
                          f"(load {r['load_before']['loadavg'][0]:.2f})", flush=True)
            print(f"N={n}: every run's intersection is the true one (sorted common ids: SHA-256 "
                  f"{true_common_digest(n, args.overlap)[:16]}...)", flush=True)
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
    print(f"\n{'system':<22}{'N':>9}{'reps':>5}{'wall s':>9}{'CPU G s':>9}{'CPU H s':>9}{'CPU/2 s':>9}"
          f"{'floor/party':>12}{'load':>6}{'vs sodium':>10}{'vs openmined':>13}")
    for row in rows:
        om = next((r for r in rows if r["system"] == "openmined.psi" and r["n"] == row["n"]), None)
        ratio = (f"{om['median_seconds'] / row['median_seconds']:.1f}x"
                 if om and row["system"].startswith("fedrec") else "")
        floor = row.get("cpu_floor_per_party_seconds")
        cpu = row["median_cpu_seconds"]
        g, h = (cpu["guest"], cpu["host"]) if "guest" in cpu else (sum(cpu.values()), float("nan"))
        speed = f"{row['speedup_vs_sodium']:.2f}x" if "speedup_vs_sodium" in row else ""
        print(f"{row['system']:<22}{row['n']:>9}{row['repeats']:>5}{row['median_seconds']:>9.2f}{g:>9.1f}"
              f"{h:>9.1f}{row['idle_estimate_seconds']:>9.1f}{'' if floor is None else f'{floor:.1f}':>12}"
              f"{row['median_loadavg_1min']:>6.1f}{speed:>10}{ratio:>13}")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "psi",
           "bar": f"fedrec-x25519-ifma >= {BAR_SPEEDUP}x faster than {BASELINE} at 1M x 1M",
           "overlap": args.overlap, "cpu_count": os.cpu_count(), "cores_used": default_workers(),
           "python": platform.python_version(), "ifma": load_ifma() is not None,
           "primitives_micro": micro, "primitives": prims, "summary": rows, "runs": runs,
           "command": " ".join(sys.argv),
           "note": "fedrec: two processes, loopback TCP, CURVE; openmined.psi: in-process, one thread. "
                   "cpu_seconds: getrusage(RUSAGE_SELF) of each party during run_psi. idle_estimate = "
                   "(guest + host CPU) / cores. cpu_floor_per_party = N / hash+blind rate + N / blind rate "
                   "(per CPU second, measured first in the same run). speedup_vs_sodium: median wall time "
                   f"of {BASELINE} / this system's, same N, same run."}
    tmp_json = args.out / "psi.json.tmp"
    tmp_json.write_text(json.dumps(doc, indent=2))
    os.replace(tmp_json, args.out / "psi.json")
    plot(rows, args.out / "psi.tmp.png")
    os.replace(args.out / "psi.tmp.png", args.out / "psi.png")
    print(f"wrote {args.out / 'psi.json'} and psi.png")
    return 0


if __name__ == "__main__":
    np.seterr(all="raise")
    sys.exit(main())
