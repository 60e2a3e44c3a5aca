#!/usr/bin/env python3
"""Reactivation benchmark (DESIGN §7, issue #12): do recommendations bring dormant customers back?

Per dataset (MovieLens 100K and the synthetic ``SyntheticConfig.retention()`` preset):

1. **Rolling cut dates** ``T_1 < ... < T_n`` (``--step-days`` apart; ML-100K: from the 50th to the
   90th percentile of timestamps; synthetic: ``--synthetic-cuts`` around its meta cut). At each cut,
   dormant customers = >= ``--min-history`` interactions before ``T`` and none in the
   ``--inactive-days`` before it; a *case* = a dormant customer who comes back within
   ``--horizon-days`` with at least one item new to them (:func:`fedrec.eval.retention.pooled_setups`).
   Cases are pooled over the cuts (a customer counts once per cut).
2. At every cut, models trained on the data before ``T`` only, as implicit feedback: popularity
   all-time and last 30 days, and three FMs for ranking (BPR): **guest-only** (ids, history, item
   features, and the time-aware guest fields: item popularity over the last 7/30 days and the
   customer's recency-weighted last items, :mod:`fedrec.data.features_time`), **federated** (plus the
   host's customer features, trained by the vertical FM protocol over the in-memory twin, backend
   ``--federated``, served from the guest half + host partials) and **centralized** (the same model
   pooled, from the federated run's initial parameters: the exactness reference).
   Model selection: the guest-only FM early-stops on NDCG@10 of each customer's last interaction
   before ``T`` and is refit on all rows before ``T`` for the selected epochs (the guest can do this
   alone); the federated and centralized FMs train for the same number of epochs. The factor L2 is
   chosen at the first cut from ``--l2-grid`` by the same validation NDCG and kept.
3. Every model is exported as a serving bundle and ranked by :class:`serving.scorer.Scorer` (top-10
   unseen items). HR@10/NDCG@10/recall@10 over the pooled cases with bootstrap CIs that resample
   **customers** (all their cases together, :func:`fedrec.eval.retention.customer_bootstrap`);
   paired differences vs 30-day popularity and vs guest-only the same way; cold/warm slices.
4. Targeting at the last cut: all dormant customers ranked by a return propensity (L2 logistic
   regression, 5-fold cross-fitted; with vs without the host's features): top-decile return rate.

Writes ``benchmarks/results/retention.json``, ``retention_lift.png``, ``retention_history.png`` and
``retention.md`` (with the bottom line). ``--quick``: a small synthetic population, 2 cuts, few epochs
(a smoke test), written to ``retention_quick/``.

Usage::

    nice python benchmarks/retention.py [--datasets ml-100k synthetic] [--quick] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.data import SyntheticConfig, generate, load_ml100k, quantile_time, vertical_split  # noqa: E402
from fedrec.data.dataset import Dataset  # noqa: E402
from fedrec.eval import retention as rt  # noqa: E402
from fedrec.models import FactorizationMachine, Popularity  # noqa: E402
from fedrec.models.base import NO_HOST_PARTIAL  # noqa: E402
from serving.artifacts import HostPartials  # noqa: E402
from serving.export import bundle_from_model, load_serving_bundle  # noqa: E402
from serving.scorer import Scorer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DAY = 86_400
MODELS = ("popularity_all", "popularity_recent", "fm_guest_only", "fm_federated", "fm_centralized")
LABELS = {"popularity_all": "popularity (all-time)", "popularity_recent": "popularity (last 30 days)",
          "fm_guest_only": "FM guest-only", "fm_federated": "FM federated",
          "fm_centralized": "FM centralized"}
DATASET_NAMES = {"ml-100k": "MovieLens 100K", "synthetic": "synthetic bank data"}
HIT_LABEL = "hit rate HR@10 (share of returns)"


def default_data_dir() -> Path:
    env = os.environ.get("FEDREC_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load(name: str, args: argparse.Namespace) -> tuple[Dataset, list[int]]:
    """The dataset and its rolling cut dates."""
    step = args.step_days * DAY
    if name == "synthetic":
        n_users = 3000 if args.quick else args.synthetic_users
        ds = generate(SyntheticConfig.retention(n_users=n_users)).dataset
        meta_cut = int(ds.meta["retention_cut_ts"])  # type: ignore[call-overload]
        n = 2 if args.quick else args.synthetic_cuts
        first = meta_cut - (n // 2) * step
        return ds, [int(first + j * step) for j in range(n)]
    if name == "ml-100k":
        ds = load_ml100k(args.data_dir / "ml-100k")
        lo, hi = (quantile_time(ds.interactions, q) for q in (args.first_quantile, args.last_quantile))
        cuts = rt.rolling_cuts(ds.interactions, lo, hi, args.step_days)
        return ds, cuts[-2:] if args.quick else cuts
    raise SystemExit(f"unknown dataset {name!r}; use synthetic or ml-100k")


def item_table(ds: Dataset, before: pd.DataFrame) -> pd.DataFrame:
    """The guest's item features of the items seen before the cut (empty table if it has none)."""
    items = pd.Index(pd.unique(before["item_id"]), name="item_id")
    if ds.item_features is None:
        return pd.DataFrame(index=items)
    return ds.item_features.reindex(items)


def fm_params(args: argparse.Namespace, l2: float) -> dict[str, Any]:
    """The FM settings every FM shares: ranking (BPR), the time-aware guest fields, canonical order."""
    return {"objective": "ranking", "loss": "bpr", "n_negatives": args.negatives_per_positive,
            "negatives": args.negatives, "n_factors": args.factors, "l2_factors": l2, "lr": args.lr,
            "batch_size": args.batch_size, "epochs": 2 if args.quick else args.epochs, "patience": 3,
            "use_history_length": False, "use_item_age": False,
            "use_recent_popularity": not args.no_time_features, "use_recent_items": not args.no_time_features,
            "recent_items_n": 5, "recency_half_life_days": 30.0, "row_order": "canonical",
            "seed": args.seed}


def guest_only(train: pd.DataFrame, items: pd.DataFrame, args: argparse.Namespace, l2: float
               ) -> FactorizationMachine:
    """The bank's own FM: early stopping on NDCG@10 of each customer's last row, refit on all rows."""
    params = {**fm_params(args, l2), "validation": "last", "early_stopping": "ndcg", "refit": True,
              "use_user_features": False}
    return FactorizationMachine(**params).fit(train, item_features=items)


def select_l2(train: pd.DataFrame, items: pd.DataFrame, args: argparse.Namespace
              ) -> tuple[float, dict[str, float]]:
    """The factor L2 with the best validation NDCG@10 of the guest-only FM (rows before the cut only)."""
    scores: dict[float, float] = {}
    for l2 in (float(x) for x in args.l2_grid):
        m = guest_only(train, items, args, l2)
        assert m.selection_history is not None
        scores[l2] = -min(m.selection_history.val_metric)
        print(f"    l2={l2:g}: validation NDCG@10 {scores[l2]:.4f} (epoch {m.selection_history.best_epoch})",
              flush=True)
    best = max(scores, key=lambda k: scores[k])
    return best, {str(k): v for k, v in scores.items()}


def federated_protocol(ds: Dataset, train: pd.DataFrame, items: pd.DataFrame, users: list[Any],
                       args: argparse.Namespace, params: dict[str, Any], workdir: Path
                       ) -> tuple[Scorer, FactorizationMachine, dict[str, Any]]:
    """Train the vertical FM with the real protocol (guest + host over the in-memory twin), serve the
    guest half + the host's partials; also the centralized FM from the same initial parameters."""
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, run_parties

    _, host_view = vertical_split(ds, host_user_fraction=args.host_coverage, seed=args.seed)
    # the guest selected the epochs alone; label DP is measured by benchmarks/leakage.py
    cfg = HeteroFMConfig(**params, backend=args.federated, timeout=600, label_dp="off")
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)

    def play_guest() -> None:
        guest.fit(train, item_features=items)
        guest.save(workdir / "guest")
        guest.close()

    with warnings.catch_warnings():  # process-wide: covers both parties' threads
        warnings.filterwarnings("ignore", message="crypto backend 'plain'")
        run_parties({"guest": play_guest, "host": lambda: host.serve(host_view.user_features)},
                    timeout=4 * 3600)
    bundle = load_serving_bundle(workdir / "guest")
    partials = HostPartials.from_frame(host.export_partials(users), args.factors, "host export_partials",
                                       run_id=host.run_id)
    init = {**guest.initial_state, **{k: v for k, v in host.initial_state.items() if k != "bias"}}
    central = FactorizationMachine(**cfg.fm_params()).fit(train, host_view.user_features, items,
                                                          initial_state=init)
    info = {"protocol": f"hetero_fm over MemoryNetwork, backend {args.federated}",
            "epochs_run": len(guest.history.train_loss)}
    return Scorer(bundle, partials), central, info


def train_and_rank(ds: Dataset, setup: rt.RetentionSetup, args: argparse.Namespace, state: dict[str, Any]
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Top-k lists for the evaluated customers of one cut from every model (via serving bundles)."""
    train = setup.before.drop(columns=["rating"], errors="ignore")  # implicit feedback
    items = item_table(ds, setup.before)
    users = setup.eval_users.tolist()
    lists: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"cut": pd.Timestamp(setup.cut_ts, unit="s").strftime("%Y-%m-%d"),
                            "n_cases": len(users)}

    def rank(name: str, scorer: Scorer) -> None:
        rec = scorer.recommend(users, args.k)
        lists[name] = rec.item_ids
        if rec.counts.get(NO_HOST_PARTIAL):
            info[f"{name}_no_host_partial"] = rec.counts[NO_HOST_PARTIAL]

    for name, kind in (("popularity_all", "count"), ("popularity_recent", "recent")):
        pop = Popularity(kind=kind, window_days=30, reference_time=setup.cut_ts - 1).fit(train)
        rank(name, Scorer(bundle_from_model(pop)))
    if "l2" not in state:
        state["l2"], state["l2_scores"] = select_l2(train, items, args)
    t0 = time.perf_counter()
    guest = guest_only(train, items, args, state["l2"])
    assert guest.selection_history is not None
    epochs = max(guest.selection_history.best_epoch, 1)
    rank("fm_guest_only", Scorer(bundle_from_model(guest, at=setup.cut_ts)))
    params = {**fm_params(args, state["l2"]), "epochs": epochs, "validation": "none"}
    with tempfile.TemporaryDirectory() as tmp:
        scorer, central, extra = federated_protocol(ds, train, items, users, args, params, Path(tmp))
    rank("fm_federated", scorer)
    rank("fm_centralized", Scorer(bundle_from_model(central, at=setup.cut_ts)))
    info.update(extra, epochs=epochs, seconds=round(time.perf_counter() - t0, 1))
    hr = {m: rt.per_user_metrics(lists[m], setup.relevant, args.k)["hr"].mean() for m in MODELS}
    print(f"  cut {info['cut']}: {len(users)} cases, {epochs} epochs; HR@{args.k} "
          + ", ".join(f"{m} {v:.3f}" for m, v in hr.items()) + f" ({info['seconds']}s)", flush=True)
    return lists, info


# ------------------------------------------------------------------------------------------ targeting
def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    from scipy.optimize import minimize

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w[1:] + w[0]
        p = 1 / (1 + np.exp(-z))
        ll = np.logaddexp(0, z) - y * z
        g = p - y
        grad = np.concatenate([[g.sum()], x.T @ g + l2 * w[1:]])
        return float(ll.sum() + 0.5 * l2 * w[1:] @ w[1:]), grad

    return np.asarray(minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B").x)


def _design(ds: Dataset, dormant: pd.DataFrame, cut: int, host: bool) -> np.ndarray:
    cols = [np.log1p(dormant["n_history"].to_numpy()), np.log1p(dormant["days_inactive"].to_numpy()),
            np.log1p((cut - dormant["first_activity"].to_numpy()) / DAY)]
    x = np.stack(cols, axis=1).astype(np.float64)
    if host and ds.user_features is not None:
        uf = ds.user_features.reindex(dormant["user_id"])
        parts = [x]
        for c in uf.columns:
            s = uf[c]
            if pd.api.types.is_numeric_dtype(s):
                parts.append(s.fillna(s.mean()).to_numpy(dtype=np.float64)[:, None])
            else:
                parts.append(pd.get_dummies(s.astype(str)).to_numpy(dtype=np.float64))
        x = np.hstack(parts)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def targeting(ds: Dataset, setup: rt.RetentionSetup, seed: int) -> dict[str, Any]:
    dormant = setup.dormant
    y = dormant["returned"].to_numpy().astype(np.float64)
    folds = np.random.default_rng(seed).permutation(len(y)) % 5
    out: dict[str, Any] = {"n_dormant": len(y), "base_rate": float(y.mean())}
    for name, host in (("without_host", False), ("with_host", True)):
        x = _design(ds, dormant, setup.cut_ts, host)
        p = np.empty(len(y))
        for f in range(5):
            w = _logistic(x[folds != f], y[folds != f])
            p[folds == f] = x[folds == f] @ w[1:] + w[0]
        out[name] = {**rt.top_decile(p, y.astype(bool)), "n_features": int(x.shape[1])}
    return out



# ------------------------------------------------------------------------------------------ evaluation
def evaluate(pooled: rt.PooledCases, per: dict[str, dict[str, np.ndarray]], args: argparse.Namespace
             ) -> dict[str, Any]:
    """Pooled metrics with customer-bootstrap CIs, paired differences vs the baselines, slices."""
    k, nb, who = args.k, args.n_boot, pooled.users
    hist = np.concatenate([s.eval_history for s in pooled.setups])
    cold_max = args.cold_max if args.cold_max is not None else int(np.median(hist))
    cold = hist <= cold_max
    out: dict[str, Any] = {"models": {}, "slices": {"cold_max": cold_max, "n_cold": int(cold.sum()),
                                                     "n_warm": int((~cold).sum())}}
    for m in MODELS:
        row: dict[str, Any] = {f"{name}@{k}": rt.customer_bootstrap(v, who, n_boot=nb).to_dict()
                               for name, v in per[m].items()}
        for base in ("popularity_recent", "fm_guest_only"):
            if base != m:
                diff = rt.customer_bootstrap(per[m]["hr"], who, per[base]["hr"], n_boot=nb)
                ratio = per[m]["hr"].mean() / max(per[base]["hr"].mean(), 1e-12)
                row[f"vs_{base}"] = {"diff": diff.to_dict(), "ratio": float(ratio)}
        for sl, mask in (("cold", cold), ("warm", ~cold)):
            if mask.any():
                ci = rt.customer_bootstrap(per[m]["hr"][mask], who[mask], n_boot=nb)
                row[f"hr@{k}_{sl}"] = ci.to_dict()
        out["models"][m] = row
    return out


def check_bar(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's bars: ML-100K federated >= 30-day popularity (paired CI reported either way);
    synthetic: federated above popularity and above guest-only beyond the CI."""
    checks = []
    for ds_name, r in results.items():
        fed = r["evaluation"]["models"]["fm_federated"]
        dp, dg = fed["vs_popularity_recent"]["diff"], fed["vs_fm_guest_only"]["diff"]
        checks.append({"check": f"{ds_name}: federated HR@10 >= 30-day popularity (paired diff point >= 0)",
                       "value": dp, "pass": dp["point"] >= 0})
        if ds_name == "synthetic":
            checks.append({"check": "synthetic: federated HR@10 above 30-day popularity beyond CI (low > 0)",
                           "value": dp, "pass": dp["low"] > 0})
            checks.append({"check": "synthetic: federated HR@10 above guest-only beyond CI (low > 0)",
                           "value": dg, "pass": dg["low"] > 0})
        cen = r["evaluation"]["models"]["fm_centralized"][f"hr@{r['k']}"]["point"]
        gap = abs(fed[f"hr@{r['k']}"]["point"] - cen) / max(cen, 1e-12)
        checks.append({"check": f"{ds_name}: federated = centralized HR@10 within 0.3%",
                       "value": f"relative gap {gap:.2e}", "pass": gap <= 0.003})
    return checks


# ------------------------------------------------------------------------------------------ outputs
def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, ds_name in zip(axes[0], names, strict=True):
        ev = results[ds_name]["evaluation"]["models"]
        pts = np.array([ev[m]["hr@10"]["point"] for m in MODELS])
        lo = np.array([ev[m]["hr@10"]["low"] for m in MODELS])
        hi = np.array([ev[m]["hr@10"]["high"] for m in MODELS])
        ax.bar(range(len(MODELS)), pts, width=0.6, color=["#bbb", "#888", "#4c72b0", "#dd8452", "#55a868"],
               linewidth=0)
        # the 95% interval as a whisker beside the bar's top, not a line drawn through the bar
        ax.errorbar(np.arange(len(MODELS)) + 0.38, pts, yerr=[pts - lo, hi - pts], fmt="none", ecolor="#333",
                    elinewidth=1, capsize=3, label="95% interval (customers resampled)")
        ax.legend(fontsize=7, loc="upper left", frameon=False)
        ax.set_xticks(range(len(MODELS)), [LABELS[m].replace(" (", "\n(") for m in MODELS], fontsize=8)
        s = results[ds_name]["setup"]
        ax.set_title(f"{DATASET_NAMES.get(ds_name, ds_name)}: {s['n_cases']} returns of {s['n_customers']} "
                     f"customers over {s['n_cuts']} cut dates", fontsize=9)
        ax.set_ylabel(HIT_LABEL)
        ax.set_ylim(0, min(1.0, float(hi.max()) * 1.15))  # from 0: bar heights compare as ratios
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(out / "retention_lift.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, ds_name in zip(axes[0], names, strict=True):
        cuts = results[ds_name]["per_cut"]
        for m in MODELS:
            ax.plot(range(len(cuts)), [c["hr"][m] for c in cuts], marker="o", label=LABELS[m])
        ax.set_xticks(range(len(cuts)), [f"{c['cut']}\n(n={c['n_cases']})" for c in cuts], fontsize=7,
                      rotation=45)
        ax.set_ylabel(HIT_LABEL)
        top = max(max(c["hr"][m] for m in MODELS) for c in cuts)
        ax.set_ylim(0, min(1.0, top * 1.25))  # from 0, so small wiggles do not look like large gaps
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_title(f"{DATASET_NAMES.get(ds_name, ds_name)}: per cut date (n = returning customers)",
                     fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(out / "retention_history.png", dpi=120)
    plt.close(fig)


def _pct(ci: dict[str, float]) -> str:
    return f"{100 * ci['point']:.1f}% [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"


def _pts(ci: dict[str, float]) -> str:
    return f"{100 * ci['point']:+.1f} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"


def check_value(value: Any) -> str:
    """A check's measured value for a reader: a paired difference as points with its 95% CI (it was
    printed as a Python dict), anything else as it is."""
    if isinstance(value, dict) and {"point", "low", "high"} <= set(value):
        return f"{_pts(value)} points (95% CI)"
    return str(value)


def bottom_line(ds_name: str, r: dict[str, Any]) -> str:
    ev = r["evaluation"]["models"]
    fed = ev["fm_federated"]
    dp, dg = fed["vs_popularity_recent"]["diff"], fed["vs_fm_guest_only"]["diff"]

    def verdict(d: dict[str, float], what: str) -> str:
        lo, hi = sorted((abs(d["low"]), abs(d["high"])))
        mag = f"{100 * abs(d['point']):.1f} points (95% CI {100 * lo:.1f} to {100 * hi:.1f})"
        if d["low"] > 0:
            return f"beats {what} by {mag}: decided, the CI excludes 0"
        if d["high"] < 0:
            return f"LOSES to {what} by {mag}: decided, the CI excludes 0"
        side = "ahead of" if d["point"] >= 0 else "behind"
        return f"is {side} {what}: {100 * d['point']:+.1f} points [{100 * d['low']:+.1f}, " \
               f"{100 * d['high']:+.1f}]: not decided, the CI includes 0"

    if dp["low"] > 0:
        use = "Use the federated FM for the campaign."
    elif dp["high"] < 0:
        use = "Use 30-day popularity for the campaign."
    elif dp["point"] >= 0:
        use = "The federated FM is the better bet, but these cases do not decide it."
    else:
        use = "30-day popularity is the better bet, but these cases do not decide it."
    return (f"**Bottom line ({ds_name}, {r['setup']['n_cases']} cases of {r['setup']['n_customers']} "
            f"customers over {r['setup']['n_cuts']} cut dates):** the federated FM "
            f"{verdict(dp, '30-day popularity')}; it {verdict(dg, 'the bank-only FM')}. {use}")

def report(results: dict[str, Any], checks: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["# Reactivating dormant customers: which recommendations bring them back?", "",
             "At several cut dates T we find customers who had been active (at least "
             f"{args.min_history} interactions) but silent for the {args.inactive_days:g} days before T, and "
             "ask each model for 10 products the customer has not used yet, using only data from before T. "
             f"A **hit**: the customer came back within {args.horizon_days:g} days and used one of those 10. "
             "A *case* is one dormant customer who came back with something new at one cut; cases are "
             "pooled over the cuts. Brackets: 95% bootstrap intervals that resample customers (a customer "
             "dormant at several cuts is not counted as independent evidence); differences are paired "
             "(same cases).", ""]
    for ds_name, r in results.items():
        s, ev = r["setup"], r["evaluation"]
        lines += [f"## {ds_name}", "", bottom_line(ds_name, r), "",
                  f"{s['n_cuts']} cuts ({r['per_cut'][0]['cut']} to {r['per_cut'][-1]['cut']}, every "
                  f"{args.step_days:g} days): {s['n_dormant']} dormant customer-cuts, {s['n_cases']} cases "
                  f"({s['n_customers']} distinct customers). Cold = at most {ev['slices']['cold_max']} "
                  f"interactions before T ({ev['slices']['n_cold']} cases), warm = more "
                  f"({ev['slices']['n_warm']}).", "",
                  "| model | HR@10 | NDCG@10 | HR@10 − 30-day popularity (points) | "
                  "HR@10 − guest-only (points) "
                  "| HR@10 cold | HR@10 warm |", "|---|---|---|---|---|---|---|"]
        for m in MODELS:
            row = ev["models"][m]
            dp = row.get("vs_popularity_recent", {}).get("diff")
            dg = row.get("vs_fm_guest_only", {}).get("diff")
            lines.append(f"| {LABELS[m]} | {_pct(row['hr@10'])} | {row['ndcg@10']['point']:.3f} | "
                         f"{_pts(dp) if dp else '—'} | {_pts(dg) if dg else '—'} | "
                         f"{_pct(row['hr@10_cold']) if 'hr@10_cold' in row else '—'} | "
                         f"{_pct(row['hr@10_warm']) if 'hr@10_warm' in row else '—'} |")
        t = r["targeting"]
        lines += ["", f"**Whom to target (last cut).** Of {t['n_dormant']} dormant customers, "
                  f"{100 * t['base_rate']:.1f}% came back. Contacting the top 10% by a return-propensity "
                  f"model reaches {100 * t['without_host']['top_rate']:.1f}% with the bank's own data "
                  f"({t['without_host']['lift']:.2f}x) and {100 * t['with_host']['top_rate']:.1f}% with the "
                  f"partner's customer features ({t['with_host']['lift']:.2f}x).", ""]
    lines += ["## Checks", ""]
    lines += [f"- {'PASS' if c['pass'] else 'FAIL'}: {c['check']} — {check_value(c['value'])}"
              for c in checks]
    lines += ["", "## How this was computed", "",
              "`nice python benchmarks/retention.py` (see its docstring). FMs are trained for ranking (BPR, "
              f"{args.negatives_per_positive} {args.negatives} negatives per positive) on the interactions "
              "before T as implicit feedback, with the "
              "guest's time-aware fields (item popularity over the last 7 and 30 days, the customer's "
              "recency-weighted last 5 items); the bank-only FM picks its epoch count by NDCG@10 on each "
              "customer's last interaction before T and is refit; the federated FM (vertical protocol, "
              f"backend '{args.federated}', host coverage {100 * args.host_coverage:.0f}%) trains as many "
              "epochs and adds the partner's customer features; the centralized FM replays it from the "
              "same initial parameters.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="examples: nice python benchmarks/retention.py --quick; "
                                       "nice python benchmarks/retention.py --datasets ml-100k --step-days 7")
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "synthetic"],
                   help="datasets to run: ml-100k and/or synthetic (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="folder with ml-100k/ (default: $FEDREC_DATA_DIR or ../shared/data)")
    p.add_argument("--step-days", type=float, default=14.0,
                   help="days between cut dates (default: %(default)s)")
    p.add_argument("--first-quantile", type=float, default=0.5,
                   help="ML-100K: first cut at this quantile of timestamps (default: %(default)s)")
    p.add_argument("--last-quantile", type=float, default=0.9,
                   help="ML-100K: last cut at or before this quantile (default: %(default)s)")
    p.add_argument("--synthetic-cuts", type=int, default=3,
                   help="synthetic: number of cuts centred on its meta cut (default: %(default)s)")
    p.add_argument("--synthetic-users", type=int, default=8000,
                   help="synthetic: customers in the retention preset (default: %(default)s)")
    p.add_argument("--horizon-days", type=float, default=60.0,
                   help="a return counts when within this many days after T (default: %(default)s)")
    p.add_argument("--inactive-days", type=float, default=30.0,
                   help="dormant = no interaction in this many days before T (default: %(default)s)")
    p.add_argument("--min-history", type=int, default=5,
                   help="dormant customers need at least this many interactions before T "
                        "(default: %(default)s)")
    p.add_argument("--cold-max", type=int, default=None,
                   help="cold = at most this many interactions before T (default: the median)")
    p.add_argument("--k", type=int, default=10,
                   help="recommendation list length, K of HR@K (default: %(default)s)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--factors", type=int, default=32, help="FM latent factors (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=20,
                   help="FM epoch limit of the early-stopped guest-only fit (--quick: 2) "
                        "(default: %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="FM Adam learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1024, help="FM rows per batch (default: %(default)s)")
    p.add_argument("--negatives", choices=["uniform", "popularity"], default="uniform",
                   help="negative sampling of the FMs (default: %(default)s)")
    p.add_argument("--negatives-per-positive", type=int, default=4,
                   help="negatives drawn per positive (default: %(default)s)")
    p.add_argument("--no-time-features", action="store_true",
                   help="ablation: FMs without the recent-popularity / last-items guest fields")
    p.add_argument("--host-coverage", type=float, default=1.0,
                   help="share of customers the host has features for (default: %(default)s)")
    p.add_argument("--federated", choices=["plain", "ckks"], default="plain",
                   help="crypto backend of the vertical FM protocol (plain: no encryption, exact, fast)")
    p.add_argument("--l2-grid", nargs="+", default=["0.003", "0.01", "0.05"],
                   help="factor L2 values; the guest-only FM's validation NDCG@10 at the first cut picks one")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the FMs, the host's vertical split and the targeting folds "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: %(default)s; the machine is shared)")
    p.add_argument("--quick", action="store_true",
                   help="small synthetic population, 2 cuts, 2 epochs (smoke test; writes retention_quick/)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="join retention.json files of runs over different datasets (run in parallel) into "
                        "--out: report and plots redrawn, nothing trained")
    return p


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    ds, cuts = load(name, args)
    pooled = rt.pooled_setups(ds.interactions, cuts, args.inactive_days, args.min_history, args.horizon_days)
    print(f"== {name}: {pooled.summary()}", flush=True)
    state: dict[str, Any] = {}
    per: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in MODELS}
    per_cut = []
    for setup in pooled.setups:
        if not len(setup.eval_users):
            continue
        lists, info = train_and_rank(ds, setup, args, state)
        info["hr"] = {}
        for m in MODELS:
            metrics = rt.per_user_metrics(lists[m], setup.relevant, args.k)
            info["hr"][m] = float(metrics["hr"].mean())
            for key, v in metrics.items():
                per[m].setdefault(key, []).append(v)
        per_cut.append(info)
    merged = {m: {key: np.concatenate(v) for key, v in d.items()} for m, d in per.items()}
    last = next(s for s in reversed(pooled.setups) if len(s.dormant))
    return {"k": args.k, "setup": pooled.summary(), "per_cut": per_cut, "l2_factors": state.get("l2"),
            "l2_validation_ndcg": state.get("l2_scores"), "evaluation": evaluate(pooled, merged, args),
            "targeting": targeting(ds, last, args.seed), "seconds": round(time.perf_counter() - t0, 1)}


def _shown_path(path: Path) -> str:
    """A path as results files record it: relative to the repository when inside it (or under the
    ../shared beside it, as ../shared/data), else only its last two parts; never this machine's
    absolute directories."""
    # absolute but not resolved: ../shared is often a symlink (CI links it), and the name the user gave is
    # the one to record
    # only the documented sibling ../shared counts as "beside": a checkout in /tmp must not turn every
    # temporary path into ../pytest-of-...
    full = Path(os.path.abspath(path))
    repo = Path(os.path.abspath(REPO))
    for base, prefix in ((repo, ""), (repo.parent / "shared", "../shared/")):
        if full == base or base in full.parents:
            return prefix + full.relative_to(base).as_posix()
    return "/".join(full.parts[-2:])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.datasets = ["synthetic"]
    t_start = time.perf_counter()
    if args.merge:
        payloads = [json.loads(f.read_text()) for f in args.merge]
        results = {k: v for pl in payloads for k, v in pl["results"].items()}
        for key in ("step_days", "horizon_days", "inactive_days", "min_history", "negatives", "federated",
                    "host_coverage", "negatives_per_positive"):
            if key in payloads[0]["args"]:
                setattr(args, key, payloads[0]["args"][key])
    else:
        results = {name: run_dataset(name, args) for name in args.datasets}
    checks = check_bar(results)
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}: {c['check']}: {check_value(c['value'])}")
    for name, r in results.items():
        print(bottom_line(name, r))
    payload = {"args": {k: [_shown_path(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], Path)
                        else _shown_path(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "seconds": round(time.perf_counter() - t_start, 1), "checks": checks, "results": results}
    out = args.out / "retention_quick" if args.quick else args.out  # a smoke run never overwrites results
    out.mkdir(parents=True, exist_ok=True)
    (out / "retention.json").write_text(json.dumps(payload, indent=1, default=str))
    plot(results, out)
    (out / "retention.md").write_text(report(results, checks, args))
    print(f"wrote {out}/retention.json, retention_lift.png, retention_history.png, retention.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
