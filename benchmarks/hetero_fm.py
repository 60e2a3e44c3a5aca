#!/usr/bin/env python3
"""Vertical FM benchmark: accuracy of federated (CKKS, plain) vs centralized vs guest-only, and the cost
of each crypto backend per epoch (seconds, bytes on the wire) — ratios measured in the same run.

Datasets: MovieLens (1M when ``ratings.dat`` is in ``DATA/ml-1m``, else 100K from ``DATA/ml-100k``;
``DATA`` = ``$FEDREC_DATA_DIR`` or ``../shared/data``) and a synthetic dataset of ML-1M's shape
(``SyntheticConfig.ml1m_shape()``). Split: 10% of the users are "cold" (``pseudo_new_user_split``: they
keep their first 5 ratings in train, the rest is their test), then 10% of the remaining rows are the warm
test (``random_split``). RMSE on all test rows and on the cold users' rows, 95% bootstrap CIs.

Every model gets the same hyperparameters and the same epoch limit (``--epochs``; early stopping on a
5% random validation split may stop sooner). The two parties run in one process over the in-memory
channel (the same protocol code and wire encoding as the ZeroMQ channel; no sockets, so timings are the
protocol's own); bytes on the wire are the encoded frames each party transmits. Paillier is too slow for
a full epoch: it runs one batch on a subset of users (``--paillier-users``), and CKKS runs the same
subset so the per-sample ratio compares like with like.

On the ML-1M-sized run the batches are 8192 rows (~4000 distinct users) and ``plain_bound`` is 16
instead of 64 (kept from earlier runs for comparability; the masked release bound grows with the batch's
users times ``plain_bound``, and 16384 rows at 64 — "release bound 1.56e14 is beyond the modulus room
7.04e13" before — are now split by the guest into parts summed before one release,
``packing.plan_parts``). Synthetic features are standardised, so no host multiplier comes near 16 (the
host refuses one that does, naming ``plain_bound``). Bytes: the channels' public send hook
(``Channel.add_send_listener``).

Cost (issue #17): per dataset, backend (plain, ckks) and transport, ``--cost-epochs`` (3) one-epoch
fits without validation, every variant once per round, interleaved (the shared machine's load drifts:
variants measured next to each other share it); seconds per epoch are the MEDIAN over the rounds (the
guest's batch times), bytes and stage rows the mean. Transports: ``memory`` (both parties in this process: the
per-stage profile, each party's work on its own) and ``zmq`` (the host in its own process behind a
CURVE ZeroMQ socket, as deployed: the parties' work overlaps on the 2 cores, e.g. the host's work
ahead, ``fedrec.protocols.hetero_fm.host_batch``). The profile splits an epoch into the guest's torch
work, encryption, serialization, the host's deserialization, products, masking, its own torch work,
decryption, and transport (= the guest's waits minus the host's handling, i.e. wire encoding, copies
and, over ZeroMQ, the sockets), from the parties' stage clocks (``fedrec.profiling``).

Bars: CKKS epoch time <= 2x plain, bytes <= 1.3x plain (issue #17; reported per transport);
Paillier per-sample time >= 100x CKKS.

    .venv/bin/python benchmarks/hetero_fm.py [--quick] [--epochs 4] [--synthetic-epochs 2] [--cost-epochs 3]

Writes benchmarks/results/hetero_fm.json, hetero_fm.png and hetero_fm_profile.md (the stage tables).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from fedrec.data import (
    SyntheticConfig,
    generate,
    load_ml1m,
    load_ml100k,
    pseudo_new_user_split,
    random_split,
    vertical_split,
)
from fedrec.eval.metrics import bootstrap_ci, rmse_statistic
from fedrec.models import FactorizationMachine
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties

OUT = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("FEDREC_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
log = logging.getLogger("hetero_fm_bench")
#: seconds for one federated fit, guest and host (the longest in results/hetero_fm.json took ~160 s)
PARTIES_TIMEOUT = 2 * 3600


# ---------------------------------------------------------------------------------------------- data
def movielens() -> Any:
    if (DATA / "ml-1m" / "ratings.dat").is_file():
        return load_ml1m(DATA / "ml-1m")
    if (DATA / "ml-100k" / "u.data").is_file():
        return load_ml100k(DATA / "ml-100k")
    return None


def split(ds: Any, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(train, test, cold mask over test rows) as described in the module docstring."""
    rest, cold_test = pseudo_new_user_split(ds.interactions, user_fraction=0.1, keep_first=5, seed=seed)
    train, warm_test = random_split(rest, test_fraction=0.1, seed=seed)
    test = pd.concat([warm_test, cold_test], ignore_index=True)
    cold = np.r_[np.zeros(len(warm_test), bool), np.ones(len(cold_test), bool)]
    return train.reset_index(drop=True), test, cold


# ---------------------------------------------------------------------------------------------- wire
class ByteCounter:
    """Counts the encoded bytes the channels send, by phase (``setup``, ``epoch``, ``other``), through
    the public :meth:`Channel.add_send_listener` hook (totals: ``Channel.traffic``)."""

    def __init__(self, *channels: Any) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        for ch in channels:
            ch.add_send_listener(self._count)

    def _count(self, peer: str, step: str, n_bytes: int, msg: object) -> None:
        phase = "epoch" if step.startswith("fm/e") else "setup" if step == "fm/setup" else "other"
        self.bytes[phase] += n_bytes


def run_federated(train: pd.DataFrame, items: Any, users: pd.DataFrame, cfg: HeteroFMConfig,
                  test: pd.DataFrame | None, validation: object = "random") -> dict[str, Any]:
    """Guest and host over the in-memory channel; returns timings, bytes and test predictions."""
    net = MemoryNetwork()
    g_ch, h_ch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    counter = ByteCounter(g_ch, h_ch)
    host = HeteroFMHost(h_ch, "guest", cfg)
    guest = HeteroFMGuest(g_ch, "host", cfg)

    def play_guest() -> tuple[float, np.ndarray | None]:
        t0 = time.perf_counter()
        guest.fit(train, item_features=items, validation=validation)
        fit_s = time.perf_counter() - t0
        pred = None if test is None else guest.predict(test)
        guest.close()
        return fit_s, pred

    out = run_parties({"guest": play_guest, "host": lambda: host.serve(users)}, timeout=PARTIES_TIMEOUT)
    fit_s, pred = cast(tuple[float, "np.ndarray | None"], out["guest"])
    epochs = len(guest.history.train_loss)
    n_batches = -(-int(round(len(train) * (0.95 if validation == "random" else 1.0))) // cfg.batch_size)
    epoch_s = guest.timings["epoch_seconds"] / max(epochs, 1)
    return {"backend": cfg.backend, "epochs": epochs, "best_epoch": guest.history.best_epoch,
            "fit_seconds": fit_s, "seconds_per_epoch": epoch_s, "batches_per_epoch": n_batches,
            "bytes_per_epoch": counter.bytes["epoch"] / max(epochs, 1),
            "setup_bytes": counter.bytes["setup"],
            "bytes_total": g_ch.bytes_sent + h_ch.bytes_sent,
            "seconds_per_sample": epoch_s / max(len(train) * (0.95 if validation == "random" else 1.0), 1),
            "clipped_values": guest.clipped_values, "pred": pred}


def rmse_cis(pred: np.ndarray, y: np.ndarray, cold: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    sq = (pred - y) ** 2
    return {"rmse": bootstrap_ci(sq, rmse_statistic, n_boot=n_boot, seed=seed).to_dict(),
            "rmse_cold": bootstrap_ci(sq[cold], rmse_statistic, n_boot=n_boot, seed=seed).to_dict()}


# ---------------------------------------------------------------------------------------------- runs
def bench_dataset(ds: Any, params: dict[str, Any], args: argparse.Namespace, backends: tuple[str, ...]
                  ) -> dict[str, Any]:
    train, test, cold = split(ds, args.seed)
    _, hv = vertical_split(ds.with_interactions(train), seed=args.seed)
    y = test["rating"].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {"name": ds.name, "n_train": len(train), "n_test": len(test),
                           "n_cold_test": int(cold.sum()),
                           "n_users": int(ds.interactions["user_id"].nunique()),
                           "params": params, "models": {}, "cost": {}}
    base = HeteroFMConfig(**params, timeout=600.0)
    for name, use_host in (("guest-only", False), ("centralized", True)):
        t0 = time.perf_counter()
        fm = FactorizationMachine(**{**base.fm_params(), "use_user_features": use_host})
        fm.fit(train, user_features=hv.user_features if use_host else None,
               item_features=ds.item_features)
        out["models"][name] = {**rmse_cis(fm.predict(test), y, cold, args.n_boot, args.seed),
                               "fit_seconds": time.perf_counter() - t0, "epochs": len(fm.history.train_loss)}
        print(f"  {ds.name} {name}: RMSE {out['models'][name]['rmse']['point']:.4f} "
              f"cold {out['models'][name]['rmse_cold']['point']:.4f}", flush=True)
    out["failures"] = {}
    for backend in backends:
        try:
            r = run_federated(train, ds.item_features, hv.user_features,
                              HeteroFMConfig(**{**params, "backend": backend}, timeout=600.0), test)
        except Exception as exc:  # a failed configuration is a result too (recorded, run goes on)
            out["failures"][backend] = f"{type(exc).__name__}: {exc}"
            print(f"  {ds.name} federated-{backend}: FAILED: {out['failures'][backend]}", flush=True)
            continue
        pred = r.pop("pred")
        out["models"][f"federated-{backend}"] = {**rmse_cis(pred, y, cold, args.n_boot, args.seed),
                                                 "fit_seconds": r["fit_seconds"], "epochs": r["epochs"]}
        out["cost"][backend] = r
        m = out["models"][f"federated-{backend}"]
        print(f"  {ds.name} federated-{backend}: RMSE {m['rmse']['point']:.4f}"
              f" cold {m['rmse_cold']['point']:.4f}; "
              f"{r['seconds_per_epoch']:.1f} s/epoch, {r['bytes_per_epoch'] / 2**20:.1f} MiB/epoch",
              flush=True)
    return out


def bench_paillier(ds: Any, params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One batch over ``--paillier-users`` users, Paillier and CKKS on the same rows."""
    train, _, _ = split(ds, args.seed)
    chosen = pd.unique(train["user_id"])[: args.paillier_users]
    sub = train[train["user_id"].isin(chosen)].reset_index(drop=True)
    _, hv = vertical_split(ds.with_interactions(sub), seed=args.seed)
    out: dict[str, Any] = {"dataset": ds.name, "users": len(chosen), "samples": len(sub)}
    for backend in ("paillier", "ckks"):
        cfg = HeteroFMConfig(**{**params, "backend": backend, "batch_size": len(sub), "epochs": 1},
                             timeout=900.0)
        r = run_federated(sub, ds.item_features, hv.user_features, cfg, None, validation="none")
        r.pop("pred")
        out[backend] = r
        print(f"  subset {len(chosen)} users / {len(sub)} samples, {backend}: "
              f"{r['seconds_per_sample'] * 1e3:.3f} ms/sample, "
              f"{r['bytes_per_epoch'] / len(sub):.0f} B/sample", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- cost
#: (row label, party, stages summed) of the profile table, in the order of a batch
PROFILE_ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("guest: torch (loss, backward, step, residual rows)", "guest", ("torch", "residuals")),
    ("guest: encryption (seeded blobs)", "guest", ("encrypt",)),
    ("guest: serialization", "guest", ("serialize",)),
    ("host: deserialization", "host", ("deserialize",)),
    ("host: multipliers (inline)", "host", ("multipliers",)),
    ("host: homomorphic products", "host", ("products",)),
    ("host: masking", "host", ("mask",)),
    ("host: serialization", "host", ("serialize",)),
    ("guest: deserialization", "guest", ("deserialize",)),
    ("guest: decryption + lane sums", "guest", ("decrypt",)),
    ("guest: release (flood, round)", "guest", ("release",)),
    ("host: torch (partials, step)", "host", ("handle:partials", "step")),
    ("host: waiting for its work ahead", "host", ("wait:ahead",)),
)
AHEAD_ROWS = (("host ahead: multipliers", ("ahead:multipliers",)), ("host ahead: plaintext encoding",
              ("ahead:encode",)), ("host ahead: mask encryption", ("ahead:masks",)))
GUEST_WAITS = ("wait:partials", "wait:grad", "wait:release")
#: long deadlines: the cost runs share 2 cores with whatever else runs (a starved peer is not a dead one)
TRANSPORT_KW = {"recv_timeout": 900.0, "heartbeat_interval": 1.0, "heartbeat_timeout": 300.0}
HOST_HANDLES = ("handle:partials", "handle:residuals", "handle:release")


def profile_table(guest: dict[str, list[float]], host: dict[str, list[float]], epochs: int,
                  epoch_s: float) -> dict[str, float]:
    """Seconds per epoch per row of :data:`PROFILE_ROWS`, transport, the guest's rest and the epoch."""
    def tot(d: dict[str, list[float]], names: tuple[str, ...]) -> float:
        return sum(d.get(n, [0.0, 0])[0] for n in names) / max(epochs, 1)

    out = {label: tot(guest if who == "guest" else host, names) for label, who, names in PROFILE_ROWS}
    waits = tot(guest, GUEST_WAITS)
    out["transport (guest waits - host handling)"] = max(waits - tot(host, HOST_HANDLES), 0.0)
    guest_stages = waits + tot(guest, ("torch", "residuals", "encrypt", "serialize", "deserialize", "decrypt",
                                       "release"))
    out["guest: rest (loop, bookkeeping)"] = max(epoch_s - guest_stages, 0.0)
    out["epoch (guest wall clock)"] = epoch_s
    for label, names in AHEAD_ROWS:
        out[label + " [overlapped]"] = tot(host, names)
    return out


def _stages_json(clock: Any) -> dict[str, Any]:
    times, counts = clock.snapshot()
    return {"stages": {k: [v[0], v[1]] for k, v in times.items()}, "counts": counts}


def _sum_stages(parts: list[dict[str, Any]]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {}
    counts: dict[str, int] = defaultdict(int)
    for p in parts:
        for k, (sec, n) in p["stages"].items():
            old = stages.get(k, [0.0, 0])
            stages[k] = [old[0] + sec, old[1] + n]
        for k, n in p["counts"].items():
            counts[k] += n
    return {"stages": stages, "counts": dict(counts)}


def _epoch_median(guest: HeteroFMGuest) -> tuple[float, list[float]]:
    per: dict[int, float] = defaultdict(float)
    for epoch, sec in guest.batch_seconds:
        per[epoch] += sec
    each = [per[e] for e in sorted(per)]
    return float(np.median(each)), each


_DATASETS: dict[str, tuple[Any, pd.DataFrame, pd.DataFrame]] = {}


def _dataset(spec: dict[str, Any]) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """(dataset, training rows, host features) exactly as both the guest and the host process build them
    (kept for the next runs of this process)."""
    key = json.dumps({k: spec.get(k) for k in ("data", "synthetic", "seed")}, sort_keys=True)
    if key not in _DATASETS:
        _DATASETS[key] = _build_dataset(spec)
    return _DATASETS[key]


def _build_dataset(spec: dict[str, Any]) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    ds = movielens() if spec["data"] == "movielens" else \
        generate(SyntheticConfig(**spec["synthetic"])).dataset
    train, _, _ = split(ds, spec["seed"])
    _, hv = vertical_split(ds.with_interactions(train), seed=spec["seed"])
    return ds, train, hv.user_features


def host_process(spec_path: str) -> None:
    """The host of a ``zmq`` cost run, in its own process (``--host-process SPEC``)."""
    from fedrec.transport.channel import TransportConfig
    from fedrec.transport.keys import load_keypair, load_public_key
    from fedrec.transport.zmq_channel import ZmqChannel

    TRANSPORT = TransportConfig(**TRANSPORT_KW)
    spec = json.loads(Path(spec_path).read_text())
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    _, _, users = _dataset(spec)
    keys = Path(spec["keydir"])
    ch = ZmqChannel.listen("host", load_keypair(keys / "host.key_secret"),
                           {"guest": load_public_key(keys / "guest.key")}, config=TRANSPORT)
    print(ch.endpoint, flush=True)
    host = HeteroFMHost(ch, "guest", HeteroFMConfig(**spec["cfg"]), ahead=bool(spec["ahead"]))
    try:
        host.serve(users)
        Path(spec["out"]).write_text(json.dumps(_stages_json(host.stages)))
    finally:
        ch.close()


def run_cost(spec: dict[str, Any], backend: str, transport: str, epochs: int, variant: str = "issue17"
             ) -> dict[str, Any]:
    """One fit of ``epochs`` epochs (no validation) over ``transport``; median epoch, bytes, stages.
    ``variant``: ``issue17`` (seeded guest encryptions; the host works ahead over ``zmq`` only: in one
    process its helper thread would share the GIL with the guest and blur the per-stage times) or
    ``baseline`` (full ciphertexts, nothing ahead: the protocol before issue #17) or ``static`` (as
    ``issue17`` with layout ``static``: the host's plaintexts encoded once per run)."""
    from fedrec.crypto.ckks import CKKSBackend

    ds, train, users = _dataset(spec)
    cfg = {**spec["params"], "backend": backend, "epochs": epochs, "validation": "none", "timeout": 900.0}
    if variant == "static":
        cfg["layout"] = "static"
    ahead = variant != "baseline" and transport == "zmq"
    CKKSBackend.seeded = variant != "baseline"
    try:
        return _run_cost(spec, ds, train, users, cfg, backend, transport, ahead, variant)
    finally:
        CKKSBackend.seeded = True


def _run_cost(spec: dict[str, Any], ds: Any, train: pd.DataFrame, users: pd.DataFrame, cfg: dict[str, Any],
              backend: str, transport: str, ahead: bool, variant: str) -> dict[str, Any]:
    if transport == "memory":
        net = MemoryNetwork()
        g_ch, h_ch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
        counter = ByteCounter(g_ch, h_ch)
        host = HeteroFMHost(h_ch, "guest", HeteroFMConfig(**cfg), ahead=ahead)
        guest = HeteroFMGuest(g_ch, "host", HeteroFMConfig(**cfg))

        def play() -> None:
            guest.fit(train, item_features=ds.item_features, validation="none")
            guest.close()

        run_parties({"guest": play, "host": lambda: host.serve(users)}, timeout=PARTIES_TIMEOUT)
        host_stages = _stages_json(host.stages)
    else:
        from fedrec.transport.channel import TransportConfig
        from fedrec.transport.keys import load_keypair, load_public_key, write_keypair
        from fedrec.transport.zmq_channel import ZmqChannel

        TRANSPORT = TransportConfig(**TRANSPORT_KW)

        with tempfile.TemporaryDirectory(prefix="hetero-bench-") as tmp:
            for name in ("host", "guest"):
                write_keypair(tmp, name)
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps({**spec, "cfg": cfg, "keydir": tmp, "out": f"{tmp}/host.json",
                                             "ahead": ahead}))
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            log_path = Path(tmp) / "host.log"
            proc = subprocess.Popen([sys.executable, "-X", "faulthandler", __file__, "--host-process",
                                     str(spec_path)], env=env,
                                    stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True)
            try:
                assert proc.stdout is not None
                endpoint = proc.stdout.readline().strip()
                if not endpoint.startswith("tcp://"):
                    raise RuntimeError(f"host process did not start: {log_path.read_text()[-2000:]}")
                ch = ZmqChannel.connect("guest", load_keypair(Path(tmp) / "guest.key_secret"), "host",
                                        load_public_key(Path(tmp) / "host.key"), endpoint, config=TRANSPORT)
                counter = ByteCounter(ch)
                try:
                    guest = HeteroFMGuest(ch, "host", HeteroFMConfig(**cfg))
                    guest.fit(train, item_features=ds.item_features, validation="none")
                    guest.close()
                finally:
                    ch.close()
                if proc.wait(timeout=300) != 0:
                    raise RuntimeError(f"host process failed: {log_path.read_text()[-2000:]}")
            except BaseException:
                print(f"host process (exit status {proc.poll()}) log:\n{log_path.read_text()[-3000:]}",
                      file=sys.stderr)
                raise
            finally:
                if proc.poll() is None:
                    proc.kill()
            host_stages = json.loads((Path(tmp) / "host.json").read_text())
            # both directions through the guest's socket, minus the guest's own set-up and closing messages
            # (the host's are acknowledgements of a few hundred bytes)
            sent = ch.bytes_sent + ch.bytes_received - counter.bytes["setup"] - counter.bytes["other"]
    median, each = _epoch_median(guest)
    g = _stages_json(guest.stages)
    n_ep = len(each)
    if transport == "memory":
        sent = counter.bytes["epoch"]
    return {"backend": backend, "transport": transport, "variant": variant, "ahead": ahead, "epochs": n_ep,
            "epoch_seconds": each,
            "seconds_per_epoch": median, "bytes_per_epoch": sent / max(n_ep, 1),
            "batches_per_epoch": -(-len(train) // cfg["batch_size"]),
            "profile": profile_table(g["stages"], host_stages["stages"], n_ep, median),
            "guest_stages": g, "host_stages": host_stages}


def bench_cost(name: str, spec: dict[str, Any], args: argparse.Namespace, baseline: bool) -> dict[str, Any]:
    """Plain and CKKS over both transports (with ``baseline``, the pre-issue-#17 CKKS too): ``--cost-epochs``
    rounds of one-epoch fits, the variants interleaved within each round (the machine's load drifts;
    neighbours in time share it); per variant the median epoch, mean bytes and mean stage table."""
    out: dict[str, Any] = {"name": name, "params": spec["params"], "runs": {}}
    todo = [(t, b, v) for t in ("memory", "zmq") for b, v in
            [("plain", "issue17"), ("ckks", "issue17"), ("ckks", "static")]
            + ([("ckks", "baseline")] if baseline else [])]
    reps: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rep in range(args.cost_epochs):
        for transport, backend, variant in todo:
            key = f"{transport}/{backend}" + {"baseline": "-baseline", "static": "-static"}.get(variant, "")
            r = run_cost(spec, backend, transport, 1, variant)
            reps[key].append(r)
            print(f"  {name} cost round {rep + 1}/{args.cost_epochs} {key}: {r['seconds_per_epoch']:.2f} "
                  f"s/epoch, {r['bytes_per_epoch'] / 2**20:.1f} MiB/epoch, load {os.getloadavg()[0]:.1f}",
                  flush=True)
    for key, rs in reps.items():
        each = [r["seconds_per_epoch"] for r in rs]
        median = float(np.median(each))
        merged = {**rs[0], "epochs": len(rs), "epoch_seconds": each, "seconds_per_epoch": median,
                  "bytes_per_epoch": float(np.mean([r["bytes_per_epoch"] for r in rs])),
                  "profile": {row: float(np.mean([r["profile"][row] for r in rs]))
                              for row in rs[0]["profile"]},
                  "guest_stages": _sum_stages([r["guest_stages"] for r in rs]),
                  "host_stages": _sum_stages([r["host_stages"] for r in rs])}
        merged["profile"]["epoch (guest wall clock)"] = float(np.mean(each))
        out["runs"][key] = merged
        print(f"  {name} cost {key}: {median:.2f} s/epoch (median of {[round(x, 2) for x in each]})",
              flush=True)
    return cost_ratios(out)


def cost_ratios(out: dict[str, Any]) -> dict[str, Any]:
    """``<transport>_time_ratio``: the median over the rounds of ckks/plain measured in the same round (the
    load drifts between rounds; a round's variants run minutes apart at most); also the ratio of the
    medians (``..._of_medians``) and the bytes ratio (bytes do not drift)."""
    for transport in ("memory", "zmq"):
        p = out["runs"][f"{transport}/plain"]
        for name, key in (("", "ckks"), ("_baseline", "ckks-baseline"), ("_static", "ckks-static")):
            c = out["runs"].get(f"{transport}/{key}")
            if c is None:
                continue
            pairs = [x / y for x, y in zip(c["epoch_seconds"], p["epoch_seconds"], strict=False)]
            out[f"{transport}{name}_time_ratio"] = float(np.median(pairs))
            out[f"{transport}{name}_time_ratios_per_round"] = pairs
            out[f"{transport}{name}_time_ratio_of_medians"] = c["seconds_per_epoch"] / p["seconds_per_epoch"]
            out[f"{transport}{name}_bytes_ratio"] = c["bytes_per_epoch"] / p["bytes_per_epoch"]
    return out


def profile_markdown(costs: list[dict[str, Any]], load: list[float]) -> str:
    lines = ["# Vertical FM: one epoch, stage by stage (seconds per epoch, means over the rounds; a time "
             "ratio is the median of the rounds' paired ckks/plain ratios)", "",
             f"Load average at the end of the run: {', '.join(f'{x:.2f}' for x in load)} (2 cores). "
             "Stages of one party are disjoint; `[overlapped]` rows run on the host's helper thread while "
             "the guest works (inside other rows' time over `memory`, beside it over `zmq`).", ""]
    for d in costs:
        for transport in ("memory", "zmq"):
            p, c = d["runs"][f"{transport}/plain"], d["runs"][f"{transport}/ckks"]
            base = d["runs"].get(f"{transport}/ckks-baseline")
            head = "| stage | plain s | " + ("ckks before #17 s | " if base else "") + \
                "ckks s | ckks − plain s |"
            rounds = ", ".join(f"{x:.2f}" for x in d.get(f"{transport}_time_ratios_per_round", []))
            lines += [f"## {d['name']} — {transport} ({p['batches_per_epoch']} batches/epoch; host works "
                      f"ahead: {c['ahead']})", "", head, "|---|" + "---:|" * (4 if base else 3)]
            for row in c["profile"]:
                a, b = p["profile"].get(row, 0.0), c["profile"][row]
                was = f"{base['profile'].get(row, 0.0):.3f} | " if base else ""
                lines.append(f"| {row} | {a:.3f} | {was}{b:.3f} | {b - a:+.3f} |")
            gc, hc = c["guest_stages"]["counts"], c["host_stages"]["counts"]
            n = max(c["epochs"], 1)
            tr, br = d[f"{transport}_time_ratio"], d[f"{transport}_bytes_ratio"]
            before = (f" (before #17: {d.get(f'{transport}_baseline_time_ratio', 0):.2f}x, bytes "
                      f"{d.get(f'{transport}_baseline_bytes_ratio', 0):.2f}x)")
            mib = {k: v / n / 2**20 for k, v in {**gc, **hc}.items() if k.endswith("bytes")}
            st = d["runs"].get(f"{transport}/ckks-static")
            static = "" if st is None else (
                f" Layout `static` (host plaintexts encoded once per run): {st['seconds_per_epoch']:.2f} s "
                f"per epoch, ratio {d[f'{transport}_static_time_ratio']:.2f}x, bytes "
                f"{d[f'{transport}_static_bytes_ratio']:.2f}x.")
            lines += ["", f"CKKS per epoch: {gc.get('chunks', 0) / n:.0f} chunk ciphertexts "
                          f"({mib.get('chunk_bytes', 0):.1f} MiB), {hc.get('products', 0) / n:.0f} products "
                          f"into {hc.get('product_results', 0) / n:.0f} results "
                          f"({mib.get('result_bytes', 0):.1f} MiB). Epoch ratio ckks/plain {tr:.2f}x, "
                          f"bytes {br:.2f}x" + (before if base else "") + f" (time ratio: median of the "
                          f"rounds' own ratios {rounds})." + static, ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- report
def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets, costs = res["datasets"], res["costs"]
    n = len(sets) + len(costs)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(6.0 * max(n, 1), 4.6), squeeze=False)
    axes = list(axes[0])
    for ax, d in zip(axes, sets, strict=False):
        names = list(d["models"])
        x = np.arange(len(names))
        for off, key, label in ((-0.2, "rmse", "all users"), (0.2, "rmse_cold", "cold users")):
            pts = np.array([d["models"][n][key]["point"] for n in names])
            lo = pts - np.array([d["models"][n][key]["low"] for n in names])
            hi = np.array([d["models"][n][key]["high"] for n in names]) - pts
            ax.bar(x + off, pts, 0.4, yerr=[lo, hi], capsize=3, label=label)
        ax.set_xticks(x, names, rotation=20, fontsize=8)
        ax.set_ylim(min(d["models"][n]["rmse"]["low"] for n in names) * 0.9, None)
        ax.set_title(f"{d['name']}: test RMSE (95% CI), {d['params']['epochs']} epochs max", fontsize=9)
        ax.legend(fontsize=8)
    for ax, c in zip(axes[len(sets):], costs, strict=False):
        runs = [(f"{t}/{b}", f"{t}\n{b.replace('-baseline', ' before')}") for t in ("memory", "zmq")
                for b in ("plain", "ckks-baseline", "ckks", "ckks-static") if f"{t}/{b}" in c["runs"]]
        rows = [r for r in c["runs"]["memory/ckks"]["profile"] if not r.startswith("epoch")
                and "[overlapped]" not in r]
        bottom = np.zeros(len(runs))
        cmap = plt.get_cmap("tab20")
        for i, row in enumerate(rows):
            vals = np.array([c["runs"][k]["profile"].get(row, 0.0) for k, _ in runs])
            ax.bar(range(len(runs)), vals, bottom=bottom, color=cmap(i % 20), label=row)
            bottom += vals
        ax.set_xticks(range(len(runs)), [label for _, label in runs], fontsize=8)
        ax.set_ylabel("seconds per epoch (median)")
        ax.set_title(f"{c['name']}: one epoch by stage; ckks/plain {c['memory_time_ratio']:.1f}x (memory), "
                     f"{c['zmq_time_ratio']:.1f}x (zmq)", fontsize=8)
        ax.legend(fontsize=5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="small run: MovieLens 100K, a 2000-user synthetic set, 2 epochs, 12 Paillier users")
    ap.add_argument("--epochs", type=int, default=4, help="epoch limit on MovieLens (4)")
    ap.add_argument("--synthetic-epochs", type=int, default=1,
                    help="epoch limit on ML-1M-sized synthetic (1)")
    ap.add_argument("--batch-size", type=int, default=4096, help="rows per batch, every model (4096)")
    ap.add_argument("--synthetic-batch-size", type=int, default=8192, help="rows per batch on ML-1M size")
    ap.add_argument("--synthetic-plain-bound", type=float, default=16.0,
                    help="HeteroFMConfig.plain_bound on ML-1M size (16, as in earlier runs; larger values "
                         "make the guest split the batch's encrypted work into more parts)")
    ap.add_argument("--factors", type=int, default=8, help="FM factors (8)")
    ap.add_argument("--lr", type=float, default=0.02, help="Adam step (0.02)")
    ap.add_argument("--paillier-users", type=int, default=24, help="users in the Paillier/CKKS subset (24)")
    ap.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (500)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the synthetic data, the splits, model init and the bootstrap (0)")
    ap.add_argument("--cost-epochs", type=int, default=3,
                    help="epochs of each cost run (3): seconds per epoch are their median")
    ap.add_argument("--sections", default="accuracy,cost,paillier",
                    help="comma-separated subset of accuracy, cost, paillier (all)")
    ap.add_argument("--out", type=Path, default=OUT, help="results folder (benchmarks/results)")
    ap.add_argument("--host-process", default=None, help=argparse.SUPPRESS)  # the zmq cost runs' host
    return ap


def main() -> None:
    args = build_parser().parse_args()
    if args.host_process:
        host_process(args.host_process)
        return
    if args.quick:
        args.epochs, args.synthetic_epochs, args.paillier_users = 2, 2, 12
    sections = {x for x in args.sections.split(",") if x}
    if not sections <= {"accuracy", "cost", "paillier"}:
        raise SystemExit(f"--sections: unknown {sorted(sections - {'accuracy', 'cost', 'paillier'})}")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="crypto backend 'plain'")
    warnings.filterwarnings("ignore", message="guest: label DP is OFF")
    logging.getLogger("fedrec.protocols.hetero_fm.guest").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    # the stored results are the unprotected model's (exactness and crypto cost); what label DP costs is
    # benchmarks/leakage.py's measurement
    common = {"n_factors": args.factors, "lr": args.lr, "seed": args.seed, "label_dp": "off"}
    ml = movielens()
    syn_kw = {"seed": args.seed, "n_users": 2000} if args.quick else \
        {k: v for k, v in asdict(SyntheticConfig.ml1m_shape(seed=args.seed)).items()}
    runs: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
    if ml is not None:
        runs.append((ml, {**common, "batch_size": args.batch_size, "epochs": args.epochs},
                     {"data": "movielens", "seed": args.seed}))
    else:
        print(f"MovieLens not found under {DATA}; synthetic only")
    syn = generate(SyntheticConfig(**syn_kw)).dataset
    syn_params = {**common, "epochs": args.synthetic_epochs,
                  "batch_size": args.batch_size if args.quick else args.synthetic_batch_size}
    if not args.quick:
        syn_params["plain_bound"] = args.synthetic_plain_bound
    runs.append((syn, syn_params, {"data": "synthetic", "synthetic": syn_kw, "seed": args.seed}))
    shown = {**vars(args), "out": os.path.relpath(args.out, Path(__file__).resolve().parents[1])}
    res: dict[str, Any] = {"datasets": [], "costs": [], "args": {k: str(v) for k, v in shown.items()},
                           "load_average_start": load_start}
    for ds, params, spec in runs:
        print(f"{ds.name}: {len(ds.interactions)} ratings, params {params}", flush=True)
        if "accuracy" in sections:
            res["datasets"].append(bench_dataset(ds, params, args, ("plain", "ckks")))
        if "cost" in sections:
            cost_params = {k: v for k, v in params.items() if k != "epochs"}
            res["costs"].append(bench_cost(ds.name, {**spec, "params": cost_params}, args,
                                           baseline=not res["costs"]))
        args.out.mkdir(parents=True, exist_ok=True)  # what is done so far, should a later run fail
        (args.out / "hetero_fm.partial.json").write_text(json.dumps(res, indent=1))
    if "paillier" in sections:
        print("Paillier vs CKKS on a subset", flush=True)
        res["paillier_subset"] = bench_paillier(runs[0][0], {**runs[0][1]}, args)
    ratios: dict[str, float] = {}
    for c in res["costs"]:
        for transport in ("memory", "zmq"):
            ratios[f"{c['name']}: ckks/plain seconds per epoch ({transport})"] = c[f"{transport}_time_ratio"]
            ratios[f"{c['name']}: ckks/plain bytes per epoch ({transport})"] = c[f"{transport}_bytes_ratio"]
            if f"{transport}_static_time_ratio" in c:
                ratios[f"{c['name']}: ckks/plain seconds per epoch, layout static ({transport})"] = \
                    c[f"{transport}_static_time_ratio"]
                ratios[f"{c['name']}: ckks/plain bytes per epoch, layout static ({transport})"] = \
                    c[f"{transport}_static_bytes_ratio"]
            if f"{transport}_baseline_time_ratio" in c:
                ratios[f"{c['name']}: ckks/plain seconds per epoch before #17 ({transport})"] = \
                    c[f"{transport}_baseline_time_ratio"]
                ratios[f"{c['name']}: ckks/plain bytes per epoch before #17 ({transport})"] = \
                    c[f"{transport}_baseline_bytes_ratio"]
    p = res.get("paillier_subset")
    if p is not None:
        ratios["subset: paillier/ckks seconds per sample"] = (p["paillier"]["seconds_per_sample"]
                                                              / p["ckks"]["seconds_per_sample"])
        ratios["subset: paillier/ckks bytes per sample"] = (p["paillier"]["bytes_per_epoch"]
                                                            / p["ckks"]["bytes_per_epoch"])
    res["ratios"] = ratios
    bars: dict[str, bool] = {}
    if res["costs"]:
        for transport in ("memory", "zmq"):
            bars[f"ckks/plain epoch time <= 2x ({transport})"] = all(
                c[f"{transport}_time_ratio"] <= 2 for c in res["costs"])
            bars[f"ckks/plain epoch time <= 2x, layout static ({transport})"] = all(
                c.get(f"{transport}_static_time_ratio", math.inf) <= 2 for c in res["costs"])
            bars[f"ckks/plain bytes <= 1.3x ({transport})"] = all(
                c[f"{transport}_bytes_ratio"] <= 1.3 for c in res["costs"])
    if p is not None:
        bars["paillier/ckks per sample >= 100x"] = ratios["subset: paillier/ckks seconds per sample"] >= 100
    res["bars"] = bars
    res.update(seconds=round(time.perf_counter() - t0, 1), machine=platform.platform(),
               python=platform.python_version(), cpu_count=os.cpu_count(),
               load_average=list(os.getloadavg()))
    if res["datasets"]:
        print(f"\n{'dataset':<26} {'model':<22} {'RMSE [95% CI]':<26} {'cold RMSE [95% CI]':<26} "
              f"{'fit s':>7}")
    for d in res["datasets"]:
        for name, m in d["models"].items():
            r, c = m["rmse"], m["rmse_cold"]
            print(f"{d['name'][:26]:<26} {name:<22} {r['point']:.4f} [{r['low']:.4f}, {r['high']:.4f}]   "
                  f"{c['point']:.4f} [{c['low']:.4f}, {c['high']:.4f}]   {m['fit_seconds']:>7.1f}")
    if res["costs"]:
        print(f"\n{'dataset':<26} {'transport':<9} {'backend':<8} {'s/epoch':>8} {'MiB/epoch':>10}  "
              f"epochs (s)")
    for c in res["costs"]:
        for r in c["runs"].values():
            print(f"{c['name'][:26]:<26} {r['transport']:<9} {r['backend']:<8} "
                  f"{r['seconds_per_epoch']:>8.2f} {r['bytes_per_epoch'] / 2**20:>10.2f}  "
                  f"{[round(x, 2) for x in r['epoch_seconds']]}")
    if p is not None:
        print(f"\n{'subset ' + str(p['users']) + ' users':<26} backend   s/epoch  MiB/epoch  µs/sample")
        for b in ("ckks", "paillier"):
            c = p[b]
            print(f"{'':<26} {b:<9} {c['seconds_per_epoch']:>7.2f} {c['bytes_per_epoch'] / 2**20:>10.2f} "
                  f"{c['seconds_per_sample'] * 1e6:>10.1f}")
    args.out.mkdir(parents=True, exist_ok=True)
    if res["costs"]:
        md = profile_markdown(res["costs"], res["load_average"])
        print("\n" + md)
        (args.out / "hetero_fm_profile.md").write_text(md)
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    for k, ok in bars.items():
        print(f"bar {k}: {'passed' if ok else 'NOT passed'}")
    for d in res["datasets"]:
        for backend, why in d["failures"].items():
            print(f"FAILED {d['name']} federated-{backend}: {why}")
    print(f"load average: start {load_start}, end {res['load_average']}")
    tmp = args.out / "hetero_fm.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(args.out / "hetero_fm.json")
    (args.out / "hetero_fm.partial.json").unlink(missing_ok=True)
    plot(res, args.out / "hetero_fm.png")
    print(f"\nwrote {args.out / 'hetero_fm.json'}, hetero_fm.png and hetero_fm_profile.md in "
          f"{res['seconds']}s")


if __name__ == "__main__":
    main()
