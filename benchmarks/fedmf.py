#!/usr/bin/env python3
"""Horizontal federated MF (fedrec.protocols.fedmf): quality, exactness, crypto, rounds, masks, dropouts.

Every number a ratio is claimed for is measured in the same run. Sections (``--only`` picks some):

* ``quality`` — ML-100K (``DATA/ml-100k``, else a synthetic set of its shape), fixed 90/10
  ``random_split`` (rng 0), every user its own client (on-device): fedrec's centralized ``BiasedMF``
  (``n_factors=16``, its defaults: Adam, early stopping) against the federated MF (``plain`` backend,
  ``FedMFConfig`` defaults, 100 rounds, every client every round) and the centralized twin of the
  same schedule (``fedrec.protocols.fedmf.reference``): test RMSE, and the largest parameter difference
  federated vs twin. The same on the synthetic ratings.
* ``crypto`` — per client and round on the full catalogue (1682 items × 17 values, CKKS n8192 at the
  wire level): the client's encryption of its upload and decryption of the model (ms), the upload
  size, the server's validation + addition per upload and for 943 uploads; the same shapes with the
  ``plain`` backend; Paillier-2048 (``fedrec.crypto.paillier``, one value per ciphertext, as FedMF's
  prototype) measured on ``--paillier-values`` values and scaled linearly to the catalogue.
* ``rounds`` — one round (= one epoch: every user updates) over all users as on-device clients
  in one process (``simulation``, direct peers), ``plain`` and ``ckks`` interleaved; and the same over
  10 silo clients as separate processes over CURVE sockets (``fedrec train``; per-round seconds from
  the server's summary).
* ``masks`` — secure aggregation on: round seconds for cohorts of ``--cohorts`` clients per round
  (CKKS), against the same cohort without masks.
* ``dropouts`` — masks on, ``--dropout`` of each round's selected clients silent at the upload step of
  that round (after sharing their mask keys; the server times out on them and recovers their masks),
  ``--dropout-rounds`` rounds of ``--dropout-cohort`` clients (plain backend: the masks and the recovery
  are the same code as with CKKS): training finishes; test RMSE against the same run without dropouts.
* ``leakage`` — the item-inference attack (``fedrec.eval.item_inference``: which items did a client
  rate?) on what the server receives from ``--attack-clients`` ML-100K users as on-device clients
  over the full catalogue, ``--attack-rounds`` rounds: plaintext uploads (FedMF's plaintext gradient
  sharing: the plain backend without masks), masked uploads decrypted by a colluding key holder
  (secure aggregation on), and the CKKS ciphertext bytes themselves (three byte features); AUC over
  (client, item) pairs with the bootstrap CI over clients. Scores are centred per item across clients
  (the attacker asks whether *this* client rated item ``i``, against what every client's upload shows
  at ``i``'s position): uncentred byte statistics vary with the position in the ciphertext, and ML-100K's
  item ids are ordered roughly by popularity, so position alone scores away from 0.5 without a single bit
  about a client (kept in the JSON as ``auc_uncentred``; ``popularity prior`` is that effect alone:
  the item's rating count among the other attacked clients).

Examples::

    .venv/bin/python benchmarks/fedmf.py --quick          # minutes: fewer rounds, smaller cohorts
    .venv/bin/python benchmarks/fedmf.py                  # the full measurement (about an hour on 2 cores)
    .venv/bin/python benchmarks/fedmf.py --only crypto,rounds

Writes benchmarks/results/fedmf.json and fedmf.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("FEDREC_DATA_DIR", REPO.parent / "shared" / "data"))
SECTIONS = ("quality", "crypto", "profile", "rounds", "masks", "dropouts", "leakage")
log = logging.getLogger("fedmf_bench")


# ---------------------------------------------------------------------------------------------- data
def ml100k_split() -> tuple[pd.DataFrame, pd.DataFrame, list[Any], str]:
    """ML-100K 90/10 (rng 0) when its files are there, else synthetic ratings of its shape."""
    from fedrec.data import SyntheticConfig, generate, load_ml100k, random_split

    if (DATA / "ml-100k" / "u.data").is_file():
        inter, name = load_ml100k(DATA / "ml-100k").interactions, "ml-100k"
    else:
        log.warning("no %s: synthetic ratings of the ML-100K shape instead", DATA / "ml-100k")
        inter = generate(SyntheticConfig(n_users=943, n_items=1682, n_ratings=100_000, rating_step=1.0,
                                         seed=0)).dataset.interactions
        name = "synthetic (ml-100k shape)"
    train, test = random_split(inter, 0.1, 0)
    return train, test, sorted(inter["item_id"].unique().tolist()), name


def synthetic_split() -> tuple[pd.DataFrame, pd.DataFrame, list[Any], str]:
    from fedrec.data import SyntheticConfig, generate, random_split

    inter = generate(SyntheticConfig(n_users=1000, n_items=500, seed=0)).dataset.interactions
    train, test = random_split(inter, 0.1, 0)
    return train, test, sorted(inter["item_id"].unique().tolist()), "synthetic (1000 x 500)"


def on_device(train: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One client per user."""
    width = len(str(train["user_id"].nunique()))
    return {f"u{j:0{width}d}": g[["user_id", "item_id", "rating"]].reset_index(drop=True)
            for j, (_, g) in enumerate(train.groupby("user_id"))}


def silos(train: pd.DataFrame, n: int) -> dict[str, pd.DataFrame]:
    from fedrec.data.partition import horizontal_split

    parts = horizontal_split(train, n)
    return {f"s{j:02d}": p[["user_id", "item_id", "rating"]] for j, p in enumerate(parts)}


def rmse_of_clients(res: Any, test: pd.DataFrame, catalogue: list[Any]) -> float:
    """Test RMSE from the clients' final models (unknown users: ``μ + b_i``), clipped to [1, 5]."""
    items = pd.Index([str(x) for x in catalogue])
    where: dict[str, tuple[Any, int]] = {}
    for c in res.clients.values():
        if c.finished:
            for j, u in enumerate(c.data.users):
                where[u] = (c, j)
    any_c = next(c for c in res.clients.values() if c.finished)
    ii = items.get_indexer(pd.Index(test["item_id"].astype(str)))
    pred = np.empty(len(test))
    for k, (u, i) in enumerate(zip(test["user_id"].astype(str), ii, strict=True)):
        if u in where:
            c, j = where[u]
            pred[k] = c.predict(np.array([j]), np.array([i]))[0]
        else:
            pred[k] = any_c.mu + any_c.items.b[i]
    return float(np.sqrt(np.mean((np.clip(pred, 1, 5) - test["rating"].to_numpy()) ** 2)))


def rmse(pred: np.ndarray, test: pd.DataFrame) -> float:
    return float(np.sqrt(np.mean((np.clip(pred, 1, 5) - test["rating"].to_numpy()) ** 2)))


# ---------------------------------------------------------------------------------------------- sections
def quality(args: argparse.Namespace) -> dict[str, Any]:
    from fedrec.models import BiasedMF
    from fedrec.protocols.fedmf import FedMFConfig, fit_reference
    from fedrec.protocols.fedmf.simulation import simulate

    out = {}
    for split in (ml100k_split, synthetic_split):
        train, test, catalogue, name = split()
        t0 = time.perf_counter()
        central = BiasedMF(n_factors=16).fit(train)
        central_s = time.perf_counter() - t0
        # ML-100K: the defaults; the synthetic ratings want less regularization (scanned: l2 0.04-0.12)
        reg = {} if split is ml100k_split else {"l2": 0.06, "l2_bias": 0.05}
        cfg = FedMFConfig(backend="plain", rounds=args.rounds, masks=False, **reg)  # the twin is unmasked
        clients = on_device(train)
        res = simulate(clients, catalogue, cfg)
        ref = fit_reference(clients, catalogue, cfg)
        c0 = next(iter(res.clients.values()))
        diff = max(float(np.abs(c0.items.q - ref.q).max()), float(np.abs(c0.items.b - ref.b).max()))
        row = {"dataset": name, "n_clients": len(clients), "rounds": cfg.rounds,
               "central_biasedmf_rmse": rmse(central.predict(test), test), "central_seconds": central_s,
               "federated_rmse": rmse_of_clients(res, test, catalogue), "federated_seconds": res.seconds,
               "same_schedule_centralized_rmse": rmse(ref.predict(test), test),
               "max_param_diff_vs_twin": diff}
        row["fed_vs_central_pct"] = 100 * (row["federated_rmse"] / row["central_biasedmf_rmse"] - 1)
        row["fed_vs_twin_pct"] = 100 * (row["federated_rmse"] / row["same_schedule_centralized_rmse"] - 1)
        if split is ml100k_split:  # the same schedule under CKKS, over 10 silos (every client every round:
            # the grouping of users into clients does not change the math)
            ck = simulate(silos(train, 10), catalogue, FedMFConfig(backend="ckks", rounds=args.rounds,
                                                                    masks=False, **reg))
            c1 = next(iter(ck.clients.values()))
            row["ckks_10_silos_rmse"] = rmse_of_clients(ck, test, catalogue)
            row["ckks_max_param_diff_vs_twin"] = max(float(np.abs(c1.items.q - ref.q).max()),
                                                     float(np.abs(c1.items.b - ref.b).max()))
            row["ckks_10_silos_seconds"] = ck.seconds
        log.info("quality %s: %s", name, row)
        out[name] = row
    return out


def _mean_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    for _ in range(repeat):
        value = fn()
    return 1e3 * (time.perf_counter() - t0) / repeat, value


def crypto(args: argparse.Namespace) -> dict[str, Any]:
    from fedrec.crypto.backend import KeyPin, load_public, make_backend
    from fedrec.protocols.fedmf.keys import encrypt_for_wire, read_ciphertext

    n = 1682 * 17
    x = np.random.default_rng(0).normal(0.0, 0.01, n)
    out: dict[str, Any] = {"values_per_upload": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("ckks", "plain"):
            be = make_backend(name)
            pub = load_public(be.public_bytes(), KeyPin())
            enc_ms, blob = _mean_ms(lambda be=be: encrypt_for_wire(be, x), 10)
            dec_ms, _ = _mean_ms(lambda be=be, blob=blob: be.decrypt(read_ciphertext(be, blob, n)), 10)
            ser_ms, _ = _mean_ms(lambda be=be, blob=blob: be.serialize(read_ciphertext(be, blob, n)), 5)
            cts = [read_ciphertext(pub, blob, n) for _ in range(2)]
            t0 = time.perf_counter()
            acc = read_ciphertext(pub, blob, n)
            for _ in range(942):
                acc = pub.add(acc, read_ciphertext(pub, blob, n))
            agg = time.perf_counter() - t0
            out[name] = {"client_encrypt_upload_ms": enc_ms, "client_decrypt_model_ms": dec_ms,
                         "client_crypto_ms": enc_ms + dec_ms, "upload_bytes": len(blob),
                         "server_per_upload_ms": 1e3 * agg / 943, "server_aggregate_943_s": agg,
                         "model_serialize_ms": ser_ms}
            del cts
        from fedrec.crypto.paillier import PaillierBackend

        m = args.paillier_values
        pb = PaillierBackend.keygen(key_bits=2048)
        ppub = load_public(pb.public_bytes(), KeyPin())
        sub = x[:m]
        enc_ms, cts = _mean_ms(lambda: [pb.encrypt(sub[i:i + 1]) for i in range(m)], 1)
        blobs = [pb.serialize(c) for c in cts]
        t0 = time.perf_counter()
        loaded = [ppub.deserialize(b, 1, 0) for b in blobs]
        summed = [ppub.add(a, a) for a in loaded]
        srv_ms = 1e3 * (time.perf_counter() - t0)
        dec_ms, _ = _mean_ms(lambda: [pb.decrypt(c) for c in summed], 1)
        scale = n / m
        out["paillier"] = {"measured_values": m, "key_bits": 2048,
                           "client_crypto_ms": (enc_ms + dec_ms) * scale,
                           "server_per_upload_ms": srv_ms * scale,
                           "upload_bytes": sum(map(len, blobs)) * scale, "extrapolated_from": m}
    ck, pa = out["ckks"], out["paillier"]
    out["paillier_over_ckks_client"] = pa["client_crypto_ms"] / ck["client_crypto_ms"]
    out["paillier_over_ckks_user_round"] = ((pa["client_crypto_ms"] + pa["server_per_upload_ms"])
                                            / (ck["client_crypto_ms"] + ck["server_per_upload_ms"]))
    log.info("crypto: %s", out)
    return out


def _silo_processes(clients: dict[str, pd.DataFrame], catalogue: list[Any], backend: str, rounds: int
                    ) -> dict[str, Any]:
    from training.fedmf_job import write_run

    with tempfile.TemporaryDirectory(prefix="fedmf-bench-") as tmp:
        model = {"backend": backend, "rounds": rounds, "timeout": 600.0, "masks": False}  # crypto cost alone
        files = write_run(clients, catalogue, Path(tmp), model)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "training.cli", "train", "--no-progress"]
        t0 = time.perf_counter()
        procs = [subprocess.Popen([*argv, "--role", "server", "--config", str(files.server_config)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
        procs += [subprocess.Popen([*argv, "--role", "client", "--config", str(c)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for c in files.client_configs.values()]
        for p in procs:
            if p.wait(3600) != 0:
                err = p.stderr.read().decode() if p.stderr else ""
                raise RuntimeError(f"silo run ({backend}) failed: {err[-2000:]}")
        summary = json.loads((files.server_out / "summary.json").read_text())
        return {"round_seconds": summary["round_seconds"], "upload_bytes": summary["upload_bytes"],
                "wall_seconds": time.perf_counter() - t0}


def rounds(args: argparse.Namespace) -> dict[str, Any]:
    from fedrec.protocols.fedmf import FedMFConfig
    from fedrec.protocols.fedmf.simulation import simulate

    train, _, catalogue, name = ml100k_split()
    devices = on_device(train)
    out: dict[str, Any] = {"dataset": name, "devices": {}, "silo_processes": {}}
    for backend in ("plain", "ckks", "plain", "ckks")[: 2 if args.quick else 4]:
        # masks off: their cost is the masks section's
        res = simulate(devices, catalogue, FedMFConfig(backend=backend, rounds=1, masks=False))
        r = res.server.reports[-1]
        out["devices"].setdefault(backend, []).append(
            {"round_seconds": r.seconds, "server_crypto_seconds": r.server_crypto_seconds,
             "upload_bytes": r.upload_bytes, "clients": len(r.ok),
             "client_round_seconds_mean": float(np.mean([c.timings["round_seconds"]
                                                         for c in res.clients.values()]))})
        log.info("rounds: %d devices, %s: %.1f s", len(devices), backend, r.seconds)
    groups = silos(train, 10)
    for backend in ("plain", "ckks"):
        out["silo_processes"][backend] = _silo_processes(groups, catalogue, backend, 2)
        log.info("rounds: 10 silo processes, %s: %s", backend, out["silo_processes"][backend])
    med = {b: float(np.median([x["round_seconds"] for x in v])) for b, v in out["devices"].items()}
    out["devices_ckks_over_plain"] = med["ckks"] / med["plain"]
    sp = {b: float(np.median(v["round_seconds"])) for b, v in out["silo_processes"].items()}
    out["silos_ckks_over_plain"] = sp["ckks"] / sp["plain"]
    return out


#: (row, party, stages) of the per-round profile; client rows are summed over the round's clients
FEDMF_ROWS = (("server: serialize model", "server", ("serialize model",)),
              ("clients: decrypt model", "clients", ("decrypt",)),
              ("clients: local training", "clients", ("local training",)),
              ("clients: mask upload", "clients", ("mask",)),
              ("clients: encrypt upload", "clients", ("encrypt",)),
              ("server: deserialize uploads", "server", ("deserialize",)),
              ("server: aggregate", "server", ("aggregate",)),
              ("server: unmask", "server", ("unmask",)),
              ("server: update model", "server", ("update model",)))


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Issue #17: a training round split by stage. The first ``--profile-clients`` ML-100K users as
    on-device clients, every one in every round (one process, direct peers; the full catalogue),
    ``--profile-rounds`` rounds; plain, CKKS with full
    ciphertexts (the uploads before issue #17, level 1) and CKKS as now (seeded level-1 uploads), masks off
    (their cost is the masks section's), then CKKS as now with masks on. Seconds per round are the median
    over the rounds; stage rows the mean per round (client rows summed over the clients)."""
    from fedrec.crypto.ckks import CKKSBackend
    from fedrec.protocols.fedmf import FedMFConfig
    from fedrec.protocols.fedmf.simulation import simulate

    train, _, catalogue, name = ml100k_split()
    devices = dict(list(on_device(train).items())[:args.profile_clients])  # the first users, all every round
    out: dict[str, Any] = {"dataset": name, "clients_per_round": len(devices),
                           "rounds": args.profile_rounds, "variants": {}}
    variants = (("plain", "plain", True, False), ("ckks full", "ckks", False, False),
                ("ckks seeded", "ckks", True, False), ("ckks seeded + masks", "ckks", True, True))
    for label, backend, seeded, on in variants:
        CKKSBackend.seeded = seeded
        try:
            cfg = FedMFConfig(backend=backend, rounds=args.profile_rounds, masks=on)
            res = simulate(devices, catalogue, cfg)
        finally:
            CKKSBackend.seeded = True
        rounds_s = [r.seconds for r in res.server.reports if r.step.startswith("fedmf/train")]
        clients: dict[str, float] = {}
        counts: dict[str, int] = {}
        for c in res.clients.values():
            t, n = c.stages.snapshot()
            for k, (sec, _) in t.items():
                clients[k] = clients.get(k, 0.0) + sec
            for k, v in n.items():
                counts[k] = counts.get(k, 0) + v
        server_t, server_counts = res.server.stages.snapshot()
        server = {k: v[0] for k, v in server_t.items()}
        r = max(len(rounds_s), 1)
        rows = {row: sum((clients if who == "clients" else server).get(k, 0.0) for k in names) / r
                for row, who, names in FEDMF_ROWS}
        uploads = max(sum(len(c.rounds_done) for c in res.clients.values()), 1)
        v = {"round_seconds": rounds_s, "median_round_seconds": float(np.median(rounds_s)), "stages": rows,
             "upload_bytes": counts.get("upload_bytes", 0) / uploads,
             "model_bytes": server_counts.get("model_bytes", 0) / r, "load": list(os.getloadavg())}
        out["variants"][label] = v
        log.info("profile %s: %.2f s/round, upload %.0f bytes", label, v["median_round_seconds"],
                 v["upload_bytes"])
    v = out["variants"]
    out["ckks_over_plain_round"] = v["ckks seeded"]["median_round_seconds"] / \
        v["plain"]["median_round_seconds"]
    out["full_over_seeded_upload_bytes"] = v["ckks full"]["upload_bytes"] / v["ckks seeded"]["upload_bytes"]
    out["table"] = profile_markdown(out)
    print(out["table"])
    return out


def profile_markdown(p: dict[str, Any]) -> str:
    names = list(p["variants"])
    var = p["variants"]

    def row(label: str, values: list[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    lines = [f"# FedMF: one training round by stage ({p['dataset']}, {p['clients_per_round']} clients per "
             f"round, mean of {p['rounds']} rounds; seconds)", "", row("stage", names),
             "|---|" + "---:|" * len(names)]
    for label, _, _ in FEDMF_ROWS:
        lines.append(row(label, [f"{var[n]['stages'][label]:.3f}" for n in names]))
    lines.append(row("**round (median)**", [f"{var[n]['median_round_seconds']:.3f}" for n in names]))
    lines.append(row("upload bytes", [f"{var[n]['upload_bytes']:.0f}" for n in names]))
    lines.append(row("model bytes (server → client)", [f"{var[n]['model_bytes']:.0f}" for n in names]))
    loads = ", ".join(f"{var[n]['load'][0]:.1f}" for n in names)
    lines += ["", f"Load average (1 min) after each variant: {loads} (2 cores). Client rows are summed over "
                  "the round's clients (they run one after another in this process; on devices they run in "
                  "parallel)."]
    return "\n".join(lines) + "\n"


def masks(args: argparse.Namespace) -> dict[str, Any]:
    from fedrec.protocols.fedmf import FedMFConfig
    from fedrec.protocols.fedmf.simulation import simulate

    train, _, catalogue, _ = ml100k_split()
    devices = on_device(train)
    out = {}
    for m in args.cohorts:
        row = {}
        for on in (False, True):
            cfg = FedMFConfig(backend="ckks", rounds=2, clients_per_round=m, masks=on)
            res = simulate(devices, catalogue, cfg)
            row["masked" if on else "unmasked"] = float(np.median(res.server.summary()["round_seconds"]))
        row["ratio"] = row["masked"] / row["unmasked"]
        out[str(m)] = row
        log.info("masks, cohort %d: %s", m, row)
    return out


def dropouts(args: argparse.Namespace) -> dict[str, Any]:
    """Masks on, ``--dropout`` of every round's selection goes silent at the upload step (after sharing
    its mask keys): the server times out on it, recovers its masks from the survivors' shares, and the
    client is back in the pool for later rounds (a device that went offline for a while)."""
    from fedrec.protocols.fedmf import FedMFConfig
    from fedrec.protocols.fedmf.core import select_clients
    from fedrec.protocols.fedmf.simulation import DirectPeer, simulate
    from fedrec.transport.errors import PeerTimeoutError

    train, test, catalogue, name = ml100k_split()
    devices = on_device(train)
    m, frac = args.dropout_cohort, args.dropout
    cfg = FedMFConfig(backend="plain", masks=True, rounds=args.dropout_rounds, clients_per_round=m,
                      min_ok=max(1, m // 2), retries=1)
    dropped: dict[str, set[int]] = {}

    def prepare(peers: dict[str, Any]) -> None:
        names = sorted(peers)
        for t in range(cfg.rounds):
            sel = select_clients(names, m, cfg.seed, t, 0)
            for v in sel[: max(1, int(round(frac * len(sel))))]:
                dropped.setdefault(v, set()).add(t)
        for v, rounds_ in dropped.items():
            peer = peers[v]
            assert isinstance(peer, DirectPeer)

            def hook(p: DirectPeer, step: str, msg: Any, rounds_: set[int] = rounds_) -> None:
                parts = step.split("/")
                if step.endswith("/upload") and parts[1] == "train" and int(parts[2][1:]) in rounds_:
                    raise PeerTimeoutError(p.name, step, "no answer (simulated dropout)")

            peer.hooks.append(hook)

    t0 = time.perf_counter()
    res = simulate(devices, catalogue, cfg, prepare=prepare)
    base = simulate(devices, catalogue, cfg)
    reports = [r for r in res.server.reports if r.step.startswith("fedmf/train")]
    out = {"dataset": name, "cohort": m, "dropout_fraction": frac, "rounds": cfg.rounds,
           "rounds_done": res.server.rounds_done, "dropouts_planned": sum(map(len, dropped.values())),
           "failed_uploads": sum(len(r.failed) for r in reports),
           "uploads_counted": sum(len(r.ok) for r in reports),
           "rmse_with_dropouts": rmse_of_clients(res, test, catalogue),
           "rmse_without_dropouts": rmse_of_clients(base, test, catalogue),
           "round_seconds_median": float(np.median([r.seconds for r in reports])),
           "round_seconds_median_without": float(np.median([r.seconds for r in base.server.reports
                                                            if r.step.startswith("fedmf/train")])),
           "seconds": time.perf_counter() - t0}
    log.info("dropouts: %s", out)
    return out


def leakage(args: argparse.Namespace) -> dict[str, Any]:
    """The item-inference attack on the server's view, for three views of the same clients."""
    from fedrec.eval.item_inference import attack_auc, item_scores_ciphertext, item_scores_plain
    from fedrec.protocols.fedmf import FedMFConfig
    from fedrec.protocols.fedmf.messages import Upload
    from fedrec.protocols.fedmf.simulation import DirectPeer, simulate

    train, _, catalogue, name = ml100k_split()
    keep = sorted(train["user_id"].unique(), key=str)[: args.attack_clients]
    devices = on_device(train[train["user_id"].isin(keep)])
    names = sorted(devices)
    items = pd.Index([str(x) for x in catalogue])
    rated = np.zeros((len(names), len(items)), dtype=bool)
    for j, n in enumerate(names):
        rated[j, items.get_indexer(devices[n]["item_id"].astype(str))] = True
    k = 16

    def uploads_of(**cfg: Any) -> tuple[dict[str, list[bytes]], Any]:
        seen: dict[str, list[Any]] = {}

        def record(peers: dict[str, Any]) -> None:
            for n, peer in peers.items():
                assert isinstance(peer, DirectPeer)
                peer.record = seen.setdefault(n, [])

        res = simulate(devices, catalogue, FedMFConfig(n_factors=k, rounds=args.attack_rounds, **cfg),
                       prepare=record)
        return ({n: [m.ciphertext for _, m in seen[n] if isinstance(m, Upload) and m.purpose == "train"]
                 for n in names}, res)

    def decrypted(ups: dict[str, list[bytes]], res: Any) -> np.ndarray:
        backend = next(iter(res.clients.values())).backend
        size = len(items) * (k + 1)
        return np.asarray([item_scores_plain([backend.decrypt(backend.deserialize(b, size, 0))
                                              for b in ups[n]], len(items), k, layout="blocks")
                           for n in names])

    out: dict[str, Any] = {"dataset": name, "clients": len(names), "items": len(items),
                           "rounds": args.attack_rounds, "rated_pairs": int(rated.sum())}
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    ups, res = uploads_of(backend="plain", masks=False)  # FedMF: plaintext gradients
    views: dict[str, Any] = {"plaintext uploads (FedMF)": decrypted(ups, res)}
    ups, res = uploads_of(backend="plain", masks=True)
    views["masked uploads, decrypted by a colluding client"] = decrypted(ups, res)
    ups, _ = uploads_of(backend="ckks")
    for feature in ("byte_mean", "zero_bytes", "round_change"):
        views[f"ckks ciphertext bytes ({feature})"] = np.asarray(
            [item_scores_ciphertext(ups[n], len(items), feature=feature) for n in names])
    sizes = {len(b) for n in names for b in ups[n]}
    out["ckks_upload_sizes"] = sorted(sizes)
    out["views"] = {}
    views["popularity prior (no upload)"] = rated.sum(axis=0)[None, :] - rated  # the others' counts
    for view, scores in views.items():
        prior = view.startswith("popularity")  # the prior is the item effect itself: not centred
        centred = scores if prior else scores - scores.mean(axis=0)
        auc, lo, hi = attack_auc(centred, rated, rng, n_boot=args.n_boot)
        raw = attack_auc(scores, rated, rng, n_boot=args.n_boot)
        out["views"][view] = {"auc": auc, "ci": [lo, hi], "auc_uncentred": raw[0],
                              "ci_uncentred": [raw[1], raw[2]]}
        log.info("leakage %s: AUC %.3f [%.3f, %.3f] (uncentred %.3f)", view, auc, lo, hi, raw[0])
    out["seconds"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------- output
def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    q = result.get("quality", {})
    if q:
        ax = axes[0]
        labels = list(q)
        xs = np.arange(len(labels))
        for j, (key, lab) in enumerate((("same_schedule_centralized_rmse", "same schedule, central (twin)"),
                                        ("federated_rmse", "federated MF (plain)"),
                                        ("ckks_10_silos_rmse", "federated MF (ckks, 10 silos)"))):
            vals = [100 * (q[d][key] / q[d]["central_biasedmf_rmse"] - 1) if key in q[d] else np.nan
                    for d in labels]
            ax.bar(xs + (j - 1) * 0.27, vals, 0.27, label=lab)
        ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xticks(xs, [f"{d.split(' (')[0]}\n(BiasedMF {q[d]['central_biasedmf_rmse']:.4f})"
                           for d in labels])
        ax.set_ylabel("test RMSE vs centralized BiasedMF (%)")
        ax.set_title("quality (bar: +0.5%)")
        ax.legend(fontsize=7)
    c = result.get("crypto", {})
    if c:
        ax = axes[1]
        names = ["plain", "ckks", "paillier"]
        ax.bar(names, [c[n]["client_crypto_ms"] for n in names])
        ax.set_yscale("log")
        ax.set_ylabel("ms per client and round (log)")
        ratio = c["paillier_over_ckks_user_round"]
        ax.set_title(f"client crypto, 1682x17 values\n(Paillier {ratio:.0f}x CKKS per user-round)")
    r = result.get("rounds", {})
    if r:
        ax = axes[2]
        dev = {b: np.median([x["round_seconds"] for x in v]) for b, v in r["devices"].items()}
        sil = {b: np.median(v["round_seconds"]) for b, v in r["silo_processes"].items()}
        xs = np.arange(2)
        ax.bar(xs - 0.2, [dev["plain"], sil["plain"]], 0.4, label="plain")
        ax.bar(xs + 0.2, [dev["ckks"], sil["ckks"]], 0.4, label="ckks")
        ax.set_xticks(xs, ["943 devices\n(1 process)", "10 silo\nprocesses"])
        ax.set_yscale("log")
        ax.set_ylabel("seconds per round = epoch (log)")
        ax.set_title("one round over every user")
        ax.legend(fontsize=7)
    mk = result.get("masks", {})
    if mk:
        ax = axes[3]
        ms = [int(k) for k in mk]
        ax.plot(ms, [mk[str(k)]["unmasked"] for k in ms], "o-", label="no masks")
        ax.plot(ms, [mk[str(k)]["masked"] for k in ms], "s-", label="secure aggregation")
        ax.set_xlabel("clients per round")
        ax.set_ylabel("seconds per round (ckks)")
        ax.set_title("cost of the masks")
        ax.legend(fontsize=7)
    lk = result.get("leakage", {})
    if lk:
        ax = axes[4]
        views = list(lk["views"])
        auc = np.array([lk["views"][v]["auc"] for v in views])
        ci = np.array([lk["views"][v]["ci"] for v in views])
        ys = np.arange(len(views))
        ax.barh(ys, auc - 0.5, left=0.5, xerr=[auc - ci[:, 0], ci[:, 1] - auc], capsize=3)
        ax.axvline(0.55, color="grey", ls="--", lw=0.8)
        ax.set_yticks(ys, [v.replace(", ", ",\n") for v in views], fontsize=7)
        ax.set_xlim(0.4, 1.02)
        ax.set_xlabel("item-inference attack AUC (bar: 0.55)")
        ax.set_title(f"item inference, {lk['clients']} clients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller cohorts (minutes)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds for quality (100; quick: 30)")
    p.add_argument("--paillier-values", type=int, default=None, help="values Paillier is measured on (200)")
    p.add_argument("--cohorts", default=None, help="clients per round for the masks section (10,50,100)")
    p.add_argument("--dropout", type=float, default=0.1, help="fraction of each round's clients killed")
    p.add_argument("--dropout-cohort", type=int, default=None, help="clients per round (100; quick: 40)")
    p.add_argument("--dropout-rounds", type=int, default=None, help="rounds (100; quick: 20)")
    p.add_argument("--attack-clients", type=int, default=None, help="clients attacked (100; quick: 30)")
    p.add_argument("--attack-rounds", type=int, default=None, help="rounds they upload in (3; quick: 2)")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples of the attack AUC")
    p.add_argument("--profile-clients", type=int, default=None,
                   help="clients (each every round) in the profile section (100; quick: 50)")
    p.add_argument("--profile-rounds", type=int, default=3,
                   help="rounds per variant in the profile section (3)")
    p.add_argument("--out", type=Path, default=OUT, help="results folder (benchmarks/results)")
    p.add_argument("--plot-only", action="store_true", help="redraw fedmf.png from fedmf.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot_only:
        plot(json.loads((args.out / "fedmf.json").read_text()), args.out / "fedmf.png")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("fedrec", "training"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="crypto backend 'plain'")
    args.rounds = args.rounds or (30 if args.quick else 100)
    args.paillier_values = args.paillier_values or (50 if args.quick else 200)
    args.cohorts = [int(x) for x in (args.cohorts or ("10,40" if args.quick else "10,50,100")).split(",")]
    args.dropout_cohort = args.dropout_cohort or (40 if args.quick else 100)
    args.dropout_rounds = args.dropout_rounds or (20 if args.quick else 100)
    args.attack_clients = args.attack_clients or (30 if args.quick else 100)
    args.attack_rounds = args.attack_rounds or (2 if args.quick else 3)
    args.profile_clients = args.profile_clients or (50 if args.quick else 100)
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; choose from {SECTIONS}")
    import torch

    torch.set_num_threads(1)
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                          "platform": platform.platform()}, "quick": args.quick}
    sections = {"quality": quality, "crypto": crypto, "profile": profile, "rounds": rounds, "masks": masks,
                "dropouts": dropouts, "leakage": leakage}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fedmf.json"
    if path.is_file() and set(only) != set(SECTIONS):  # a partial run updates the sections it runs
        result = {**json.loads(path.read_text()), **result}
    for name in only:
        t0 = time.perf_counter()
        result[name] = sections[name](args)
        result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        result.setdefault("section_load_average", {})[name] = list(os.getloadavg())  # a shared machine
        log.info("section %s done in %.0f s", name, time.perf_counter() - t0)
        path.write_text(json.dumps(result, indent=1, default=float))  # after every section
    plot(result, args.out / "fedmf.png")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
