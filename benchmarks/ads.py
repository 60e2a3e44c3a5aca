#!/usr/bin/env python3
"""Federated advertising (issue 15): the conversion model and what the platform's view leaks.

For each dataset, ``--folds`` stratified folds x ``--seeds`` fold assignments (default 5 x 4 = 20 runs;
model seed = run index), four models on the same training clicks, scored on the same held-out clicks:

* ``advertiser_only``: the FM on the advertiser's fields (campaign/app + its campaign columns, item age);
* ``platform_only``: one-hot logistic regression (``PlatformLogit``) on the platform's click features alone,
  as if the platform had the true labels;
* ``centralized``: the pooled FM on both parties' columns (the reference no deployment has), computed by
  the protocol with label DP off, which equals the centralized FM (``tests/test_hetero_fm_exact.py``) and,
  unlike the library FM, scores new clicks with their platform features;
* ``federated``: the vertical FM (:mod:`fedrec.protocols.hetero_fm`) over the in-memory twin of the
  transport (the protocol code and wire encoding, no sockets), **default configuration: label DP on,
  ε = 2 for the whole training**;
* ``centralized_logit``: one-hot logistic regression on campaign + platform columns (the model class of
  the issue's reference numbers); ``centralized_logit_raw``: the same on the platform's columns as logged
  (TalkingData: raw ip, rare values kept), where ``centralized_logit`` has them as the conversion model
  does (``fedrec.ads.conversion.platform_features``);
* ``advertiser_logit``: one-hot logistic regression on the campaign, L2 tuned on validation slices: the
  strongest model the advertiser has alone;
* ``federated_refit``: the federated model's platform terms ``h = z_H + <e_G, e_H>`` as one numeric column
  beside the campaign in the advertiser's logistic regression, fitted on its exact training labels (an
  advertiser-side step after training that releases nothing; the platform sends its final partials of
  the training clicks as it does for scoring). Compared with ``advertiser_logit``.

Hyperparameters: chosen on validation slices of the training folds (``benchmarks/ads_tuning.py``), never
on the held-out folds; each model has its own (``FEDERATED``, ``CENTRAL``, ``ADVERTISER``, ``LOGIT_L2``).

Backend ``plain`` for the sweep (CKKS changes the released numbers by its flooding noise only;
``--ckks-check`` trains fold 0 with CKKS and with plain, DP off, and reports the largest difference of the
predictions, and the default configuration with CKKS).

Held-out clicks are new clicks: the platform computes their partials from its trained half
(``export_partials``), the advertiser joins them with its terms (``fedrec.ads.conversion.score_clicks``).
Metrics: AUC and log-loss per model, mean over runs with a two-level bootstrap CI (runs, then clicks
within a run: ``fedrec.eval.metrics.seed_bootstrap``), and paired differences (the same resampled clicks).

Leakage (``fedrec.eval.leakage``) on every federated run's host transcript (what the platform recorded):
each attack's AUC against the training labels, aggregated over runs the same way; the bar (issue 15:
≤ 0.55) applies to every attack but the host-without-guest baseline, with the trained half's completion
and the ``pooled`` least squares replaced by their excess over held-out clicks (``benchmarks/leakage.py``
explains why for completion; ``pooled`` is a linear function of the host's features, :func:`pooled_linear`,
so it scores held-out clicks with the same function).

Returned conversions: the platform's model AUC against ε per mechanism comes from
``benchmarks/ads_returns.py`` (its JSON, ``--returns``), shown here beside the conversion model.

Datasets: ``talkingdata`` (``DATA/ads/talkingdata/train_sample.csv``: advertiser = label + ``app``,
platform = ``ip, device, os, channel`` + click hour; skipped when absent) and ``synthetic`` (the funnel,
conversions attributed to clicks within 7 days and the clicks of the last 7 days dropped - the delay
cut of ``fedrec.ads.conversion.split_for_training``).

Examples::

    .venv/bin/python benchmarks/ads.py --quick                         # smoke run (synthetic, 2 runs)
    nice .venv/bin/python benchmarks/ads.py                            # the stored results (20 runs each)
    .venv/bin/python benchmarks/ads.py --datasets synthetic --ckks-check
    .venv/bin/python benchmarks/ads.py --report-only                   # table/PNG/markdown from the JSON
    # the bar's comparisons only, 60 runs (12 fold assignments), L2 of the logits as the product: ads_tight.*
    nice .venv/bin/python benchmarks/ads.py --datasets talkingdata --seeds 12 --no-attacks --logit-l2 auto \
        --models advertiser_only,advertiser_logit,federated,federated_refit,centralized,centralized_logit \
        --name ads_tight
    # CKKS against plain on one fold (DP off: number by number; DP on: among 20 plain label-DP draws)
    nice .venv/bin/python benchmarks/ads.py --datasets synthetic --seeds 1 --only-runs 0 --no-attacks \
        --models federated,federated_refit,advertiser_logit --logit-l2 auto --ckks-check \
        --ckks-plain-draws 20 --name ads_ckks

Writes benchmarks/results/ads.json, ads.png and ads.md (``--name``: another stem).
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
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.eval.metrics import (  # noqa: E402
    WeightedStat,
    auc,
    seed_bootstrap,
    weighted_auc,
    weighted_difference,
    weighted_mean,
)

OUT = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("FEDREC_DATA_DIR", REPO.parent / "shared" / "data"))
TALKINGDATA = Path("ads") / "talkingdata" / "train_sample.csv"
DATASETS = ("talkingdata", "synthetic")
MODELS = ("advertiser_only", "platform_only", "centralized", "federated", "centralized_logit",
          "advertiser_logit", "federated_refit", "centralized_logit_raw")
#: the paired differences reported (a − b)
PAIRS = (("federated", "advertiser_only"), ("federated", "centralized"), ("centralized", "advertiser_only"),
         ("platform_only", "advertiser_only"), ("federated_refit", "advertiser_logit"),
         ("centralized_logit", "advertiser_logit"), ("centralized_logit_raw", "advertiser_logit"),
         ("federated_refit", "federated"), ("federated_refit", "centralized"),
         ("federated_refit", "centralized_logit"))
#: the platform's features as logged (no pooling, no click counts), for the reference logistic regression
RAW_PLATFORM: dict[str, Any] = {}
BASELINE, HELDOUT, EXCESS = "completion_baseline", "completion_heldout", "completion_excess"
POOLED_LINEAR, POOLED_HELDOUT, POOLED_EXCESS = "pooled_linear", "pooled_heldout", "pooled_excess"
BAR_ATTACK, BAR_CENTRAL = 0.55, 0.005
log = logging.getLogger("ads_bench")


# ---------------------------------------------------------------------------------------------- data
def load(name: str, args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]] | None:
    """``(advertiser view, platform view, meta)`` of a dataset (``None``: its file is absent)."""
    from fedrec.ads import attribute, read_talkingdata, synthetic_funnel
    from fedrec.ads.conversion import split_for_training

    if name == "talkingdata":
        path = DATA / TALKINGDATA
        if not path.is_file():
            return None
        log_ = read_talkingdata(path)
        s = split_for_training(log_)  # the platform's features as the model uses them (platform_features)
        RAW_PLATFORM[name] = split_for_training(log_, min_clicks=1, count_columns=()).platform
        return s.advertiser, s.platform, {"source": str(path), **s.summary()}
    from fedrec.data import SyntheticConfig, generate

    users, per_user = (2000, 20.0) if args.quick else (5000, 40.0)
    clicks, events = synthetic_funnel(generate(SyntheticConfig(seed=0, n_users=users,
                                                               impressions_per_user=per_user)))
    labelled, report = attribute(clicks, events, window="7D")
    s = split_for_training(labelled, cutoff=labelled.frame["time"].max(), window="7D", recent="drop")
    return s.advertiser, s.platform, {"users": users, "impressions_per_user": per_user,
                                      "attribution": report.to_dict(), **s.summary()}


def params(name: str) -> dict[str, Any]:
    """The federated model's configuration (label DP on, ε = 2: the library default) per dataset."""
    from fedrec.ads.conversion import MODEL_DEFAULTS

    return {**MODEL_DEFAULTS, **FEDERATED[name]}


#: hyperparameters chosen on validation slices of training folds (benchmarks/ads_tuning.py; never on the
#: held-out folds), each model on its own grid of the same axes (L2 x batches x lr x epochs):
#: TalkingData: the federated model with one batch per epoch (label DP's noise per epoch grows with the
#: batches: the fewer, the better), the pooled FM and the advertiser's FM with 16384-click batches.
#: Synthetic: not re-tuned this round (the previous defaults with lr 0.02, 2048-click batches).
FEDERATED: dict[str, dict[str, Any]] = {
    "talkingdata": {"batch_size": 131072, "lr": 0.1, "epochs": 3, "l2_linear": 1e-4, "l2_factors": 1e-3},
    "synthetic": {"batch_size": 2048, "lr": 0.02, "epochs": 3, "l2_linear": 0.01, "l2_factors": 0.1},
}
CENTRAL: dict[str, dict[str, Any]] = {
    "talkingdata": {"batch_size": 16384, "lr": 0.05, "epochs": 3, "l2_linear": 1e-4, "l2_factors": 1e-3},
    "synthetic": {},
}
ADVERTISER: dict[str, dict[str, Any]] = {
    "talkingdata": {"batch_size": 16384, "lr": 0.05, "epochs": 6, "l2_linear": 1e-3, "l2_factors": 1e-2},
    "synthetic": {},
}
#: L2 (summed loss) of the one-hot logistic regressions of the advertiser (and of its refit beside the
#: platform's terms), chosen on the same validation slices among 0.01-10
LOGIT_L2: dict[str, float] = {"talkingdata": 0.1, "synthetic": 1.0}


def folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold[idx] = np.arange(len(idx)) % k
    return fold


# ---------------------------------------------------------------------------------------------- models
def fit_advertiser_only(cfg: Any, train: pd.DataFrame, test: pd.DataFrame, adv: Any) -> np.ndarray:
    """The FM on the advertiser's fields alone (campaign, its campaign columns, item age)."""
    from fedrec.models import FactorizationMachine

    fm = FactorizationMachine(**{**cfg.fm_params(), "use_user_features": False})
    fm.fit(train, item_features=adv.item_features, validation="none")
    return np.asarray(fm.predict(test), dtype=np.float64)


def fit_logit(train: pd.DataFrame, test: pd.DataFrame, plat: Any, with_campaign: bool) -> np.ndarray:
    """One-hot logistic regression (``PlatformLogit``, L2 1) on the platform's columns (``platform_only``:
    the platform's own model had it the true labels) or on campaign + platform columns
    (``centralized_logit``: the issue's reference model class)."""
    from fedrec.ads import PlatformLogit

    f = plat.user_features
    numeric = [c for c in f.columns if pd.api.types.is_numeric_dtype(f[c].dtype)]
    groups = [c for c in f.columns if c not in numeric]

    def frame(rows: pd.DataFrame) -> pd.DataFrame:
        x = f.loc[rows["user_id"].to_numpy()].reset_index(drop=True)
        if with_campaign:
            x["campaign"] = rows["item_id"].astype("str").to_numpy()
        return x

    model = PlatformLogit([*groups, *(["campaign"] if with_campaign else [])], numeric)
    model.fit(frame(train), train["rating"].to_numpy(dtype=np.float64))
    return np.asarray(model.predict_proba(frame(test)), dtype=np.float64)


def fit_advertiser_logit(train: pd.DataFrame, test: pd.DataFrame, l2: float | str,
                         offsets: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The advertiser's one-hot logistic regression on the campaign (``advertiser_logit``) or, with
    ``offsets`` (the federated model's platform terms ``h`` of the training and the scored clicks), its
    refit beside ``γ h`` (``federated_refit``): both :func:`fedrec.ads.refit.fit_campaign_logit`, the code
    the product runs (``[ads] refit``), fitted on the training clicks only and scored on the held-out
    ones. ``l2``: a number, or ``"auto"`` (cross-validated within the training clicks: the product's
    default)."""
    from fedrec.ads.refit import fit_campaign_logit

    h_tr, h_te = offsets if offsets is not None else (None, None)
    model = fit_campaign_logit(train["item_id"].to_numpy(), train["rating"].to_numpy(dtype=np.float64), h_tr,
                               l2=l2)
    return model.predict_proba(test["item_id"].to_numpy(), h_te)


def platform_terms(fed: dict[str, Any], rows: pd.DataFrame) -> np.ndarray:
    """``h = z_H + <e_G, e_H>``: the platform's share of the federated model's logit for ``rows``, from its
    exported partials (:func:`fedrec.ads.refit.platform_terms`)."""
    from fedrec.ads.refit import platform_terms as terms
    from fedrec.models.vertical import HostPartials

    guest, host = fed["guest"], fed["host"]
    table = HostPartials.from_frame(host.export_partials(rows["user_id"].to_numpy()), guest.config.n_factors)
    return terms(guest, rows, table)


def fit_federated(cfg: Any, train: pd.DataFrame, test: pd.DataFrame, adv: Any, plat: Any) -> dict[str, Any]:
    """One protocol run over the in-memory twin with the host's transcript; held-out clicks scored from
    the platform's exported partials."""
    from fedrec.ads.conversion import score_clicks
    from fedrec.models.vertical import HostPartials
    from fedrec.protocols.hetero_fm import HeteroFMGuest, HeteroFMHost
    from fedrec.protocols.hetero_fm.transcript import HostTranscript
    from fedrec.transport import MemoryNetwork, TransportConfig, run_parties

    net = MemoryNetwork(TransportConfig(max_message_bytes=2**31 - 1, max_header_bytes=2**24))
    transcript = HostTranscript()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg, transcript=transcript)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    feats = plat.user_features
    # the advertiser holds every click of its campaigns (training and held-out); PSI aligns them all, and
    # only training clicks ever enter a batch (so the trained half also scores the held-out ones)
    clicks = pd.Index(pd.concat([train["user_id"], test["user_id"]]).unique())
    aligned = feats.index[feats.index.isin(clicks)]

    def play_guest() -> float:
        t0 = time.perf_counter()
        try:
            guest.fit(train, item_features=adv.item_features, validation="none", aligned_users=aligned)
        finally:
            guest.close()
        return time.perf_counter() - t0

    out = run_parties({"guest": play_guest, "host": lambda: host.serve(feats.loc[aligned])}, timeout=4 * 3600)
    ids = test["user_id"].to_numpy()
    table = HostPartials.from_frame(host.export_partials(ids), cfg.n_factors)
    pred = score_clicks(guest.local, test, table)
    return {"pred": pred, "epsilon": guest.privacy_spent(), "seconds": out["guest"], "host": host,
            "guest": guest.local, "transcript": transcript}


def attack(fed: dict[str, Any], train: pd.DataFrame, test: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Every attack's scores over the aligned clicks, the training labels (truth) and the held-out labels
    (for the trained half's completion on clicks whose labels never reached the platform)."""
    from fedrec.eval.leakage import HostParams, run_attacks, user_truth

    host, transcript = fed["host"], fed["transcript"]
    design, hp = host.aligned_design(), HostParams.from_host(host)
    scores = run_attacks(transcript, design, host_params=hp, seed=seed)
    out = {name: np.asarray(sc.scores, dtype=np.float64) for name, sc in scores.items()}
    out[POOLED_LINEAR] = pooled_linear(transcript, design, hp)
    return {"scores": out,
            "truth": user_truth(train, transcript.aligned, "any"),
            "held": user_truth(test, transcript.aligned, "any")}


def pooled_linear(transcript: Any, design: Any, hp: Any, damp: float = 0.1) -> np.ndarray:
    """The ``pooled`` attack (``fedrec.eval.leakage``) as what it is, a linear function of the host's
    features, evaluated on every aligned click. Its ridge least squares ``min ‖A ē − ρ‖² + d² ‖ē‖²`` (row
    ``(b, j)`` of ``A``: ``c̄_b x_j(u)`` over the users of release ``b``) has the solution ``ē = Aᵀ y``,
    ``y = (A Aᵀ + d²)⁻¹ ρ``: ``ē_u = Σ_b c̄_b Σ_j x_j(u) y_bj``. Summed over every release, this scores the
    held-out clicks too (whose labels never reached the platform) with the same function, so its AUC on
    them is what the attack knows about the population; on training clicks in every release (one batch
    per epoch) it equals ``pooled`` exactly."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator, cg

    from fedrec.eval.leakage import _check_inputs, _prepare

    x = _check_inputs(transcript, design, hp)
    rels = [r for r in _prepare(transcript, x, hp) if len(r.users) and r.xb.nnz]
    n = x.shape[0]
    if not rels:
        return np.full(n, np.nan)
    blocks = []
    for r in rels:
        xt = r.xb.T.tocoo()
        blocks.append(sp.csr_matrix((r.n_samples / len(r.users) * xt.data, (xt.row, r.users[xt.col])),
                                    shape=(len(r.cols), n)))
    a = sp.vstack(blocks).tocsr()
    seen = np.asarray((a != 0).sum(axis=0)).ravel() > 0
    d2 = (damp * float(np.sqrt(a.multiply(a).sum() / max(int(seen.sum()), 1)))) ** 2
    op = LinearOperator((a.shape[0], a.shape[0]), matvec=lambda v: a @ (a.T @ v) + d2 * v, dtype=np.float64)
    y, _ = cg(op, np.concatenate([r.rho for r in rels]), rtol=1e-10, maxiter=5000)
    out, at = np.zeros(n), 0
    for r in rels:
        out += r.n_samples / len(r.users) * (x[:, r.cols] @ y[at:at + len(r.cols)])
        at += len(r.cols)
    return -out  # as ``pooled``: a large residual is a negative's


# ---------------------------------------------------------------------------------------------- one run
def one_run(name: str, adv: Any, plat: Any, run: int, fold_of: np.ndarray, f: int,
            args: argparse.Namespace | None = None) -> dict[str, Any]:
    """One fold: every model of ``args.models`` (default: all of :data:`MODELS`) on the same training
    clicks, scored on the same held-out ones, and the attacks on the federated transcript (unless
    ``args.no_attacks``)."""
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    wanted = set(MODELS if args is None or not args.models else args.models)
    inter = adv.interactions
    train, test = inter[fold_of != f].reset_index(drop=True), inter[fold_of == f].reset_index(drop=True)
    base = {**params(name), "seed": run, "backend": "plain", "timeout": 900.0}
    cfg = HeteroFMConfig(**base)  # the default: label DP on, ε = 2
    if args is not None and getattr(args, "host_optimizer", None):  # the federated models' host update
        cfg = HeteroFMConfig(**base, host_optimizer=args.host_optimizer)
    y = test["rating"].to_numpy(dtype=np.float64)
    preds: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    if "platform_only" in wanted:
        preds["platform_only"] = fit_logit(train, test, plat, with_campaign=False)
    if "centralized_logit" in wanted:
        preds["centralized_logit"] = fit_logit(train, test, plat, with_campaign=True)
    if name in RAW_PLATFORM and "centralized_logit_raw" in wanted:  # platform columns as logged
        preds["centralized_logit_raw"] = fit_logit(train, test, RAW_PLATFORM[name], with_campaign=True)
    t_refs = time.perf_counter() - t0
    adv_cfg = HeteroFMConfig(**{**base, **ADVERTISER[name]})
    if "advertiser_only" in wanted:
        preds["advertiser_only"] = fit_advertiser_only(adv_cfg, train, test, adv)
    l2: float | str = LOGIT_L2[name] if args is None or args.logit_l2 == "tuned" else "auto"
    if "advertiser_logit" in wanted:
        preds["advertiser_logit"] = fit_advertiser_logit(train, test, l2)
    # the pooled FM: the protocol without label DP computes it exactly (tests/test_hetero_fm_exact.py), and
    # scores new clicks with their platform features (the library FM cannot: a click it did not train on is
    # an unknown user whose feature fields it drops)
    if "centralized" in wanted:
        central_cfg = HeteroFMConfig(**{**base, **CENTRAL[name]}, label_dp="off")
        preds["centralized"] = fit_federated(central_cfg, train, test, adv, plat)["pred"]
    fed = fit_federated(cfg, train, test, adv, plat)
    if "federated" in wanted:
        preds["federated"] = fed["pred"]
    if "federated_refit" in wanted:
        preds["federated_refit"] = fit_advertiser_logit(train, test, l2, (platform_terms(fed, train),
                                                                          platform_terms(fed, test)))
    res: dict[str, Any] = {"run": run, "fold": f, "y": y, "preds": preds, "epsilon": fed["epsilon"],
                           "fit_seconds": fed["seconds"], "ref_seconds": t_refs}
    t1 = time.perf_counter()
    res["attacks"] = None if args is not None and args.no_attacks else attack(fed, train, test, run)
    res["attack_seconds"] = time.perf_counter() - t1
    line = ", ".join(f"{k} {auc(y, p):.4f}" for k, p in preds.items())
    print(f"  {name} run {run} (fold {f}): AUC {line}; ε {fed['epsilon']:.3g}; fed {fed['seconds']:.0f}s, "
          f"refs {t_refs:.0f}s, attacks {res['attack_seconds']:.0f}s", flush=True)
    return res


def ckks_check(name: str, adv: Any, plat: Any, fold_of: np.ndarray, draws: int = 0) -> dict[str, Any]:
    """Fold 0 with CKKS and with plain, same seed: DP off (label-DP noise is fresh OS randomness in every
    run, so only the DP-off runs can be compared number by number: the largest difference of the
    predictions is CKKS's own noise), and the default (label DP on) both ways for their AUC. Each also
    with the advertiser's refit (``federated_refit``, L2 cross-validated: the product's default).
    ``draws``: that many more plain default runs of the same fold and seed, whose label-DP noise alone
    differs: the release noise the CKKS default's AUC is compared with (its rank among them)."""
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    inter = adv.interactions
    train, test = inter[fold_of != 0].reset_index(drop=True), inter[fold_of == 0].reset_index(drop=True)
    y = test["rating"].to_numpy(dtype=np.float64)
    base = {**params(name), "seed": 0, "timeout": 1800.0}
    out: dict[str, Any] = {}
    runs: tuple[tuple[str, dict[str, Any]], ...] = (
        ("plain_dp_off", {"backend": "plain", "label_dp": "off"}),
        ("ckks_dp_off", {"backend": "ckks", "label_dp": "off"}),
        ("plain_default", {"backend": "plain"}), ("ckks_default", {"backend": "ckks"}))
    for label, extra in runs:
        t0 = time.perf_counter()
        fed = fit_federated(HeteroFMConfig(**base, **extra), train, test, adv, plat)
        seconds = time.perf_counter() - t0
        terms = (platform_terms(fed, train), platform_terms(fed, test))
        refit = fit_advertiser_logit(train, test, "auto", terms)
        out[label] = {"auc": auc(y, fed["pred"]), "auc_refit": auc(y, refit), "seconds": seconds,
                      "epsilon": fed["epsilon"], "pred": fed["pred"], "pred_refit": refit}
        print(f"  {name} CKKS check {label}: AUC {out[label]['auc']:.4f} (refit "
              f"{out[label]['auc_refit']:.4f}) in {seconds:.0f}s", flush=True)
    plain: list[tuple[float, float]] = []
    for _ in range(draws):
        fed = fit_federated(HeteroFMConfig(**base, backend="plain"), train, test, adv, plat)
        terms = (platform_terms(fed, train), platform_terms(fed, test))
        plain.append((auc(y, fed["pred"]), auc(y, fit_advertiser_logit(train, test, "auto", terms))))
    if plain:
        a = np.array(plain)
        out["plain_default_draws"] = {
            "auc": a[:, 0].tolist(), "auc_refit": a[:, 1].tolist(),
            "ckks_rank_auc": float(np.mean(a[:, 0] <= out["ckks_default"]["auc"])),
            "ckks_rank_auc_refit": float(np.mean(a[:, 1] <= out["ckks_default"]["auc_refit"]))}
        print(f"  {name} plain default, {draws} label-DP draws: AUC {a[:, 0].mean():.4f} ± "
              f"{a[:, 0].std():.4f} (refit {a[:, 1].mean():.4f} ± {a[:, 1].std():.4f})", flush=True)
    diff = float(np.max(np.abs(out["ckks_dp_off"]["pred"] - out["plain_dp_off"]["pred"])))
    diff_refit = float(np.max(np.abs(out["ckks_dp_off"]["pred_refit"] - out["plain_dp_off"]["pred_refit"])))
    for v in out.values():
        v.pop("pred", None), v.pop("pred_refit", None)
    return {**out, "max_abs_prob_diff_ckks_vs_plain": diff,
            "max_abs_prob_diff_refit_ckks_vs_plain": diff_refit, "positives": int(y.sum()), "clicks": len(y)}


# ---------------------------------------------------------------------------------------------- summary
def _log_loss_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return -(y * np.log(q) + (1 - y) * np.log1p(-q))


def summarise_models(runs: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Per model AUC and log-loss (two-level bootstrap), and paired differences."""
    out: dict[str, Any] = {}
    models = [m for m in runs[0]["preds"] if all(m in r["preds"] for r in runs)]
    stats: dict[str, dict[str, list[tuple[int, WeightedStat]]]] = {"auc": {}, "log_loss": {}}
    for m in models:
        stats["auc"][m] = [(len(r["y"]), weighted_auc(r["y"], r["preds"][m])) for r in runs]
        stats["log_loss"][m] = [(len(r["y"]), weighted_mean(_log_loss_rows(r["y"], r["preds"][m])))
                                for r in runs]
    for metric, per in stats.items():
        out[metric] = {m: seed_bootstrap(v, n_boot, 0) for m, v in per.items()}
        out[f"{metric}_diff"] = {f"{a} - {b}": seed_bootstrap(
            [(n, weighted_difference(sa, sb)) for (n, sa), (_, sb) in zip(per[a], per[b], strict=True)],
            n_boot, 0) for a, b in PAIRS if a in per and b in per}
    # medians over runs (each run's own AUC; paired: each run's own difference) with their spread
    per_run = {m: np.array([auc(r["y"], r["preds"][m]) for r in runs]) for m in models}
    out["auc_median"] = {m: _spread(v) for m, v in per_run.items()}
    out["auc_diff_median"] = {f"{a} - {b}": _spread(per_run[a] - per_run[b]) for a, b in PAIRS
                              if a in per_run and b in per_run}
    return out


def _spread(v: np.ndarray) -> dict[str, float]:
    """Median and the 10th/90th percentiles of per-run values, and the share above 0."""
    return {"median": float(np.median(v)), "p10": float(np.quantile(v, 0.1)),
            "p90": float(np.quantile(v, 0.9)), "share_positive": float(np.mean(v > 0)), "runs": len(v)}


def summarise_attacks(runs: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = [r for r in runs if r["attacks"] is not None]  # --no-attacks
    if not runs:
        return out
    names = list(runs[0]["attacks"]["scores"])
    for name in names:
        per = []
        for r in runs:
            a = r["attacks"]
            t, s = a["truth"], a["scores"][name]
            m = np.isfinite(t) & np.isfinite(s)
            if m.any() and 0 < t[m].sum() < m.sum():
                per.append((int(m.sum()), weighted_auc(t[m], s[m])))
        out[name] = seed_bootstrap(per, n_boot, 0) if per else None
    for score, held_key, excess_key in (("completion", HELDOUT, EXCESS),
                                        (POOLED_LINEAR, POOLED_HELDOUT, POOLED_EXCESS)):
        held, excess = [], []
        for r in runs:
            a = r["attacks"]
            if score not in a["scores"]:
                continue
            t, h, sc = a["truth"], a["held"], a["scores"][score]
            mt, mh = np.isfinite(t) & np.isfinite(sc), np.isfinite(h) & np.isfinite(sc)
            if not (0 < t[mt].sum() < mt.sum() and 0 < h[mh].sum() < mh.sum()):
                continue
            tr, te = weighted_auc(t[mt], sc[mt]), weighted_auc(h[mh], sc[mh])
            n1 = int(mt.sum())
            held.append((int(mh.sum()), te))
            excess.append((n1 + int(mh.sum()), lambda w, tr=tr, te=te, n1=n1: tr(w[:n1]) - te(w[n1:]) + 0.5))
        if held:
            out[held_key] = seed_bootstrap(held, n_boot, 0)
            out[excess_key] = seed_bootstrap(excess, n_boot, 0)
    return out


def bar_attacks(attacks: dict[str, Any]) -> dict[str, Any]:
    """The attacks the bar applies to: the trained half's ``completion`` and the ``pooled`` least squares
    are replaced by their excess over held-out clicks (what they know of the training labels beyond the
    population), when measured; the host-without-guest baseline is not an attack."""
    drop = {BASELINE, HELDOUT, POOLED_HELDOUT, POOLED_LINEAR}
    drop |= {"completion"} if EXCESS in attacks else set()
    drop |= {"pooled"} if POOLED_EXCESS in attacks else set()
    return {k: v for k, v in attacks.items() if k not in drop and v is not None}


def bars(d: dict[str, Any]) -> dict[str, Any]:
    a = d["metrics"]["auc_diff"]
    worst = max(bar_attacks(d["attacks"]).items(), key=lambda kv: kv[1]["point"], default=(None, None))
    fc, fa = a.get("federated - centralized"), a.get("federated - advertiser_only")
    return {"federated_beats_advertiser_only": fa is not None and fa["low"] > 0,
            "federated_within_0.005_of_centralized": fc is not None and fc["point"] >= -BAR_CENTRAL,
            "attack_auc_at_most_0.55": worst[1] is not None and worst[1]["point"] <= BAR_ATTACK,
            "worst_attack": worst[0], "worst_attack_auc": worst[1],
            # the deliverable (the refit) against the advertiser's strongest model alone and the pooled ones
            **({"refit_beats_advertiser_logit": a["federated_refit - advertiser_logit"]["low"] > 0}
               if "federated_refit - advertiser_logit" in a else {}),
            **({"refit_within_0.005_of_centralized": all(
                a[k]["point"] >= -BAR_CENTRAL for k in ("federated_refit - centralized",
                                                         "federated_refit - centralized_logit") if k in a)}
               if "federated_refit - centralized" in a else {})}


def _save_run(folder: Path | None, name: str, r: dict[str, Any]) -> None:
    """One finished run as ``<folder>/<name>-run<k>.npz`` (arrays only, no pickle; written atomically), so
    an interrupted benchmark resumes with the runs it finished."""
    if folder is None:
        return
    from fedrec.artifacts import atomic_file

    a = r["attacks"] or {"truth": np.zeros(0), "held": np.zeros(0), "scores": {}}
    arrays = {"y": r["y"], "truth": a["truth"], "held": a["held"],
              **{f"pred:{k}": v for k, v in r["preds"].items()},
              **{f"attack:{k}": v for k, v in a["scores"].items()},
              "meta": np.array([r["run"], r["fold"], r["epsilon"], r["fit_seconds"], r["ref_seconds"],
                                r["attack_seconds"]], dtype=np.float64)}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / f"{name}-run{r['run']}.npz") as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)


def _load_run(folder: Path | None, name: str, run: int) -> dict[str, Any] | None:
    path = None if folder is None else folder / f"{name}-run{run}.npz"
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        m = z["meta"]
        return {"run": int(m[0]), "fold": int(m[1]), "epsilon": float(m[2]), "fit_seconds": float(m[3]),
                "ref_seconds": float(m[4]), "attack_seconds": float(m[5]), "y": z["y"],
                "preds": {k[5:]: z[k] for k in z.files if k.startswith("pred:")},
                "attacks": {"truth": z["truth"], "held": z["held"],
                            "scores": {k[7:]: z[k] for k in z.files if k.startswith("attack:")}}
                if any(k.startswith("attack:") for k in z.files) else None}


def bench(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    loaded = load(name, args)
    if loaded is None:
        print(f"{name}: {DATA / TALKINGDATA} not found; skipped", flush=True)
        return None
    adv, plat, meta = loaded
    y = adv.interactions["rating"].to_numpy()
    print(f"{name}: {len(y)} training clicks, {int(y.sum())} conversions, platform columns "
          f"{list(plat.user_features.columns)[:8]}", flush=True)
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for s in range(args.seeds):
        fold_of = folds(y, args.folds, 1000 + s)
        for f in range(args.folds):
            run = s * args.folds + f
            if args.max_minutes and time.perf_counter() - t_start > 60 * args.max_minutes:
                print(f"  {name}: --max-minutes {args.max_minutes:g} reached after {len(runs)} runs",
                      flush=True)
                continue
            if args.only_runs is not None and run not in args.only_runs:
                continue
            saved = _load_run(args.runs_dir, name, run)
            if saved is not None:
                runs.append(saved)
                print(f"  {name} run {run}: loaded from {args.runs_dir}", flush=True)
                continue
            try:
                runs.append(one_run(name, adv, plat, run, fold_of, f, args))
                _save_run(args.runs_dir, name, runs[-1])
            except Exception as exc:  # a failed run is a result too
                failures.append({"run": run, "error": f"{type(exc).__name__}: {exc}"})
                print(f"  {name} run {run}: FAILED {failures[-1]['error']}", flush=True)
    if not runs:
        return {"name": name, "failures": failures}
    d: dict[str, Any] = {"name": name, "meta": meta, "params": params(name), "advertiser_params":
                         ADVERTISER[name], "centralized_params": CENTRAL[name], "logit_l2": LOGIT_L2[name],
                         "runs": len(runs),
                         "positives_per_fold": float(np.mean([r["y"].sum() for r in runs])),
                         "epsilon": float(np.mean([r["epsilon"] for r in runs])),
                         "fit_seconds_federated": float(np.median([r["fit_seconds"] for r in runs])),
                         "metrics": summarise_models(runs, args.n_boot),
                         "attacks": summarise_attacks(runs, args.n_boot), "failures": failures,
                         "per_run_auc": {m: [auc(r["y"], r["preds"][m]) for r in runs] for m in MODELS
                                         if all(m in r["preds"] for r in runs)}}
    d["bars"] = bars(d)
    if args.ckks_check:
        d["ckks_check"] = ckks_check(name, adv, plat, folds(y, args.folds, 1000), args.ckks_plain_draws)
    return d


def laplace_shrinkage(args: argparse.Namespace) -> dict[str, Any] | None:
    """Post-processing of Laplace reports (``fit_on_reports(shrink=True)``): the platform's model AUC cost
    against exact reports, by channel on TalkingData, without and with the noise-aware shrinkage, at each
    ``--laplace-epsilons``, over 5 folds x ``--laplace-draws`` noise draws (the folds of
    ``benchmarks/ads_returns.py``): the mean with its two-level CI, and the distribution of the per-draw
    cost (median, 10th/90th percentiles, share of draws within the issue's 0.015)."""
    import math

    from fedrec.ads import aggregate_reports, fit_on_reports, read_talkingdata

    path = DATA / TALKINGDATA
    if not path.is_file():
        return None
    lg = read_talkingdata(path)
    y = lg.frame["converted"].to_numpy()
    fold_of = folds(y, 5, 0)
    costs: dict[str, dict[str, list[tuple[int, WeightedStat]]]] = {}
    points: dict[str, dict[str, list[float]]] = {}
    for f in range(5):
        tr, te = lg.take(fold_of != f), lg.take(fold_of == f)
        yt = te.frame["converted"].to_numpy(dtype=np.float64)
        exact = aggregate_reports(tr, [["channel"]], mechanism="laplace", epsilon=math.inf)
        p_ref = fit_on_reports(lg.frame, exact).predict_proba(te.frame)
        ref, ref_point = weighted_auc(yt, p_ref), auc(yt, p_ref)
        for eps in args.laplace_epsilons:
            for s in range(args.laplace_draws):
                rep = aggregate_reports(tr, [["channel"]], mechanism="laplace", epsilon=eps,
                                        rng=np.random.default_rng(1000 * f + s))
                for shrink in (False, True):
                    p_fit = fit_on_reports(lg.frame, rep, shrink=shrink).predict_proba(te.frame)
                    key = "shrunk" if shrink else "plain"
                    costs.setdefault(f"{eps:g}", {}).setdefault(key, []).append(
                        (len(yt), weighted_difference(ref, weighted_auc(yt, p_fit))))
                    points.setdefault(f"{eps:g}", {}).setdefault(key, []).append(ref_point - auc(yt, p_fit))
        print(f"  laplace post-processing: fold {f} done", flush=True)
    out: dict[str, Any] = {eps: {k: seed_bootstrap(v, args.n_boot, 0) for k, v in d.items()}
                           for eps, d in costs.items()}
    for eps, d in costs.items():
        out[eps]["gain"] = seed_bootstrap([(n, weighted_difference(a, b)) for (n, a), (_, b) in
                                           zip(d["plain"], d["shrunk"], strict=True)], args.n_boot, 0)
    dist = {eps: {k: {**_spread(np.asarray(v)), "share_within_0.015": float(np.mean(np.asarray(v) <= 0.015))}
                  for k, v in d.items()} for eps, d in points.items()}
    return {"dims": ["channel"], "runs": 5 * args.laplace_draws, "cost_vs_exact_reports": out,
            "per_draw": dist}


# ---------------------------------------------------------------------------------------------- report
def _ci(c: dict[str, float] | None, digits: int = 4) -> str:
    return "n/a" if c is None else f"{c['point']:.{digits}f} [{c['low']:.{digits}f}, {c['high']:.{digits}f}]"


def returns_summary(path: Path) -> dict[str, Any] | None:
    """The platform's model AUC vs ε per return mechanism, from ``benchmarks/ads_returns.py``'s JSON."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    out: dict[str, Any] = {"source": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
                           "command": doc.get("command"), "datasets": {}}
    for d in doc.get("datasets", []):
        s = d.get("summary", {})
        curves: dict[str, list[Any]] = {}
        for key, v in s.items():
            if "@" not in key:
                continue
            mech, eps = key.split("@")
            curves.setdefault(mech, []).append({"epsilon": float(eps), "auc": v["auc"], "cost": v["cost"]})
        for c in curves.values():
            c.sort(key=lambda p: p["epsilon"])
        out["datasets"][d["name"]] = {"labels_auc": s.get("labels", {}).get("auc"), "curves": curves,
                                      "bars": d.get("bars")}
    return out


def write_markdown(res: dict[str, Any], path: Path) -> None:
    lines = ["# Federated advertising: the conversion model (benchmarks/ads.py)", "",
             f"Command: `{res['command']}` ({res['seconds']:.0f} s on {res['cpu_count']} shared cores, load "
             f"{res['load_average'][0]:.1f}). Backend `plain` for the {res['args']['folds']}×"
             f"{res['args']['seeds']} runs per dataset (CKKS changes the released numbers only by its "
             "flooding noise" + ("; the CKKS check below trains one fold both ways" if any(
                 d.get("ckks_check") for d in res["datasets"]) else "") + "). The federated model is the "
             "default configuration: **label DP on, ε = 2 for the whole training**.", "",
             "## What an advertiser's analyst should read here", ""]
    for d in res["datasets"]:
        if "metrics" not in d:
            continue
        m, a, b = d["metrics"], d["metrics"]["auc_diff"], d["bars"]
        gain = "a gain beyond the CI" if b["federated_beats_advertiser_only"] else "no gain beyond the CI"
        fa = a.get("federated - advertiser_only")
        if fa is not None and fa["high"] < 0:
            gain = "a loss beyond the CI"
        attack = (f" The platform's best attack on the advertiser's labels reaches AUC "
                  f"{_ci(b['worst_attack_auc'], 3)} ({b['worst_attack']})." if b["worst_attack"] else
                  " (Leakage suite not run: --no-attacks.)")
        if all(k in a for k in ("federated - advertiser_only", "centralized - advertiser_only",
                                "federated - centralized")):
            lines += [f"**{d['name']}** ({d['runs']} runs, ~{d['positives_per_fold']:.0f} conversions per "
                  f"held-out fold): the federated model's AUC is {_ci(m['auc']['federated'])} against "
                  f"{_ci(m['auc']['advertiser_only'])} for the advertiser alone: a paired difference of "
                  f"{_ci(a['federated - advertiser_only'])} "
                  f"({gain}). The pooled model no one can build gains "
                  f"{_ci(a['centralized - advertiser_only'])}; "
                  f"federated − centralized (the price of label DP): "
                  f"{_ci(a['federated - centralized'])}.{attack}", ""]
        if "federated_refit - advertiser_logit" in a:
            med = m["auc_diff_median"]["federated_refit - advertiser_logit"]
            lines += [f"With the advertiser's strongest model alone (one-hot logistic regression on the "
                      f"campaign, {_ci(m['auc']['advertiser_logit'])}), the federated model's platform "
                      f"terms refitted beside it on the advertiser's labels reach "
                      f"{_ci(m['auc']['federated_refit'])}: {_ci(a['federated_refit - advertiser_logit'])} "
                      f"(median per run {med['median']:+.4f}, above 0 in {100 * med['share_positive']:.0f}% "
                      f"of the runs); the pooled logistic regression on the same columns gains "
                      f"{_ci(a.get('centralized_logit - advertiser_logit'))}.", ""]
    for d in res["datasets"]:
        b = d.get("bars", {})
        if "refit_beats_advertiser_logit" in b:
            a = d["metrics"]["auc_diff"]
            lines += [f"**{d['name']}, the deliverable (the refit) against the bar**: beats the advertiser's "
                      f"strongest model alone beyond the CI: "
                      f"{'met' if b['refit_beats_advertiser_logit'] else 'missed'} "
                      f"({_ci(a['federated_refit - advertiser_logit'])}); within 0.005 AUC of the pooled "
                      f"models: {'met' if b.get('refit_within_0.005_of_centralized') else 'missed'} "
                      f"(refit − pooled FM {_ci(a.get('federated_refit - centralized'))}, refit − pooled "
                      f"logistic regression {_ci(a.get('federated_refit - centralized_logit'))}).", ""]
    lines += ["How to read it. *advertiser_only* is what the bank can do alone (campaign/app); *centralized* "
              "is the same factorization machine on both parties' columns pooled in the clear (computed by "
              "the protocol with label DP off, which equals it) - the most federation could give with this "
              "model; *federated* is what a deployment gets by default, with the platform's view of the "
              "labels protected by label DP at ε = 2. The gap between the two is the price of that "
              "protection: the noise on the platform's gradients is fixed per release while the signal "
              "grows with the batch, so it is smallest with few, large batches and with many conversions. "
              "*platform_only* and *centralized_logit* are one-hot logistic regressions (the platform alone "
              "with true labels; both parties pooled), the model class of the issue's reference numbers. "
              "Log-loss of the federated model is worse than its AUC suggests (the noisy platform terms hurt "
              "calibration): recalibrate on the advertiser's side before using scores as probabilities.", ""]
    lines += ["## Models (held-out clicks; mean over runs, 95% CI by a two-level bootstrap)", "",
              "| data | model | AUC | log-loss |", "|---|---|---|---|"]
    for d in res["datasets"]:
        if "metrics" not in d:
            continue
        for mdl in d["metrics"]["auc"]:
            lines.append(f"| {d['name']} | {mdl} | {_ci(d['metrics']['auc'][mdl])} | "
                         f"{_ci(d['metrics']['log_loss'][mdl])} |")
    lines += ["", "Paired differences (same clicks resampled):", "", "| data | difference | AUC | log-loss |",
              "|---|---|---|---|"]
    for d in res["datasets"]:
        if "metrics" not in d:
            continue
        for k, v in d["metrics"]["auc_diff"].items():
            lines.append(f"| {d['name']} | {k} | {_ci(v)} | {_ci(d['metrics']['log_loss_diff'].get(k))} |")
    lines += ["", "Per run (each run's own AUC or paired difference): median [10th, 90th percentile], share "
              "of runs above 0:", "", "| data | model or difference | median | 10% | 90% | > 0 |",
              "|---|---|---|---|---|---|"]
    for d in res["datasets"]:
        if "metrics" not in d or "auc_median" not in d["metrics"]:
            continue
        for k, v in {**d["metrics"]["auc_median"], **d["metrics"]["auc_diff_median"]}.items():
            lines.append(f"| {d['name']} | {k} | {v['median']:.4f} | {v['p10']:.4f} | {v['p90']:.4f} | "
                         f"{100 * v['share_positive']:.0f}% |")
    lines += ["", "## Bars (issue 15)", "", "| data | federated > advertiser-only (CI) | federated within "
              "0.005 AUC of centralized | worst attack AUC ≤ 0.55 | ε (label DP) |", "|---|---|---|---|---|"]
    for d in res["datasets"]:
        if "bars" not in d:
            continue
        b = d["bars"]
        lines.append(f"| {d['name']} | {'met' if b['federated_beats_advertiser_only'] else 'missed'} | "
                     f"{'met' if b['federated_within_0.005_of_centralized'] else 'missed'} | "
                     f"{'met' if b['attack_auc_at_most_0.55'] else 'missed'} "
                     f"({b['worst_attack']} {_ci(b['worst_attack_auc'], 3)}) | {d['epsilon']:.3g} |")
    names = next((list(d["attacks"]) for d in res["datasets"] if d.get("attacks")), [])
    lines += [] if not names else [
        "", "## Leakage suite on the platform's transcript (attack AUC on the training labels)", "",
              "| data | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for d in res["datasets"]:
        if names and d.get("attacks"):
            lines.append(f"| {d['name']} | " + " | ".join(_ci(d["attacks"].get(n), 3) for n in names) + " |")
    for d in res["datasets"]:
        if d.get("ckks_check"):
            c = d["ckks_check"]
            lines.append(f"\n{d['name']} CKKS check (fold 0): DP off, CKKS AUC {c['ckks_dp_off']['auc']:.4f} "
                         f"({c['ckks_dp_off']['seconds']:.0f} s) vs plain {c['plain_dp_off']['auc']:.4f} "
                         f"({c['plain_dp_off']['seconds']:.0f} s), largest |Δ probability| "
                         f"{c['max_abs_prob_diff_ckks_vs_plain']:.2e}; default (label DP) with CKKS AUC "
                         f"{c['ckks_default']['auc']:.4f}, ε {c['ckks_default']['epsilon']:.3g}"
                         + (f", plain {c['plain_default']['auc']:.4f}; refit (default L2 auto): CKKS "
                            f"{c['ckks_default']['auc_refit']:.4f}, plain "
                            f"{c['plain_default']['auc_refit']:.4f}"
                            if "plain_default" in c else "") + ".")
            dr = c.get("plain_default_draws")
            if dr:
                a_, r_ = np.asarray(dr["auc"]), np.asarray(dr["auc_refit"])
                inside = all(0.025 <= dr[k] <= 0.975 for k in ("ckks_rank_auc", "ckks_rank_auc_refit"))
                lines.append(f"Release noise: {len(a_)} more plain default runs of the same fold and seed "
                             f"(only their label-DP noise differs): AUC {a_.mean():.4f} ± {a_.std():.4f} "
                             f"(range {a_.min():.4f}-{a_.max():.4f}), refit {r_.mean():.4f} ± "
                             f"{r_.std():.4f}; "
                             f"the CKKS default is above {100 * dr['ckks_rank_auc']:.0f}% of them (refit: "
                             f"{100 * dr['ckks_rank_auc_refit']:.0f}%): "
                             + ("within the release noise." if inside else "OUTSIDE the release noise."))
    lap = res.get("laplace")
    if lap:
        lines += ["", "## Post-processing of Laplace reports (TalkingData, by channel, "
                  f"{lap['runs']} reports per ε)", "",
                  "AUC the platform's model loses against exact reports; `shrink`: the L2 penalty raised by "
                  "the noise variance (`fit_on_reports(shrink=True)`, public numbers only: no privacy cost).",
                  "", "| ε | cost, plain fit | cost, shrunk | gain of shrinking (paired) |",
                  "|---|---|---|---|"]
        for eps, v in lap["cost_vs_exact_reports"].items():
            lines.append(f"| {eps} | {_ci(v['plain'])} | {_ci(v['shrunk'])} | {_ci(v['gain'])} |")
        if lap.get("per_draw"):
            lines += ["", f"Per draw ({lap['runs']} reports per ε: 5 folds x their noise draws), the cost "
                      "against exact reports: median [10th, 90th percentile], and the share of draws within "
                      "the issue's 0.015:", "", "| ε | plain fit | shrunk | shrunk: draws ≤ 0.015 |",
                      "|---|---|---|---|"]
            for eps, v in lap["per_draw"].items():
                pl, sh = v["plain"], v["shrunk"]
                lines.append(f"| {eps} | {pl['median']:.4f} [{pl['p10']:.4f}, {pl['p90']:.4f}] | "
                             f"{sh['median']:.4f} [{sh['p10']:.4f}, {sh['p90']:.4f}] | "
                             f"{100 * sh['share_within_0.015']:.0f}% |")
    r = res.get("returns")
    if r:
        lines += ["", f"## Conversions returned to the platform (from `{r['source']}`)", "",
                  "The platform's own model trained on what it gets back; AUC on held-out clicks against ε "
                  "(cost = AUC lost against the same model on the true labels, or on exact reports):", "",
                  "| data | mechanism | " + " | ".join("ε=" + ("∞" if not np.isfinite(e) else f"{e:g}")
                                                      for e in _eps_grid(r)) + " |",
                  "|---|---|" + "---|" * len(_eps_grid(r))]
        for name, d in r["datasets"].items():
            for mech, curve in d["curves"].items():
                by = {p["epsilon"]: p for p in curve}
                cells = [f"{by[e]['auc']['point']:.3f}" if e in by else "" for e in _eps_grid(r)]
                lines.append(f"| {name} | {mech} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def _eps_grid(r: dict[str, Any]) -> list[float]:
    return sorted({p["epsilon"] for d in r["datasets"].values() for c in d["curves"].values() for p in c})


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [d for d in res["datasets"] if "metrics" in d]
    r = res.get("returns") or {"datasets": {}}
    fig, axes = plt.subplots(2, max(1, len(sets)), figsize=(6.0 * max(1, len(sets)), 8.0), squeeze=False)
    for col, d in enumerate(sets):
        ax = axes[0][col]
        names = list(d["metrics"]["auc"])
        pts = [d["metrics"]["auc"][n] for n in names]
        ax.errorbar(range(len(names)), [p["point"] for p in pts],
                    yerr=[[p["point"] - p["low"] for p in pts], [p["high"] - p["point"] for p in pts]],
                    fmt="o", capsize=4)
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
        ax.set_ylabel("held-out AUC (95% CI)")
        ax.set_title(f"{d['name']}: conversion model, {d['runs']} runs (federated: label DP ε=2)", fontsize=9)
        ax = axes[1][col]
        rd = r["datasets"].get(d["name"])
        if rd:
            for mech, curve in rd["curves"].items():
                x = [p["epsilon"] if np.isfinite(p["epsilon"]) else 100.0 for p in curve]
                ax.errorbar(x, [p["auc"]["point"] for p in curve],
                            yerr=[[p["auc"]["point"] - p["auc"]["low"] for p in curve],
                                  [p["auc"]["high"] - p["auc"]["point"] for p in curve]],
                            marker="o", ms=3, capsize=2, label=mech)
            if rd.get("labels_auc"):
                ax.axhline(rd["labels_auc"]["point"], color="gray", ls="--", lw=0.8, label="true labels")
            ax.set_xscale("log")
            ax.set_xlabel("ε of the return (∞ plotted at 100)")
            ax.set_ylabel("platform model AUC on returned conversions")
            ax.legend(fontsize=6)
            ax.set_title(f"{d['name']}: what each ε costs the platform", fontsize=9)
        else:  # no returns to show: the paired differences (the bars' comparisons)
            diffs = d["metrics"]["auc_diff"]
            names = list(diffs)
            pts = [diffs[n] for n in names]
            ax.errorbar([p["point"] for p in pts], range(len(names)),
                        xerr=[[p["point"] - p["low"] for p in pts], [p["high"] - p["point"] for p in pts]],
                        fmt="o", capsize=4)
            ax.axvline(0.0, color="gray", lw=0.8)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("paired AUC difference (95% CI)")
            ax.set_title(f"{d['name']}: paired differences", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(res: dict[str, Any]) -> None:
    for d in res["datasets"]:
        if "metrics" not in d:
            print(f"{d['name']}: no run finished ({d.get('failures')})")
            continue
        print(f"\n{d['name']}: {d['runs']} runs, ε {d['epsilon']:.3g} (label DP), "
              f"~{d['positives_per_fold']:.0f} conversions per held-out fold")
        for mdl, v in d["metrics"]["auc"].items():
            print(f"  {mdl:<18} AUC {_ci(v)}   log-loss {_ci(d['metrics']['log_loss'][mdl])}")
        for k, v in d["metrics"]["auc_diff"].items():
            print(f"  {k:<34} ΔAUC {_ci(v)}")
        print(f"  bars: {json.dumps({k: v for k, v in d['bars'].items() if k != 'worst_attack_auc'})}, worst "
              f"attack {_ci(d['bars']['worst_attack_auc'], 3)}")


def _json(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON: {type(obj).__name__}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small synthetic funnel, 2 folds x 1 seed")
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help=f"comma-separated, from {', '.join(DATASETS)} (both; talkingdata skipped when "
                         "absent)")
    ap.add_argument("--folds", type=int, default=5, help="stratified folds per fold assignment (5)")
    ap.add_argument("--seeds", type=int, default=4, help="fold assignments; runs = folds x seeds (4)")
    ap.add_argument("--ckks-check", action="store_true",
                    help="also train fold 0 with CKKS (DP off and default) against plain")
    ap.add_argument("--ckks-plain-draws", type=int, default=0,
                    help="--ckks-check: also this many plain default runs of fold 0 (their label-DP noise "
                         "alone differs), to place the CKKS default's AUC among them (0)")
    ap.add_argument("--max-minutes", type=float, default=0.0,
                    help="start no new run after this many minutes per dataset (0: no limit); the runs "
                         "done are summarised")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help="keep every finished run here (npz) and reuse those found: an interrupted "
                         "benchmark resumes (default: not kept)")
    ap.add_argument("--only-runs", type=lambda t: {int(x) for x in t.split(",") if x.strip()}, default=None,
                    help="train only these run indices (comma-separated; with --runs-dir, several processes "
                         "share the runs and a last call without it summarises them all)")
    ap.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (500)")
    ap.add_argument("--returns", type=Path, default=OUT / "ads_returns.json",
                    help="benchmarks/ads_returns.py's JSON for the returned-conversions curves")
    ap.add_argument("--out", type=Path, default=OUT, help="results folder (benchmarks/results)")
    ap.add_argument("--laplace", action="store_true",
                    help="also measure the post-processing of Laplace reports (TalkingData by channel)")
    ap.add_argument("--laplace-epsilons", type=lambda t: [float(x) for x in t.split(",") if x.strip()],
                    default=[0.5, 1.0, 2.0], help="ε of the Laplace post-processing section (0.5,1,2)")
    ap.add_argument("--laplace-draws", type=int, default=20,
                    help="noise draws per fold of the Laplace section (20: 100 reports per ε)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="join ads.json files of runs made in parallel (a dataset each) into OUT; trains "
                         "nothing")
    ap.add_argument("--name", default="ads",
                    help="stem of the result files OUT/NAME.json, .md, .png (ads)")
    ap.add_argument("--models", type=lambda t: [m.strip() for m in t.split(",") if m.strip()], default=None,
                    help=f"comma-separated models to fit (default: all of {', '.join(MODELS)}; the federated "
                         "model is always trained, for federated_refit and the attacks)")
    ap.add_argument("--no-attacks", action="store_true",
                    help="skip the leakage suite on the platform's transcript (measure accuracy only)")
    ap.add_argument("--host-optimizer", choices=("adam", "sgd"), default=None,
                    help="HeteroFMConfig.host_optimizer of the federated models (default: optimizer, adam)")
    ap.add_argument("--logit-l2", choices=("tuned", "auto"), default="tuned",
                    help="L2 of advertiser_logit and federated_refit: the values tuned on validation slices "
                         "(LOGIT_L2, the stored 20-run table) or auto = cross-validated within each training "
                         "fold (the product's default, [ads] refit_l2)")
    ap.add_argument("--report-only", action="store_true",
                    help="redraw ads.png and ads.md from OUT/ads.json (and --returns); trains nothing")
    return ap


def main() -> None:
    import torch

    args = build_parser().parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="crypto backend 'plain'")
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        res = {**parts[0], "datasets": [d for p in parts for d in p["datasets"]],
               "skipped": [n for p in parts for n in p["skipped"]],
               "command": " ; ".join(p["command"] for p in parts),
               "seconds": max(p["seconds"] for p in parts), "returns": returns_summary(args.returns),
               "laplace": next((p["laplace"] for p in parts if p.get("laplace")), None)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=1, allow_nan=False, default=_json))
    elif args.report_only:
        res = json.loads((args.out / f"{args.name}.json").read_text())
        res["returns"] = returns_summary(args.returns)
    else:
        if args.quick:
            args.folds, args.seeds, args.n_boot = 2, 1, 100
        names = [n.strip() for n in args.datasets.split(",") if n.strip()]
        if args.models and any(m not in MODELS for m in args.models):
            build_parser().error(f"--models: choose from {', '.join(MODELS)}, got {args.models}")
        if (not names and not args.laplace) or any(n not in DATASETS for n in names):
            build_parser().error(f"--datasets: choose from {DATASETS}, got {args.datasets!r}")
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        res = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "command": " ".join(["python", "benchmarks/ads.py", *sys.argv[1:]]), "datasets": [],
               "skipped": []}
        for n in names:
            d = bench(n, args)
            if d is None:
                res["skipped"].append(n)
            else:
                res["datasets"].append(d)
                args.out.mkdir(parents=True, exist_ok=True)
        res["laplace"] = laplace_shrinkage(args) if args.laplace else None
        res.update(seconds=round(time.perf_counter() - t0, 1), machine=platform.platform(),
                   cpu_count=os.cpu_count(), load_average=list(os.getloadavg()))
        res["returns"] = returns_summary(args.returns)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=1, allow_nan=False, default=_json))
    print_table(res)
    plot(res, args.out / f"{args.name}.png")
    write_markdown(res, args.out / f"{args.name}.md")
    print(f"\nwrote {args.out / args.name}.json, .png, .md")


if __name__ == "__main__":
    main()
