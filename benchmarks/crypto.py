#!/usr/bin/env python3
"""Per-value cost of the crypto backends: encrypt / add / plaintext-multiply / decrypt, bytes per value.

One run, all backends, medians of repeats; ratios against CKKS come from the same run. The bar: CKKS
per-value encryption and plaintext multiplication at least 100× faster than Paillier-2048.

    .venv/bin/python benchmarks/crypto.py [--repeats 5] [--paillier-values 32]

Writes benchmarks/results/crypto.json and crypto.png.

    .venv/bin/python benchmarks/crypto.py --hetero [--sizes 1000x10000,2000x20000] [--factors 16,32]
                                       [--repeats 3]

instead times one epoch of the vertical FM (DESIGN §4.2, in-memory twin, synthetic data, default
batch size) per backend/layout — plain, ckks (layout hiding), ckks (layout compact) — and prints the
ratio to the plain epoch of the same run (bar: ckks <= 10× plain). Writes crypto_hetero.json / .png.
The source tree measured is whatever ``fedrec`` imports (set PYTHONPATH to time another checkout;
trees without the ``layout`` option run the hiding layout only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.crypto.backend import CryptoBackend, KeyPin, load_public, make_backend
from fedrec.crypto.ckks import CKKSBackend

OUT = Path(__file__).resolve().parent / "results"
OPS = ("encrypt", "add", "mul_plain", "decrypt")
#: the CKKS parameters every benchmark times (the training default: N = 8192, 4096 slots, depth 1)
CKKS_PRESET = "n8192"


def ckks_backend() -> CKKSBackend:
    """A fresh CKKS key holder as the benchmarks use it (``benchmarks/ray_scaling.py`` too): preset
    :data:`CKKS_PRESET`, no Galois keys (no operation of fedrec rotates)."""
    return CKKSBackend.keygen(CKKS_PRESET, rotations=False)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(backend: CryptoBackend, n: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x, w = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    host = load_public(backend.public_bytes(), KeyPin())
    a, b = backend.encrypt(x), backend.encrypt(w)
    ops: dict[str, Callable[[], object]] = {
        "encrypt": lambda: host.encrypt(x),
        "add": lambda: host.add(a, b),
        "mul_plain": lambda: host.mul_plain(a, w),
        "decrypt": lambda: backend.decrypt(a),
    }
    row = {f"{op}_us_per_value": 1e6 * median_seconds(fn, repeats) / n for op, fn in ops.items()}
    row["bytes_per_value"] = len(backend.serialize(a)) / n
    row["bytes_per_value_after_mul"] = len(backend.serialize(host.mul_plain(a, w))) / n
    row["values"] = n
    return row


def hetero_epoch(n_users: int, n_rows: int, k: int, backend: str, layout: str | None) -> dict[str, float]:
    """Seconds of one training epoch of the vertical FM over the in-memory twin, and the test RMSE."""
    import torch

    from fedrec.data.partition import vertical_split
    from fedrec.data.synthetic import SyntheticConfig, generate
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, run_parties

    torch.set_num_threads(1)
    ds = generate(SyntheticConfig(n_users=n_users, n_items=200, n_ratings=n_rows, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    extra: dict[str, Any] = {} if layout is None else {"layout": layout}
    if "label_dp" in HeteroFMConfig.__dataclass_fields__:  # crypto cost only (leakage.py measures label DP)
        extra["label_dp"] = "off"
    cfg = HeteroFMConfig(n_factors=k, epochs=1, backend=backend, timeout=600, validation="none", **extra)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    test = gv.interactions.sample(2000, random_state=0)

    def play_guest() -> float:
        guest.fit(gv.interactions, item_features=gv.item_features, validation="none")
        rmse = float(np.sqrt(np.mean((guest.predict(test) - test["rating"].to_numpy()) ** 2)))
        guest.close()
        return rmse

    out = run_parties({"guest": play_guest, "host": lambda: host.serve(hv.user_features)},
                      timeout=3 * cfg.timeout)
    rmse = out["guest"]
    assert isinstance(rmse, float)
    return {"epoch_seconds": guest.timings["epoch_seconds"], "rmse": rmse, "rows": len(gv.interactions)}


def hetero_table(sizes: list[tuple[int, int]], factors: list[int], repeats: int) -> list[dict[str, object]]:
    """Median epoch seconds per backend/layout over ``repeats`` interleaved runs (a single ~1 s plain
    epoch on a shared machine varies by 2×), and the ratio of medians to plain."""
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    has_layout = "layout" in HeteroFMConfig.__dataclass_fields__
    runs = [("plain", None), ("ckks", "hiding" if has_layout else None)] + \
        ([("ckks", "compact")] if has_layout else [])
    rows: list[dict[str, object]] = []
    print(f"{'users':>6}{'rows':>7}{'k':>4}  {'backend':<14}{'epoch s':>9}{'× plain':>9}{'rmse':>10}"
          "  all epochs")
    for n_users, n_rows in sizes:
        for k in factors:
            got: dict[str, list[dict[str, float]]] = {}
            for _ in range(repeats):
                for backend, layout in runs:
                    name = backend + (f":{layout}" if layout else "")
                    got.setdefault(name, []).append(hetero_epoch(n_users, n_rows, k, backend, layout))
            plain = statistics.median(r["epoch_seconds"] for r in got["plain"])
            for name, rs in got.items():
                secs = [r["epoch_seconds"] for r in rs]
                med = statistics.median(secs)
                print(f"{n_users:>6}{rs[0]['rows']:>7}{k:>4}  {name:<14}{med:>9.2f}{med / plain:>9.2f}"
                      f"{rs[0]['rmse']:>10.5f}  {' '.join(f'{x:.2f}' for x in secs)}", flush=True)
                rows.append({"users": n_users, "rows": rs[0]["rows"], "k": k, "backend": name,
                             "epoch_seconds": med, "epoch_seconds_all": secs, "rmse": rs[0]["rmse"],
                             "ratio_to_plain": med / plain})
    return rows


def plot_hetero(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(int(str(r["users"])), int(str(r["k"]))) for r in rows})
    names = [n for n in dict.fromkeys(str(r["backend"]) for r in rows) if n != "plain"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = [next(float(str(r["ratio_to_plain"])) for r in rows
                     if (r["users"], r["k"], r["backend"]) == (u, k, name)) for u, k in cases]
        ax.bar(np.arange(len(cases)) + i * width, vals, width, label=name)
    ax.axhline(10.0, color="k", linestyle="--", linewidth=1, label="bar: 10× plain")
    labels = [f"{u} users, k={k}" for u, k in cases]
    ax.set_xticks(np.arange(len(cases)) + width * (len(names) - 1) / 2, labels)
    ax.set_ylabel("epoch time / plain epoch time (same run)")
    ax.set_title("vertical FM: CKKS epoch cost relative to the plain backend")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(results)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [results[name][f"{op}_us_per_value"] for op in OPS]
        ax.bar(np.arange(len(OPS)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(OPS)) + width * (len(names) - 1) / 2, OPS)
    ax.set_yscale("log")
    ax.set_ylabel("µs per value (median, log scale)")
    ax.set_title("fedrec crypto backends: cost per value")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed runs per operation (or per --hetero epoch); the median is reported "
                         "(default: %(default)s)")
    ap.add_argument("--paillier-values", type=int, default=32,
                    help="values per Paillier timing batch; CKKS and plain use 4096 (default: %(default)s)")
    ap.add_argument("--paillier-bits", type=int, default=2048,
                    help="Paillier key size in bits (default: %(default)s)")
    ap.add_argument("--hetero", action="store_true", help="time vertical-FM epochs instead (see docstring)")
    ap.add_argument("--sizes", default="1000x10000,2000x20000", help="users x rows, comma separated")
    ap.add_argument("--factors", default="16,32", help="n_factors values, comma separated")
    ap.add_argument("--tag", default="", help="suffix of the output files (e.g. 'before')")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    if args.hetero:
        sizes = [(int(a), int(b)) for a, b in (s.split("x") for s in args.sizes.split(","))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows = hetero_table(sizes, [int(k) for k in args.factors.split(",")], args.repeats)
        OUT.mkdir(parents=True, exist_ok=True)
        stem = "crypto_hetero" + (f"_{args.tag}" if args.tag else "")
        (OUT / f"{stem}.json").write_text(json.dumps({"rows": rows, "machine": platform.platform(),
                                                       "python": platform.python_version()}, indent=2))
        plot_hetero(rows, OUT / f"{stem}.png")
        print(f"wrote {OUT / (stem + '.json')} and {OUT / (stem + '.png')}")
        return

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the plain backend's (deliberate) warning
        setups = {
            f"ckks-{CKKS_PRESET}": (ckks_backend(), 4096),
            f"paillier-{args.paillier_bits}": (make_backend("paillier", key_bits=args.paillier_bits),
                                                args.paillier_values),
            "plain": (make_backend("plain"), 4096),
        }
        results = {name: measure(b, n, args.repeats) for name, (b, n) in setups.items()}
    ckks, pail = results[f"ckks-{CKKS_PRESET}"], results[f"paillier-{args.paillier_bits}"]
    ratios = {op: pail[f"{op}_us_per_value"] / ckks[f"{op}_us_per_value"] for op in OPS}

    print(f"{'backend':<16}" + "".join(f"{op + ' µs/v':>16}" for op in OPS) + f"{'bytes/v':>10}")
    for name, row in results.items():
        print(f"{name:<16}" + "".join(f"{row[f'{op}_us_per_value']:>16.3f}" for op in OPS)
              + f"{row['bytes_per_value']:>10.1f}")
    print(f"{'paillier/ckks':<16}" + "".join(f"{ratios[op]:>15.0f}×" for op in OPS))
    bar = ratios["encrypt"] >= 100 and ratios["mul_plain"] >= 100
    print(f"bar (encrypt and mul_plain >= 100× faster on CKKS): {'PASS' if bar else 'FAIL'}")

    OUT.mkdir(parents=True, exist_ok=True)
    report = {"results": results, "paillier_over_ckks": ratios, "bar_passed": bar,
              "repeats": args.repeats, "machine": platform.platform(), "python": platform.python_version()}
    (OUT / "crypto.json").write_text(json.dumps(report, indent=2))
    plot(results, OUT / "crypto.png")
    print(f"wrote {OUT / 'crypto.json'} and {OUT / 'crypto.png'}")


if __name__ == "__main__":
    main()
