"""``fedrec demo --protocol ads``: federated advertising end to end, the two parties as separate processes.

Steps: (1) data - the synthetic ad funnel (its conversions attributed to the last click of the user and
campaign within ``--window``), or TalkingData from ``--data-dir`` (its own labels); the clicks up to the
``--cutoff-quantile`` of click times are the training period, with the clicks of the last window before
the cut-off held out as *recent* (not negatives: ``fedrec.ads.conversion.split_for_training``,
``recent="holdout"``); the clicks after the cut-off are the test period. (2) The advertiser (guest:
labels + campaign) and the platform (host: its click features, for every click it logged) start as two
OS processes (``fedrec train``) over CURVE-encrypted ZeroMQ on 127.0.0.1: PSI aligns click ids, the
vertical logistic FM trains with label DP on (the default ε = 2), both export their halves; the
advertiser refits its campaign logit beside the platform's terms on its training clicks (``[ads] refit``,
the default of ``fedrec ads prepare``) and scores the recent clicks it held out (``[data] predict``).
(3) The platform computes its
partials of the test clicks from its saved half (``fedrec ads partials``), the advertiser joins them
(``fedrec ads predict``); this process fits the references (advertiser alone; the platform's one-hot
model on the true labels; the pooled one-hot model) on the same clicks and compares AUC and log-loss with
paired bootstrap CIs. (4) Conversions returned to the platform under DP, charged to a budget ledger
(randomized response with a prior at ε = 1 per click; a Laplace report by a platform dimension at ε = 1),
and (5) acquisition: the advertiser's campaign card, and the platform's ranking of users who are not
customers, computed at the platform.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _load(args: argparse.Namespace) -> Any:
    from fedrec.ads import attribute, read_talkingdata, synthetic_funnel

    if args.data_dir is not None:
        path = Path(args.data_dir)
        for cand in (path, path / "train_sample.csv", path / "ads" / "talkingdata" / "train_sample.csv",
                     path / "talkingdata" / "train_sample.csv"):
            if cand.is_file():
                return read_talkingdata(cand), "24h"
        raise FileNotFoundError(f"{path}: no TalkingData train_sample.csv there (pass the file or its "
                                "folder)")
    from fedrec.data import SyntheticConfig, generate

    data = generate(SyntheticConfig(seed=args.seed, n_users=args.users or 3000,
                                    impressions_per_user=30.0))
    clicks, events = synthetic_funnel(data, seed=args.seed)
    return attribute(clicks, events, window="7D")[0], "7D"


def _periods(log_: Any, quantile: float, window: str) -> tuple[Any, Any, pd.Timestamp]:
    from fedrec.ads.conversion import split_for_training

    cut = log_.frame["time"].quantile(quantile)
    split = split_for_training(log_, cutoff=cut, window=window, recent="holdout")
    test_log = log_.take((log_.frame["time"] > cut).to_numpy())
    return split, test_log, cut


def _references(split: Any, test_guest: pd.DataFrame, model: dict[str, Any]) -> dict[str, np.ndarray]:
    from fedrec.ads import PlatformLogit
    from fedrec.models import FactorizationMachine
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    train = split.advertiser.interactions
    fm = FactorizationMachine(**{**HeteroFMConfig(**{**model, "backend": "plain"}).fm_params(),
                                 "use_user_features": False})
    fm.fit(train, item_features=split.advertiser.item_features, validation="none")
    out = {"advertiser alone": np.asarray(fm.predict(test_guest), np.float64)}
    from fedrec.ads.refit import fit_campaign_logit

    alone = fit_campaign_logit(train["item_id"].to_numpy(), train["rating"].to_numpy(np.float64), None)
    out["advertiser alone (logistic)"] = alone.predict_proba(test_guest["item_id"].to_numpy(), None)
    f = split.platform.user_features
    numeric = [c for c in f.columns if pd.api.types.is_numeric_dtype(f[c].dtype)]
    groups = [c for c in f.columns if c not in numeric]
    for name, camp in (("platform alone (true labels)", False), ("pooled (one-hot, no privacy)", True)):
        def frame(rows: pd.DataFrame, camp: bool = camp) -> pd.DataFrame:
            x = f.loc[rows["user_id"].to_numpy()].reset_index(drop=True)
            if camp:
                x["campaign"] = rows["item_id"].astype("str").to_numpy()
            return x
        m = PlatformLogit([*groups, *(["campaign"] if camp else [])], numeric)
        m.fit(frame(train), train["rating"].to_numpy(np.float64))
        out[name] = np.asarray(m.predict_proba(frame(test_guest)), np.float64)
    return out


def _table(y: np.ndarray, preds: dict[str, np.ndarray], n_boot: int) -> list[str]:
    from fedrec.eval.metrics import auc, bootstrap_ci, log_loss, weighted_auc

    ref = preds["advertiser alone"]
    idx = np.arange(len(y))
    lines = [f"{'model':<32} {'AUC [95% CI]':<26} {'log-loss':<9} {'AUC vs advertiser alone (paired)':<30}"]
    for name, p in preds.items():
        def stat(i: np.ndarray, p: np.ndarray = p) -> float:
            return weighted_auc(y, p)(np.bincount(i.astype(np.int64), minlength=len(y)).astype(np.float64))
        ci = bootstrap_ci(idx, stat, n_boot=n_boot)
        diff = ""
        if p is not ref:
            def dstat(i: np.ndarray, p: np.ndarray = p) -> float:
                w = np.bincount(i.astype(np.int64), minlength=len(y)).astype(np.float64)
                return weighted_auc(y, p)(w) - weighted_auc(y, ref)(w)
            d = bootstrap_ci(idx, dstat, n_boot=n_boot)
            diff = f"{d.point:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
        lines.append(f"{name:<32} {auc(y, p):.4f} [{ci.low:.4f}, {ci.high:.4f}]  {log_loss(y, p):<9.4f} "
                     f"{diff}")
    return lines


def run_demo(args: argparse.Namespace) -> int:
    from fedrec.data import DataValidationError
    from training.ads_cmd import write_configs
    from training.launcher import PartyFailed, PartyGroup, train_command

    t0 = time.perf_counter()
    try:
        log_, window = _load(args)
    except (FileNotFoundError, DataValidationError, ValueError) as err:
        print(f"fedrec demo --protocol ads: {err}", file=sys.stderr)
        return 1
    split, test_log, cut = _periods(log_, 0.8, window)
    from fedrec.ads import vertical_views

    test_guest = vertical_views(test_log)[0].interactions
    print(f"[1/5] {log_.source}: {log_.n_clicks} clicks, {log_.n_conversions} conversions; cut-off {cut} "
          f"(window {window}): {len(split.advertiser.interactions)} training clicks, "
          f"{len(split.holdout)} recent clicks held out (not negatives), {len(test_guest)} test clicks",
          flush=True)
    out: Path = args.out
    from fedrec.ads.conversion import conversion_model
    from fedrec.data import write_table
    from training.demo import _free_port

    model = conversion_model(backend=args.backend, epochs=args.epochs, seed=args.seed, timeout=300.0,
                             **({"lr": 0.02, "batch_size": 2048} if args.data_dir is None else {}))
    run = out / "run"
    write_table(split.advertiser.interactions, run / "advertiser" / "clicks.parquet", index=False)
    gdata: dict[str, Any] = {"interactions": "advertiser/clicks.parquet"}
    if split.advertiser.item_features is not None:
        write_table(split.advertiser.item_features, run / "advertiser" / "campaigns.parquet")
        gdata["item_features"] = "advertiser/campaigns.parquet"
    if len(split.holdout):
        write_table(split.holdout, run / "advertiser" / "recent.csv", index=False)
        gdata["predict"] = "advertiser/recent.csv"
    write_table(split.platform.user_features.rename_axis("user_id"), run / "platform" / "clicks.parquet")
    from training.ads_cmd import ads_table

    gcfg, hcfg = write_configs(run, gdata, {"user_features": "platform/clicks.parquet"}, model,
                               f"tcp://127.0.0.1:{_free_port()}", make_keys=True,
                               ads=ads_table("campaign", "auto"))
    print(f"[2/5] party files, CURVE keys and configs in {run}; advertiser and platform processes "
          f"({args.backend}, label DP on)", flush=True)
    with PartyGroup() as group:
        group.start("platform", train_command("host", hcfg, progress=False, restart=True),
                    run / "platform.log")
        group.start("advertiser", train_command("guest", gcfg, restart=True), run / "advertiser.log",
                    echo=sys.stderr)
        try:
            group.wait(timeout=args.timeout or 900.0)
        except PartyFailed as err:
            print(f"fedrec demo --protocol ads: {err}", file=sys.stderr)
            return 1
    g_out, h_out = run / "out" / "advertiser", run / "out" / "platform"
    summary = json.loads((g_out / "summary.json").read_text())
    preds, scored = _score_test(g_out, h_out, split, test_guest, run)
    preds.update(_references(split, test_guest, model))
    y = test_guest["rating"].to_numpy(np.float64)
    ldp = summary.get("label_dp") or {}
    refit = summary.get("refit") or {}
    print(f"[3/5] PSI aligned {summary['n_aligned']} clicks in {summary['psi_seconds']:.1f}s; training "
          f"{summary['fit_seconds']:.0f}s; label DP ε {ldp.get('epsilon', float('nan')):.3g} at δ "
          f"{ldp.get('delta', float('nan')):g}; recent clicks scored by the advertiser: "
          f"{(summary.get('predictions') or {}).get('rows', 0)}; test clicks scored {scored}; refit on "
          f"{refit.get('clicks', 0)} training clicks (L2 {refit.get('l2')}, "
          f"γ {refit.get('gamma', float('nan')):.3g})"
          "\n", flush=True)
    order = {k: preds.pop(k) for k in ("federated (label DP)", "federated + refit (advertiser)")
             if k in preds}
    print("\n".join(_table(y, {**{k: preds[k] for k in ("advertiser alone",)}, **order,
                               **{k: v for k, v in preds.items() if k != "advertiser alone"}}, args.n_boot)))
    returned = _returns(split, log_, run)
    print(f"\n[4/5] returned to the platform: {returned}", flush=True)
    top = _acquire(g_out, h_out, split, run)
    print(f"[5/5] acquisition at the platform: {top}")
    res = {"seconds": round(time.perf_counter() - t0, 1), "label_dp": ldp, "returns": returned,
           "acquisition": top, "auc": {k: float(_auc(y, v)) for k, v in {**order, **preds}.items()}}
    (args.json or out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"\nartifacts: {out.resolve()} (run/, results.json) total {res['seconds']}s")
    return 0


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from fedrec.eval.metrics import auc

    return auc(y, p)


def _score_test(g_out: Path, h_out: Path, split: Any, test_guest: pd.DataFrame, run: Path
                ) -> tuple[dict[str, np.ndarray], int]:
    """The platform's partials of the test clicks from its saved half (what ``fedrec ads partials``
    does), joined by the advertiser (``fedrec ads predict``)."""
    from fedrec.ads.conversion import score_clicks
    from fedrec.models import FactorizationMachine
    from fedrec.models.vertical import check_run_id, guest_run_id, read_host_partials, write_host_partials
    from fedrec.protocols.hetero_fm import HeteroFMHost

    host = HeteroFMHost.load(h_out / "model")
    ids = test_guest["user_id"].to_numpy()
    parts = host.export_partials(ids.tolist(), split.platform.user_features.loc[ids])
    parts["user_id"] = parts["user_id"].astype(str)
    path = write_host_partials(run / "platform" / "test_partials.parquet", parts, run_id=host.run_id or "")
    guest = FactorizationMachine.load(g_out / "model")
    partials = read_host_partials(path, guest.config.n_factors)
    run_id, origin = guest_run_id(g_out / "model")
    check_run_id(run_id, origin, partials)
    out = {"federated (label DP)": score_clicks(guest, test_guest, partials)}
    from training.ads_cmd import resolve_refit

    refit = resolve_refit(g_out / "model", "auto", run_id)
    if refit is not None:  # what `fedrec ads predict` scores by default
        from fedrec.ads.refit import platform_terms

        out["federated + refit (advertiser)"] = refit.predict_proba(
            test_guest["item_id"].to_numpy(), platform_terms(guest, test_guest, partials))
    return out, len(parts)


def _returns(split: Any, log_: Any, run: Path) -> dict[str, Any]:
    from fedrec.ads import PrivacyBudget, aggregate_reports, return_staged_with_prior, rr_prior_model

    train_ids = split.advertiser.interactions["user_id"].to_numpy()
    clicks = log_.take(pd.Index(train_ids))
    ledger = run / "advertiser" / "dp_budget.json"
    if ledger.exists():
        ledger.unlink()
    budget = PrivacyBudget.create(ledger, epsilon=4.0, delta=1e-5, unit="click")
    cols = [c for c in clicks.platform_columns if c in ("placement", "hour", "channel", "os", "device")]
    ret = return_staged_with_prior(clicks, 1.0, rr_prior_model(["campaign", *cols], epsilon=1.0),
                                   features=clicks.frame.loc[:, ["campaign", *cols]], budget=budget)
    dim = "channel" if "channel" in clicks.platform_columns else "placement"
    reports = aggregate_reports(clicks, [[dim]], mechanism="laplace", epsilon=1.0, budget=budget)
    refused = False
    try:
        aggregate_reports(clicks, [[dim]], mechanism="laplace", epsilon=3.0, budget=budget)
    except Exception as err:  # the ledger refuses a release beyond the budget
        refused = type(err).__name__ == "BudgetExceededError"
    spent = budget.spent()
    return {"rr_prior_clicks": len(ret.click_ids), "rr_prior_epsilon_click": ret.epsilon,
            "report": f"laplace by {dim}, {len(reports[0].table)} cells, ε {reports[0].epsilon:g}",
            "budget": f"{spent['total']:g} of {budget.epsilon:g} spent (unit {budget.unit})",
            "release_beyond_budget_refused": refused}


def _acquire(g_out: Path, h_out: Path, split: Any, run: Path) -> dict[str, Any]:
    from fedrec.ads.acquisition import campaign_card, rank_candidates, read_card, training_clicks, write_card
    from fedrec.models import FactorizationMachine
    from fedrec.models.vertical import guest_run_id
    from fedrec.protocols.hetero_fm import HeteroFMHost
    from training.ads_cmd import resolve_refit

    guest = FactorizationMachine.load(g_out / "model")
    inter = split.advertiser.interactions
    run_id = guest_run_id(g_out / "model")[0]
    try:  # only campaigns with >= MIN_CARD_CLICKS training clicks are carded
        card = campaign_card(guest, run_id=run_id, clicks=training_clicks(inter),
                             refit=resolve_refit(g_out / "model", "auto", run_id))
    except ValueError as err:  # e.g. --users 800: no campaign has enough clicks to be carded
        return {"skipped": str(err)}
    card_path = write_card(card, run / "advertiser" / "campaign_card.json")
    card = read_card(card_path)  # what the platform receives
    host = HeteroFMHost.load(h_out / "model")
    f = split.platform.user_features
    campaign = inter["item_id"].value_counts().index[0]
    # candidates: one row per platform user (its latest click's features); customers = users who converted
    who = "platform_user" if "platform_user" in f.columns else ("ip" if "ip" in f.columns else None)
    if who is None:
        return {"skipped": "no platform user column"}
    latest = f.assign(_user=f[who].to_numpy()).groupby("_user").tail(1)
    cand = latest.drop(columns="_user").set_axis(latest["_user"].to_numpy(), axis=0)
    converted = inter.loc[inter["rating"] > 0, "user_id"].to_numpy()
    customers = set(f.loc[converted, who].tolist())
    ranked, counts = rank_candidates(card, campaign, host, cand, exclude=customers, n=100)
    from fedrec.data import write_table

    path = run / "platform" / f"audience_campaign_{campaign}.csv"
    write_table(ranked.assign(campaign=str(campaign)), path, index=False)
    return {"campaign": str(campaign), **counts, "written": len(ranked), "file": str(path),
            "top_score": float(ranked["score"].iloc[0]) if len(ranked) else None}
