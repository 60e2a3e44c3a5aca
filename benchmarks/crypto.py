"""Per-value cost of the crypto backends: encrypt / add / plaintext-multiply / decrypt, bytes per value.

One run, all backends, medians of repeats; ratios against CKKS come from the same run. The bar: CKKS
per-value encryption and plaintext multiplication at least 100× faster than Paillier-2048.
Also times the §4.2 host gradient (outer_sum over packed rows) on CKKS.

    .venv/bin/python benchmarks/crypto.py [--repeats 5] [--paillier-values 32]

Writes benchmarks/results/crypto.json and crypto.png.
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

import numpy as np

from fedrec.crypto.backend import CryptoBackend, KeyPin, load_public, make_backend
from fedrec.crypto.packing import outer_sum, pack_rows

OUT = Path(__file__).resolve().parent / "results"
OPS = ("encrypt", "add", "mul_plain", "decrypt")


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
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
    row = {f"{op}_us_per_value": 1e6 * _median_seconds(fn, repeats) / n for op, fn in ops.items()}
    row["bytes_per_value"] = len(backend.serialize(a)) / n
    row["bytes_per_value_after_mul"] = len(backend.serialize(host.mul_plain(a, w))) / n
    row["values"] = n
    return row


def host_gradient(repeats: int, users: int = 256, width: int = 17, features: int = 32) -> dict[str, float]:
    guest = make_backend("ckks", preset="n8192", rotations=True)
    host = load_public(guest.public_bytes(), KeyPin())
    rng = np.random.default_rng(1)
    packed = pack_rows(guest, rng.normal(size=(users, width)))
    x = rng.uniform(-1, 1, size=(users, features))
    secs = _median_seconds(lambda: outer_sum(host, x, packed), repeats)
    return {"users": users, "width": width, "features": features, "seconds": secs,
            "ciphertexts_in": len(packed.cts), "ciphertexts_out": features}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paillier-values", type=int, default=32)
    ap.add_argument("--paillier-bits", type=int, default=2048)
    args = ap.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the plain backend's (deliberate) warning
        setups = {
            "ckks-n8192": (make_backend("ckks", preset="n8192", rotations=False), 4096),
            f"paillier-{args.paillier_bits}": (make_backend("paillier", key_bits=args.paillier_bits),
                                                args.paillier_values),
            "plain": (make_backend("plain"), 4096),
        }
        results = {name: measure(b, n, args.repeats) for name, (b, n) in setups.items()}
    ckks, pail = results["ckks-n8192"], results[f"paillier-{args.paillier_bits}"]
    ratios = {op: pail[f"{op}_us_per_value"] / ckks[f"{op}_us_per_value"] for op in OPS}
    grad = host_gradient(args.repeats)

    print(f"{'backend':<16}" + "".join(f"{op + ' µs/v':>16}" for op in OPS) + f"{'bytes/v':>10}")
    for name, row in results.items():
        print(f"{name:<16}" + "".join(f"{row[f'{op}_us_per_value']:>16.3f}" for op in OPS)
              + f"{row['bytes_per_value']:>10.1f}")
    print(f"{'paillier/ckks':<16}" + "".join(f"{ratios[op]:>15.0f}×" for op in OPS))
    bar = ratios["encrypt"] >= 100 and ratios["mul_plain"] >= 100
    print(f"bar (encrypt and mul_plain >= 100× faster on CKKS): {'PASS' if bar else 'FAIL'}")
    print(f"host gradient Σ_u x_H(u) ⊗ R_u, {grad['users']} users × width {grad['width']} × "
          f"{grad['features']} features on CKKS: {grad['seconds']:.3f} s")

    OUT.mkdir(parents=True, exist_ok=True)
    report = {"results": results, "paillier_over_ckks": ratios, "bar_passed": bar, "host_gradient": grad,
              "repeats": args.repeats, "machine": platform.platform(), "python": platform.python_version()}
    (OUT / "crypto.json").write_text(json.dumps(report, indent=2))
    plot(results, OUT / "crypto.png")
    print(f"wrote {OUT / 'crypto.json'} and {OUT / 'crypto.png'}")


if __name__ == "__main__":
    main()
