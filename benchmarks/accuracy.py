#!/usr/bin/env python3
"""Accuracy benchmark of the reference models (prints a table; writes JSON + PNG).

Splits (all deterministic):

* ``fixed``: ``numpy.random.default_rng(0).permutation`` of all ratings, first 90% train, last 10% test
  (:func:`fedrec.data.split.random_split`); the ``cold`` slice = test rows of users with <= 5 train rows.
* ``new_user`` (MovieLens): 10% of the users (seed 0) keep only their first 5 ratings by time in train
  (:func:`fedrec.data.split.pseudo_new_user_split`); test = their other ratings. FM ids-only and FM
  ids+side are each reported three ways: ``*_warmsel`` = hyperparameters (``NEW_USER_GRIDS``) chosen and
  early stopping done on a random 10% of the train rows; ``*_coldval`` = default hyperparameters, early
  stopping on pseudo-new users of train (``validation="cold"``); ``*_coldsel`` = hyperparameters chosen
  and early stopping done on those pseudo-new users (:func:`fedrec.models.selection.select_hyperparameters`,
  seed 0: the same pseudo-new users as ``validation="cold"``). Paired CIs: side minus ids per mode, and
  cold minus warm selection per family.
* ``ranking`` (ML-100K): leave-last-out (each user's latest rating is the test item); top-10 among
  unseen items; a rating-MSE FM vs a ranking-trained FM (same fields), plus popularity.

RMSE/MAE/HR/NDCG come with percentile bootstrap CIs over test rows (users for ranking); model
comparisons use paired bootstrap differences on the same resampled rows. Early stopping and the
``--search`` grid only ever look at validation data carved out of the training set.

Usage::

    python benchmarks/accuracy.py --datasets synthetic ml-100k [ml-1m] [--data-dir DIR] [--quick]
    python benchmarks/accuracy.py --search          # validation-only FM hyperparameter grid on ML-100K
    python benchmarks/accuracy.py --datasets ml-100k --sections new-user   # rerun one section; the
                                                    # other sections' stored results are kept (merged)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.data.dataset import Dataset  # noqa: E402
from fedrec.data.split import leave_last_out, pseudo_new_user_split, random_split, validation_split  # noqa: E402
from fedrec.eval.metrics import (  # noqa: E402
    CI,
    bootstrap_ci,
    paired_bootstrap_diff,
    ranking_metrics,
    rmse_statistic,
)
from fedrec.models import BiasedMF, FactorizationMachine, Popularity, Recommender  # noqa: E402
from fedrec.models.selection import select_hyperparameters  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
IDS_ONLY = {"use_history": False, "use_history_length": False, "use_user_features": False,
            "use_item_features": False, "use_item_age": False}
Factory = Callable[[], Recommender]


def default_data_dir() -> Path:
    env = os.environ.get("FEDREC_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load_dataset(name: str, data_dir: Path, quick: bool) -> Dataset | None:
    if name == "synthetic":
        from fedrec.data.synthetic import generate

        return generate(n_users=800, n_items=300).dataset if quick else generate().dataset
    if name == "ml-100k":
        from fedrec.data.movielens import load_ml100k

        folder = data_dir / "ml-100k"
        return load_ml100k(folder) if (folder / "u.data").is_file() else None
    if name == "ml-1m":
        from fedrec.data.movielens import load_ml1m

        folder = data_dir / "ml-1m"
        return load_ml1m(folder) if (folder / "ratings.dat").is_file() else None
    raise ValueError(f"unknown dataset {name!r}; choose synthetic, ml-100k, ml-1m")


def rating_models(quick: bool, cold_aware: bool) -> dict[str, Factory]:
    e = {"epochs": 4} if quick else {}
    models: dict[str, Factory] = {
        "global_mean": lambda: Popularity(rating="global_mean"),
        "item_mean": lambda: Popularity(rating="item_mean"),
        "biased_mf": lambda: BiasedMF(**e),
        "fm_ids": lambda: FactorizationMachine(**IDS_ONLY, **e),
        "fm_side": lambda: FactorizationMachine(**e),
    }
    if cold_aware:
        models["fm_ids_coldval"] = lambda: FactorizationMachine(**IDS_ONLY, **e, validation="cold")
        models["fm_side_coldval"] = lambda: FactorizationMachine(**e, validation="cold")
    return models


def rating_eval(models: dict[str, Factory], ds: Dataset, train: pd.DataFrame, test: pd.DataFrame,
                n_boot: int, slices: dict[str, np.ndarray]) -> dict[str, Any]:
    """Fit each model; RMSE/MAE with CIs on the whole test set and each slice; keep squared errors."""
    out: dict[str, Any] = {"n_train": len(train), "n_test": len(test), "models": {}, "_sq": {}}
    for name, make in models.items():
        t0 = time.perf_counter()
        model = make().fit(train, ds.user_features, ds.item_features)
        score_model(out, name, model, test, time.perf_counter() - t0, n_boot, slices)
    return out


def score_model(out: dict[str, Any], name: str, model: Recommender, test: pd.DataFrame, seconds: float,
                n_boot: int, slices: dict[str, np.ndarray]) -> dict[str, Any]:
    """Add a fitted model's RMSE/MAE (with CIs, overall and per slice) and squared errors to ``out``."""
    y = test["rating"].to_numpy(dtype=np.float64)
    pred = model.predict(test)
    sq, ab = (pred - y) ** 2, np.abs(pred - y)
    row: dict[str, Any] = {"seconds": round(seconds, 1)}
    best = getattr(getattr(model, "history", None), "best_epoch", None)
    if best is not None:
        row["best_epoch"] = best
    for sl, mask in {"all": np.ones(len(y), bool), **slices}.items():
        if mask.sum() == 0:
            continue
        row[sl] = {"n": int(mask.sum()),
                   "rmse": bootstrap_ci(sq[mask], rmse_statistic, n_boot=n_boot).to_dict(),
                   "mae": bootstrap_ci(ab[mask], n_boot=n_boot).to_dict()}
    out["models"][name] = row
    out["_sq"][name] = sq
    print(f"  {name:16s} RMSE {row['all']['rmse']['point']:.4f}  ({row['seconds']}s)", flush=True)
    return row


def paired(res: dict[str, Any], a: str, b: str, mask: np.ndarray | None, n_boot: int) -> CI:
    sa, sb = res["_sq"][a], res["_sq"][b]
    if mask is not None:
        sa, sb = sa[mask], sb[mask]
    return paired_bootstrap_diff(sa, sb, rmse_statistic, n_boot=n_boot)


def cold_mask(train: pd.DataFrame, test: pd.DataFrame, max_ratings: int = 5) -> np.ndarray:
    counts = train["user_id"].value_counts()
    return (test["user_id"].map(counts).fillna(0) <= max_ratings).to_numpy()


def run_fixed(ds: Dataset, quick: bool, n_boot: int) -> dict[str, Any]:
    train, test = random_split(ds.interactions, test_fraction=0.1, seed=0)
    cold = cold_mask(train, test)
    res = rating_eval(rating_models(quick, cold_aware=False), ds, train, test, n_boot, {"cold": cold})
    if cold.any():
        res["cold_side_minus_ids"] = paired(res, "fm_side", "fm_ids", cold, n_boot).to_dict()
    res["all_side_minus_ids"] = paired(res, "fm_side", "fm_ids", None, n_boot).to_dict()
    return res


# Small targeted grids for the new-user section: fewer factors and a stronger user_id L2 push a new
# user's prediction from its 5-rating id embedding towards what generalises (item terms, and for the
# side model the host's user_features, whose own L2 is lowered so they can carry more).
NEW_USER_GRIDS: dict[str, list[dict[str, Any]]] = {
    "fm_ids": [{"n_factors": n, **reg} for n in (8, 32)
               for reg in ({}, {"l2_per_field": {"user_id": 0.5}})],
    "fm_side": [{"n_factors": n, **reg} for n in (8, 32)
                for reg in ({}, {"l2_per_field": {"user_id": 0.5, "user_features": 0.02}})],
}


def run_new_user(ds: Dataset, quick: bool, n_boot: int) -> dict[str, Any]:
    """(a) warm selection + warm early stopping, (b) default hyperparameters + cold early stopping,
    (c) cold selection + cold early stopping, for FM ids-only and FM ids+side (see module docstring)."""
    train, test = pseudo_new_user_split(ds.interactions, user_fraction=0.1, keep_first=5, seed=0)
    base = rating_models(quick, cold_aware=True)
    keep = ("global_mean", "item_mean", "biased_mf", "fm_ids_coldval", "fm_side_coldval")
    res = rating_eval({k: base[k] for k in keep}, ds, train, test, n_boot, {})
    res["n_new_users"] = int(test["user_id"].nunique())
    e = {"epochs": 4} if quick else {}
    res["selection"] = {}
    for family, fixed in (("fm_ids", IDS_ONLY), ("fm_side", {})):
        for mode in ("warm", "cold"):
            t0 = time.perf_counter()

            def make(fixed: dict[str, Any] = fixed, **p: Any) -> Recommender:
                return FactorizationMachine(**fixed, **e, **p)

            sel = select_hyperparameters(make, NEW_USER_GRIDS[family], train, ds.user_features,
                                         ds.item_features, mode=mode, seed=0)
            name = f"{family}_{mode}sel"
            res["selection"][name] = sel.to_json()
            for r in sel.table:
                print(f"    {name} {json.dumps(r.params):60s} val RMSE {r.val_rmse:.4f} ep {r.best_epoch} "
                      f"({r.seconds:.0f}s)", flush=True)
            score_model(res, name, sel.best_model, test, time.perf_counter() - t0, n_boot, {})
    pairs = [(f"fm_side_{m}", f"fm_ids_{m}") for m in ("warmsel", "coldval", "coldsel")]
    pairs += [(f"{f}_coldsel", f"{f}_warmsel") for f in ("fm_ids", "fm_side")]
    for a, b in pairs:
        res[f"{a}_minus_{b}"] = paired(res, a, b, None, n_boot).to_dict()
        d = res[f"{a}_minus_{b}"]
        print(f"  RMSE {a} - {b}: {d['point']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]", flush=True)
    return res


def run_ranking(ds: Dataset, quick: bool, n_boot: int, k: int = 10) -> dict[str, Any]:
    train, test = leave_last_out(ds.interactions, n=1)
    e = {"epochs": 3} if quick else {}
    fields = {"use_item_age": False}
    models: dict[str, Factory] = {
        "popularity": Popularity,
        "fm_mse": lambda: FactorizationMachine(**fields, **e),
        "fm_ranking": lambda: FactorizationMachine(**fields, **e, objective="ranking", loss="bpr",
                                                   n_negatives=2, l2_factors=0.01, lr=2e-3),
    }
    users = test["user_id"].to_numpy()
    relevant = [{i} for i in test["item_id"].tolist()]
    out: dict[str, Any] = {"split": "leave-last-out", "k": k, "n_users": len(users), "models": {}, "_hr": {}}
    for name, make in models.items():
        t0 = time.perf_counter()
        model = make().fit(train, ds.user_features, ds.item_features)
        ids, _ = model.recommend(users, k=k)
        m = ranking_metrics(ids, relevant, k)
        out["models"][name] = {f"hr@{k}": bootstrap_ci(m["hr"], n_boot=n_boot).to_dict(),
                               f"ndcg@{k}": bootstrap_ci(m["ndcg"], n_boot=n_boot).to_dict(),
                               "seconds": round(time.perf_counter() - t0, 1)}
        out["_hr"][name] = m["hr"]
        print(f"  {name:16s} HR@{k} {m['hr'].mean():.4f} NDCG@{k} {m['ndcg'].mean():.4f}", flush=True)
    out["hr_ranking_minus_mse"] = paired_bootstrap_diff(out["_hr"]["fm_ranking"], out["_hr"]["fm_mse"],
                                                        n_boot=n_boot).to_dict()
    return out


def check_bar(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    ml = results.get("ml-100k", {})
    if "fixed" in ml:
        v = ml["fixed"]["models"]["fm_side"]["all"]["rmse"]["point"]
        checks.append({"check": "ML-100K fixed split: FM ids+side RMSE <= 0.905", "value": v,
                       "pass": v <= 0.905})
    syn = results.get("synthetic", {}).get("fixed", {})
    if "cold_side_minus_ids" in syn:
        d = syn["cold_side_minus_ids"]
        checks.append({"check": "synthetic cold users: RMSE(FM side) - RMSE(FM ids) < 0 beyond the paired CI",
                       "value": d, "pass": d["high"] < 0})
    if "ranking" in ml:
        r = ml["ranking"]["models"]
        ratio = r["fm_ranking"]["hr@10"]["point"] / max(r["fm_mse"]["hr@10"]["point"], 1e-12)
        d = ml["ranking"]["hr_ranking_minus_mse"]
        checks.append({"check": "ML-100K: HR@10 ranking FM clearly above rating-MSE FM (paired CI > 0)",
                       "value": {"ratio": ratio, "diff": d}, "pass": d["low"] > 0})
    return checks


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'dataset':10s} {'split':9s} {'model':17s} {'RMSE [95% CI]':>26s} {'cold RMSE':>10s} "
          f"{'MAE':>7s}")
    for ds_name, by_split in results.items():
        for split in ("fixed", "new_user"):
            if split not in by_split:
                continue
            for name, row in by_split[split]["models"].items():
                cold = row.get("cold", {}).get("rmse", {}).get("point")
                print(f"{ds_name:10s} {split:9s} {name:17s} {str(CI(**row['all']['rmse'])):>26s} "
                      f"{'' if cold is None else f'{cold:.4f}':>10s} {row['all']['mae']['point']:7.4f}")
        if "ranking" in by_split:
            for name, row in by_split["ranking"]["models"].items():
                print(f"{ds_name:10s} {'ranking':9s} {name:17s} HR@10 {CI(**row['hr@10'])}  "
                      f"NDCG@10 {CI(**row['ndcg@10'])}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, s) for d, v in results.items() for s in ("fixed", "new_user") if s in v]
    has_rank = any("ranking" in v for v in results.values())
    n = len(panels) + int(has_rank)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4.5 * max(n, 1), 4), squeeze=False)
    for ax, (d, s) in zip(axes[0], panels, strict=False):
        rows = results[d][s]["models"]
        names = list(rows)
        pts = [rows[m]["all"]["rmse"]["point"] for m in names]
        err = [[p - rows[m]["all"]["rmse"]["low"] for m, p in zip(names, pts, strict=True)],
               [rows[m]["all"]["rmse"]["high"] - p for m, p in zip(names, pts, strict=True)]]
        ax.bar(range(len(names)), pts, yerr=err, capsize=3, label="all test rows")
        cold = [rows[m].get("cold", {}).get("rmse", {}).get("point", np.nan) for m in names]
        if not np.all(np.isnan(cold)):
            ax.plot(range(len(names)), cold, "o", color="C3", label="cold users (<= 5 train)")
            ax.legend(fontsize=7)
        if s == "new_user" and "item_mean" in rows:
            ax.axhline(rows["item_mean"]["all"]["rmse"]["point"], color="gray", ls="--", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(min(pts + [c for c in cold if np.isfinite(c)]) * 0.9, None)
        ax.set_title(f"{d} / {s}: RMSE", fontsize=9)
    if has_rank:
        ax = axes[0][-1]
        d = next(k for k, v in results.items() if "ranking" in v)
        rows = results[d]["ranking"]["models"]
        names = list(rows)
        pts = [rows[m]["hr@10"]["point"] for m in names]
        err = [[p - rows[m]["hr@10"]["low"] for m, p in zip(names, pts, strict=True)],
               [rows[m]["hr@10"]["high"] - p for m, p in zip(names, pts, strict=True)]]
        ax.bar(range(len(names)), pts, yerr=err, capsize=3, color="C2")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{d} leave-last-out: HR@10", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SEARCH_START: dict[str, Any] = {"lr": 2e-3, "l2_factors": 0.05}  # the grid's starting point
SEARCH_GRID: list[dict[str, Any]] = [
    {}, {"l2_factors": 0.1}, {"l2_factors": 0.2}, {"l2_factors": 0.02}, {"l2_factors": 0.1, "n_factors": 64},
    {"lr": 1e-3}, {"l2_linear": 0.05}, {"init_std": 0.01}, {"lr": 1e-3, "l2_factors": 0.1},
    {"lr": 1e-3, "l2_factors": 0.1, "n_factors": 16}, {"lr": 1e-3, "l2_factors": 0.1, "init_std": 0.01},
    {"lr": 1e-3, "l2_factors": 0.1, "l2_per_field": {"history": 0.02}},
]


def search(data_dir: Path) -> None:
    """Validation-only grid: fit on (train minus 10%), score on that 10%; the test split is untouched."""
    ds = load_dataset("ml-100k", data_dir, quick=False)
    if ds is None:
        raise SystemExit(f"--search needs ML-100K under {data_dir}")
    train, _ = random_split(ds.interactions, test_fraction=0.1, seed=0)
    inner, val = validation_split(train, 0.1, seed=1)
    base = {**FactorizationMachine().get_params(), **SEARCH_START}
    print(f"{'overrides':50s} {'val RMSE':>9s} {'best ep':>8s} {'s':>5s}")
    for overrides in SEARCH_GRID:
        t0 = time.perf_counter()
        fm = FactorizationMachine(**{**base, **overrides}).fit(inner, ds.user_features, ds.item_features)
        err = float(np.sqrt(np.mean((fm.predict(val) - val["rating"].to_numpy()) ** 2)))
        print(f"{json.dumps(overrides):50s} {err:9.4f} {fm.history.best_epoch:8d} "
              f"{time.perf_counter() - t0:5.0f}", flush=True)


SECTIONS = {"fixed": "random 90/10 split", "new-user": "MovieLens new-user split (FM selection modes)",
            "ranking": "ML-100K leave-last-out top-10"}


def strip_private(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    return obj


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["synthetic", "ml-100k", "ml-1m"],
                   choices=["synthetic", "ml-100k", "ml-1m"],
                   help="datasets to run; MovieLens ones missing under --data-dir are skipped "
                        "(default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="folder with ml-100k/ and ml-1m/ (default: $FEDREC_DATA_DIR or ../shared/data)")
    p.add_argument("--quick", action="store_true", help="few epochs, small synthetic data, 200 bootstraps")
    p.add_argument("--search", action="store_true", help="validation-only FM grid on ML-100K, then exit")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder for accuracy.json/.png")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS),
                   help="run only these sections; results of the others are kept from an existing "
                        "accuracy.json in --out (merged per dataset and section)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    if args.search:
        search(args.data_dir)
        return 0
    n_boot = 200 if args.quick else 1000
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name in args.datasets:
        ds = load_dataset(name, args.data_dir, args.quick)
        if ds is None:
            print(f"[skip] {name}: not found under {args.data_dir}")
            continue
        print(f"== {name}: {len(ds.interactions)} ratings")
        results[name] = {}
        if "fixed" in args.sections:
            results[name]["fixed"] = run_fixed(ds, args.quick, n_boot)
        if name != "synthetic" and "new-user" in args.sections:
            print(f"== {name}: new-user split")
            results[name]["new_user"] = run_new_user(ds, args.quick, n_boot)
        if name == "ml-100k" and "ranking" in args.sections:
            print(f"== {name}: leave-last-out ranking")
            results[name]["ranking"] = run_ranking(ds, args.quick, n_boot)
    seconds = round(time.perf_counter() - t0, 1)
    results = strip_private(results)
    out_json = args.out / "accuracy.json"
    runs = {s: {"seconds": seconds, "quick": args.quick, "n_boot": n_boot,
                "date": time.strftime("%Y-%m-%d %H:%M")} for s in args.sections}
    payload: dict[str, Any] = {"quick": args.quick, "n_boot": n_boot, "seconds": seconds, "torch_threads": 1}
    if set(args.sections) != set(SECTIONS) and out_json.is_file():
        stored = json.loads(out_json.read_text())
        payload = {k: v for k, v in stored.items() if k not in ("checks", "results")}
        merged = stored.get("results", {})
        for ds_name, by_split in results.items():
            merged.setdefault(ds_name, {}).update(by_split)
        results = merged
        runs = {**stored.get("runs", {}), **runs}
        print(f"merged sections {args.sections} into the stored results of {out_json}")
    checks = check_bar(results)
    print_table(results)
    print()
    for c in checks:
        print(f"[{'PASS' if c['pass'] else 'FAIL'}] {c['check']}: {json.dumps(c['value'])}")
    args.out.mkdir(parents=True, exist_ok=True)
    payload.update({"runs": runs, "checks": checks, "results": results})
    out_json.write_text(json.dumps(payload, indent=1, default=float))
    plot(results, args.out / "accuracy.png")
    print(f"wrote {out_json} and {args.out / 'accuracy.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
