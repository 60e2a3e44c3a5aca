#!/usr/bin/env python3
"""The guest-side guard: the bank alone, the federated FM and the guarded blend the bank is handed, with label
DP on (the default, ε = 2) and off, on the demo's synthetic data and on MovieLens 100K.

Examples::

    python benchmarks/guard.py                                   # synthetic + ML-100K, DP on/off, seed 0
    python benchmarks/guard.py --datasets synthetic --seeds 0,1,2
    python benchmarks/guard.py --datasets ml-100k --data-dir ../shared/data/ml-100k --label-dp on
    nice -n 10 env OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/guard.py --out /tmp/guard

Per dataset, label-DP setting and seed: the demo's split (``training.demo.split``: 90/10 random; on
MovieLens 10% of the users first made new, their first 5 ratings kept) and vertical split (the host holds
90% of the users' features plus 10% host-only users), the demo's model (8 factors, batch 4096, lr 0.02,
6 epochs, early stopping on the protocol's random 5% validation split). Both parties run in this process
over the in-memory channel (the protocol's code and wire encoding) with the plain backend: CKKS moves the
released values only by its flooding noise, far below the label-DP noise. The guard is the one of
``fedrec train`` (``training.guard_job``: the bank alone fitted beside training, alpha chosen on the
validation rows from the outputs early stopping computed). Test RMSE on all held-out ratings and on the
cold users' (<= 5 training ratings); the guarded model's gains are paired bootstrap CIs on the same test
rows: ``gain over X = RMSE(X) − RMSE(guarded)`` (positive: the guarded model is better). A dataset whose
files are absent is skipped (said).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.data import cold_users, vertical_split  # noqa: E402
from fedrec.eval.metrics import bootstrap_ci, paired_bootstrap_diff, rmse_statistic  # noqa: E402
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost  # noqa: E402
from fedrec.transport import MemoryNetwork, run_parties  # noqa: E402
from training import guard_job  # noqa: E402
from training.demo import load_dataset, split  # noqa: E402

MODELS = ("bank alone", "federated", "guarded")


def run_one(dataset: str, data_dir: Path | None, label_dp: str, seed: int, mode: str, epochs: int,
            n_boot: int) -> dict[str, Any]:
    """One (dataset, label DP, seed): the three models' test RMSE and the guard's choice."""
    t0 = time.perf_counter()
    ds = load_dataset(SimpleNamespace(dataset=dataset, data_dir=data_dir, seed=seed, users=None, items=None))
    train, test = split(ds.interactions, dataset, seed)
    n_users = int(ds.interactions["user_id"].nunique())
    gv, hv = vertical_split(ds.with_interactions(train), host_user_fraction=0.9,
                            n_host_only_users=max(1, n_users // 10), seed=seed)
    cfg = HeteroFMConfig(backend="plain", n_factors=8, batch_size=4096, lr=0.02, epochs=epochs, seed=seed,
                         timeout=600.0, label_dp=label_dp)
    party_cfg = SimpleNamespace(guard=SimpleNamespace(mode=mode), ads=SimpleNamespace(refit="off"),
                                data=SimpleNamespace(validation=None))
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    out: dict[str, Any] = {}

    def play() -> None:  # as training.hetero_fm_job.run_guest: the bank alone fitted beside training
        g = guard_job.start(party_cfg, cfg, gv.interactions, gv.item_features, None)
        guest.fit(gv.interactions, item_features=gv.item_features)
        z_fed = guest.decision_function(test)  # the federated model's outputs (asks the host's partials)
        guest.close()
        choice, bank = guard_job.finish(g, guest)
        out.update(choice=choice, bank=bank, z_fed=z_fed, run=g)

    run_parties({"guest": play, "host": lambda: host.serve(hv.user_features)}, timeout=3600)
    choice, bank, z_fed = out["choice"], out["bank"], out["z_fed"]
    finish = guest.local.finish
    preds = {"bank alone": bank.predict(test), "federated": finish(z_fed),
             "guarded": finish(guard_job.blend(choice, bank, z_fed, test))}
    y = test["rating"].to_numpy(dtype=np.float64)
    cold = test["user_id"].isin(cold_users(train, max_ratings=5)).to_numpy()
    sq = {m: (np.asarray(p, dtype=np.float64) - y) ** 2 for m, p in preds.items()}

    def ci(err: np.ndarray) -> dict[str, float]:
        return bootstrap_ci(err, rmse_statistic, n_boot=n_boot, seed=seed).to_dict()

    def gain(a: str, b: str, mask: np.ndarray) -> dict[str, float]:  # RMSE(a) - RMSE(b): positive, b better
        return paired_bootstrap_diff(sq[a][mask], sq[b][mask], rmse_statistic, n_boot=n_boot,
                                     seed=seed).to_dict()

    every = np.ones(len(y), dtype=bool)
    return {"dataset": ds.name, "label_dp": label_dp, "seed": seed, "mode": mode,
            "epsilon": guest.privacy_spent(), "guard": guard_job.summary(choice, out["run"]),
            "test_rows": len(y), "cold_rows": int(cold.sum()),
            "rmse": {m: ci(e) for m, e in sq.items()}, "rmse_cold": {m: ci(e[cold]) for m, e in sq.items()},
            "gain_over_bank": {"all": gain("bank alone", "guarded", every),
                               "cold": gain("bank alone", "guarded", cold)},
            "gain_over_federated": {"all": gain("federated", "guarded", every),
                                    "cold": gain("federated", "guarded", cold)},
            "federated_gain_over_bank": {"all": gain("bank alone", "federated", every),
                                         "cold": gain("bank alone", "federated", cold)},
            "seconds": round(time.perf_counter() - t0, 1), "load_1min": os.getloadavg()[0]}


def _d(x: dict[str, float]) -> str:
    return f"{x['point']:+.4f} [{x['low']:+.4f}, {x['high']:+.4f}]"


def table(runs: list[dict[str, Any]]) -> str:
    head = ("| data | label DP | seed | alpha | val RMSE bank / fed / guarded | test RMSE bank | federated | "
            "guarded | cold RMSE bank / fed / guarded | gain over bank (all) | gain over bank (cold) | "
            "gain over federated (all) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        g = r["guard"]
        val = (f"{g['bank_alone']:.4f} / {g['federated']:.4f} / {g['blended']:.4f}" if g["status"] == "chosen"
               else g["status"])
        dp = "off" if r["label_dp"] == "off" else f"ε = {r['epsilon']:.2g}"
        t, c = r["rmse"], r["rmse_cold"]
        lines.append(
            f"| {r['dataset']} | {dp} | {r['seed']} | {g['alpha']:.2f} | {val} | "
            f"{t['bank alone']['point']:.4f} | {t['federated']['point']:.4f} | {t['guarded']['point']:.4f} | "
            f"{c['bank alone']['point']:.4f} / {c['federated']['point']:.4f} / {c['guarded']['point']:.4f} | "
            f"{_d(r['gain_over_bank']['all'])} | {_d(r['gain_over_bank']['cold'])} | "
            f"{_d(r['gain_over_federated']['all'])} |")
    lines += ["", "gain over X: RMSE(X) − RMSE(guarded) on the same test rows, 95% paired bootstrap CI "
              "(positive: the guarded model is better)"]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    labels = [f"{'ML-100K' if 'ml-100k' in r['dataset'] else r['dataset'][:9]}\n"
              f"DP {r['label_dp']} s{r['seed']}\nα={r['guard']['alpha']:.2f}" for r in runs]
    for ax, part, title in ((axes[0], "all", "all test ratings"), (axes[1], "cold", "cold users")):
        series = (("federated", "federated_gain_over_bank"), ("guarded", "gain_over_bank"))
        for j, (m, key) in enumerate(series):
            pts = [r[key][part] for r in runs]
            x = np.arange(len(runs)) + (j - 0.5) * 0.3
            mid = -np.array([p["point"] for p in pts])  # RMSE(model) - RMSE(bank alone)
            err = np.array([[p["high"] - p["point"] for p in pts], [p["point"] - p["low"] for p in pts]])
            ax.errorbar(x, mid, yerr=err, fmt="o", capsize=3, label=m)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(runs)), labels, fontsize=7)
        ax.set_ylabel("RMSE − RMSE(bank alone), paired 95% CI\n(below 0: better than the bank alone)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="synthetic,ml-100k",
                   help="comma-separated: synthetic (the demo's data), ml-100k, ml-1m "
                        "(default synthetic,ml-100k)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the MovieLens folder (default $FEDREC_DATA_DIR/<dataset> or "
                        "../shared/data/<dataset>)")
    p.add_argument("--label-dp", default="on,off", help="comma-separated label-DP settings: on (ε = 2), off")
    p.add_argument("--seeds", default="0", help="comma-separated data/model seeds (0)")
    p.add_argument("--mode", choices=("blend", "choose"), default="blend",
                   help="the guard's [guard] mode (blend)")
    p.add_argument("--epochs", type=int, default=6, help="epoch limit, as fedrec demo (6)")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples of every CI (500)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="results folder: guard.json and guard.png (benchmarks/results)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs, skipped = [], []
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        for dp in [d.strip() for d in args.label_dp.split(",") if d.strip()]:
            for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
                try:
                    r = run_one(dataset, args.data_dir, dp, seed, args.mode, args.epochs, args.n_boot)
                except FileNotFoundError as err:
                    print(f"skipped {dataset}: {err}", flush=True)
                    skipped.append({"dataset": dataset, "why": str(err)})
                    break
                runs.append(r)
                g = r["guard"]
                print(f"{r['dataset']} label DP {dp} seed {seed}: alpha {g['alpha']:.2f}; test RMSE "
                      + ", ".join(f"{m} {r['rmse'][m]['point']:.4f}" for m in MODELS)
                      + f" ({r['seconds']} s, load {r['load_1min']:.1f})", flush=True)
            if skipped and skipped[-1]["dataset"] == dataset:
                break
    text = table(runs)
    print("\n" + text)
    res = {"runs": runs, "skipped": skipped, "table": text, "seconds": round(time.perf_counter() - t0, 1),
           "load_average": list(os.getloadavg()), "machine": platform.platform(), "cpu_count": os.cpu_count(),
           "command": "python benchmarks/guard.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "guard.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=float))
    tmp.replace(args.out / "guard.json")
    if runs:
        plot(runs, args.out / "guard.png")
    print(f"wrote {args.out}/guard.json and guard.png ({res['seconds']:.0f} s, load "
          f"{res['load_average'][0]:.1f})")


if __name__ == "__main__":
    main()
