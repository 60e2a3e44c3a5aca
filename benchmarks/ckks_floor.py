#!/usr/bin/env python3
"""The floor of a CKKS epoch of the vertical FM on this machine: how close to the plaintext protocol
any implementation of the same protocol can get (issue #17's bars: CKKS epoch <= 2x plain, bytes <= 1.3x).

Examples::

    python benchmarks/ckks_floor.py                        # ML-100K (or a synthetic set without it)
    python benchmarks/ckks_floor.py --repeats 7 --presets n8192,n4096,n16384

Method, all in one run:

1. **Per-operation CPU time** of each CKKS preset (medians of ``--repeats`` timings of ``--ops`` calls,
   ``time.process_time``, so the machine's load inflates them little): a seeded encryption of a full
   slot vector, loading a chunk, encoding a plaintext, one ciphertext-plaintext product term, the
   encryption of a mask, the addition, loading/serialising a result, a decryption; and the bytes per
   slot of a chunk and of a result.
2. **One epoch of the protocol** with the plain and the CKKS backends over the in-memory channel (the
   parties' code and wire encoding, no sockets; ``benchmarks/hetero_fm.py``'s ``run_cost``), for the
   plaintext epoch's wall seconds and the CKKS epoch's operation counts (chunks, product
   terms, results) and bytes.
3. **The floor**: the CPU the CKKS operations of that epoch cost at the measured per-operation prices,
   added to the plaintext epoch, with the work split perfectly over the two cores (the most favourable
   case: both parties busy all the time, nothing waits). The *essential* floor keeps only the guest's
   encryption of its rows: nothing less can leave the guest encrypted, whatever the host does with it.
   Bytes: the ciphertexts' bytes per slot against the plaintext protocol's bytes per value.

A bar below the floor cannot be met by tuning this protocol with CKKS on this machine.

Redesigns (computed from the same prices and counts): (a) *host plaintexts encoded once per run*:
possible only if every batch uses the same chunk layout (all aligned users in every batch, the
columns grouped over all host columns) and parameter-free multipliers (a layout releasing
``Σ_u x_j² c_u`` apart, so that ``w_j`` leaves the plaintexts); it removes every ``encode`` of a
product term. This one is built: layout ``static`` (``HeteroFMConfig.layout``), measured here too
(its own epoch, counts and floor: it encrypts more chunks, every aligned user in every batch).
(b) that, and the *best lane count*: a chunk costs encryption + loading, a result mask + serialization
+ loading + decryption; chunks grow with the lanes ``C`` and results shrink as ``1/C`` while the
products stay about the same on dense batches, so the cheapest plan costs ``2·sqrt(chunk cost · result
cost)``. Both still assume the two cores perfectly used. The 2x bar allows ``plain epoch × cores`` CPU
seconds of CKKS work in all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import hetero_fm  # noqa: E402  (benchmarks/hetero_fm.py: datasets, one epoch over the memory channel)

from fedrec.crypto.backend import CryptoError  # noqa: E402
from fedrec.crypto.ckks import PRESETS, CKKSBackend  # noqa: E402

OPS = ("encrypt", "load chunk", "encode", "product term", "encrypt mask", "add", "serialize result",
       "load result", "decrypt")


def _cpu_ms(fn: Callable[[], Any], calls: int, repeats: int) -> float:
    each = []
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(calls):
            fn()
        each.append((time.process_time() - t) / calls * 1e3)
    return float(statistics.median(each))


def op_costs(preset: str, calls: int, repeats: int) -> dict[str, Any]:
    """Median CPU milliseconds per operation, and bytes per slot, for one preset."""
    be = CKKSBackend.keygen(preset)
    s = be.slots
    x = np.random.default_rng(0).normal(size=s) * 0.1
    ct = be.encrypt(x)
    blob = be.serialize(ct)
    pts = [be.prepare_plain(x, 0) for _ in range(8)]
    cts = [be.deserialize(blob, s, 0) for _ in range(8)]
    res = be.dot_plain(cts, pts)
    mask = be.encrypt_mask(x, 1.0, 1)
    masked = be.add(res, mask)
    rblob = be.serialize(masked)
    rct = be.deserialize(rblob, s, 1)
    ms = {
        "encrypt": _cpu_ms(lambda: be.encrypt(x), calls, repeats),
        "load chunk": _cpu_ms(lambda: be.deserialize(blob, s, 0), calls, repeats),
        "encode": _cpu_ms(lambda: be.prepare_plain(x, 0), calls, repeats),
        "product term": _cpu_ms(lambda: be.dot_plain(cts, pts), max(calls // 4, 1), repeats) / len(cts),
        "encrypt mask": _cpu_ms(lambda: be.encrypt_mask(x, 1.0, 1), calls, repeats),
        "add": _cpu_ms(lambda: be.add(res, mask), calls, repeats),
        "serialize result": _cpu_ms(lambda: be.serialize(masked), calls, repeats),
        "load result": _cpu_ms(lambda: be.deserialize(rblob, s, 1), calls, repeats),
        "decrypt": _cpu_ms(lambda: be.decrypt(rct), calls, repeats),
    }
    return {"preset": preset, "slots": s, "coeff_mod_bits": list(PRESETS[preset].coeff_mod_bit_sizes),
            "ms": ms, "chunk_bytes_per_slot": len(blob) / s, "result_bytes_per_slot": len(rblob) / s,
            "result_modulus_bits": be.preset.chain_bits(1)}


def release_parts(preset: str, users: int = 4096, k: int = 8, columns: int = 64) -> str:
    """How the protocol's masked release of one batch (default configuration: ``value_bound`` 256,
    ``plain_bound`` 64, 20 hiding bits) fits the preset: the parts the guest must split it into, or why
    it cannot (:func:`packing.plan_parts`)."""
    from fedrec.protocols.hetero_fm import packing
    from fedrec.protocols.hetero_fm.config import HeteroFMConfig

    cfg = HeteroFMConfig(backend="ckks", ckks_preset=preset)
    be = CKKSBackend.keygen(preset)
    try:
        plans = packing.plan_parts(be, users, k, columns, cfg.layout, cfg.value_bound, cfg.plain_bound,
                                   cfg.hiding_bits)
    except CryptoError as exc:
        return f"no: {exc}"
    return f"yes, in {len(plans)} part(s) of <= {plans[0].n_users} users"


def epoch(spec: dict[str, Any], backend: str, repeats: int) -> dict[str, Any]:
    """Median wall seconds of one epoch (both parties in this process, the guest's clock), bytes and the
    CKKS operation counts."""
    runs = [hetero_fm.run_cost(spec, backend, "memory", 1) for _ in range(repeats)]
    walls = [r["seconds_per_epoch"] for r in runs]
    counts = {**runs[0]["guest_stages"]["counts"], **runs[0]["host_stages"]["counts"]}
    return {"backend": backend, "wall_s": float(statistics.median(walls)), "walls": walls,
            "bytes": float(runs[0]["bytes_per_epoch"]), "counts": counts}


def floor(ops: dict[str, Any], counts: dict[str, int], plain: dict[str, Any], cores: int) -> dict[str, float]:
    """Added CPU seconds of the CKKS operations of one epoch (``counts``) at ``ops``' prices, and the
    wall ratios they allow against the plaintext epoch with ``cores`` cores perfectly used."""
    ms = ops["ms"]
    chunks, terms, results = counts["chunks"], counts["products"], counts["product_results"]
    added = (chunks * (ms["encrypt"] + ms["load chunk"]) + terms * (ms["encode"] + ms["product term"])
             + results * (ms["encrypt mask"] + ms["add"] + ms["serialize result"] + ms["load result"]
                          + ms["decrypt"])) / 1e3
    essential = chunks * ms["encrypt"] / 1e3
    # redesigns of the same protocol (see the module docstring's "Redesigns"): (a) every host plaintext
    # encoded once per run; (b) and the best lane count: chunks grow as the lanes C, results as 1/C, the
    # products stay ~constant (dense batches), so a·s + b/s is smallest at 2·sqrt(a·b)
    per_chunk = ms["encrypt"] + ms["load chunk"]
    per_result = ms["encrypt mask"] + ms["add"] + ms["serialize result"] + ms["load result"] + ms["decrypt"]
    encode_once = added - terms * ms["encode"] / 1e3
    best_plan = (2.0 * (chunks * per_chunk * results * per_result) ** 0.5 + terms * ms["product term"]) / 1e3
    wall = plain["wall_s"]
    return {"added_cpu_s": added, "essential_cpu_s": essential,
            "one_core_ratio": (wall + added) / wall,
            "wall_ratio": (wall + added / cores) / wall,
            "essential_wall_ratio": (wall + essential / cores) / wall,
            "encode_once_cpu_s": encode_once, "encode_once_wall_ratio": (wall + encode_once / cores) / wall,
            "best_plan_cpu_s": best_plan, "best_plan_wall_ratio": (wall + best_plan / cores) / wall,
            "cpu_budget_for_2x_s": wall * cores}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = res["floor"]
    labels = ["measured\nCKKS epoch", "measured\nlayout static", "floor: every\nCKKS op",
              "floor: layout\nstatic's ops", "redesign:\nencode once", "redesign: and\nbest lanes",
              "floor: guest's\nencryption only"]
    vals = [res["measured_time_ratio"], res["measured_static_time_ratio"], f["wall_ratio"],
            res["floor_static"]["encode_once_wall_ratio"], f["encode_once_wall_ratio"],
            f["best_plan_wall_ratio"], f["essential_wall_ratio"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(15, 4))
    a.bar(labels, vals, color=["#4c72b0", "#64b5cd", "#dd8452", "#937860", "#c44e52", "#8172b2", "#55a868"])
    a.tick_params(axis="x", labelsize=7)
    a.axhline(2.0, color="red", ls="--", label="bar: 2x")
    a.set_ylabel("CKKS epoch / plain epoch (wall)")
    a.set_title(f"{res['dataset']}: time (floors: {res['cores']} cores, nothing waits)")
    a.legend()
    presets = [o["preset"] for o in res["ops"]]
    b.bar([f"{p}\nchunk" for p in presets], [o["chunk_bytes_per_slot"] / res["plain_bytes_per_value"]
                                             for o in res["ops"]], color="#4c72b0")
    b.axhline(1.3, color="red", ls="--", label="bar: 1.3x")
    b.axhline(res["measured_bytes_ratio"], color="grey", ls=":", label="measured epoch")
    b.set_ylabel("bytes per slot / plaintext bytes per value")
    b.set_title("bytes")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="n8192,n4096",
                   help="CKKS presets whose operations are timed (n8192,n4096); the first is the protocol's")
    p.add_argument("--repeats", type=int, default=5, help="timings per operation and epochs per backend (5)")
    p.add_argument("--ops", type=int, default=20, help="calls per operation timing (20)")
    p.add_argument("--cores", type=int, default=2, help="cores the floor may spread the work over (2)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="results folder (benchmarks/results)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(1)
    load0 = list(os.getloadavg())
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"--presets: unknown {unknown}; expected some of {sorted(PRESETS)}")
    ops = [op_costs(p, args.ops, args.repeats) for p in presets]
    if hetero_fm.movielens() is not None:
        spec: dict[str, Any] = {"data": "movielens", "seed": 0}
    else:
        spec = {"data": "synthetic", "synthetic": {"seed": 0, "n_users": 2000}, "seed": 0}
    spec["params"] = {"n_factors": 8, "lr": 0.02, "seed": 0, "label_dp": "off", "batch_size": 4096}
    ds_name = hetero_fm._dataset(spec)[0].name
    plain = epoch(spec, "plain", args.repeats)
    ckks = epoch(spec, "ckks", max(args.repeats // 2, 1))
    static_spec = {**spec, "params": {**spec["params"], "layout": "static"}}
    static = epoch(static_spec, "ckks", max(args.repeats // 2, 1))
    counts = ckks["counts"]
    f = floor(ops[0], counts, plain, args.cores)
    fs = floor(ops[0], static["counts"], plain, args.cores)
    # the plaintext protocol's bytes per value: its epoch bytes over the values the CKKS epoch's slots carry
    values = counts["chunks"] * ops[0]["slots"] + counts["product_results"] * ops[0]["slots"]
    plain_bpv = plain["bytes"] / values
    res = {"dataset": ds_name, "ops": ops, "plain": plain, "ckks": ckks, "floor": f,
           "ckks_static": static, "floor_static": fs,
           "measured_time_ratio": ckks["wall_s"] / plain["wall_s"],
           "measured_static_time_ratio": static["wall_s"] / plain["wall_s"],
           "measured_static_bytes_ratio": static["bytes"] / plain["bytes"],
           "measured_bytes_ratio": ckks["bytes"] / plain["bytes"],
           "plain_bytes_per_value": plain_bpv,
           "masked_release_fits": {p: release_parts(p) for p in presets},
           "cores": args.cores, "load_average_start": load0, "load_average": list(os.getloadavg()),
           "machine": platform.platform(), "cpu_count": os.cpu_count(),
           "command": "python benchmarks/ckks_floor.py " + " ".join(sys.argv[1:])}
    print(f"\nCPU ms per operation (median of {args.repeats} x {args.ops} calls)")
    print(f"{'preset':<8} " + " ".join(f"{o:>13}" for o in OPS) + "   B/slot chunk  result")
    for o in ops:
        print(f"{o['preset']:<8} " + " ".join(f"{o['ms'][k]:>13.3f}" for k in OPS)
              + f"   {o['chunk_bytes_per_slot']:>12.1f} {o['result_bytes_per_slot']:>7.1f}")
    print(f"\n{ds_name}: one epoch; plain {plain['wall_s']:.2f} s, {plain['bytes'] / 2**20:.1f} MiB "
          f"({plain_bpv:.2f} B per value); CKKS {ckks['wall_s']:.2f} s, {ckks['bytes'] / 2**20:.1f} MiB; "
          f"added CPU at the measured prices {f['added_cpu_s']:.2f} s; counts {counts}")
    print(f"{'':<4}{'':<44}{'ratio to plain':>16}")
    rows = [("measured CKKS epoch (wall)", res["measured_time_ratio"]),
            ("measured CKKS epoch, layout static (wall)", res["measured_static_time_ratio"]),
            (f"floor: layout static's ops, {args.cores} cores", fs["encode_once_wall_ratio"]),
            (f"floor: every CKKS op, {args.cores} cores, no waiting", f["wall_ratio"]),
            ("floor: every CKKS op on one core", f["one_core_ratio"]),
            (f"redesign: encode once, {args.cores} cores", f["encode_once_wall_ratio"]),
            (f"redesign: encode once + best lanes, {args.cores} cores", f["best_plan_wall_ratio"]),
            (f"floor: the guest's encryption only, {args.cores} cores", f["essential_wall_ratio"]),
            ("measured bytes", res["measured_bytes_ratio"]),
            ("measured bytes, layout static", res["measured_static_bytes_ratio"]),
            (f"bytes floor: a {presets[0]} chunk per value", ops[0]["chunk_bytes_per_slot"] / plain_bpv)]
    rows += [(f"bytes floor: a {o['preset']} chunk per value", o["chunk_bytes_per_slot"] / plain_bpv)
             for o in ops[1:]]
    for label, v in rows:
        print(f"    {label:<44}{v:>16.2f}")
    for p, why in res["masked_release_fits"].items():
        print(f"    masked release fits {p}: {why}")
    print(f"load average {res['load_average']}")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "ckks_floor.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(args.out / "ckks_floor.json")
    plot(res, args.out / "ckks_floor.png")
    print(f"wrote {args.out / 'ckks_floor.json'} and ckks_floor.png")


if __name__ == "__main__":
    main()
