#!/usr/bin/env python3
"""How far apart CKKS runs of the vertical FM end, with and without a resume (the bounds of
``tests/test_hetero_fm_resume.py::test_ckks_resume_is_within_the_release_noise``).

The test's configuration (60 synthetic users, 4 factors, batches of 64, 2 epochs, checkpoints every 2
batches, the in-memory twin) is trained:

* ``--runs`` times uninterrupted;
* ``--resumed`` times killed when the guest asks for epoch 1 batch 3's partials, then resumed;
* ``--broken`` times per fault, resumed with a deliberately lost piece of state: the host's parameters,
  the host's optimizer state, or the guest's optimizer state (what the test must catch).

For every triple (run R, runs A != B uninterrupted) the test's statistic, per party, is
``mean|R - A| / mean|B - A|`` over that party's parameters; the table gives its quantiles with R
uninterrupted or resumed, and its value for the broken resumes (A, B: the first two uninterrupted runs).
``outlyingness``: a run's median distance to the uninterrupted runs over their median pairwise distance.

The release error (``--release-error``): each batch's unmasked release minus the exact float64
aggregate of the same products, in units of the flooding sigma; observed by wrapping
``packing.encrypt_part`` / ``packing.host_products`` / ``HostBatch.gradient`` in this process only.

Writes ``benchmarks/results/ckks_resume_noise.json`` and ``ckks_resume_noise.png``.

Usage::

    python benchmarks/ckks_resume_noise.py [--runs 16] [--resumed 8] [--broken 3] [--release-error 3]
    python benchmarks/ckks_resume_noise.py --runs 6 --resumed 3 --broken 1 --release-error 1  # ~1 min
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec.data import SyntheticConfig, generate, vertical_split  # noqa: E402
from fedrec.models import training  # noqa: E402
from fedrec.protocols.checkpoint import Checkpointer  # noqa: E402
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost, host_batch, packing  # noqa: E402  # noqa: E402
from fedrec.protocols.hetero_fm import guest as guest_module  # noqa: E402
from fedrec.protocols.hetero_fm.state import HostState  # noqa: E402
from fedrec.transport import MemoryNetwork, run_parties  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CONFIG = dict(n_factors=4, batch_size=64, lr=0.02, epochs=2, patience=2, backend="ckks", timeout=30,
              validation="random", label_dp="off")
KILL = "fm/e1/b3/partials"
Params = dict[str, np.ndarray]


def run(tmp: Path, kill: bool = False) -> Params | None:
    """One run of the test's configuration (``kill``: the guest dies at :data:`KILL`)."""
    ds = generate(SyntheticConfig(n_users=60, n_items=30, n_ratings=600, seed=4)).dataset
    gv, hv = vertical_split(ds, host_user_fraction=0.8, seed=0)
    cfg = HeteroFMConfig(**CONFIG)
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    if kill:
        def kill_at(peer: str, step: str, n_bytes: int, msg: object) -> None:
            if step.startswith(KILL):
                net.kill("guest")

        gch.add_send_listener(kill_at)
    host, guest = HeteroFMHost(hch, "guest", cfg), HeteroFMGuest(gch, "host", cfg)

    def guest_side() -> None:
        guest.fit(gv.interactions, item_features=gv.item_features,
                  checkpoint=Checkpointer(tmp / "guest", every_batches=2))
        guest.close()

    host_ck = Checkpointer(tmp / "host", every_batches=2)
    run_parties({"host": lambda: host.serve(hv.user_features, checkpoint=host_ck), "guest": guest_side},
                timeout=60, return_exceptions=kill)
    if kill:
        return None
    assert guest.local.params is not None and host.params is not None
    out = {f"g.{k}": v.detach().numpy().copy() for k, v in guest.local.params.state_dict().items()}
    out.update({f"h.{k}": v.detach().numpy().copy() for k, v in host.params.state_dict().items()})
    return out


def resumed_run(tmp: Path) -> Params:
    run(tmp, kill=True)
    out = run(tmp)
    assert out is not None
    return out


@contextmanager
def losing(what: str) -> Iterator[None]:
    """A resume that loses ``what`` (the faults the test must catch)."""
    apply, restore = HostState.apply, training.Trainer._restore
    if what == "host parameters":
        HostState.apply = lambda self, params, opt: opt.load_state_dict(self.loop.optimizer)  # type: ignore
    elif what == "host optimizer":
        HostState.apply = lambda self, params, opt: params.load_state_dict(self.loop.params)  # type: ignore
    else:
        def lost(self: training.Trainer, state: training.LoopState) -> training.LoopState:
            s = restore(self, state)
            self.optimizer.state.clear()
            return s
        training.Trainer._restore = lost  # type: ignore[method-assign]
    try:
        yield
    finally:
        HostState.apply, training.Trainer._restore = apply, restore  # type: ignore[method-assign]


def party_distance(a: Params, b: Params, party: str) -> float:
    return float(np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a if k.startswith(party)]).mean())


def ratios(rs: list[Params], refs: list[Params], party: str, limit: int = 20000) -> np.ndarray:
    out = []
    for r, (ai, a), (bi, b) in itertools.product(rs, enumerate(refs), enumerate(refs)):
        if ai != bi and (r is not a and r is not b):
            out.append(party_distance(r, a, party) / party_distance(b, a, party))
            if len(out) >= limit:
                break
    return np.array(out)


def outlyingness(rs: list[Params], refs: list[Params]) -> list[float]:
    med = float(np.median([party_distance(a, b, "") for a, b in itertools.combinations(refs, 2)]))
    return [float(np.median([party_distance(r, a, "") for a in refs if a is not r])) / med for r in rs]


def release_error(n_runs: int) -> dict[str, float]:
    """Unmasked release minus the exact aggregate, in flooding sigmas, over every batch of ``n_runs``."""
    captured: list[tuple[Any, list[np.ndarray]]] = []
    exact: list[np.ndarray] = []
    sigmas: list[float] = []
    z: list[np.ndarray] = []
    enc, products = packing.encrypt_part, packing.host_products
    gradient, flood = host_batch.HostBatch.gradient, guest_module.flood_and_round

    def enc_w(backend: Any, rows: np.ndarray, plan: Any, *a: Any, **k: Any) -> Any:
        captured.append((plan, packing.chunk_values(rows, plan)))
        return enc(backend, rows, plan, *a, **k)

    def products_w(backend: Any, chunks: Any, plan: Any, mult: Any, *a: Any, **k: Any) -> Any:
        values = [v for p, v in captured if p == plan][-1]
        res = []
        for terms in packing.product_terms(plan, mult):
            acc = np.zeros(plan.ct_size)
            for t, m in terms:
                acc += values[t] * m
            res.append(packing.lane_sums(acc, plan))
        exact.append(np.concatenate(res))
        return products(backend, chunks, plan, mult, *a, **k)

    def gradient_w(self: host_batch.HostBatch, msg: Any, c: Any) -> Any:
        assert self.cols is not None and self.mask_sums is not None
        n = len(self.cols)
        z.append(((msg.values[:n] - self.mask_sums) - sum(exact)[:n]).ravel() / sigmas[-1])
        exact.clear()
        captured.clear()
        return gradient(self, msg, c)

    def flood_w(values: np.ndarray, policy: Any, what: str) -> np.ndarray:
        sigmas.append(policy.flood_sigma)
        return flood(values, policy, what)

    packing.encrypt_part, packing.host_products = enc_w, products_w  # type: ignore[assignment]
    host_batch.HostBatch.gradient = gradient_w  # type: ignore[method-assign]
    guest_module.flood_and_round = flood_w  # type: ignore[assignment]
    try:
        for _ in range(n_runs):
            with tempfile.TemporaryDirectory() as t:
                run(Path(t))
    finally:
        packing.encrypt_part, packing.host_products = enc, products  # type: ignore[assignment]
        host_batch.HostBatch.gradient = gradient  # type: ignore[method-assign]
        guest_module.flood_and_round = flood  # type: ignore[assignment]
    per_batch_sd = [float(x.std()) for x in z]
    allz = np.concatenate(z)
    return {"batches": len(z), "values": int(allz.size), "sd_sigma": float(allz.std()),
            "per_batch_sd_min": min(per_batch_sd), "per_batch_sd_max": max(per_batch_sd),
            "max_abs_sigma": float(np.abs(allz).max()), "flood_sigma": sigmas[-1]}


def quantiles(x: np.ndarray) -> dict[str, float]:
    return {"n": int(x.size), "median": float(np.median(x)), "p99": float(np.quantile(x, 0.99)),
            "p999": float(np.quantile(x, 0.999)), "max": float(x.max())}


def plot(refs_r: dict[str, np.ndarray], res_r: dict[str, np.ndarray],
         broken: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, party, label in ((axes[0], "h.", "host"), (axes[1], "g.", "guest")):
        bins = np.logspace(-1, 2, 60)
        ax.hist(refs_r[party], bins=bins, alpha=0.6, density=True, label="uninterrupted R")
        ax.hist(res_r[party], bins=bins, alpha=0.6, density=True, label="resumed R")
        for i, (fault, rows) in enumerate(broken.items()):
            for j, row in enumerate(rows):
                ax.axvline(row[party], color=f"C{i + 2}", ls="--", label=f"lost {fault}" if j == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel(f"{label}: mean|R - A| / mean|B - A|")
        ax.legend(fontsize=7)
    fig.suptitle("CKKS vertical FM: distance between runs, over the run-to-run distance")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=16, help="uninterrupted runs (default: %(default)s)")
    ap.add_argument("--resumed", type=int, default=8, help="killed-and-resumed runs (default: %(default)s)")
    ap.add_argument("--broken", type=int, default=3,
                    help="resumes per lost piece of state (default: %(default)s)")
    ap.add_argument("--release-error", type=int, default=3,
                    help="runs probed for the release error, 0: skip (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.runs < 3:
        ap.error("--runs must be at least 3 (a triple of uninterrupted runs)")
    logging.getLogger("fedrec").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        refs = [p for i in range(args.runs) if (p := run(tmp / f"ref{i}")) is not None]
        res = [resumed_run(tmp / f"res{i}") for i in range(args.resumed)]
        broken: dict[str, list[dict[str, float]]] = {}
        for fault in ("host parameters", "host optimizer", "guest optimizer"):
            for i in range(args.broken):
                with losing(fault):
                    got = resumed_run(tmp / f"{fault}{i}".replace(" ", "_"))
                noise = {p: party_distance(refs[1], refs[0], p) for p in ("h.", "g.")}
                row = {p: party_distance(got, refs[0], p) / noise[p] for p in noise}
                broken.setdefault(fault, []).append(row)
    refs_r = {p: ratios(refs, refs, p) for p in ("h.", "g.")}
    res_r = {p: ratios(res, refs, p) if res else np.zeros(0) for p in ("h.", "g.")}
    result: dict[str, Any] = {
        "config": CONFIG, "kill": KILL, "runs": len(refs), "resumed": len(res),
        "ratio_uninterrupted": {p: quantiles(x) for p, x in refs_r.items()},
        "ratio_resumed": {p: quantiles(x) for p, x in res_r.items() if x.size},
        "broken": broken,
        "outlyingness": {"uninterrupted": sorted(outlyingness(refs, refs)),
                         "resumed": sorted(outlyingness(res, refs)) if res else []},
        "release_error": release_error(args.release_error) if args.release_error > 0 else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"{'statistic':44s} {'host':>8s} {'guest':>8s}")
    for label, table in (("uninterrupted R", refs_r), ("resumed R", res_r)):
        for q in ("median", "p99", "max"):
            if table["h."].size:
                row = {p: quantiles(x)[q] for p, x in table.items()}
                print(f"{label + ' ' + q:44s} {row['h.']:8.2f} {row['g.']:8.2f}")
    for fault, rows in broken.items():
        label = f"lost {fault} (min of {len(rows)})"
        print(f"{label:44s} {min(r['h.'] for r in rows):8.2f} {min(r['g.'] for r in rows):8.2f}")
    print("outlyingness uninterrupted", np.round(result["outlyingness"]["uninterrupted"], 2).tolist())
    print("outlyingness resumed      ", np.round(result["outlyingness"]["resumed"], 2).tolist())
    if result["release_error"]:
        print("release error (sigmas)", json.dumps(result["release_error"]))
    args.out.mkdir(parents=True, exist_ok=True)
    tmp_json = args.out / "ckks_resume_noise.json.tmp"
    tmp_json.write_text(json.dumps(result, indent=1))
    tmp_json.replace(args.out / "ckks_resume_noise.json")
    plot(refs_r, res_r, broken, args.out / "ckks_resume_noise.png")
    print(f"wrote {args.out / 'ckks_resume_noise.json'} and .png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
