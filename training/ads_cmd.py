"""Federated advertising for customer acquisition: ``fedrec ads COMMAND`` (DESIGN §4.4, docs/ADS.md).

The advertiser (the *guest*: conversions) and the ad platform (the *host*: clicks and their features) train
the conversion model with the vertical FM (label DP on by default), return conversions to the platform
only under differential privacy with a persisted budget, and rank the platform's non-customers for a
campaign at the platform. Every output is written atomically; malformed inputs are errors naming the file,
the line (row) and the column.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples (one machine walk-through; in a deployment each party runs its own commands):
  fedrec ads prepare --synthetic --window 7D --cutoff-quantile 0.8 --recent holdout --out ads --make-keys
  fedrec ads prepare --talkingdata ../shared/data/ads/talkingdata/train_sample.csv \\
      --batch-size 16384 --out ads
  fedrec ads prepare --clicks clicks.csv --conversions conversions.csv --window 7D \\
      --cutoff 2020-10-01 --out ads                       # fedrec's click-log format (docs/ADS.md)
  platform$   fedrec ads train --role platform   --config ads/platform.toml &
  advertiser$ fedrec ads train --role advertiser --config ads/advertiser.toml
  platform$   fedrec ads partials --model ads/out/platform/model --features new_clicks.parquet \\
                  --out partials.parquet                 # the platform's terms of new clicks
  advertiser$ fedrec ads predict --model ads/out/advertiser/model --partials partials.parquet \\
                  --pairs ads/advertiser/holdout.csv --out scores.csv
  advertiser$ fedrec ads budget --budget ledger.json --create --epsilon 4 --unit user
  advertiser$ fedrec ads return --clicks clicks.csv --mechanism laplace --dims channel --epsilon 1 \\
                  --budget ledger.json --out report.csv   # a DP conversion report for the platform
  advertiser$ fedrec ads card --model ads/out/advertiser/model --clicks ads/advertiser/clicks.parquet \\
                  --out card.json                        # campaigns with >= 100 training clicks
  platform$   fedrec ads acquire --card card.json --model ads/out/platform/model --campaign 12 \\
                  --candidates users.parquet --exclude aligned.csv --n 1000 --out audience.csv
  fedrec demo --protocol ads                               # all of it, two processes over CURVE
"""

log = logging.getLogger(__name__)

REFIT_HELP = ("the advertiser's refit (fedrec.ads.refit): auto = the refit.json the training wrote beside "
              "--model, if any (default); none = the federated FM as trained; or a refit file of the same "
              "run")

SUBCOMMANDS = {
    "prepare": "split a click log into the advertiser's and the platform's files (attribution, delay cut)",
    "train": "run one party of the conversion model (the vertical FM, label DP on by default)",
    "partials": "platform: its half's terms (z_H, e_H) for new clicks, fingerprinted",
    "predict": "advertiser: conversion probabilities of clicks from its half and the platform's partials",
    "return": "advertiser: conversions returned to the platform under DP, charged to the budget",
    "budget": "create or show the persisted privacy budget of the returned conversions",
    "card": "advertiser: the campaign card (its terms per campaign) for acquisition scoring",
    "acquire": "platform: rank its users who are not customers for a campaign (lookalike)",
}


# ---------------------------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ads_command", metavar="ADS_COMMAND", required=True,
                           help="what to do; `fedrec ads ADS_COMMAND --help` lists its options")
    for name, text in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        globals()[f"_args_{name}"](sp)


def _source_args(p: argparse.ArgumentParser, labelled: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--clicks", type=Path, help="a click log in fedrec's format (CSV/TSV/Parquet: click_id, "
                     "user_id, time, campaign[, converted, conversion_time], dimension columns; docs/ADS.md)")
    src.add_argument("--talkingdata", type=Path,
                     help="TalkingData's train_sample.csv (labelled by its source)")
    if labelled:
        src.add_argument("--synthetic", action="store_true",
                         help="the built-in synthetic ad funnel (conversions attributed with --window)")
    p.add_argument("--advertiser-columns", default="", help="comma-separated advertiser columns of --clicks "
                   "(constant per campaign; default none)")
    p.add_argument("--numeric", default="", help="comma-separated numeric dimension columns of --clicks")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="drop malformed rows with a count per reason instead of stopping at the first")


def _args_prepare(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    p.add_argument("--conversions", type=Path, default=None,
                   help="conversion events (conversion_id, user_id, campaign, time[, value]) attributed to "
                        "the last click of the user and campaign within --window")
    p.add_argument("--window", default="7D", help="attribution window, e.g. 7D, 24h, 3600 (seconds) (7D)")
    p.add_argument("--cutoff", default=None, help="training cut-off (ISO time): clicks and conversions "
                   "after it are not used; clicks within --window before it are 'recent'")
    p.add_argument("--cutoff-quantile", type=float, default=None,
                   help="the cut-off as a quantile of the click times instead of --cutoff (e.g. 0.8)")
    p.add_argument("--recent", choices=("drop", "holdout", "keep_positives"), default="drop",
                   help="recent clicks (not yet a full window old) are not negatives: drop them (default), "
                        "hold them out to score after training, or keep those already converted")
    p.add_argument("--users", type=int, default=3000, help="--synthetic: users (3000)")
    p.add_argument("--impressions-per-user", type=float, default=30.0,
                   help="--synthetic: impressions per user (30)")
    p.add_argument("--seed", type=int, default=0, help="--synthetic: seed (0)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for advertiser/, platform/ and the configs")
    p.add_argument("--listen", default="tcp://127.0.0.1:7720",
                   help="the advertiser's listening endpoint in the configs (tcp://127.0.0.1:7720)")
    p.add_argument("--backend", choices=("ckks", "plain"), default="ckks",
                   help="crypto backend written in the configs (ckks; plain = no encryption, debugging)")
    p.add_argument("--epsilon", type=float, default=2.0,
                   help="label-DP ε for the whole training written in the configs (2, the default)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="clicks per training batch in the configs (default 16384; with label DP larger "
                        "batches keep more of the gain: one batch per epoch is best; 16384 keeps a "
                        "CKKS message under the transport's 64 MiB)")
    p.add_argument("--make-keys", action="store_true",
                   help="also write a CURVE key pair per party under OUT/keys (a one-machine walk-through)")
    p.add_argument("--refit", choices=("campaign", "off"), default="campaign",
                   help="[ads] refit of the advertiser's config: campaign (default) = after training, its "
                        "campaign logistic regression refitted beside the platform's terms on its own labels "
                        "(refit.json, the scores of `ads predict` and `ads card`; releases nothing); off = "
                        "the federated FM as trained")
    p.add_argument("--refit-l2", default="auto",
                   help="[ads] refit_l2: the refit's L2 (a number > 0) or auto = cross-validated within the "
                        "training clicks (auto)")


def _args_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=("advertiser", "platform"),
                   help="advertiser = the protocol's guest (labels, CKKS key); platform = its host")
    p.add_argument("--config", required=True, type=Path, help="the party's TOML (written by `ads prepare`)")
    p.add_argument("--restart", action="store_true", help="train again from scratch (both parties)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _args_partials(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path,
                   help="the platform's trained half (OUT/platform/model)")
    p.add_argument("--features", required=True, type=Path,
                   help="the platform's features of the clicks to score (CSV/Parquet, the training columns)")
    p.add_argument("--id-column", default="user_id", help="the click id column of --features (user_id)")
    p.add_argument("--categorical", default="", help="comma-separated columns to read as categorical")
    p.add_argument("--out", required=True, type=Path, help="the partials file (.parquet/.csv) + .meta.json")


def _args_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="the advertiser's trained half")
    p.add_argument("--partials", required=True, type=Path, help="the platform's partials of the clicks")
    p.add_argument("--pairs", required=True, type=Path,
                   help="clicks to score: user_id (click id), item_id (campaign)[, timestamp]")
    p.add_argument("--refit", default="auto",
                   help=REFIT_HELP)
    p.add_argument("--out", required=True, type=Path,
                   help="the pairs with 'probability' (the refit's when there is one) and 'probability_fm' "
                        "(the federated FM's) columns (CSV)")


def _args_return(p: argparse.ArgumentParser) -> None:
    _source_args(p, labelled=False)
    p.add_argument("--mechanism", required=True, choices=("rr", "rr-prior", "laplace", "gaussian"),
                   help="rr: every click with a randomized conversion bit; rr-prior: the same with a prior "
                        "(two stages, the prior fitted on the first stage's randomized bits); laplace / "
                        "gaussian: DP conversion counts per cell of --dims")
    p.add_argument("--epsilon", required=True, type=float, help="ε of this release (per click label for "
                   "rr/rr-prior; per user, split over the reports, for laplace/gaussian)")
    p.add_argument("--dims", default="campaign", help="reports: '+'-joined dimensions per report, reports "
                   "separated by commas, e.g. 'channel,campaign+hour' (campaign)")
    p.add_argument("--cap", type=float, default=1.0, help="reports: conversions counted per user at most (1)")
    p.add_argument("--delta", type=float, default=1e-5, help="δ of a Gaussian report (1e-5)")
    p.add_argument("--prior-columns", default="", help="rr-prior: the platform columns of the prior model "
                   "(default: every platform column but the first)")
    p.add_argument("--budget", required=True, type=Path,
                   help="the ledger (`fedrec ads budget --create`); a release beyond it is refused")
    p.add_argument("--out", required=True, type=Path, help="what the platform receives (CSV/Parquet)")


def _args_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", required=True, type=Path, help="the ledger file (JSON)")
    p.add_argument("--create", action="store_true", help="create it (refused when it exists)")
    p.add_argument("--epsilon", type=float, default=None, help="--create: the total ε")
    p.add_argument("--delta", type=float, default=1e-5, help="--create: δ for Gaussian releases (1e-5)")
    p.add_argument("--unit", choices=("user", "click"), default="user",
                   help="--create: what one ε protects, a user's conversions or one click's label (user)")


def _args_card(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="the advertiser's trained half")
    p.add_argument("--campaigns", default=None,
                   help="comma-separated campaigns (default: all the model knows)")
    p.add_argument("--clicks", required=True, type=Path,
                   help="the advertiser's training clicks (user_id, item_id = campaign, ...; the "
                        "advertiser/clicks.parquet of `ads prepare`): the clicks per campaign")
    p.add_argument("--min-clicks", type=int, default=None,
                   help="fewest training clicks a campaign needs to be carded (default 100): a named "
                        "campaign below it is refused, the others left out")
    p.add_argument("--refit", default="auto",
                   help=REFIT_HELP + "; the card then carries the refit's terms")
    p.add_argument("--out", required=True, type=Path, help="the card (JSON) sent to the platform")


def _args_acquire(p: argparse.ArgumentParser) -> None:
    p.add_argument("--card", required=True, type=Path, help="the advertiser's campaign card (JSON)")
    p.add_argument("--model", required=True, type=Path, help="the platform's trained half")
    p.add_argument("--campaign", required=True, help="the campaign to find customers for")
    p.add_argument("--candidates", required=True, type=Path,
                   help="the platform's users to rank: one row each, the training's feature columns")
    p.add_argument("--id-column", default="user_id", help="the user id column of --candidates (user_id)")
    p.add_argument("--categorical", default="", help="comma-separated columns to read as categorical")
    p.add_argument("--exclude", type=Path, default=None,
                   help="ids never ranked: the advertiser's customers (the PSI intersection, aligned.csv)")
    p.add_argument("--exclude-column", default="user_id", help="the id column of --exclude (user_id)")
    p.add_argument("--n", type=int, default=1000, help="how many to write, best first (1000)")
    p.add_argument("--out", required=True, type=Path, help="rank, user_id, score (CSV/Parquet)")


# ---------------------------------------------------------------------------------------------- helpers
def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def load_clicks(args: argparse.Namespace) -> Any:
    """The labelled click log of ``--clicks``/``--talkingdata``/``--synthetic`` (+ ``--conversions``)."""
    from fedrec.ads import attribute, read_click_log, read_conversions, read_talkingdata, synthetic_funnel

    errors = "skip" if args.skip_bad_rows else "raise"
    if getattr(args, "synthetic", False):
        from fedrec.data import SyntheticConfig, generate

        data = generate(SyntheticConfig(seed=args.seed, n_users=args.users,
                                        impressions_per_user=args.impressions_per_user))
        clicks, events = synthetic_funnel(data, seed=args.seed)
        return attribute(clicks, events, window=args.window)[0]
    if args.talkingdata is not None:
        return read_talkingdata(args.talkingdata, errors=errors)
    clicks = read_click_log(args.clicks, advertiser_columns=_names(args.advertiser_columns),
                            numeric=_names(args.numeric), errors=errors)
    conv = getattr(args, "conversions", None)
    if conv is not None:
        return attribute(clicks, read_conversions(conv, errors=errors), window=args.window)[0]
    if clicks.labels == "none":
        raise ValueError(f"{args.clicks}: no 'converted' column; pass --conversions FILE to attribute them")
    return clicks


def _cutoff(args: argparse.Namespace, clicks: Any) -> Any:
    if args.cutoff is not None and args.cutoff_quantile is not None:
        raise ValueError("--cutoff and --cutoff-quantile: give one")
    if args.cutoff_quantile is not None:
        if not 0 < args.cutoff_quantile <= 1:
            raise ValueError(f"--cutoff-quantile must be in (0, 1], got {args.cutoff_quantile}")
        return clicks.frame["time"].quantile(args.cutoff_quantile)
    return args.cutoff


def resolve_refit(model: Path, choice: str, run_id: str | None) -> Any:
    """The refit ``--refit`` names (``auto``: ``refit.json`` beside the model directory if the training
    wrote one; ``none``: ``None``); one of another training run is refused."""
    from fedrec.ads.refit import read_refit

    if choice == "none":
        return None
    path = Path(model).resolve().parent / "refit.json" if choice == "auto" else Path(choice)
    if choice == "auto" and not path.is_file():
        log.info("no refit beside %s: scoring with the federated FM as trained", model)
        return None
    if not path.is_file():
        raise FileNotFoundError(f"--refit {path}: no such file (auto, none or the refit.json of a training)")
    refit = read_refit(path)
    if refit.run_id and run_id and refit.run_id != run_id:
        raise ValueError(f"--refit {path}: a refit of training run {refit.run_id}, the model {model} is of "
                         f"run {run_id}: not the same training")
    return refit


def _write_out(frame: Any, path: Path, index: bool = False) -> None:
    from fedrec.data.tables import write_table

    write_table(frame, path, index=index)


def _done(what: str, payload: dict[str, Any]) -> int:
    print(f"{what}: " + json.dumps(payload, default=str))
    return 0


# ---------------------------------------------------------------------------------------------- commands
def _prepare(args: argparse.Namespace) -> int:
    from fedrec.ads.conversion import conversion_model, split_for_training
    from fedrec.data.tables import check_output_file

    out: Path = args.out
    check_output_file(out / "prepare.json")
    ads_table(args.refit, args.refit_l2)  # a bad setting stops before the log is read
    clicks = load_clicks(args)
    split = split_for_training(clicks, cutoff=_cutoff(args, clicks), window=args.window, recent=args.recent)
    adv, plat = out / "advertiser", out / "platform"
    _write_out(split.advertiser.interactions, adv / "clicks.parquet")
    data: dict[str, Any] = {"interactions": "advertiser/clicks.parquet"}
    if split.advertiser.item_features is not None:
        _write_out(split.advertiser.item_features, adv / "campaigns.parquet", index=True)
        data["item_features"] = "advertiser/campaigns.parquet"
    if len(split.holdout):
        _write_out(split.holdout, adv / "holdout.csv")
    _write_out(split.platform.user_features.rename_axis("user_id"), plat / "clicks.parquet", index=True)
    extra = {} if args.batch_size is None else {"batch_size": args.batch_size}
    model = conversion_model(backend=args.backend, dp_guest_epsilon=args.epsilon, **extra)
    write_configs(out, data, {"user_features": "platform/clicks.parquet"}, model, args.listen,
                  make_keys=args.make_keys, ads=ads_table(args.refit, args.refit_l2))
    summary = {"source": clicks.source, "labels": clicks.labels, **split.summary()}
    from fedrec.artifacts import write_json_atomic

    write_json_atomic(out / "prepare.json", summary)
    return _done(f"prepared {out}", {k: summary[k] for k in ("training_clicks", "training_conversions",
                                                              "platform_clicks", "holdout_clicks")})


def ads_table(refit: str, l2: str | float) -> dict[str, Any]:
    """The advertiser's ``[ads]`` table (checked as ``training.config`` reads it: a bad value is refused
    here, before anything is written)."""
    from fedrec.ads.refit import REFIT_KINDS, check_l2

    if refit not in REFIT_KINDS:
        raise ValueError(f"--refit must be one of {', '.join(REFIT_KINDS)}, got {refit!r}")
    value: Any = l2
    if isinstance(l2, str) and l2 != "auto":
        try:
            value = float(l2)
        except ValueError:
            value = l2
    return {"refit": refit, "refit_l2": check_l2(value, "--refit-l2")}


def write_configs(out: Path, guest_data: dict[str, Any], host_data: dict[str, Any], model: dict[str, Any],
                  listen: str, *, make_keys: bool = False, timeouts: dict[str, float] | None = None,
                  ads: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``advertiser.toml`` (the guest: listens) and ``platform.toml`` (the host: connects) under ``out``;
    paths relative to ``out``; keys ``keys/<party>.key[_secret]`` (written with ``make_keys``); ``ads``: the
    advertiser's ``[ads]`` table (:func:`ads_table`; ``None``: none, the refit off)."""
    from training.demo import _toml

    if make_keys:
        from fedrec.transport import write_keypair

        for name in ("advertiser", "platform"):
            write_keypair(out / "keys", name, force=True)
    t = {"connect_timeout": 120.0, "recv_timeout": 300.0, "heartbeat_timeout": 15.0, **(timeouts or {})}
    job = {"protocol": "hetero_fm"}
    docs = {
        "advertiser": {"job": job, "party": {"role": "guest", "name": "advertiser"},
                       "network": {"listen": listen, "key": "keys/advertiser.key_secret", **t},
                       "peers.platform": {"public_key": "keys/platform.key"}, "data": guest_data,
                       "psi": {"enabled": True}, "model": model, "output": {"dir": "out/advertiser"},
                       **({"ads": ads} if ads else {})},
        "platform": {"job": job, "party": {"role": "host", "name": "platform"},
                     "network": {"key": "keys/platform.key_secret", **t},
                     "peers.advertiser": {"endpoint": listen, "public_key": "keys/advertiser.key"},
                     "data": host_data, "psi": {"enabled": True}, "model": model,
                     "output": {"dir": "out/platform"}},
    }
    paths = []
    for name, doc in docs.items():
        path = out / f"{name}.toml"
        from fedrec.artifacts import atomic_file

        with atomic_file(path) as tmp:
            tmp.write_text(_toml(doc), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def _train(args: argparse.Namespace) -> int:
    from training import party

    ns = argparse.Namespace(role="guest" if args.role == "advertiser" else "host", config=args.config,
                            no_progress=args.no_progress, restart=args.restart)
    return int(party.run(ns) or 0)


def _partials(args: argparse.Namespace) -> int:
    from fedrec.data import read_side_table
    from fedrec.data.tables import check_output_file
    from fedrec.models.vertical import write_host_partials
    from fedrec.protocols.hetero_fm import HeteroFMHost

    check_output_file(args.out, (".csv", ".tsv", ".parquet"))
    host = HeteroFMHost.load(args.model)
    table, _ = read_side_table(args.features, id_column=args.id_column, categorical=_names(args.categorical))
    parts = host.export_partials(table.index.tolist(), table)
    parts["user_id"] = parts["user_id"].astype(str)
    if not host.run_id:
        raise ValueError(f"{args.model}: the platform's half records no training run id")
    write_host_partials(args.out, parts, run_id=host.run_id)
    return _done(f"partials -> {args.out}", {"clicks": len(parts), "run_id": host.run_id})


def _predict(args: argparse.Namespace) -> int:
    from fedrec.ads.conversion import score_clicks
    from fedrec.data.tables import check_output_file
    from fedrec.models import FactorizationMachine
    from fedrec.models.vertical import check_run_id, guest_run_id, read_host_partials
    from training.hetero_fm_job import read_pairs

    check_output_file(args.out, (".csv",))
    guest = FactorizationMachine.load(args.model)
    partials = read_host_partials(args.partials, guest.config.n_factors)
    run_id, origin = guest_run_id(args.model)
    check_run_id(run_id, origin, partials)
    refit = resolve_refit(args.model, args.refit, run_id)
    raw, pairs = read_pairs(args.pairs)
    prob_fm = score_clicks(guest, pairs, partials)
    prob = prob_fm
    scorer = "fm"
    if refit is not None:
        from fedrec.ads.refit import platform_terms

        prob = refit.predict_proba(pairs["item_id"].to_numpy(), platform_terms(guest, pairs, partials))
        scorer = "refit"
    elif (guarded := _guarded_probability(args.model, run_id, guest, pairs, partials)) is not None:
        prob, scorer = guarded, "guarded"
    _write_out(raw.assign(probability=prob, probability_fm=prob_fm), args.out)
    return _done(f"scored -> {args.out}", {"clicks": len(raw), "scorer": scorer,
                                           "mean_probability": float(prob.mean()) if len(prob) else None})


def _guarded_probability(model: Path, run_id: str | None, guest: Any, pairs: Any, partials: Any) -> Any:
    """Without a refit: the guard's blend ``σ((1 − α) z_bank + α z_FM)`` when the training chose ``α < 1``
    (``model/guard.json``, :mod:`fedrec.models.guard`), else ``None``."""
    from fedrec.models.guard import load_guard
    from fedrec.models.vertical import join_pairs

    saved = load_guard(model, run_id)
    if saved is None or saved[1] is None:
        return None
    choice, bank = saved
    terms = guest.party_terms(pairs)["guest"]
    z_fm = join_pairs(terms.z, terms.e, partials.take(pairs["user_id"].tolist()))
    log.info("scoring with the guarded model: alpha %.3f (%s)", choice.alpha, choice.source)
    return guest.finish((1.0 - choice.alpha) * bank.decision_function(pairs) + choice.alpha * z_fm)


def _return(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from fedrec.ads import (
        PrivacyBudget,
        aggregate_reports,
        return_randomized,
        return_staged_with_prior,
        rr_prior_model,
    )
    from fedrec.data.tables import check_output_file

    check_output_file(args.out, (".csv", ".tsv", ".parquet"))
    budget = PrivacyBudget.open(args.budget)
    clicks = load_clicks(args)
    if args.mechanism in ("rr", "rr-prior"):
        if args.mechanism == "rr":
            ret = return_randomized(clicks, args.epsilon, budget=budget)
        else:
            cols = _names(args.prior_columns) or list(clicks.platform_columns[1:]) or \
                list(clicks.platform_columns)
            feats = clicks.frame.loc[:, ["campaign", *cols]]
            ret = return_staged_with_prior(clicks, args.epsilon, rr_prior_model(["campaign", *cols],
                                                                                epsilon=args.epsilon),
                                           features=feats, budget=budget)
        frame = ret.frame().reset_index()
        summary = ret.summary()
    else:
        dims = [[d for d in spec.split("+") if d] for spec in _names(args.dims)]
        reports = aggregate_reports(clicks, dims, mechanism=args.mechanism, epsilon=args.epsilon,
                                    delta=args.delta, cap=args.cap, budget=budget)
        frame = pd.concat([r.table.reset_index().assign(report=r.name) for r in reports], ignore_index=True)
        frame["conversions"] = np.round(frame["conversions"].to_numpy(np.float64), 3)
        summary = {"reports": [r.summary() for r in reports]}
    _write_out(frame, args.out)
    spent = budget.spent()
    return _done(f"returned -> {args.out}", {**summary, "budget_spent": spent["total"],
                                             "budget_remaining": budget.remaining(), "unit": budget.unit})


def _budget(args: argparse.Namespace) -> int:
    from fedrec.ads import PrivacyBudget

    if args.create:
        if args.epsilon is None:
            raise ValueError("--create needs --epsilon")
        b = PrivacyBudget.create(args.budget, epsilon=args.epsilon, delta=args.delta, unit=args.unit)
    else:
        b = PrivacyBudget.open(args.budget)
    print(json.dumps(b.summary(), indent=1, default=str))
    return 0


def _card(args: argparse.Namespace) -> int:
    from fedrec.ads.acquisition import MIN_CARD_CLICKS, campaign_card, training_clicks, write_card
    from fedrec.data.tables import check_output_file, read_table
    from fedrec.models import FactorizationMachine
    from fedrec.models.vertical import guest_run_id

    check_output_file(args.out, (".json",))
    guest = FactorizationMachine.load(args.model)
    run_id, _ = guest_run_id(args.model)
    table = read_table(args.clicks).frame
    if "item_id" not in table.columns:
        raise ValueError(f"{args.clicks}: no 'item_id' (campaign) column; expected the advertiser's training "
                         f"clicks (columns {list(map(str, table.columns))[:8]})")
    clicks = training_clicks(table)
    wanted = None if args.campaigns is None else _names(args.campaigns)
    floor = MIN_CARD_CLICKS if args.min_clicks is None else args.min_clicks
    refit = resolve_refit(args.model, args.refit, run_id)
    if refit is None:
        from fedrec.models.guard import read_guard

        guard = read_guard(args.model)
        if guard is not None and guard.alpha < 1.0:
            log.warning("%s: the training's guard chose alpha %.3f (blend with the advertiser alone); a "
                        "campaign card carries the FM as trained (the guard's bank-alone terms are not sent "
                        "to the platform); [ads] refit = \"campaign\" (the default) weighs the platform's "
                        "terms in the card itself", args.model, guard.alpha)
    card = campaign_card(guest, _match_campaigns(guest, wanted), run_id=run_id, clicks=clicks,
                         min_clicks=floor, refit=refit)
    write_card(card, args.out)
    return _done(f"campaign card -> {args.out}", {"campaigns": len(card.campaigns), "min_clicks": floor,
                                                   "scorer": "refit" if refit is not None else "fm",
                                                   "left_out": int((clicks < floor).sum()) if wanted is None
                                                   else 0, "n_factors": card.n_factors, "run_id": run_id})


def _match_campaigns(guest: Any, wanted: list[str] | None) -> list[Any] | None:
    """The model's campaign ids for the strings given on the command line (matched by their text)."""
    import numpy as np

    if wanted is None:
        return None
    _, item_map, _ = guest._require_fitted()
    known = {str(x): x for x in item_map.to_raw(np.arange(len(item_map)))}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise ValueError(f"--campaigns: {missing[0][:40]!r} is not a campaign of the model")
    return [known[w] for w in wanted]


def _acquire(args: argparse.Namespace) -> int:
    from fedrec.ads.acquisition import rank_candidates, read_card
    from fedrec.data import read_side_table
    from fedrec.data.tables import check_output_file, read_ids
    from fedrec.protocols.hetero_fm import HeteroFMHost

    check_output_file(args.out, (".csv", ".tsv", ".parquet"))
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    card = read_card(args.card)
    host = HeteroFMHost.load(args.model)
    table, _ = read_side_table(args.candidates, id_column=args.id_column,
                               categorical=_names(args.categorical))
    exclude: list[Any] = []
    if args.exclude is not None:
        exclude, _ = read_ids(args.exclude, args.exclude_column, allow_empty=True)
    ranked, counts = rank_candidates(card, args.campaign, host, table, exclude=exclude, n=args.n)
    ranked.insert(0, "campaign", args.campaign)
    _write_out(ranked, args.out)
    return _done(f"audience -> {args.out}", {**counts, "written": len(ranked)})


def run(args: argparse.Namespace) -> int:
    from fedrec.ads import BudgetError, BudgetExceededError
    from fedrec.artifacts import ArtifactError
    from fedrec.data import DataValidationError

    fn = globals()[f"_{args.ads_command}"]
    try:
        return int(fn(args) or 0)
    except (DataValidationError, BudgetError, BudgetExceededError, ArtifactError, FileNotFoundError,
            ValueError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"fedrec ads {args.ads_command}: {msg}", file=sys.stderr)
        return 1
