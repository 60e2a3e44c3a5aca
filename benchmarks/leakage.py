#!/usr/bin/env python3
"""Label leakage of the vertical FM against the guest's label DP: task metric and attack AUC per ε.

For every dataset and every DP point the guest (labels) and the host (user features) train the vertical
FM over the in-memory twin (``MemoryNetwork`` + ``run_parties``: the protocol code and wire encoding of
the ZeroMQ channel, no sockets) with ``HeteroFMHost(..., transcript=HostTranscript())`` recording
everything the host learns. Then, on that transcript and the host's own features and parameters only,
the attack suite ``fedrec.eval.leakage.run_attacks`` scores every aligned user, and ``evaluate`` gives
each attack's AUC (95% bootstrap CI) against the truth, which only this evaluation holds.

Datasets (``--datasets``; default ``synthetic-ads`` and ``talkingdata`` when its file is present):

* ``synthetic-ads``: the synthetic ad funnel's clicks (``fedrec.data.synthetic_ads_split``); conversion.
* ``talkingdata``: ``DATA/ads/talkingdata/train_sample.csv`` (``fedrec.data.talkingdata_split``: host =
  ad platform with ip/device/os/channel, guest = advertiser with the app and the download label).
* ``ml100k``: MovieLens 100K ratings, demographics at the host (``load_ml100k`` + ``vertical_split``);
  ``objective="regression"``. ``ml100k-likes``: the same rows with the label "liked" (rating ≥ 4),
  logistic, batch 512 — the issue's measured case (rare zip prefixes and occupations alone in a batch).
  ``synthetic-ratings``: the synthetic ratings, likewise.

``DATA`` = ``$FEDREC_DATA_DIR`` or ``../shared/data`` (read in place, never copied). Conversions: one
click = one protocol "user", the guest's per-user fields (id, history) off. Split: per seed a random
``--test-fraction`` of the guest's rows is held out (conversions: clicks; ratings: rating rows).

Task metric on the held-out rows, federated model against the guest-only model (a
``FactorizationMachine`` without user features, same hyperparameters): AUC and log-loss (conversions),
RMSE (ratings), with the paired difference. A held-out click is a user the guest model never saw; it is
scored as a fresh click is in production: the guest's own terms (``party_terms``) joined with the
partials the host exports for the click's features (``export_partials`` + ``join_pairs``), the same
join for the rating rows (the library's ``predict`` would drop the host's terms for unknown users).

Truth per aligned user (``fedrec.eval.leakage.user_truth`` on the training rows): the click's label
(conversions); for ratings, 1 when the user's mean training rating is above the global training mean
(every attack targets the sign of the residual). Held-out users are not scored (their labels never
entered training). The bar's attacks are all but ``completion_baseline`` (the host without the guest).
Conversions (one click per user, so held-out clicks are users the training never saw): the host's
trained partials also score the held-out clicks (``completion_heldout``): what its model predicts about
anyone, population knowledge that label DP does not (and should not) remove; ``completion_excess`` =
AUC(training clicks) − AUC(held-out clicks) + 0.5 is what it learned about the training labels
themselves, and replaces the raw ``completion`` in the bar (both are reported). Ratings keep the raw
``completion`` in the bar (held-out rows belong to training users).

DP points: ``--noise-multipliers`` (``dp_guest_noise_multiplier``; 0 = off) and ``--target-epsilons``
(``dp_guest_epsilon``: the guest calibrates the noise for the whole training). ε is the guest's
``privacy_spent()`` for the whole training at ``dp_delta`` (``--validation none``, the default, keeps the
early-stopping bits out of the run, so ε covers everything the host receives).

Backend: ``plain`` for sweeps. The host's aggregates are those of CKKS up to CKKS's flooding noise
(the masks cancel exactly; the host steps on the same unmasked gradient), so the attacks see the same
numbers give or take that noise; ``--backend ckks`` runs the real thing (much slower).

CIs: per seed, ``evaluate``'s bootstrap (users) and a paired bootstrap (held-out rows). Over several
``--seeds`` a two-level bootstrap: resample seeds, then rows within each; the statistic is the mean over
the drawn seeds (seed = split and model initialisation; the DP noise comes from the OS's secure random
source, fresh in every run, so a rerun reproduces everything but it). Per-seed values are in the JSON.

DP off is an explicit ``label_dp="off"`` (label DP is on by default). Bars (issue 16): every attack
AUC <= 0.55 with the upper CI bound <= 0.60, and the federated model beating the guest-only one beyond
the paired CI, at the same DP point. Attacks below chance beyond their CI (upper bound < 0.45) are
listed as well: they rank the labels in reverse.

Examples::

    .venv/bin/python benchmarks/leakage.py --quick                     # smoke run, synthetic, < 2 min
    .venv/bin/python benchmarks/leakage.py --datasets synthetic-ads --seeds 0,1,2,3,4,5,6,7,8,9 \
        --noise-multipliers 0 --target-epsilons 1,2,4,8                  # the stored synthetic sweep
    # one dataset per process, then one result:
    .venv/bin/python benchmarks/leakage.py --merge /tmp/a/leakage.json /tmp/b/leakage.json
    .venv/bin/python benchmarks/leakage.py --datasets talkingdata --noise-multipliers 0,1,4 --seeds 3
    .venv/bin/python benchmarks/leakage.py --datasets ml100k --target-epsilons 1,8
    .venv/bin/python benchmarks/leakage.py --datasets synthetic-ads --backend ckks --seeds 1

Writes benchmarks/results/leakage.json, leakage.png (per dataset: task metric vs ε, attack AUC vs ε)
and leakage.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# one BLAS thread (before numpy loads OpenBLAS): on a shared 2-core machine OpenBLAS's spinning threads
# made the attacks' least squares 3.6x slower (TalkingData: 116 s -> 32 s per run at load ~13)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedrec.eval.metrics import (  # noqa: E402
    WeightedStat,
    seed_bootstrap,
    weighted_auc,
    weighted_difference,
    weighted_mean,
)

OUT = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("FEDREC_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
TALKINGDATA = Path("ads") / "talkingdata" / "train_sample.csv"
DATASETS = ("synthetic-ads", "talkingdata", "ml100k", "ml100k-likes", "synthetic-ratings")
BASELINE_ATTACK = "completion_baseline"
#: the host's trained model on clicks whose labels never reached it, and its excess on the training clicks
HELDOUT, EXCESS = "completion_heldout", "completion_excess"
BAR_AUC, BAR_HIGH = 0.55, 0.60
BINARY = ("conversion", "likes")  # task kinds scored by AUC / log-loss
#: seconds for one federated fit (TalkingData plain, 3 epochs: ~100 s)
PARTIES_TIMEOUT = 4 * 3600
log = logging.getLogger("leakage_bench")


@dataclass
class Task:
    """One dataset in the parties' shape, and the model settings it is trained with."""

    name: str
    kind: str  # "conversion" | "likes" (binary labels on rating rows: AUC) | "rating"
    guest: Any  # GuestView
    host: Any  # HostView
    params: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data
_CONVERSION = {"objective": "logistic", "use_user_id": False, "use_history": False,
               "use_history_length": False}


def load_task(name: str, args: argparse.Namespace) -> Task | None:
    """The dataset ``name`` (``None`` when its files are absent)."""
    from fedrec.data import (
        SyntheticConfig,
        generate,
        load_ml100k,
        load_talkingdata,
        synthetic_ads_split,
        talkingdata_split,
        vertical_split,
    )

    if name == "synthetic-ads":
        users, per_user = (2000, 20.0) if args.quick else (5000, 40.0)
        data = generate(SyntheticConfig(seed=args.data_seed, n_users=users, impressions_per_user=per_user))
        g, h = synthetic_ads_split(data)
        # label DP's noise per release is fixed, the signal grows with the batch: large batches
        params = {**_CONVERSION, "n_factors": 4, "lr": 0.02, "batch_size": 2048, "epochs": 3}
        return Task(name, "conversion", g, h, params, {"n_users": users, "impressions_per_user": per_user})
    if name == "talkingdata":
        path = DATA / TALKINGDATA
        if not path.is_file():
            return None
        g, h = talkingdata_split(load_talkingdata(path))
        params = {**_CONVERSION, "n_factors": 4, "lr": 0.05, "batch_size": 4096, "epochs": 3}
        return Task(name, "conversion", g, h, params, {"source": str(path)})
    if name == "ml100k":
        if not (DATA / "ml-100k" / "u.data").is_file():
            return None
        g, h = vertical_split(load_ml100k(DATA / "ml-100k"), seed=args.data_seed)
        params = {"objective": "regression", "n_factors": 8, "lr": 0.02, "batch_size": 4096, "epochs": 5}
        return Task(name, "rating", g, h, params, {"source": str(DATA / "ml-100k")})
    if name == "ml100k-likes":  # the measured case: logistic on "liked" (rating >= 4), batch 512
        if not (DATA / "ml-100k" / "u.data").is_file():
            return None
        ds = load_ml100k(DATA / "ml-100k")
        liked = ds.interactions.assign(rating=(ds.interactions["rating"] >= 4).astype(np.float64))
        g, h = vertical_split(dataclasses.replace(ds, interactions=liked), seed=args.data_seed)
        params = {"objective": "logistic", "n_factors": 8, "lr": 0.02, "batch_size": 512, "epochs": 3}
        return Task(name, "likes", g, h, params, {"source": str(DATA / "ml-100k"), "label": "rating >= 4"})
    if name == "synthetic-ratings":
        g, h = vertical_split(generate(SyntheticConfig(seed=args.data_seed, n_users=1000 if args.quick
                                                       else 3000)).dataset, seed=args.data_seed)
        params = {"objective": "regression", "n_factors": 8, "lr": 0.02, "batch_size": 1024,
                  "epochs": 2 if args.quick else 5}
        return Task(name, "rating", g, h, params)
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------------- runs
def dp_points(args: argparse.Namespace) -> list[dict[str, float]]:
    """The DP settings swept: ``{"dp_guest_noise_multiplier": z}`` or ``{"dp_guest_epsilon": ε}``."""
    pts: list[dict[str, float]] = [{"dp_guest_noise_multiplier": z} for z in args.noise_multipliers]
    pts += [{"dp_guest_epsilon": e} for e in args.target_epsilons]
    return pts


def _config(task: Task, point: dict[str, float], seed: int, args: argparse.Namespace) -> Any:
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    p = {**task.params, "seed": seed, "backend": args.backend, "validation": args.validation,
         "dp_delta": args.dp_delta, "dp_guest_clip": args.dp_clip, "timeout": 900.0, **point}
    if point.get("dp_guest_noise_multiplier", None) == 0:  # the "DP off" point: an explicit choice
        p["label_dp"] = "off"
    for key in ("epochs", "batch_size", "n_factors", "lr", "optimizer", "plain_bound", "layout",
                "host_optimizer"):
        if getattr(args, key, None) is not None:
            p[key] = getattr(args, key)
    return HeteroFMConfig(**p)


def run_federated(task: Task, train: pd.DataFrame, test: pd.DataFrame, cfg: Any) -> dict[str, Any]:
    """One federated training with the host's transcript; returns predictions, ε, host and transcript."""
    from fedrec.models.vertical import HostPartials, join_pairs
    from fedrec.protocols.hetero_fm import HeteroFMGuest, HeteroFMHost
    from fedrec.protocols.hetero_fm.transcript import HostTranscript
    from fedrec.transport import MemoryNetwork, TransportConfig, run_parties

    # a batch of ~1000 clicks touches ~1000 one-hot columns: larger messages than the 64 MiB default
    net = MemoryNetwork(TransportConfig(max_message_bytes=2**31 - 1, max_header_bytes=2**24))
    g_ch, h_ch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    transcript = HostTranscript()
    host = HeteroFMHost(h_ch, "guest", cfg, transcript=transcript)
    guest = HeteroFMGuest(g_ch, "host", cfg)
    feats = task.host.user_features
    known = pd.Index(pd.unique(task.guest.interactions["user_id"]))
    aligned = feats.index[feats.index.isin(known)]

    def play_guest() -> float:
        t0 = time.perf_counter()
        try:
            guest.fit(train, item_features=task.guest.item_features, validation=cfg.validation,
                      aligned_users=aligned)
        finally:
            guest.close()
        return time.perf_counter() - t0

    out = run_parties({"guest": play_guest, "host": lambda: host.serve(feats)}, timeout=PARTIES_TIMEOUT)
    terms = guest.local.party_terms(test)["guest"]
    ids = test["user_id"].to_numpy()
    partials = HostPartials.from_frame(host.export_partials(pd.unique(ids)), cfg.n_factors).take(ids)
    pred = guest.local.finish(join_pairs(terms.z, terms.e, partials))
    ranker = None
    if task.kind == "rating":  # the guest's half and the host's exported partials, as serving joins them
        from fedrec.models.vertical import VerticalFM

        every = pd.unique(np.concatenate([train["user_id"].to_numpy(), ids]))
        ranker = VerticalFM(guest.local, HostPartials.from_frame(host.export_partials(every), cfg.n_factors))
    return {"pred": pred, "ranker": ranker, "epsilon": guest.privacy_spent(), "fit_seconds": out["guest"],
            "epochs": len(guest.history.train_loss), "host": host, "transcript": transcript,
            "host_found": float(np.mean(partials.found)) if partials.found is not None and len(ids) else 0.0}


def run_guest_only(task: Task, train: pd.DataFrame, test: pd.DataFrame, cfg: Any) -> tuple[np.ndarray, Any]:
    from fedrec.models import FactorizationMachine

    fm = FactorizationMachine(**{**cfg.fm_params(), "use_user_features": False})
    fm.fit(train, item_features=task.guest.item_features, validation=cfg.validation)
    return np.asarray(fm.predict(test), dtype=np.float64), fm


HR_K, HR_LIKED = 10, 4.0  # ratings: HR@10 of the held-out items a user rated >= 4, seen items filtered


def hits_at_k(model: Any, test: pd.DataFrame) -> np.ndarray:
    """Per held-out user with a liked held-out item (rating >= 4): 1 when one of them is in the
    model's top ``HR_K`` (training items filtered), else 0 — users in sorted id order."""
    liked = test[test["rating"] >= HR_LIKED].groupby("user_id")["item_id"].agg(lambda x: set(map(str, x)))
    if liked.empty:
        return np.zeros(0)
    users = sorted(liked.index, key=str)
    ids, _ = model.recommend(users, k=HR_K, filter_seen=True)
    return np.array([float(bool(set(map(str, row)) & liked[u])) for u, row in zip(users, ids, strict=True)])


def run_attacks_on(task: Task, fed: dict[str, Any], train: pd.DataFrame, test: pd.DataFrame,
                   args: argparse.Namespace, seed: int
                   ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray, np.ndarray | None]:
    """(per-attack scores, their evaluation, truth, held-out truth) for one run (module docstring).

    When the held-out rows are users the training never saw (conversions: one click per user), the
    ``completion`` scores of those users against their labels (``completion_heldout``) say what the
    host's model predicts about anyone — population knowledge, what the federation is for — and
    ``completion_excess`` = AUC(training users) − AUC(held-out users) + 0.5 what it learned about the
    training labels themselves (label DP's subject; 0.5 = nothing beyond the population)."""
    from fedrec.eval.leakage import HostParams, evaluate, run_attacks, user_truth

    host, transcript = fed["host"], fed["transcript"]
    scores = run_attacks(transcript, host.aligned_design(), host_params=HostParams.from_host(host), seed=seed)
    rule = "any" if task.kind == "conversion" else "mean_above_global"
    truth = user_truth(train, transcript.aligned, rule)
    evaluation = evaluate(scores, truth, n_boot=args.n_boot, seed=seed)
    held: np.ndarray | None = None
    if task.kind == "conversion" and not set(train["user_id"]) & set(test["user_id"]):
        held = user_truth(test, transcript.aligned, rule)
        comp = np.asarray(scores["completion"].scores, dtype=np.float64)
        evaluation[HELDOUT] = evaluate({HELDOUT: comp}, held, n_boot=args.n_boot, seed=seed)[HELDOUT]
        stat = _excess_stat(truth, held, comp)
        evaluation[EXCESS] = {"auc": None if stat is None else seed_bootstrap([stat], args.n_boot, seed),
                              "coverage": 1.0, "n": 0 if stat is None else stat[0]}
    return scores, evaluation, truth, held


def _excess_stat(truth: np.ndarray, held: np.ndarray, scores: np.ndarray) -> tuple[int, WeightedStat] | None:
    """``(n, w -> AUC(train rows) − AUC(held-out rows) + 0.5)`` over the union of both user sets."""
    a, b = np.isfinite(truth) & np.isfinite(scores), np.isfinite(held) & np.isfinite(scores)
    if not (0 < truth[a].sum() < a.sum() and 0 < held[b].sum() < b.sum()):
        return None
    tr, te = weighted_auc(truth[a], scores[a]), weighted_auc(held[b], scores[b])
    n1 = int(a.sum())
    return n1 + int(b.sum()), lambda w: tr(w[:n1]) - te(w[n1:]) + 0.5


# ---------------------------------------------------------------------------------------------- statistics
# A bootstrap resample of n rows is a vector of multiplicities w (fedrec.eval.metrics: weighted_auc,
# weighted_mean, seed_bootstrap); every statistic is prepared once per seed, so a resample costs O(n).


def _task_stats(kind: str, rows: np.ndarray) -> dict[str, tuple[WeightedStat, WeightedStat]]:
    """Per metric, (federated, guest-only) statistics of rows ``[y, p_fed, p_guest]``."""
    y = rows[:, 0]
    if kind in BINARY:
        p = np.clip(rows[:, 1:], 1e-15, 1 - 1e-15)
        loss = -(y[:, None] * np.log(p) + (1 - y[:, None]) * np.log1p(-p))
        return {"auc": (weighted_auc(y, rows[:, 1]), weighted_auc(y, rows[:, 2])),
                "log_loss": (weighted_mean(loss[:, 0]), weighted_mean(loss[:, 1]))}
    sq = (rows[:, 1:] - y[:, None]) ** 2
    return {"rmse": (weighted_mean(sq[:, 0], root=True), weighted_mean(sq[:, 1], root=True))}


def task_metrics(kind: str, rows: Sequence[np.ndarray], n_boot: int, seed: int) -> dict[str, Any]:
    """Per metric: federated, guest-only and their paired difference (rows ``[y, p_fed, p_guest]``)."""
    stats = [(len(r), _task_stats(kind, r)) for r in rows]
    out: dict[str, Any] = {}
    for name in stats[0][1]:
        fed = [(n, s[name][0]) for n, s in stats]
        alone = [(n, s[name][1]) for n, s in stats]
        diff = [(n, weighted_difference(s[name][0], s[name][1])) for n, s in stats]
        out[name] = {"federated": seed_bootstrap(fed, n_boot, seed),
                     "guest_only": seed_bootstrap(alone, n_boot, seed),
                     "difference": seed_bootstrap(diff, n_boot, seed)}
    return out


def hit_metrics(hits: Sequence[np.ndarray], n_boot: int, seed: int) -> dict[str, Any]:
    """HR@10 of the federated and the guest-only model (``[users, 2]`` hits per seed) and their paired
    difference, by the two-level bootstrap over seeds and users."""
    fed = [(len(h), weighted_mean(h[:, 0])) for h in hits]
    alone = [(len(h), weighted_mean(h[:, 1])) for h in hits]
    diff = [(len(h), weighted_difference(weighted_mean(h[:, 0]), weighted_mean(h[:, 1]))) for h in hits]
    return {"federated": seed_bootstrap(fed, n_boot, seed), "guest_only": seed_bootstrap(alone, n_boot, seed),
            "difference": seed_bootstrap(diff, n_boot, seed), "users": int(np.mean([len(h) for h in hits]))}


def attack_summary(runs: Sequence[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Per attack over seeds: one seed -> ``evaluate``'s result; several -> the two-level bootstrap of
    the mean AUC over the users each attack scores (per-seed results under ``"per_seed"``)."""
    out: dict[str, Any] = {}
    for name in runs[0]["evaluation"]:
        per = [r["evaluation"][name] for r in runs]
        res: dict[str, Any] = {"per_seed": per, "coverage": float(np.mean([p["coverage"] for p in per])),
                               "n": int(np.mean([p["n"] for p in per]))}
        if len(runs) == 1:
            res["auc"] = per[0]["auc"]
        else:
            scored = []
            for r in runs:
                t, sc = r["truth"], np.asarray(r["scores"][name if name in r["scores"] else "completion"]
                                               .scores, dtype=np.float64)
                if name == EXCESS:
                    if (st := _excess_stat(t, r["held"], sc)) is not None:
                        scored.append(st)
                    continue
                t = r["held"] if name == HELDOUT else t
                m = np.isfinite(t) & np.isfinite(sc)
                if m.any() and 0 < t[m].sum() < m.sum():
                    scored.append((int(m.sum()), weighted_auc(t[m], sc[m])))
            res["auc"] = seed_bootstrap(scored, n_boot, seed) if scored else None
            res["seeds_scored"] = len(scored)
        out[name] = res
    return out


# ---------------------------------------------------------------------------------------------- driver
def one_run(task: Task, point: dict[str, float], seed: int, train: pd.DataFrame, test: pd.DataFrame,
            guest_only: tuple[np.ndarray, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train the federated model at one DP point and seed, attack its transcript; print one line."""
    fed = run_federated(task, train, test, _config(task, point, seed, args))
    guest_pred, guest_model = guest_only
    hits = None
    if fed["ranker"] is not None:  # ratings: HR@10 of both models on the same held-out users
        hits = np.column_stack([hits_at_k(fed["ranker"], test), hits_at_k(guest_model, test)])
    t0 = time.perf_counter()
    scores, evaluation, truth, held = run_attacks_on(task, fed, train, test, args, seed)
    y = test["rating"].to_numpy(dtype=np.float64)
    run = {"seed": seed, "epsilon": fed["epsilon"], "fit_seconds": fed["fit_seconds"],
           "attack_seconds": time.perf_counter() - t0, "epochs": fed["epochs"],
           "releases": len(fed["transcript"].releases), "host_found": fed["host_found"],
           "rows": np.column_stack([y, fed["pred"], guest_pred]), "hits": hits, "scores": scores,
           "evaluation": evaluation, "truth": truth, "held": held}
    worst = max((e["auc"]["point"] for a, e in evaluation.items()
                 if e["auc"] is not None and a in bar_attacks(evaluation)), default=float("nan"))
    print(f"  {task.name} seed {seed} {_label(point)} ε={_eps(fed['epsilon'])}: "
          f"{_task_line(task.kind, run['rows'])}; max attack AUC {worst:.3f}; fit {fed['fit_seconds']:.1f}s, "
          f"attacks {run['attack_seconds']:.1f}s", flush=True)
    return run


def summarise_point(task: Task, point: dict[str, float], runs: list[dict[str, Any]],
                    args: argparse.Namespace) -> dict[str, Any]:
    spent = [r["epsilon"] for r in runs]
    res = {"dp": point, "label": _label(point),
           "epsilon": None if any(e is None for e in spent) else float(np.mean(spent)),
           "epsilon_per_seed": spent, "seeds": [r["seed"] for r in runs],
           "task": task_metrics(task.kind, [r["rows"] for r in runs], args.n_boot, args.seeds[0]),
           **({"hr10": hit_metrics([r["hits"] for r in runs], args.n_boot, args.seeds[0])}
              if all(r.get("hits") is not None and len(r["hits"]) for r in runs) else {}),
           "attacks": attack_summary(runs, args.n_boot, args.seeds[0]),
           "runs": [{k: r[k] for k in ("seed", "epsilon", "fit_seconds", "attack_seconds", "epochs",
                                       "releases", "host_found")} for r in runs]}
    res["bars"] = bars(task.kind, res)
    return res


def bench_task(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    """Every seed x DP point of one dataset; a failed run is recorded and the sweep goes on."""
    from fedrec.data import random_split

    points = dp_points(args)
    per_point: list[list[dict[str, Any]]] = [[] for _ in points]
    failures: list[dict[str, Any]] = []
    for seed in args.seeds:
        train, test = random_split(task.guest.interactions, test_fraction=args.test_fraction, seed=seed)
        guest_only = run_guest_only(task, train, test, _config(task, points[0], seed, args))
        for j, point in enumerate(points):
            try:
                per_point[j].append(one_run(task, point, seed, train, test, guest_only, args))
            except Exception as exc:  # a failed configuration is a result too (recorded, sweep goes on)
                failures.append({"dp": point, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
                print(f"  {task.name} seed {seed} {_label(point)}: FAILED: {failures[-1]['error']}",
                      flush=True)
    g = task.guest.interactions
    return {"name": task.name, "kind": task.kind, "n_rows": len(g),
            "n_host_users": len(task.host.user_features),
            "positives": float(g["rating"].sum()) if task.kind in BINARY else None,
            "host_columns": list(map(str, task.host.user_features.columns)),
            "params": {k: v for k, v in vars(_config(task, points[0], args.seeds[0], args)).items()
                       if not k.startswith("dp_guest")},
            "meta": task.meta, "failures": failures,
            "points": [summarise_point(task, p, runs, args) for p, runs in zip(points, per_point, strict=True)
                       if runs]}


def _label(point: dict[str, float]) -> str:
    if "dp_guest_epsilon" in point:
        return f"target ε={point['dp_guest_epsilon']:g}"
    z = point["dp_guest_noise_multiplier"]
    return "DP off" if z == 0 else f"z={z:g}"


def _task_line(kind: str, rows: np.ndarray) -> str:
    w = np.ones(len(rows))
    return ", ".join(f"{name.upper()} fed {fed(w):.4f} / guest-only {alone(w):.4f}"
                     for name, (fed, alone) in _task_stats(kind, rows).items())


def bar_attacks(attacks: Mapping[str, Any]) -> list[str]:
    """The attacks the bar applies to: all but the host-only baseline, and with held-out clicks the
    completion's excess over them in place of its raw AUC (which the held-out AUC shows is the host
    model's population knowledge; see :func:`run_attacks_on`)."""
    drop = {BASELINE_ATTACK, HELDOUT} | ({"completion"} if EXCESS in attacks else set())
    return [a for a in attacks if a not in drop]


def bars(kind: str, res: dict[str, Any]) -> dict[str, Any]:
    """The issue's two bars at one DP point (:func:`bar_attacks`)."""
    aucs = {a: res["attacks"][a]["auc"] for a in bar_attacks(res["attacks"])
            if res["attacks"][a]["auc"] is not None}
    attack_ok = all(c["point"] <= BAR_AUC and c["high"] <= BAR_HIGH for c in aucs.values())
    d = res["task"]["auc" if kind in BINARY else "rmse"]["difference"]
    gain = d["low"] > 0 if kind in BINARY else d["high"] < 0
    worst = max(aucs.items(), key=lambda kv: kv[1]["point"], default=(None, None))
    # below chance beyond the CI: the score ranks the labels, reversed (an attacker with a prior on the
    # direction would flip it); outside the bar as stated, reported
    reversed_ = sorted(a for a, c in aucs.items() if c["high"] < 1.0 - BAR_AUC)
    return {"attacks_within_bound": bool(attack_ok), "federated_beats_guest_only": bool(gain),
            "both": bool(attack_ok and gain), "worst_attack": worst[0], "worst_auc": worst[1],
            "reversed_attacks": reversed_}


# ---------------------------------------------------------------------------------------------- report
def _ci(c: dict[str, float] | None, digits: int = 3) -> str:
    if c is None:
        return "n/a"
    return f"{c['point']:.{digits}f} [{c['low']:.{digits}f}, {c['high']:.{digits}f}]"


def _eps(e: float | None) -> str:
    return "∞ (off)" if e is None else f"{e:.3g}"


def print_tables(res: dict[str, Any]) -> None:
    for d in res["datasets"]:
        for f in d["failures"]:
            print(f"FAILED {d['name']} seed {f['seed']} {_label(f['dp'])}: {f['error']}")
        if not d["points"]:
            continue
        metric = "auc" if d["kind"] in BINARY else "rmse"
        print(f"\n{d['name']} ({d['n_rows']} rows, seeds {d['points'][0]['seeds']}): task metric on "
              "held-out rows")
        print(f"{'DP':<16} {'ε':>9}  {'federated ' + metric.upper():<26} {'guest-only':<26} "
              f"{'difference (paired)':<28} bars")
        for p in d["points"]:
            t = p["task"][metric]
            b = p["bars"]
            flags = ("attack≤bound " if b["attacks_within_bound"] else "") + (
                "fed>guest" if b["federated_beats_guest_only"] else "")
            print(f"{p['label']:<16} {_eps(p['epsilon']):>9}  {_ci(t['federated'], 4):<26} "
                  f"{_ci(t['guest_only'], 4):<26} {_ci(t['difference'], 4):<28} {flags}")
        for p in d["points"]:
            if "hr10" in p:
                t = p["hr10"]
                print(f"{'  HR@10 ' + p['label']:<26} {_ci(t['federated'], 4):<26} "
                      f"{_ci(t['guest_only'], 4):<26} {_ci(t['difference'], 4)}")
        if d["kind"] in BINARY:
            for p in d["points"]:
                t = p["task"]["log_loss"]
                print(f"{'  log-loss ' + p['label']:<26} {_ci(t['federated'], 4):<26} "
                      f"{_ci(t['guest_only'], 4):<26} {_ci(t['difference'], 4)}")
        print(f"\n{d['name']}: attack AUC [95% CI] (coverage) per DP point")
        head = "".join(f"{p['label'] + ' ε=' + _eps(p['epsilon']):<30}" for p in d["points"])
        print(f"{'attack':<20} {head}")
        for name in d["points"][0]["attacks"]:
            cells = "".join(f"{_ci(a['auc']) + ' ({:.2f})'.format(a['coverage']):<30}"
                            for a in (p["attacks"][name] for p in d["points"]))
            print(f"{name:<20} {cells}")


def _x_positions(points: Sequence[dict[str, Any]]) -> tuple[np.ndarray, float | None]:
    """ε on a log axis; DP off (ε = ∞) one decade right of the largest finite ε."""
    finite = [p["epsilon"] for p in points if p["epsilon"] is not None]
    off = 10 * max(finite) if finite else 1.0
    return np.array([off if p["epsilon"] is None else p["epsilon"] for p in points]), (
        off if any(p["epsilon"] is None for p in points) else None)


def _errorbar(ax: Any, x: np.ndarray, cis: Sequence[dict[str, float] | None], **kw: Any) -> None:
    keep = [i for i, c in enumerate(cis) if c is not None]
    if not keep:
        return
    pts = np.array([cis[i]["point"] for i in keep])  # type: ignore[index]
    lo = pts - np.array([cis[i]["low"] for i in keep])  # type: ignore[index]
    hi = np.array([cis[i]["high"] for i in keep]) - pts  # type: ignore[index]
    order = np.argsort(x[keep])
    ax.errorbar(x[keep][order], pts[order], yerr=[lo[order], hi[order]], capsize=3, marker="o", ms=3, **kw)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [d for d in res["datasets"] if d["points"]]
    if not sets:
        return
    fig, axes = plt.subplots(2, len(sets), figsize=(6.0 * len(sets), 8.0), squeeze=False)
    for col, d in enumerate(sets):
        x, off = _x_positions(d["points"])
        metric = "auc" if d["kind"] in BINARY else "rmse"
        ax = axes[0][col]
        for model, style in (("federated", "-"), ("guest_only", "--")):
            _errorbar(ax, x, [p["task"][metric][model] for p in d["points"]], ls=style, label=model)
        ax.set_ylabel(f"held-out {metric.upper()} (95% CI)")
        ax.set_title(f"{d['name']}: task metric vs ε (seeds {len(d['points'][0]['seeds'])})", fontsize=9)
        ax = axes[1][col]
        for name in d["points"][0]["attacks"]:
            _errorbar(ax, x, [p["attacks"][name]["auc"] for p in d["points"]], label=name,
                      ls=":" if name == BASELINE_ATTACK else "-", lw=1)
        ax.axhline(0.5, color="gray", lw=0.8)
        ax.axhline(BAR_AUC, color="red", lw=0.8, ls="--", label=f"bar {BAR_AUC}")
        ax.set_ylabel("attack AUC (95% CI)")
        ax.set_title(f"{d['name']}: label-inference attacks vs ε", fontsize=9)
        ticks = np.unique(x)
        names = ["∞\n(off)" if off is not None and t == off else f"{t:.3g}" for t in ticks]
        for a in axes[:, col]:
            a.set_xscale("log")
            a.set_xticks(ticks, names, fontsize=7)
            a.minorticks_off()
            a.set_xlabel(f"ε for the whole training (δ = {res['args']['dp_delta']:g})")
            a.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(res: dict[str, Any], path: Path) -> None:
    lines = ["# Label leakage vs guest label DP (benchmarks/leakage.py)", "",
             f"Command: `{res['command']}` ({res['seconds']:.0f} s, backend {res['args']['backend']}, "
             f"validation {res['args']['validation']}, δ = {res['args']['dp_delta']}).", "",
             "Attack AUC: the highest of the attacks the bar applies to, 95% CI; bar: AUC ≤ 0.55 and upper "
             "bound ≤ 0.60. Conversions: `completion` (the host's trained model scoring its training "
             "clicks) is shown beside the same model on held-out clicks, whose labels never reached "
             "the host; their difference + 0.5 (`completion_excess`) is what it learned about the "
             "training labels themselves and takes `completion`'s place in the bar. Task: held-out "
             "metric of the federated model, guest-only model, paired difference (95% CI).", ""]
    for d in res["datasets"]:
        metric = "AUC" if d["kind"] in BINARY else "RMSE"
        if d["failures"]:
            first = d["failures"][0]["error"]
            lines += [f"{d['name']}: {len(d['failures'])} run(s) failed, e.g. {first}", ""]
        if not d["points"]:
            continue
        lines += [f"## {d['name']} ({d['n_rows']} rows; host columns {', '.join(d['host_columns'])})", "",
                  f"| DP | ε | federated {metric} | guest-only {metric} | difference | worst attack | AUC | "
                  "host model AUC: train / held-out | bars |", "|---|---|---|---|---|---|---|---|---|"]
        for p in d["points"]:
            t, b = p["task"][metric.lower()], p["bars"]
            ok = "both" if b["both"] else ("attacks only" if b["attacks_within_bound"] else
                                           "gain only" if b["federated_beats_guest_only"] else "neither")
            lines.append(f"| {p['label']} | {_eps(p['epsilon'])} | {_ci(t['federated'], 4)} | "
                         f"{_ci(t['guest_only'], 4)} | {_ci(t['difference'], 4)} | {b['worst_attack']} | "
                         f"{_ci(b['worst_auc'])} | {_completion_cell(p['attacks'])} | {ok} |")
        meets = [p["label"] for p in d["points"] if p["bars"]["both"]]
        lines += ["", f"Points meeting both bars: {', '.join(meets) if meets else 'none'}."]
        if any("hr10" in p for p in d["points"]):
            lines += ["", f"HR@{HR_K} (held-out items rated ≥ {HR_LIKED:g}, training items filtered, all "
                          "items ranked; 95% CI over seeds and users):", "",
                      "| DP | ε | federated | guest-only | difference | users |", "|---|---|---|---|---|---|"]
            lines += [f"| {p['label']} | {_eps(p['epsilon'])} | {_ci(p['hr10']['federated'], 4)} | "
                      f"{_ci(p['hr10']['guest_only'], 4)} | {_ci(p['hr10']['difference'], 4)} | "
                      f"{p['hr10']['users']} |" for p in d["points"] if "hr10" in p]
        rev = [f"{p['label']}: {', '.join(p['bars']['reversed_attacks'])}" for p in d["points"]
               if p["bars"]["reversed_attacks"]]
        if rev:
            lines.append(f"Attacks below chance beyond their CI (AUC upper bound < {1 - BAR_AUC:.2f}: "
                         f"informative in reverse): {'; '.join(rev)}.")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _completion_cell(attacks: Mapping[str, Any]) -> str:
    train = attacks.get("completion", {}).get("auc")
    held = attacks.get(HELDOUT, {}).get("auc")
    return f"{_ci(train) if train else '–'} / {_ci(held) if held else '–'}"


def _floats(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v < 0 or not math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected finite numbers >= 0, got {text!r}")
    return vals


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (< 2 min): small synthetic funnel only, DP off and z=1, one seed, "
                         "200 bootstrap resamples")
    ap.add_argument("--datasets", type=lambda s: [t.strip() for t in s.split(",") if t.strip()], default=None,
                    help=f"comma-separated, from {', '.join(DATASETS)} (default: synthetic-ads, and "
                         "talkingdata when its file is present)")
    ap.add_argument("--noise-multipliers", type=_floats, default=[0.0, 0.03, 0.1, 0.3, 1.0, 3.0],
                    help="dp_guest_noise_multiplier values, 0 = DP off (0,0.03,0.1,0.3,1,3)")
    ap.add_argument("--target-epsilons", type=_floats, default=[],
                    help="dp_guest_epsilon values: the guest calibrates the noise for this ε over the "
                         "whole training (none)")
    ap.add_argument("--dp-delta", type=float, default=1e-5, help="δ of the reported ε (1e-5)")
    ap.add_argument("--dp-clip", type=float, default=1.0, help="dp_guest_clip, per-sample clip (1.0)")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2],
                    help="comma-separated seeds of the split and model init (0,1,2; --quick: 0)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic datasets (0)")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of the rows (0.2)")
    ap.add_argument("--backend", choices=("plain", "ckks"), default="plain",
                    help="crypto backend of the federated runs (plain; see the docstring)")
    ap.add_argument("--validation", choices=("none", "random"), default="none",
                    help="the guest's early-stopping split (none: fixed epochs, ε covers every release)")
    ap.add_argument("--epochs", type=int, default=None, help="override every dataset's epochs")
    ap.add_argument("--batch-size", type=int, default=None, help="override every dataset's batch rows")
    ap.add_argument("--n-factors", type=int, default=None, help="override every dataset's FM factors")
    ap.add_argument("--lr", type=float, default=None, help="override every dataset's step size (0.02)")
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                    help="override the optimizer of both parties and the guest-only model (adam)")
    ap.add_argument("--host-optimizer", choices=("auto", "adam", "sgd"), default=None,
                    help="HeteroFMConfig.host_optimizer: the host field's update (default: the config's)")
    ap.add_argument("--plain-bound", type=float, default=None,
                    help="HeteroFMConfig.plain_bound (default 64); the label-DP sensitivity grows with it")
    ap.add_argument("--layout", choices=("compact", "hiding"), default=None,
                    help="HeteroFMConfig.layout (default: the config's); label DP's noise is much smaller "
                         "with compact (fedrec/protocols/hetero_fm/label_dp.py)")
    ap.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (500)")
    ap.add_argument("--out", type=Path, default=OUT, help="results folder (benchmarks/results)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="combine leakage.json files of runs made in parallel (one dataset each) into "
                         "--out (JSON, PNG, markdown); trains nothing")
    return ap


def main() -> None:
    import sys

    import torch

    args = build_parser().parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    if args.quick:
        args.noise_multipliers, args.target_epsilons, args.seeds, args.n_boot = [0.0, 1.0], [], [0], 200
        args.datasets = args.datasets or ["synthetic-ads"]
    if args.datasets is None:
        args.datasets = ["synthetic-ads"] + (["talkingdata"] if (DATA / TALKINGDATA).is_file() else [])
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown or not args.datasets or not args.seeds or not dp_points(args):
        build_parser().error(f"need datasets among {DATASETS}, seeds and DP points; unknown: {unknown}")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="crypto backend 'plain'")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "command": " ".join(["python", "benchmarks/leakage.py", *sys.argv[1:]]),
                           "datasets": [], "skipped": []}
    for name in args.datasets:
        task = load_task(name, args)
        if task is None:
            print(f"{name}: files not found under {DATA}; skipped", flush=True)
            res["skipped"].append(name)
            continue
        print(f"{name}: {len(task.guest.interactions)} rows, {len(task.host.user_features)} host rows, "
              f"params {task.params}", flush=True)
        res["datasets"].append(bench_task(task, args))
    res.update(seconds=round(time.perf_counter() - t0, 1), machine=platform.platform(),
               python=platform.python_version(), cpu_count=os.cpu_count(), load_average=list(os.getloadavg()))
    print_tables(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "leakage.json").write_text(json.dumps(res, indent=1, allow_nan=False, default=_json))
    plot(res, args.out / "leakage.png")
    write_markdown(res, args.out / "leakage.md")
    print(f"\nwrote {args.out / 'leakage.json'}, leakage.png and leakage.md in {res['seconds']}s")


def merge(paths: Sequence[Path], out: Path) -> None:
    """One result from runs made in parallel (a dataset each, or DP points of one dataset with the same
    seeds): datasets concatenated, points of the same dataset joined, commands and load kept per run."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    datasets: dict[str, dict[str, Any]] = {}
    for d in (d for p in parts for d in p["datasets"]):  # a dataset run in several parts: its points joined
        if d["name"] in datasets:
            datasets[d["name"]]["points"] += d["points"]
            datasets[d["name"]]["failures"] += d["failures"]
        else:
            datasets[d["name"]] = d
    for d in datasets.values():
        d["points"].sort(key=lambda q: math.inf if q["epsilon"] is None else q["epsilon"])
    res = {**parts[0], "datasets": list(datasets.values()),
           "skipped": [d for p in parts for d in p.get("skipped", [])],
           "command": " ; ".join(p["command"] for p in parts) + " ; python benchmarks/leakage.py --merge ...",
           "seconds": max(p["seconds"] for p in parts), "runs": [
               {k: p.get(k) for k in ("command", "seconds", "load_average", "args")} for p in parts]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "leakage.json").write_text(json.dumps(res, indent=1, allow_nan=False, default=_json))
    plot(res, out / "leakage.png")
    write_markdown(res, out / "leakage.md")
    print_tables(res)
    print(f"\nmerged {len(parts)} runs into {out / 'leakage.json'}, leakage.png and leakage.md")


def _json(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON: {type(obj).__name__}")


if __name__ == "__main__":
    main()
