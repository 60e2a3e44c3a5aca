"""Retention-lift benchmark (DESIGN §7): do the federated model's recommendations bring dormant users back?

Per dataset (the synthetic ``SyntheticConfig.retention()`` preset and MovieLens 100K):

1. a time cut ``T`` (``--cut``; default the synthetic meta's ``retention_cut_ts``, or the 80th
   percentile of timestamps for MovieLens); dormant users = >= ``--min-history`` interactions before
   ``T`` and none in the ``--inactive-days`` before ``T``; evaluated = those who interact with at least
   one new item after ``T`` (:mod:`fedrec.eval.retention`).
2. models trained on the data before ``T`` only, as implicit feedback (every row a positive):
   popularity all-time and last-30-days, and three FMs trained for ranking (BPR): **guest-only** (ids,
   history, history length, item features, item age — what the bank has), **federated** (plus the
   host's user features; served through the vertical bundle: guest half + host partials exported for
   the campaign's users, users without a host partial flagged) and **centralized** (all features pooled:
   the upper bound). Item features get two columns computed before ``T``: ``log1p`` of the item's
   all-time and last-30-days counts, so the FMs can learn what recent popularity knows.
3. every model is exported as a serving bundle and ranked by :class:`serving.scorer.Scorer` (top-10
   unseen items); HR@10, NDCG@10, recall@10 with bootstrap CIs over users; lifts (ratio of HR means)
   vs recent popularity and vs guest-only with paired bootstrap CIs; cold (history <= ``--cold-max``)
   and warm slices; HR by history length.
4. targeting: all dormant users ranked by a return propensity (L2 logistic regression, 5-fold
   cross-fitted, on features from before ``T``: history length, days inactive, tenure; with vs without
   the host's user features); return rate in the top decile over the base rate.

Writes ``benchmarks/results/retention.json``, ``retention_lift.png``, ``retention_history.png`` and
``retention.md`` (a report for a marketing analyst). ``--quick`` runs a small synthetic population
with few epochs (a smoke test, not the reported numbers).

The federated model is trained by the vertical FM protocol itself (``fedrec.protocols.hetero_fm``:
guest and host over the in-memory transport twin; ``--federated plain`` (default; the protocol without
encryption, which replays the centralized FM exactly) or ``ckks``), on the host's view
(``--host-coverage``: the share of users the host has features for); ``--federated reference`` uses the
plaintext FM instead. The factor L2 is chosen from ``--l2-grid`` by the guest-only FM's validation loss
(a random 5% of the rows before ``T``) and used by every FM.

Usage::

    python benchmarks/retention.py [--datasets synthetic ml-100k] [--quick] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
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
from serving.export import bundle_from_model, fm_host_partials, load_serving_bundle  # noqa: E402
from serving.scorer import Scorer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DAY = 86_400
MODELS = ("popularity_all", "popularity_recent", "fm_guest_only", "fm_federated", "fm_centralized")
LABELS = {"popularity_all": "popularity (all-time)", "popularity_recent": "popularity (last 30 days)",
          "fm_guest_only": "FM guest-only", "fm_federated": "FM federated",
          "fm_centralized": "FM centralized"}


def default_data_dir() -> Path:
    env = os.environ.get("FEDREC_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load(name: str, args: argparse.Namespace) -> tuple[Dataset, int]:
    if name == "synthetic":
        cfg = SyntheticConfig.retention(n_users=3000) if args.quick else SyntheticConfig.retention()
        ds = generate(cfg).dataset
        meta_cut = ds.meta["retention_cut_ts"]
        cut = int(args.cut) if args.cut else int(meta_cut)  # type: ignore[call-overload]
        return ds, cut
    if name == "ml-100k":
        ds = load_ml100k(args.data_dir / "ml-100k")
        return ds, int(args.cut) if args.cut else quantile_time(ds.interactions, 0.8)
    raise SystemExit(f"unknown dataset {name!r}; use synthetic or ml-100k")


def item_table(ds: Dataset, before: pd.DataFrame, cut: int) -> pd.DataFrame:
    """The guest's item features plus log1p all-time / last-30-days counts before ``cut``."""
    items = pd.Index(pd.unique(before["item_id"]))
    table = ds.item_features.reindex(items) if ds.item_features is not None else pd.DataFrame(index=items)
    counts = before["item_id"].value_counts()
    recent = before.loc[before["timestamp"] >= cut - 30 * DAY, "item_id"].value_counts()
    table = table.copy()
    table["log_count"] = np.log1p(counts.reindex(items).fillna(0).to_numpy())
    table["log_count_30d"] = np.log1p(recent.reindex(items).fillna(0).to_numpy())
    table.index.name = "item_id"
    return table


def fm_params(args: argparse.Namespace, l2: float) -> dict[str, Any]:
    """The FM settings every model shares (ranking, BPR, early stopping on a random 5% of train rows)."""
    return {"objective": "ranking", "loss": "bpr", "n_negatives": 2, "n_factors": args.factors,
            "l2_factors": l2, "lr": args.lr, "batch_size": args.batch_size,
            "epochs": 2 if args.quick else args.epochs, "patience": 2, "validation": "random",
            "seed": args.seed}


def select_l2(train: pd.DataFrame, items: pd.DataFrame, args: argparse.Namespace
              ) -> tuple[float, FactorizationMachine, dict[str, float]]:
    """L2 of the factors by the guest-only FM's best validation loss (train rows only, never after T);
    returns the chosen value, that guest-only model and the loss per value."""
    scores: dict[float, float] = {}
    models: dict[float, FactorizationMachine] = {}
    for l2 in (float(x) for x in args.l2_grid):
        m = FactorizationMachine(**fm_params(args, l2), use_user_features=False)
        models[l2] = m.fit(train, item_features=items)
        scores[l2] = min(m.history.val_metric)
        print(f"  l2={l2:g}: best validation BPR loss {scores[l2]:.4f} (epoch {m.history.best_epoch})",
              flush=True)
    best = min(scores, key=lambda k: scores[k])
    return best, models[best], {str(k): v for k, v in scores.items()}


def federated_protocol(ds: Dataset, train: pd.DataFrame, items: pd.DataFrame, users: list[Any],
                       args: argparse.Namespace, l2: float, workdir: Path) -> tuple[Scorer, dict[str, Any]]:
    """Train the vertical FM with the real protocol (guest + host over the in-memory twin), save the
    guest half, let the host export the campaign users' partials, and build the scorer from both."""
    import warnings

    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, run_parties

    _, host_view = vertical_split(ds, host_user_fraction=args.host_coverage, seed=args.seed)
    # ranking with early stopping: label DP cannot cover its validation metric (HeteroFMConfig), so this
    # benchmark measures the unprotected model; benchmarks/leakage.py measures what protection costs
    cfg = HeteroFMConfig(**fm_params(args, l2), backend=args.federated, timeout=600, label_dp="off")
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
    bundle = load_serving_bundle(workdir / "guest")  # the guest half is served as a vertical bundle
    assert bundle.kind == "vertical", bundle.kind
    partials = HostPartials.from_frame(host.export_partials(users), args.factors, "host export_partials",
                                       run_id=host.run_id)
    info = {"protocol": f"hetero_fm over MemoryNetwork, backend {args.federated}",
            "best_epoch": guest.history.best_epoch, "epochs_run": len(guest.history.train_loss)}
    return Scorer(bundle, partials), info


def train_and_rank(ds: Dataset, setup: rt.RetentionSetup, args: argparse.Namespace
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Top-k lists for the evaluated users from every model (via serving bundles) + fit info."""
    train = setup.before.assign(rating=1.0)
    items = item_table(ds, setup.before, setup.cut_ts)
    users = setup.eval_users.tolist()
    lists: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}

    def rank(name: str, scorer: Scorer, t0: float) -> None:
        rec = scorer.recommend(users, args.k)
        lists[name] = rec.item_ids
        info[name] = {"seconds": round(time.perf_counter() - t0, 1), "fallbacks": rec.counts}
        hr = rt.per_user_metrics(rec.item_ids, setup.relevant, args.k)["hr"].mean()
        print(f"  {name:18s} HR@{args.k} {hr:.4f}  ({info[name]['seconds']}s; fallbacks {rec.counts})",
              flush=True)

    for name, kind in (("popularity_all", "count"), ("popularity_recent", "recent")):
        t0 = time.perf_counter()
        pop = Popularity(kind=kind, window_days=30, reference_time=setup.cut_ts - 1).fit(train)
        rank(name, Scorer(bundle_from_model(pop)), t0)
    t0 = time.perf_counter()
    l2, guest, l2_scores = select_l2(train, items, args)
    info["l2_factors"] = {"chosen": l2, "validation_bpr_by_l2": l2_scores}
    rank("fm_guest_only", Scorer(bundle_from_model(guest, at=setup.cut_ts)), t0)
    t0 = time.perf_counter()
    central = FactorizationMachine(**fm_params(args, l2)).fit(train, user_features=ds.user_features,
                                                                item_features=items)
    rank("fm_centralized", Scorer(bundle_from_model(central, at=setup.cut_ts)), t0)
    for name, model in (("fm_guest_only", guest), ("fm_centralized", central)):
        info[name]["best_epoch"] = model.history.best_epoch
        info[name]["epochs_run"] = len(model.history.train_loss)
    t0 = time.perf_counter()
    if args.federated == "reference":
        _, host_view = vertical_split(ds, host_user_fraction=args.host_coverage, seed=args.seed)
        federated = central if args.host_coverage >= 1.0 else FactorizationMachine(**fm_params(args, l2)).fit(
            train, user_features=host_view.user_features, item_features=items)
        partials = HostPartials.from_frame(fm_host_partials(federated, users), args.factors, "host export")
        scorer = Scorer(bundle_from_model(federated, at=setup.cut_ts, vertical=True), partials)
        extra: dict[str, Any] = {"protocol": "plaintext reference FM (no protocol run)"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            scorer, extra = federated_protocol(ds, train, items, users, args, l2, Path(tmp))
    rank("fm_federated", scorer, t0)
    info["fm_federated"].update(extra)
    info["fm_federated"]["host_partials_missing"] = info["fm_federated"]["fallbacks"][NO_HOST_PARTIAL]
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
def evaluate(setup: rt.RetentionSetup, lists: dict[str, np.ndarray], args: argparse.Namespace
             ) -> dict[str, Any]:
    k, nb = args.k, args.n_boot
    per = {m: rt.per_user_metrics(lists[m], setup.relevant, k) for m in MODELS}
    hist = setup.eval_history
    cold_max = args.cold_max if args.cold_max is not None else int(np.median(hist))
    cold = hist <= cold_max
    bins = rt.history_bins(hist)
    out: dict[str, Any] = {"models": {}, "slices": {"cold_max": cold_max, "n_cold": int(cold.sum()),
                                                     "n_warm": int((~cold).sum())}, "by_history": {}}
    for m in MODELS:
        row: dict[str, Any] = {f"{name}@{k}": ci.to_dict() for name, ci in rt.metric_cis(per[m], nb).items()}
        for base in ("popularity_recent", "fm_guest_only"):
            if base != m:
                row[f"lift_vs_{base}"] = {key: ci.to_dict() for key, ci in
                                          rt.lift(per[m]["hr"], per[base]["hr"], nb).items()}
        for sl, mask in (("cold", cold), ("warm", ~cold)):
            if mask.any():
                row[f"hr@{k}_{sl}"] = rt.bootstrap_ci(per[m]["hr"][mask], n_boot=nb).to_dict()
        out["models"][m] = row
        out["by_history"][m] = {b: {"n": int((bins == b).sum()),
                                    "hr": float(per[m]["hr"][bins == b].mean())} for b in pd.unique(bins)}
    return out


def check_bar(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for ds_name, r in results.items():
        ev = r["evaluation"]["models"]
        fed, guest = ev["fm_federated"], ev["fm_guest_only"]
        d = fed["lift_vs_fm_guest_only"]["diff"]
        checks.append({"check": f"{ds_name}: federated HR@10 not below guest-only (paired diff CI high >= 0)",
                       "value": d, "pass": d["high"] >= 0})
        if ds_name == "synthetic":
            checks.append({"check": "synthetic: federated HR@10 above guest-only beyond CI (diff low > 0)",
                           "value": d, "pass": d["low"] > 0})
            dr = fed["lift_vs_popularity_recent"]["diff"]
            checks.append({"check": "synthetic: federated HR@10 above recent popularity (diff low > 0)",
                           "value": dr, "pass": dr["low"] > 0})
        _ = guest
    return checks


# ------------------------------------------------------------------------------------------ outputs
def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for ax, ds_name in zip(axes[1], names, strict=True):
        ev = results[ds_name]["evaluation"]["models"]
        for j, (base, colour) in enumerate((("popularity_recent", "#777"), ("fm_guest_only", "#4c72b0"))):
            ms = [m for m in MODELS if f"lift_vs_{base}" in ev[m]]
            pts = np.array([ev[m][f"lift_vs_{base}"]["ratio"]["point"] for m in ms])
            lo = np.array([ev[m][f"lift_vs_{base}"]["ratio"]["low"] for m in ms])
            hi = np.array([ev[m][f"lift_vs_{base}"]["ratio"]["high"] for m in ms])
            x = np.array([MODELS.index(m) for m in ms]) + (j - 0.5) * 0.35
            ax.bar(x, pts, width=0.35, yerr=[pts - lo, hi - pts], capsize=3, color=colour,
                   label=f"vs {LABELS[base]}")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(MODELS)), [LABELS[m].replace(" (", "\n(") for m in MODELS], fontsize=8)
        ax.set_ylabel("lift (HR@10 ratio, paired 95% CI)")
        ax.set_title(f"{ds_name}: lift over the baselines", fontsize=9)
        ax.legend(fontsize=7)
    for ax, ds_name in zip(axes[0], names, strict=True):
        ev = results[ds_name]["evaluation"]["models"]
        pts = [ev[m]["hr@10"]["point"] for m in MODELS]
        err = [[p - ev[m]["hr@10"]["low"] for m, p in zip(MODELS, pts, strict=True)],
               [ev[m]["hr@10"]["high"] - p for m, p in zip(MODELS, pts, strict=True)]]
        ax.bar(range(len(MODELS)), pts, yerr=err, capsize=4,
               color=["#999", "#777", "#4c72b0", "#dd8452", "#55a868"])
        ax.set_xticks(range(len(MODELS)), [LABELS[m].replace(" (", "\n(") for m in MODELS], fontsize=8)
        n = results[ds_name]["setup"]["n_eval"]
        ax.set_title(f"{ds_name}: HR@10 on {n} dormant users who returned (95% CI)", fontsize=9)
        ax.set_ylabel("HR@10")
    fig.tight_layout()
    fig.savefig(out / "retention_lift.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, ds_name in zip(axes[0], names, strict=True):
        by = results[ds_name]["evaluation"]["by_history"]
        order = sorted(by[MODELS[0]], key=lambda b: (b.startswith(">="), int(b.lstrip("<>=").split("-")[0])))
        for m in MODELS:
            ax.plot(range(len(order)), [by[m][b]["hr"] for b in order], marker="o", label=LABELS[m])
        ax.set_xticks(range(len(order)), [f"{b}\n(n={by[MODELS[0]][b]['n']})" for b in order], fontsize=8)
        ax.set_xlabel("interactions before the cut")
        ax.set_ylabel("HR@10")
        ax.set_title(f"{ds_name}: hit rate by history length", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "retention_history.png", dpi=120)
    plt.close(fig)


def _pct(ci: dict[str, float]) -> str:
    return f"{100 * ci['point']:.1f}% [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"


def _ratio(ci: dict[str, float]) -> str:
    return f"{ci['point']:.2f}x [{ci['low']:.2f}, {ci['high']:.2f}]"


def report(results: dict[str, Any], checks: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["# Reactivating dormant customers: which recommendations bring them back?", "",
             "For each dataset we pick a date T, find customers who had been active before (at least "
             f"{args.min_history} interactions) but silent for the {args.inactive_days:g} days before T, and "
             "ask each model for 10 products the customer has not used yet, using only data from before "
             "T. A **hit** means the customer later came back and used one of those 10 products. "
             "Hit rate (HR@10) is counted over the dormant customers who did come back with something new; "
             "brackets are 95% confidence intervals. Lift = hit rate of a model / hit rate of the "
             "baseline on the same customers.", ""]
    for ds_name, r in results.items():
        s, ev = r["setup"], r["evaluation"]
        cut = pd.Timestamp(s["cut_ts"], unit="s", tz="UTC")
        lines += [f"## {ds_name}", "",
                  f"Cut T = {cut:%Y-%m-%d}; {s['n_dormant']} dormant customers, {s['n_returned']} came back "
                  f"after T, {s['n_eval']} of them with a new product (the hit-rate base). Cold = at most "
                  f"{ev['slices']['cold_max']} interactions before T ({ev['slices']['n_cold']} customers), "
                  f"warm = more ({ev['slices']['n_warm']}).", "",
                  "| model | HR@10 | NDCG@10 | recall@10 | lift vs recent popularity | lift vs guest-only | "
                  "HR@10 cold | HR@10 warm |", "|---|---|---|---|---|---|---|---|"]
        for m in MODELS:
            row = ev["models"][m]
            lr = row.get("lift_vs_popularity_recent", {}).get("ratio")
            lg = row.get("lift_vs_fm_guest_only", {}).get("ratio")
            lines.append(f"| {LABELS[m]} | {_pct(row['hr@10'])} | {row['ndcg@10']['point']:.3f} | "
                         f"{row['recall@10']['point']:.3f} | {_ratio(lr) if lr else '—'} | "
                         f"{_ratio(lg) if lg else '—'} | "
                         f"{_pct(row['hr@10_cold']) if 'hr@10_cold' in row else '—'} | "
                         f"{_pct(row['hr@10_warm']) if 'hr@10_warm' in row else '—'} |")
        t = r["targeting"]
        lines += ["", f"**Whom to target.** Of all {t['n_dormant']} dormant customers, "
                  f"{100 * t['base_rate']:.1f}% came back. Ranking them by a return-propensity model and "
                  f"contacting the top 10% reaches a return rate of "
                  f"{100 * t['without_host']['top_rate']:.1f}% with the bank's own data "
                  f"({t['without_host']['lift']:.2f}x the base rate) and "
                  f"{100 * t['with_host']['top_rate']:.1f}% with the partner's customer features added "
                  f"({t['with_host']['lift']:.2f}x).", ""]
        fb = r["fit"]["fm_federated"]
        if fb.get("host_partials_missing"):
            lines.append(f"{fb['host_partials_missing']} customers had no partner features and got the "
                         "bank-only recommendation (flagged in the campaign file).")
            lines.append("")
    lines += ["## Checks", ""]
    lines += [f"- {'PASS' if c['pass'] else 'FAIL'}: {c['check']} — value {c['value']}" for c in checks]
    lines += ["", "## Reading the numbers", ""]
    for ds_name, r in results.items():
        ev = r["evaluation"]["models"]
        f = ev["fm_federated"]["lift_vs_fm_guest_only"]["diff"]
        c = ev["fm_centralized"]["lift_vs_fm_guest_only"]["diff"]
        lines.append(
            f"- {ds_name} ({r['setup']['n_eval']} customers): hit-rate gain over the bank-only model "
            f"{100 * f['point']:+.1f} points [{100 * f['low']:+.1f}, {100 * f['high']:+.1f}] for the "
            f"federated model and {100 * c['point']:+.1f} [{100 * c['low']:+.1f}, "
            f"{100 * c['high']:+.1f}] for the centralized one. Both compute the same model and differ "
            "only in their random start (each "
            "federated party draws its own initial weights), so the gap between them shows how much of a "
            "gain is training noise.")
    lines += ["- Dormant customers have at least the minimum history by definition; partner features help "
              "most where the bank knows least about a customer, so look at the cold column first.",
              "- Targeting with the partner's features is fitted on the dormant customers only; with few "
              "returners (MovieLens) many one-hot features can overfit and do worse than the bank's own "
              "three activity features."]
    lines += ["", "## How this was computed", "",
              "`python benchmarks/retention.py` (see its docstring). Models: popularity over all data "
              "before T and over its last 30 days; factorization machines trained for ranking on "
              "interactions as implicit feedback with item age, history length and item popularity "
              "features; the federated model adds the partner's (host's) customer features through the "
              "vertical FM and is served by joining the host's per-customer partials with the bank's "
              "half. " + (f"The federated model was trained with the vertical FM protocol (crypto backend "
                          f"'{args.federated}'), which computes the same model as pooling the data: with "
                          "full host coverage it matches the centralized model."
                          if args.federated != "reference" else
                          "Federated here is the plaintext reference of the protocol (identical math).")
              + f" The host has features for {100 * args.host_coverage:.0f}% of customers.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic", "ml-100k"],
                   help="datasets to run: synthetic and/or ml-100k (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="folder with ml-100k/ (default: $FEDREC_DATA_DIR or ../shared/data)")
    p.add_argument("--cut", type=int, default=None, help="time cut T (Unix seconds); default per dataset")
    p.add_argument("--inactive-days", type=float, default=30.0,
                   help="dormant = no interaction in this many days before T (default: %(default)s)")
    p.add_argument("--min-history", type=int, default=5,
                   help="dormant users need at least this many interactions before T "
                        "(default: %(default)s)")
    p.add_argument("--cold-max", type=int, default=None,
                   help="cold = at most this many interactions before T (default: the median)")
    p.add_argument("--k", type=int, default=10,
                   help="length of each recommendation list, K of HR/NDCG/recall@K (default: %(default)s)")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for the confidence intervals (default: %(default)s)")
    p.add_argument("--factors", type=int, default=32, help="FM latent factors (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=12,
                   help="FM epoch limit; early stopping may stop sooner; --quick uses 2 "
                        "(default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-3, help="FM Adam learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2048, help="FM rows per batch (default: %(default)s)")
    p.add_argument("--host-coverage", type=float, default=1.0,
                   help="share of users the host has features for (1.0)")
    p.add_argument("--federated", choices=["plain", "ckks", "reference"], default="plain",
                   help="run the vertical FM protocol with this crypto backend, or use its plaintext "
                        "reference (plain = the protocol with no encryption: exact, fast)")
    p.add_argument("--l2-grid", nargs="+", default=["0.01", "0.05", "0.2"],
                   help="factor L2 values; the guest-only FM's validation loss picks one for every FM")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the FMs, the host's vertical split and the targeting folds "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--quick", action="store_true", help="small synthetic population, 2 epochs (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="results folder; --quick writes to its retention_quick/ "
                        "(default: benchmarks/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.datasets:
        t0 = time.perf_counter()
        ds, cut = load(name, args)
        setup = rt.retention_setup(ds.interactions, cut, args.inactive_days, args.min_history)
        print(f"== {name}: {setup.summary()}", flush=True)
        lists, fit_info = train_and_rank(ds, setup, args)
        results[name] = {"setup": setup.summary(), "fit": fit_info,
                         "evaluation": evaluate(setup, lists, args),
                         "targeting": targeting(ds, setup, args.seed),
                         "seconds": round(time.perf_counter() - t0, 1)}
        t = results[name]["targeting"]
        print(f"  targeting: base {t['base_rate']:.3f}; top decile without host "
              f"{t['without_host']['top_rate']:.3f}, with host {t['with_host']['top_rate']:.3f}", flush=True)
    checks = check_bar(results)
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}: {c['check']}: {c['value']}")
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
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
