"""Run the end-to-end demo on the built-in synthetic data (no download).

Generates the seeded synthetic dataset, splits it 90/10 (``default_rng(seed).permutation``), trains the
reference models — global/item-mean popularity, biased MF, the FM on ids only (what the bank can do
alone) and the FM with the host's user features (what federation buys) — evaluates RMSE on all test
users and on cold users (<= 5 training ratings) with bootstrap CIs, prints a table and exports every
model as an artifact directory (arrays + JSON, no pickle) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

EPILOG = """examples:
  fedrec demo                          # default synthetic data, artifacts in ./artifacts/demo
  fedrec demo --users 4000 --seed 1    # a larger synthetic population, another seed
  fedrec demo --out /tmp/run --json /tmp/run/results.json
"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the models (0)")
    p.add_argument("--users", type=int, default=None,
                   help="number of synthetic users (default: the generator's default)")
    p.add_argument("--items", type=int, default=None,
                   help="number of synthetic items (default: the generator's default)")
    p.add_argument("--out", type=Path, default=Path("artifacts/demo"),
                   help="directory for the exported model artifacts (default: artifacts/demo)")
    p.add_argument("--json", type=Path, default=None, help="also write the results table as JSON here")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples for the CIs (500)")


def _models(seed: int) -> dict[str, Any]:
    from fedrec.models import BiasedMF, FactorizationMachine, Popularity

    return {
        "item mean (popularity)": Popularity(),
        "biased MF": BiasedMF(seed=seed),
        "FM guest-only (ids)": FactorizationMachine(use_user_features=False, seed=seed),
        "FM + host features": FactorizationMachine(seed=seed),
    }


def evaluate(ds: Any, seed: int, n_boot: int, out: Path) -> dict[str, Any]:
    from fedrec.data import cold_users, random_split
    from fedrec.eval.metrics import bootstrap_ci, paired_bootstrap_diff, rmse_statistic

    train, test = random_split(ds.interactions, test_fraction=0.1, seed=seed)
    cold = test["user_id"].isin(cold_users(train, max_ratings=5)).to_numpy()
    results: dict[str, Any] = {"n_train": len(train), "n_test": len(test), "n_cold_test": int(cold.sum()),
                               "models": {}}
    sq_err: dict[str, np.ndarray] = {}
    for name, model in _models(seed).items():
        t0 = time.perf_counter()
        model.fit(train, user_features=ds.user_features, item_features=ds.item_features)
        fit_s = time.perf_counter() - t0
        err = (model.predict(test) - test["rating"].to_numpy()) ** 2
        sq_err[name] = err
        results["models"][name] = {
            "rmse": bootstrap_ci(err, rmse_statistic, n_boot=n_boot, seed=seed).to_dict(),
            "rmse_cold": bootstrap_ci(err[cold], rmse_statistic, n_boot=n_boot, seed=seed).to_dict(),
            "fit_seconds": round(fit_s, 2),
        }
        model.save(out / name.split(" (")[0].replace(" ", "_").replace("+", "plus").lower())
        log.info("%s: fitted in %.1fs", name, fit_s)
    a, b = "FM + host features", "FM guest-only (ids)"
    results["cold_rmse_gain_of_host_features"] = paired_bootstrap_diff(
        sq_err[b][cold], sq_err[a][cold], rmse_statistic, n_boot=n_boot, seed=seed).to_dict()
    return results


def print_table(res: dict[str, Any]) -> None:
    print(f"\ntest ratings: {res['n_test']} (cold users, <= 5 train ratings: {res['n_cold_test']})")
    print(f"{'model':<26} {'RMSE [95% CI]':<28} {'cold-user RMSE [95% CI]':<28} {'fit s':>6}")
    for name, m in res["models"].items():
        r, c = m["rmse"], m["rmse_cold"]
        print(f"{name:<26} {r['point']:.4f} [{r['low']:.4f}, {r['high']:.4f}]    "
              f"{c['point']:.4f} [{c['low']:.4f}, {c['high']:.4f}]    {m['fit_seconds']:>6.1f}")
    g = res["cold_rmse_gain_of_host_features"]
    verdict = "beyond the CI" if g["low"] > 0 else "not beyond the CI"
    print(f"\ncold-user RMSE gain from the host's features: {g['point']:.4f} "
          f"[{g['low']:.4f}, {g['high']:.4f}] ({verdict})")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fedrec.data import SyntheticConfig, generate

    cfg = SyntheticConfig(seed=args.seed)
    if args.users is not None:
        cfg = replace(cfg, n_users=args.users)
    if args.items is not None:
        cfg = replace(cfg, n_items=args.items)
    t0 = time.perf_counter()
    data = generate(cfg)
    ds = data.dataset
    print(f"synthetic data: {ds.n_users} users, {ds.n_items} items, {len(ds.interactions)} ratings, "
          f"{0 if ds.user_features is None else ds.user_features.shape[1]} host user features")
    args.out.mkdir(parents=True, exist_ok=True)
    res = evaluate(ds, args.seed, args.n_boot, args.out)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print_table(res)
    print(f"\nartifacts: {args.out.resolve()}  (total {res['seconds']}s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0



