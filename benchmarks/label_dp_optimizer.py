#!/usr/bin/env python3
"""The host's update under label DP: Adam against plain SGD (``HeteroFMConfig.host_optimizer``), on the data
of ``fedrec demo``, against the guest's own model and the pooled one, paired over seeds.

Examples::

    python benchmarks/label_dp_optimizer.py                 # 6 seeds, the demo's synthetic data
    python benchmarks/label_dp_optimizer.py --seeds 0,1 --epsilon 8

Each seed draws the demo's data (``SyntheticConfig(seed)``, a 90/10 random split, the host holding 90% of
the users' features plus 10% host-only users), then fits, with the demo's model (8 factors, batch 4096,
Adam lr 0.02 for the guest, 6 epochs, early stopping on a random 5% validation split):

* ``guest-only``: the bank's FM alone; ``pooled``: the FM on both parties' columns in one place;
* ``federated, label DP off``: the protocol without protection (equals ``pooled``);
* ``federated, ε, host adam`` and ``federated, ε, host sgd``: the default protection (label DP at ``ε`` for
  the whole training) with the host's field updated by Adam (the default before) or by SGD (the default
  now: ``host_optimizer = "auto"``).

Both parties run in this process over the in-memory channel (the protocol's code and wire encoding), with
the plain backend: CKKS changes the released values only by its flooding noise, far below the label-DP
noise. Test RMSE on all held-out ratings and on the cold users' (<= 5 training ratings); the differences
are paired per seed (the same split and initialisation), summarised by their mean with a 95% t-interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.data import SyntheticConfig, generate, random_split, vertical_split  # noqa: E402
from fedrec.models import FactorizationMachine  # noqa: E402
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost  # noqa: E402
from fedrec.transport import MemoryNetwork, run_parties  # noqa: E402

MODELS = ("guest-only", "pooled", "federated, label DP off", "federated, host adam", "federated, host sgd")


def _rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.clip(pred, 1.0, 5.0) - y) ** 2)))


def _federated(cfg: HeteroFMConfig, gv: Any, hv: Any, test: Any) -> np.ndarray:
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    out: dict[str, np.ndarray] = {}

    def play() -> None:
        guest.fit(gv.interactions, item_features=gv.item_features)
        out["pred"] = np.asarray(guest.predict(test), dtype=np.float64)
        guest.close()

    run_parties({"guest": play, "host": lambda: host.serve(hv.user_features)}, timeout=3600)
    return out["pred"]


def run_seed(seed: int, epsilon: float, epochs: int) -> dict[str, Any]:
    ds = generate(SyntheticConfig(seed=seed)).dataset
    train, test = random_split(ds.interactions, test_fraction=0.1, seed=seed)
    n_users = int(ds.interactions["user_id"].nunique())
    gv, hv = vertical_split(ds.with_interactions(train), host_user_fraction=0.9,
                            n_host_only_users=max(1, n_users // 10), seed=seed)
    base = {"backend": "plain", "n_factors": 8, "batch_size": 4096, "lr": 0.02, "epochs": epochs,
            "seed": seed, "timeout": 600.0}
    dp = {"dp_guest_epsilon": epsilon}
    preds: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    params = HeteroFMConfig(**base).fm_params()
    for name, use_host in (("guest-only", False), ("pooled", True)):
        fm = FactorizationMachine(**{**params, "use_user_features": use_host})
        fm.fit(train, user_features=hv.user_features if use_host else None, item_features=gv.item_features)
        preds[name] = np.asarray(fm.predict(test), dtype=np.float64)
    preds["federated, label DP off"] = _federated(HeteroFMConfig(**base, label_dp="off"), gv, hv, test)
    for opt in ("adam", "sgd"):
        cfg = HeteroFMConfig(**base, **dp, host_optimizer=opt)
        preds[f"federated, host {opt}"] = _federated(cfg, gv, hv, test)
    y = test["rating"].to_numpy(dtype=np.float64)
    counts = train.groupby("user_id").size()
    cold = test["user_id"].map(counts).fillna(0).to_numpy() <= 5
    return {"seed": seed, "seconds": round(time.perf_counter() - t0, 1), "test_rows": len(y),
            "cold_rows": int(cold.sum()),
            "rmse": {m: _rmse(p, y) for m, p in preds.items()},
            "rmse_cold": {m: _rmse(p[cold], y[cold]) for m, p in preds.items()}}


def paired(runs: list[dict[str, Any]], key: str, a: str, b: str) -> dict[str, float]:
    """Mean of ``RMSE(a) − RMSE(b)`` over the seeds with a 95% t-interval (negative: ``a`` is better)."""
    from scipy import stats

    d = np.array([r[key][a] - r[key][b] for r in runs])
    half = float("nan")
    if len(d) > 1:
        half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return {"mean": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half),
            "better_in": int((d < 0).sum()), "seeds": len(d)}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "rmse", "all test ratings"), (axes[1], "rmse_cold", "cold users")):
        for j, m in enumerate(MODELS):
            vals = [r[key][m] for r in res["runs"]]
            ax.scatter(np.full(len(vals), j), vals, s=14, alpha=0.6)
            ax.hlines(statistics.mean(vals), j - 0.3, j + 0.3, color="black")
        ax.set_xticks(range(len(MODELS)), [m.replace("federated, ", "fed\n") for m in MODELS], fontsize=8)
        ax.set_ylabel("test RMSE (lower is better)")
        ax.set_title(f"{title}: ε = {res['epsilon']:g}, {len(res['runs'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(res: dict[str, Any]) -> str:
    lines = ["# The host's update under label DP (benchmarks/label_dp_optimizer.py)", "",
             f"Command: `{res['command']}` ({res['seconds']:.0f} s, load {res['load_average'][0]:.1f}, "
             f"{len(res['runs'])} seeds, ε = {res['epsilon']:g} at δ = 1e-05, plain backend, the demo's data "
             "and model).", "", "| model | RMSE (mean over seeds) | cold-user RMSE |", "|---|---|---|"]
    for m in MODELS:
        lines.append(f"| {m} | {statistics.mean(r['rmse'][m] for r in res['runs']):.4f} | "
                     f"{statistics.mean(r['rmse_cold'][m] for r in res['runs']):.4f} |")
    lines += ["", "Paired differences (RMSE of the first minus the second; negative: the first is better; "
              "95% t-interval over seeds; seeds where the first is better):", "",
              "| difference | RMSE | cold-user RMSE |", "|---|---|---|"]
    for label, d in res["paired"].items():
        a, c = d["rmse"], d["rmse_cold"]
        cells = [f"{x['mean']:+.4f} [{x['low']:+.4f}, {x['high']:+.4f}] ({x['better_in']}/{x['seeds']})"
                 for x in (a, c)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4,5", help="comma-separated data/model seeds (0..5)")
    p.add_argument("--epsilon", type=float, default=2.0,
                   help="label-DP ε for the whole training (2, the default)")
    p.add_argument("--epochs", type=int, default=6, help="epoch limit, as fedrec demo (6)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="results folder (benchmarks/results)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = []
    for seed in seeds:
        r = run_seed(seed, args.epsilon, args.epochs)
        runs.append(r)
        print(f"seed {seed}: " + ", ".join(f"{m} {v:.4f}" for m, v in r["rmse"].items())
              + f" ({r['seconds']} s, load {os.getloadavg()[0]:.1f})", flush=True)
    pairs = {"host sgd − host adam": ("federated, host sgd", "federated, host adam"),
             "host adam − guest-only": ("federated, host adam", "guest-only"),
             "host sgd − guest-only": ("federated, host sgd", "guest-only"),
             "label DP off − guest-only": ("federated, label DP off", "guest-only")}
    res = {"epsilon": args.epsilon, "runs": runs,
           "paired": {k: {"rmse": paired(runs, "rmse", a, b), "rmse_cold": paired(runs, "rmse_cold", a, b)}
                      for k, (a, b) in pairs.items()},
           "seconds": round(time.perf_counter() - t0, 1), "load_average": list(os.getloadavg()),
           "machine": platform.platform(), "cpu_count": os.cpu_count(),
           "command": "python benchmarks/label_dp_optimizer.py " + " ".join(sys.argv[1:])}
    text = markdown(res)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    files = (("label_dp_optimizer.json", json.dumps(res, indent=1)), ("label_dp_optimizer.md", text))
    for name, body in files:
        tmp = args.out / (name + ".tmp")
        tmp.write_text(body)
        tmp.replace(args.out / name)
    plot(res, args.out / "label_dp_optimizer.png")
    print(f"wrote {args.out}/label_dp_optimizer.json, .md and .png")


if __name__ == "__main__":
    main()
