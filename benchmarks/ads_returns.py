#!/usr/bin/env python3
"""What each ε costs the ad platform: its conversion model trained on DP-returned conversions, per mechanism.

The advertiser returns the conversions of the training clicks to the platform in one of these forms
(``fedrec.ads.returns``); the platform fits its model on its own click features (``fedrec.ads.
platform_model``: one-hot logistic regression, ``--l2``) and is scored on the held-out clicks against their
true conversions (AUC):

* ``rr``: every click with its bit under randomized response at ε; the model is fitted on the bits as they
  are (a monotone transform of the conversion probability, so rankings are learnable).
* ``rr_prior``: RRWithPrior (Ghazi et al. 2021) in two stages (LP-MST): half the clicks get plain RR, the
  advertiser's model fitted on those randomized bits gives the prior for the other half (campaign +
  platform features without the per-user id - the view of the federated conversion model; a centralized
  logistic regression stands in for it here). The platform's model is fitted on the prior stage's bits.
  ε-DP per click label for the whole return.
* ``rr_prior_adv``: the same with a prior from the advertiser's own columns only (campaign).
* ``agg_laplace``, ``agg_gaussian``: DP conversion counts by the platform's dimensions (``--report-dims``;
  one report per dimension, budget split: Laplace ε/m each, Gaussian one RDP-calibrated noise for all m,
  δ = ``--delta``), each user's contribution capped at ``--cap`` conversions; the model is the logistic
  regression on those dimensions fitted to the noisy counts (its sufficient statistics).

ε ∈ ``--epsilons`` (per click label for event-level, per user for reports) and ∞ (no noise: the true labels
for the event-level forms, exact counts for the reports). Every release is charged to a fresh
``PrivacyBudget`` of exactly that ε: the ε charged per report and in total is recorded.

Datasets: ``talkingdata`` (``DATA/ads/talkingdata/train_sample.csv``, skipped when absent; user = ip;
platform features ip, device, os, channel, hour) and ``synthetic`` (the synthetic funnel: conversions as
separate events attributed to the last click within 7 days, clicks of the last 7 days before the cut-off
left out; platform: placement, hour, platform user, user features). ``DATA`` = ``$FEDREC_DATA_DIR`` or
``../shared/data``.

Runs: ``--folds`` stratified folds x ``--seeds`` noise seeds per fold (a TalkingData fold holds ~45
conversions, so single runs are noisy). CIs (95%): a hierarchical bootstrap - resample folds, the held-out
rows of each drawn fold (the same rows for every mechanism: paired) and its seeds; the statistic is the
mean AUC over the drawn runs. ``cost`` = AUC at ε=∞ of the same form minus AUC at ε (paired);
``vs_labels`` = the event-level true-label model's AUC minus it. Noise is drawn from seeded generators
(reproducible); production draws from the OS's secure source.

Bars (issue 15): at ε = 1, aggregate reports cost ≤ 0.015 AUC, and RR with a prior costs less than plain RR
(paired CI of the difference above 0).

Examples::

    .venv/bin/python benchmarks/ads_returns.py --quick                 # smoke run, synthetic, < 1 min
    .venv/bin/python benchmarks/ads_returns.py                         # both datasets, 5 folds x 4 seeds
    .venv/bin/python benchmarks/ads_returns.py --datasets talkingdata --folds 5 --seeds 8
    .venv/bin/python benchmarks/ads_returns.py --datasets synthetic --report-dims placement,hour,region
    .venv/bin/python benchmarks/ads_returns.py --from-json benchmarks/results/ads_returns.json  # redraw

Writes benchmarks/results/ads_returns.json, ads_returns.png (AUC vs ε per mechanism with CI bands, and the
cost) and ads_returns.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.ads import (  # noqa: E402
    ClickLog,
    PlatformLogit,
    PrivacyBudget,
    aggregate_reports,
    attribute,
    fit_on_event_return,
    fit_on_reports,
    observable_labels,
    read_talkingdata,
    return_randomized,
    return_staged_with_prior,
    rr_prior_model,
    synthetic_funnel,
)
from fedrec.ads.returns import EventReturn  # noqa: E402
from fedrec.eval.metrics import auc, weighted_auc  # noqa: E402

OUT = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("FEDREC_DATA_DIR", REPO.parent / "shared" / "data"))
TALKINGDATA = Path("ads") / "talkingdata" / "train_sample.csv"
DATASETS = ("talkingdata", "synthetic")
MECHANISMS = ("rr", "rr_prior", "rr_prior_adv", "agg_laplace", "agg_gaussian")
EVENT = ("rr", "rr_prior", "rr_prior_adv")
AGG_BAR, BAR_EPSILON = 0.015, 1.0
log = logging.getLogger("ads_returns")


@dataclass
class Task:
    """One dataset: the labelled clicks and which columns each model uses."""

    name: str
    log: ClickLog
    groups: list[str]            # the platform's event-level model (categorical)
    numeric: list[str]           # ... and its numeric columns
    prior_groups: list[str]      # the advertiser's prior model (rr_prior)
    prior_numeric: list[str]
    adv_groups: list[str]        # the advertiser-only prior (rr_prior_adv)
    report_dims: list[str]       # one aggregate report per dimension
    meta: dict[str, Any] = field(default_factory=dict)


def load_task(name: str, args: argparse.Namespace) -> Task | None:
    if name == "talkingdata":
        path = DATA / TALKINGDATA
        if not path.is_file():
            return None
        lg = read_talkingdata(path)
        plat = list(lg.platform_columns)  # ip, device, os, channel, hour
        return Task(name, lg, plat, [], ["campaign", *[c for c in plat if c != "ip"]], [], ["campaign"],
                    args.report_dims or ["channel"], {"source": str(path)})
    if name == "synthetic":
        from fedrec.data import SyntheticConfig, generate

        users, per_user = (2000, 20.0) if args.quick else (5000, 40.0)
        data = generate(SyntheticConfig(seed=args.data_seed, n_users=users, impressions_per_user=per_user))
        clicks, events = synthetic_funnel(data)
        labelled, att = attribute(clicks, events, window="7D")
        lg, delay = observable_labels(labelled, labelled.frame["time"].max())
        f = lg.frame
        cats = [c for c in lg.platform_columns if f[c].dtype != np.float64]
        nums = [c for c in lg.platform_columns if f[c].dtype == np.float64]
        # the audience dimensions: in the generator placement and hour move clicks, not conversions
        dims = args.report_dims or [c for c in cats if c not in ("platform_user", "placement", "hour")]
        return Task(name, lg, cats, nums, ["campaign", *lg.advertiser_columns,
                                           *[c for c in cats if c != "platform_user"]], nums, ["campaign"],
                    dims, {"n_users": users, "impressions_per_user": per_user, "attribution": att.to_dict(),
                           "delay": delay.to_dict()})
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per row; positives and negatives dealt round-robin after a shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold[idx] = np.arange(len(idx)) % k
    return fold


# ---------------------------------------------------------------------------------------------- one run
def _budget(tmp: Path, name: str, epsilon: float, unit: str, delta: float) -> PrivacyBudget:
    return PrivacyBudget.create(tmp / f"{name}-{epsilon:g}.json", epsilon=epsilon, delta=delta, unit=unit)


def one_run(task: Task, train: ClickLog, test: ClickLog, seed: int, args: argparse.Namespace,
            tmp: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Scores of the held-out clicks per point (``"<mechanism>@<ε>"``; ``"labels"`` and ``"exact_reports"``
    are the ε = ∞ forms) and the ε charged per release."""
    rng = np.random.default_rng(seed)
    feats, te = task.log.frame, test.frame
    scores: dict[str, np.ndarray] = {}
    charged: dict[str, Any] = {}
    model = PlatformLogit(task.groups, task.numeric, l2=args.l2).fit(train.frame,
                                                                     train.frame["converted"].to_numpy())
    scores["labels"] = model.predict_proba(te)
    exact = aggregate_reports(train, [[d] for d in task.report_dims], mechanism="laplace", epsilon=math.inf)
    scores["exact_reports"] = fit_on_reports(feats, exact, l2=args.l2).predict_proba(te)
    for eps in args.epsilons:
        for mech in MECHANISMS:
            unit = "click" if mech in EVENT else "user"
            budget = _budget(tmp, f"{mech}-{seed}", eps, unit, args.delta)
            if mech in EVENT:
                ret: EventReturn
                if mech == "rr":
                    ret = return_randomized(train, eps, budget=budget, rng=rng)
                else:
                    groups, nums = (task.prior_groups, task.prior_numeric) if mech == "rr_prior" else \
                        (task.adv_groups, [])
                    prior = rr_prior_model(groups, nums, epsilon=eps, l2=args.l2)
                    ret = return_staged_with_prior(train, eps, prior, budget=budget, rng=rng)
                fitted = fit_on_event_return(feats, ret, task.groups, task.numeric, l2=args.l2)
                extra = {"epsilon_user": ret.epsilon_user, "returned_positive": int(ret.returned.sum())}
                if ret.k is not None and ret.stage is not None:
                    extra["deterministic_share"] = float(np.mean(ret.k[ret.stage > 0] == 1))
            else:
                reports = aggregate_reports(train, [[d] for d in task.report_dims], mechanism=mech[4:],
                                            epsilon=eps, delta=args.delta, cap=args.cap, budget=budget,
                                            rng=rng)
                fitted = fit_on_reports(feats, reports, l2=args.l2)
                extra = {"per_report": [r.epsilon for r in reports], "scale": reports[0].scale,
                         "users_clipped": reports[0].details["users_clipped"]}
            scores[f"{mech}@{eps:g}"] = fitted.predict_proba(te)
            charged[f"{mech}@{eps:g}"] = {"total": budget.spent()["total"], **extra}
    return scores, charged


# ---------------------------------------------------------------------------------------------- statistics
def _auc_fn(labels: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """``w -> AUC`` with row multiplicities ``w`` (:func:`fedrec.eval.metrics.weighted_auc`)."""
    return weighted_auc(labels, scores)


def summarise(runs: list[dict[str, Any]], points: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    """Per point: mean AUC over runs with the hierarchical bootstrap CI, and the paired costs."""
    folds = sorted({r["fold"] for r in runs})
    by_fold = {f: [r for r in runs if r["fold"] == f] for f in folds}
    stats = {id(r): {p: _auc_fn(r["y"], r["scores"][p]) for p in points} for r in runs}
    full = {p: np.array([auc(r["y"], r["scores"][p]) for r in runs]) for p in points}
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, len(points)))
    for b in range(n_boot):
        acc = np.zeros(len(points))
        count = 0
        for f in rng.choice(folds, len(folds)):
            fr = by_fold[f]
            n = len(fr[0]["y"])
            w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            for j in rng.integers(0, len(fr), len(fr)):
                st = stats[id(fr[j])]
                acc += [st[p](w) for p in points]
                count += 1
        boots[b] = acc / count

    def ci(values: np.ndarray, point: float) -> dict[str, float]:
        lo, hi = np.quantile(values, [0.025, 0.975])
        return {"point": point, "low": float(lo), "high": float(hi)}

    out: dict[str, Any] = {}
    ref = points.index("labels")
    for j, p in enumerate(points):
        own = points.index("exact_reports" if p.startswith("agg_") or p == "exact_reports" else "labels")
        out[p] = {"auc": ci(boots[:, j], float(full[p].mean())), "median_auc": float(np.median(full[p])),
                  "cost": ci(boots[:, own] - boots[:, j], float((full[points[own]] - full[p]).mean())),
                  "vs_labels": ci(boots[:, ref] - boots[:, j], float((full["labels"] - full[p]).mean()))}
    for eps in sorted({p.split("@")[1] for p in points if "@" in p}):
        for mech in ("rr_prior", "rr_prior_adv"):
            a, b = points.index(f"{mech}@{eps}"), points.index(f"rr@{eps}")
            out[f"{mech}@{eps}"]["gain_over_rr"] = ci(boots[:, a] - boots[:, b],
                                                      float((full[points[a]] - full[points[b]]).mean()))
    return out


def epsilon_needed(summary: dict[str, Any], epsilons: Sequence[float], bound: float = AGG_BAR
                   ) -> dict[str, float | None]:
    """Per mechanism the smallest ε of the grid from which on its cost stays ≤ ``bound`` (None: never)."""
    out: dict[str, float | None] = {}
    for m in MECHANISMS:
        ok = [summary[f"{m}@{e:g}"]["cost"]["point"] <= bound for e in epsilons]
        out[m] = next((e for i, e in enumerate(epsilons) if all(ok[i:])), None)
    return out


def bars(summary: dict[str, Any]) -> dict[str, Any]:
    e = f"{BAR_EPSILON:g}"
    agg = {m: summary[f"{m}@{e}"]["cost"] for m in ("agg_laplace", "agg_gaussian") if f"{m}@{e}" in summary}
    gain = summary.get(f"rr_prior@{e}", {}).get("gain_over_rr")
    return {"epsilon": BAR_EPSILON, "aggregate_cost": agg,
            "aggregate_within_bar": {m: c["point"] <= AGG_BAR for m, c in agg.items()},
            "rr_prior_gain_over_rr": gain,
            "rr_prior_beats_rr": bool(gain is not None and gain["low"] > 0)}


# ---------------------------------------------------------------------------------------------- driver
def bench_task(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    y = task.log.frame["converted"].to_numpy()
    fold = stratified_folds(y, args.folds, args.data_seed)
    runs: list[dict[str, Any]] = []
    charged: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in range(args.folds):
            train, test = task.log.take(fold != f), task.log.take(fold == f)
            for s in range(args.seeds):
                seed = 1000 * args.data_seed + 100 * f + s
                t0 = time.perf_counter()
                scores, ch = one_run(task, train, test, seed, args, Path(tmp))
                y_test = test.frame["converted"].to_numpy()
                runs.append({"fold": f, "seed": seed, "y": y_test, "scores": scores})
                charged.append(ch)
                line = ", ".join(f"{p} {auc(y_test, scores[p]):.3f}" for p in
                                 ("labels", "exact_reports", *[f"{m}@1" for m in MECHANISMS]) if p in scores)
                print(f"  {task.name} fold {f} seed {s}: {line} ({time.perf_counter() - t0:.1f}s)",
                      flush=True)
    points = ["labels", "exact_reports", *[f"{m}@{e:g}" for e in args.epsilons for m in MECHANISMS]]
    summary = summarise(runs, points, args.n_boot, args.data_seed)
    eps_charged = {p: {"total_mean": float(np.mean([c[p]["total"] for c in charged])),
                       **{k: v for k, v in charged[0][p].items() if k != "total"}}
                   for p in points if "@" in p}
    lg = task.log
    return {"name": task.name, "clicks": lg.n_clicks, "conversions": lg.n_conversions,
            "users": int(lg.frame["user_id"].nunique()),
            "max_clicks_per_user": int(lg.frame["user_id"].value_counts().max()),
            "platform_model": {"groups": task.groups, "numeric": task.numeric},
            "prior_model": {"groups": task.prior_groups, "numeric": task.prior_numeric},
            "report_dims": task.report_dims, "runs": len(runs), "folds": args.folds, "seeds": args.seeds,
            "positives_per_fold": float(np.mean([r["y"].sum() for r in runs])), "meta": task.meta,
            "summary": summary, "epsilon_charged": eps_charged, "bars": bars(summary),
            "epsilon_for_cost_015": epsilon_needed(summary, args.epsilons),
            "per_run_auc": {p: [float(auc(r["y"], r["scores"][p])) for r in runs] for p in points}}


# ---------------------------------------------------------------------------------------------- report
def _ci(c: dict[str, float] | None, digits: int = 3) -> str:
    if c is None:
        return "n/a"
    return f"{c['point']:.{digits}f} [{c['low']:.{digits}f}, {c['high']:.{digits}f}]"


def print_tables(res: dict[str, Any]) -> None:
    for d in res["datasets"]:
        s = d["summary"]
        print(f"\n{d['name']}: {d['clicks']} clicks, {d['conversions']} conversions, {d['runs']} runs "
              f"({d['folds']} folds x {d['seeds']} seeds, ~{d['positives_per_fold']:.0f} conversions per "
              "held-out fold); platform AUC on true conversions, mean [95% CI]")
        print(f"  true labels (ε=∞): {_ci(s['labels']['auc'])}   exact reports (ε=∞): "
              f"{_ci(s['exact_reports']['auc'])}")
        eps = [e for e in res["args"]["epsilons"]]
        print(f"  {'mechanism':<14}" + "".join(f"{'ε=' + format(e, 'g'):<24}" for e in eps))
        for m in MECHANISMS:
            print(f"  {m:<14}" + "".join(f"{_ci(s[f'{m}@{e:g}']['auc']):<24}" for e in eps))
        print("  cost (AUC at ε=∞ of the same form minus AUC at ε, paired):")
        for m in MECHANISMS:
            print(f"  {m:<14}" + "".join(f"{_ci(s[f'{m}@{e:g}']['cost']):<24}" for e in eps))
        b = d["bars"]
        costs = ", ".join(f"{m} {_ci(c)}" for m, c in b["aggregate_cost"].items())
        print(f"  bars at ε=1: aggregate cost {costs} (bar ≤ {AGG_BAR}); RR with prior minus plain RR "
              f"{_ci(b['rr_prior_gain_over_rr'])} ({'met' if b['rr_prior_beats_rr'] else 'not met'})")


def _x(eps: Sequence[float]) -> tuple[np.ndarray, float]:
    inf_x = 10 * max(eps)
    return np.asarray(eps, dtype=np.float64), inf_x


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = res["datasets"]
    if not sets:
        return
    eps = res["args"]["epsilons"]
    x, inf_x = _x(eps)
    fig, axes = plt.subplots(2, len(sets), figsize=(6.5 * len(sets), 8.5), squeeze=False)
    colors = dict(zip(MECHANISMS, ("tab:red", "tab:blue", "tab:cyan", "tab:green", "tab:olive"), strict=True))
    for col, d in enumerate(sets):
        s = d["summary"]
        for row, key in enumerate(("auc", "cost")):
            ax = axes[row][col]
            for m in MECHANISMS:
                ci = [s[f"{m}@{e:g}"][key] for e in eps]
                end = s["exact_reports" if m.startswith("agg") else "labels"][key]
                xs = np.append(x, inf_x)
                pts = np.array([c["point"] for c in ci] + [end["point"]])
                lo = np.array([c["low"] for c in ci] + [end["low"]])
                hi = np.array([c["high"] for c in ci] + [end["high"]])
                ax.plot(xs, pts, marker="o", ms=3, color=colors[m], label=m)
                ax.fill_between(xs, lo, hi, color=colors[m], alpha=0.15)
            if key == "auc":
                ax.axhline(s["labels"]["auc"]["point"], color="gray", lw=0.8, ls="--", label="true labels")
                ax.set_ylabel("platform model AUC on true conversions (95% CI)")
                ax.set_title(f"{d['name']}: {d['runs']} runs ({d['folds']} folds x {d['seeds']} seeds)",
                             fontsize=9)
            else:
                ax.axhline(AGG_BAR, color="red", lw=0.8, ls="--", label=f"aggregate bar {AGG_BAR}")
                ax.axhline(0.0, color="gray", lw=0.8)
                ax.set_ylabel("AUC cost vs ε = ∞ of the same form (paired, 95% CI)")
            ax.set_xscale("log")
            ticks = np.append(x, inf_x)
            ax.set_xticks(ticks, [f"{e:g}" for e in eps] + ["∞"], fontsize=7)
            ax.minorticks_off()
            ax.set_xlabel("ε (event-level: per click label; reports: per user, all reports)")
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(res: dict[str, Any], path: Path) -> None:
    eps = res["args"]["epsilons"]
    lines = ["# Conversions returned to the platform under DP: what each ε costs (benchmarks/ads_returns.py)",
             "", f"Command: `{res['command']}` ({res['seconds']:.0f} s; load average "
             f"{res['load_average_start']} at the start, {res['load_average_end']} at the end, "
             f"{res['cpu_count']} CPUs).", "",
             "The platform fits its conversion model (one-hot logistic regression on its own click "
             "features) on what the advertiser returns and is scored on held-out clicks against their true "
             "conversions. AUC mean over runs [95% CI, hierarchical bootstrap over folds, held-out rows and "
             "seeds]; *cost* = AUC of the same form without noise (ε = ∞) minus AUC at ε, paired on the same "
             "rows.", "",
             "Forms: **rr** - every click with its conversion bit flipped w.p. 1/(1+e^ε); **rr_prior** - "
             "randomized response with a prior (Ghazi et al. 2021), two stages: the advertiser's model, "
             "fitted on the first half's randomized bits, picks per click between its own best guess and "
             "plain RR; **rr_prior_adv** - the same with a prior on the campaign only; **agg_laplace / "
             "agg_gaussian** - conversion counts per platform dimension with noise, each user counted at "
             f"most {res['args']['cap']:g} time(s) per report (Gaussian δ = {res['args']['delta']:g}). "
             "Event-level ε protects one click's label (a user with m returned clicks has m·ε); report ε "
             "protects all of one user's conversions.", ""]
    for d in res["datasets"]:
        s, b = d["summary"], d["bars"]
        model_cols = d["platform_model"]["groups"] + d["platform_model"]["numeric"]
        lines += [f"## {d['name']}", "",
                  f"{d['clicks']} clicks, {d['conversions']} conversions, {d['users']} users (at most "
                  f"{d['max_clicks_per_user']} clicks per user); {d['runs']} runs ({d['folds']} folds x "
                  f"{d['seeds']} seeds), ~{d['positives_per_fold']:.0f} conversions per held-out fold. "
                  f"Platform model: {', '.join(model_cols)}; reports by {', '.join(d['report_dims'])} "
                  f"({len(d['report_dims'])} report(s) sharing ε).", "",
                  f"True labels (ε = ∞): AUC {_ci(s['labels']['auc'])}; exact reports: "
                  f"{_ci(s['exact_reports']['auc'])}.", "",
                  "| form | " + " | ".join(f"ε = {e:g}" for e in eps) + " |",
                  "|---|" + "---|" * len(eps)]
        for m in MECHANISMS:
            lines.append(f"| {m} AUC | " + " | ".join(_ci(s[f"{m}@{e:g}"]["auc"]) for e in eps) + " |")
        for m in MECHANISMS:
            lines.append(f"| {m} cost | " + " | ".join(_ci(s[f"{m}@{e:g}"]["cost"]) for e in eps) + " |")
        rr_user = d["epsilon_charged"].get(f"rr@{BAR_EPSILON:g}", {}).get("epsilon_user")
        ok = [m for m, v in b["aggregate_within_bar"].items() if v]
        costs = ", ".join(f"{m} {_ci(c)}" for m, c in b["aggregate_cost"].items())
        met = "met" if b["rr_prior_beats_rr"] else "not met"
        lines += ["", f"At ε = 1: aggregate reports cost {costs} (bar ≤ {AGG_BAR}: "
                  f"{'met by ' + ', '.join(ok) if ok else 'not met'}); RR with a prior minus plain RR: "
                  f"{_ci(b['rr_prior_gain_over_rr'])} AUC ({met}). ε charged per release equals the target "
                  "(Gaussian: the RDP accountant's ε at δ, ≤ target); event-level ε per user at ε = 1: "
                  f"{rr_user:g} (the most clicks of one user).", "",
                  "Smallest ε (of those measured) from which the cost stays ≤ 0.015 AUC: " + ", ".join(
                      f"{m} {'>' + format(eps[-1], 'g') if e is None else format(e, 'g')}"
                      for m, e in d["epsilon_for_cost_015"].items()) + ".", ""]
    lines += ["## Reading the numbers", "",
              "* Aggregate reports are the cheap form: the noise per cell does not grow with the number of "
              "clicks, while randomized response flips every click's bit, so at a low conversion rate its "
              "false positives swamp the true ones. Laplace beats Gaussian for one or a few reports with "
              "each user counted once (same L1 and L2 sensitivity; the Gaussian needs δ and a larger σ).",
              "* RR with a prior gains where the prior separates converters from the rest: most clicks get "
              "the prior's label without noise, so the returned 1s concentrate where conversions are likely "
              "(TalkingData: rare conversions concentrated in a few apps and channels). Where the prior is "
              "weak (the synthetic funnel: 15% conversions spread over all users) its deterministic 0s hide "
              "converters as much as plain RR's flips do, and the gain vanishes. Its model is trained on the "
              "prior stage only (half the clicks), so at large ε it trails plain RR.",
              "* At very small ε the first stage's bits are nearly pure noise and so is the prior; where the "
              "prior's guesses fall is then driven by campaign size (small campaigns have noisy estimates), "
              "which can still rank clicks if small campaigns convert more often - a fact about the "
              "features, not about any click's label.",
              "* Event-level ε is per click label: a user with m returned clicks is covered at m·ε (the most "
              "clicks of one user is given above). Reports cover all of a user's conversions at ε.",
              "* Every release was charged to a persisted budget of exactly its ε before its noise was drawn "
              "(`epsilon_charged` in the JSON)."]
    path.write_text("\n".join(lines) + "\n")


def _floats(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise argparse.ArgumentTypeError(f"expected finite numbers > 0, got {text!r}")
    return vals


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small synthetic funnel only, 3 folds x 1 seed, ε 1 and 4, 100 resamples")
    ap.add_argument("--datasets", type=_names, default=None,
                    help="comma-separated, from talkingdata, synthetic (default: both; talkingdata only "
                         "when its file is present)")
    ap.add_argument("--epsilons", type=_floats, default=[0.1, 0.5, 1.0, 2.0, 4.0, 8.0],
                    help="finite ε values (0.1,0.5,1,2,4,8); ∞ is always included")
    ap.add_argument("--folds", type=int, default=5, help="stratified folds (5)")
    ap.add_argument("--seeds", type=int, default=4, help="noise seeds per fold (4: 20 runs with 5 folds)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the folds and the synthetic funnel (0)")
    ap.add_argument("--report-dims", type=_names, default=None,
                    help="aggregate report dimensions, one report each (TalkingData: channel; synthetic: "
                         "region,segment,device,channel)")
    ap.add_argument("--cap", type=float, default=1.0, help="conversions per user per report (1)")
    ap.add_argument("--delta", type=float, default=1e-5, help="δ of the Gaussian reports (1e-5)")
    ap.add_argument("--l2", type=float, default=1.0, help="L2 penalty of every logistic model (1.0)")
    ap.add_argument("--n-boot", type=int, default=400, help="bootstrap resamples (400)")
    ap.add_argument("--out", type=Path, default=OUT, help="results folder (benchmarks/results)")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="only redraw the PNG and markdown from a saved ads_returns.json")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        plot(saved, args.out / "ads_returns.png")
        write_markdown(saved, args.out / "ads_returns.md")
        print(f"redrew {args.out / 'ads_returns.png'} and ads_returns.md from {args.from_json}")
        return
    if args.quick:
        args.folds, args.seeds, args.epsilons, args.n_boot = 3, 1, [1.0, 4.0], 100
        args.datasets = args.datasets or ["synthetic"]
    if args.datasets is None:
        args.datasets = (["talkingdata"] if (DATA / TALKINGDATA).is_file() else []) + ["synthetic"]
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown or args.folds < 2 or args.seeds < 1 or BAR_EPSILON not in args.epsilons and not args.quick:
        build_parser().error(f"need datasets among {DATASETS} (unknown: {unknown}), >= 2 folds, >= 1 seed "
                             f"and ε = {BAR_EPSILON:g} among the epsilons")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fedrec.ads.returns").setLevel(logging.ERROR)  # ε = ∞ warnings are intended here
    t0 = time.perf_counter()
    res: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "command": " ".join(["python", "benchmarks/ads_returns.py", *sys.argv[1:]]),
                           "load_average_start": [round(x, 2) for x in os.getloadavg()], "datasets": [],
                           "skipped": []}
    for name in args.datasets:
        task = load_task(name, args)
        if task is None:
            print(f"{name}: {DATA / TALKINGDATA} not found; skipped", flush=True)
            res["skipped"].append(name)
            continue
        print(f"{name}: {task.log.n_clicks} clicks, {task.log.n_conversions} conversions; reports by "
              f"{task.report_dims}", flush=True)
        res["datasets"].append(bench_task(task, args))
    res.update(seconds=round(time.perf_counter() - t0, 1), machine=platform.platform(),
               python=platform.python_version(), cpu_count=os.cpu_count(),
               load_average_end=[round(x, 2) for x in os.getloadavg()])
    print_tables(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ads_returns.json").write_text(json.dumps(res, indent=1, allow_nan=False, default=_json))
    plot(res, args.out / "ads_returns.png")
    write_markdown(res, args.out / "ads_returns.md")
    print(f"\nwrote {args.out / 'ads_returns.json'}, ads_returns.png and ads_returns.md in {res['seconds']}s")


def _json(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, pd.Timestamp):
        return str(obj)
    raise TypeError(f"not JSON: {type(obj).__name__}")


if __name__ == "__main__":
    main()
