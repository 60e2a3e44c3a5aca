#!/usr/bin/env python3
"""One guest and two hosts (issue #11): accuracy on cold users and epoch time against two parties.

Synthetic data whose user-feature signal is split over two hosts (host A: region, segment, device, age;
host B: channel, income_k, tenure_years). Each host holds a different 85% of the users.

* Accuracy (plain backend, which equals the centralized FM; label DP off so that only the fields differ):
  guest + A, guest + B and guest + A + B, test RMSE on cold users (<= 5 train ratings), paired bootstrap
  CI of the 3-party gain over each 2-party model.
* Time (CKKS, label DP on): the guest epoch time of guest + one host holding ALL host columns against
  guest + two hosts holding half each (the same total host features), over the in-memory twin (parties
  are threads of one process; on separate processes the hosts' products run in parallel).

Writes benchmarks/results/multihost.json and .png. Usage::

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/multihost.py [--users 1500] [--epochs 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedrec.data import cold_users, random_split, vertical_split  # noqa: E402
from fedrec.data.synthetic import SyntheticConfig, generate  # noqa: E402
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost  # noqa: E402
from fedrec.transport import MemoryNetwork, run_parties  # noqa: E402

COLUMNS = {"hostA": ["region", "segment", "device", "age"], "hostB": ["channel", "income_k", "tenure_years"]}
OUT = Path(__file__).resolve().parent / "results"


def train(cfg: HeteroFMConfig, gv: Any, tables: dict[str, Any], score: Any = None) -> HeteroFMGuest:
    """Train; ``score(guest)`` runs before ``Done`` (scoring asks the hosts for partials)."""
    net = MemoryNetwork()
    names = list(tables)
    hosts = {h: HeteroFMHost(net.channel(h, ["guest"]), "guest", cfg) for h in names}
    guest = HeteroFMGuest(net.channel("guest", names), names if len(names) > 1 else names[0], cfg)
    users = set(gv.interactions["user_id"])
    aligned = {h: set(t.index) & users for h, t in tables.items()}
    parties: dict[str, Any] = {h: (lambda h=h: hosts[h].serve(tables[h])) for h in names}

    def drive() -> None:
        guest.fit(gv.interactions, item_features=gv.item_features,
                  aligned_users=aligned if len(names) > 1 else aligned[names[0]])
        if score is not None:
            score(guest)
        guest.close()

    parties["guest"] = drive
    run_parties(parties, timeout=3600)
    return guest


def paired_gain(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """RMSE(b) - RMSE(a) with a paired bootstrap 95% CI (positive: a is better)."""
    rng = np.random.default_rng(seed)
    ea, eb = (a - y) ** 2, (b - y) ** 2
    point = float(np.sqrt(eb.mean()) - np.sqrt(ea.mean()))
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    boots = np.sqrt(eb[idx].mean(axis=1)) - np.sqrt(ea[idx].mean(axis=1))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"gain": point, "ci": [float(lo), float(hi)], "beyond_ci": bool(lo > 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--time-users", type=int, default=600)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    ds = generate(SyntheticConfig(n_users=args.users, n_items=args.items, seed=args.seed)).dataset
    train_rows, test = random_split(ds.interactions, test_fraction=0.1, seed=args.seed)
    gv, hv = vertical_split(ds.with_interactions(train_rows), seed=args.seed)
    full = hv.user_features
    rng = np.random.default_rng(args.seed)
    tables = {h: full.iloc[np.sort(rng.choice(len(full), int(0.85 * len(full)), replace=False))][c]
              for h, c in COLUMNS.items()}
    cold = test["user_id"].isin(cold_users(train_rows, max_ratings=5)).to_numpy()
    y = test["rating"].to_numpy(dtype=np.float64)[cold]
    acc_cfg = HeteroFMConfig(label_dp="off", backend="plain", n_factors=8, batch_size=1024, lr=0.02,
                             epochs=args.epochs, validation="none", timeout=600)
    preds: dict[str, np.ndarray] = {}
    for name, hosts in (("guest+A", ["hostA"]), ("guest+B", ["hostB"]), ("guest+A+B", ["hostA", "hostB"])):
        t0 = time.perf_counter()
        train(acc_cfg, gv, {h: tables[h] for h in hosts},
              lambda g, name=name: preds.__setitem__(name, g.local.finish(g.decision_function(test[cold]))))
        err = np.sqrt(np.mean((preds[name] - y) ** 2))
        print(f"{name}: cold RMSE {err:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    rmse = {n: float(np.sqrt(np.mean((p - y) ** 2))) for n, p in preds.items()}
    gains = {f"3-party vs {n}": paired_gain(y, preds["guest+A+B"], preds[n], args.n_boot, args.seed)
             for n in ("guest+A", "guest+B")}
    # time: the same total host columns on one host vs two hosts (CKKS, label DP on)
    small = generate(SyntheticConfig(n_users=args.time_users, n_items=100, seed=args.seed)).dataset
    sgv, shv = vertical_split(small, host_user_fraction=1.0, seed=args.seed)
    sfull = shv.user_features
    t_cfg = HeteroFMConfig(backend="ckks", n_factors=8, batch_size=4096, lr=0.02, epochs=1, validation="none",
                           timeout=900)
    times = {}
    halves = {h: sfull[c] for h, c in COLUMNS.items()}
    for name, tabs in (("2 parties (1 host, all columns)", {"host": sfull}),
                       ("3 parties (2 hosts, half the columns each)", halves)):
        g = train(t_cfg, sgv, tabs)
        times[name] = g.timings["epoch_seconds"]
        print(f"{name}: epoch {times[name]:.2f}s", flush=True)
    t2, t3 = times.values()
    result = {"data": {"users": args.users, "items": args.items, "test_cold_rows": int(cold.sum()),
                       "host_columns": COLUMNS, "host_user_share": 0.85},
              "accuracy_plain": {"cold_rmse": rmse, "paired_gains": gains, "epochs": args.epochs},
              "time_ckks": {"epoch_seconds": times, "ratio_3_over_2": t3 / t2, "bar": 1.6,
                            "users": args.time_users, "where": "in-memory twin (threads of one process)"}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "multihost.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(list(rmse), list(rmse.values()), color=["#999", "#999", "#36c"])
    ax1.set_ylim(min(rmse.values()) * 0.97, max(rmse.values()) * 1.01)
    ax1.set_title(f"cold-user RMSE ({int(cold.sum())} test rows)")
    ax2.bar(["2 parties", "3 parties"], [t2, t3], color=["#999", "#36c"])
    ax2.set_title(f"CKKS epoch seconds (ratio {t3 / t2:.2f}, bar 1.6)")
    fig.tight_layout()
    fig.savefig(OUT / "multihost.png", dpi=100)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
