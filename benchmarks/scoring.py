#!/usr/bin/env python3
"""Batch top-K scoring at catalogue scale: the serving scorer vs bare torch matmul + topk (same run).

A random serving bundle of the FM's shape (``--users`` x ``--items``, ``k = --factors``, 5 seen items
per user; :func:`serving.artifacts.random_bundle`) is ranked three ways:

* **bare**: ``torch.topk(P[c] @ Q.T + b, K)`` over the same user chunks — no ids, no seen filter, no
  fallbacks: the speed limit of the arithmetic;
* **scorer**: :meth:`serving.scorer.Scorer.iter_recommend` on raw user ids (id look-up, host/fallback
  logic, seen filtering, raw item ids), consuming chunk by chunk as the batch CLI does;
* **naive reference** (float64 numpy, full row, seen items masked, argsort) on a random sample of users:
  the scorer's items must be identical (up to float32 near-ties, counted) and scores within 1e-4.

Peak RSS is read from ``resource.getrusage``; memory stays bounded by the chunk
(``chunk * n_items`` float32) plus the bundle. Writes ``benchmarks/results/scoring.json`` and
``scoring.png``.

Usage::

    python benchmarks/scoring.py [--users 1000000] [--items 10000] [--factors 32] [--k 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.artifacts import ServingBundle, random_bundle  # noqa: E402
from serving.scorer import Scorer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare(bundle: ServingBundle, k: int, chunk: int) -> tuple[float, np.ndarray]:
    p, q, b = (torch.from_numpy(bundle.p_u), torch.from_numpy(bundle.q_i), torch.from_numpy(bundle.b_i))
    first = np.empty(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, p.shape[0], chunk):
            _, idx = torch.topk(torch.addmm(b, p[s:s + chunk], q.T), k, dim=1)
            if s == 0:
                first = idx.numpy()
    return time.perf_counter() - t0, first


def scorer_run(scorer: Scorer, users: list[str], k: int) -> tuple[float, int]:
    n_rows = 0
    t0 = time.perf_counter()
    for rec in scorer.iter_recommend(users, k, show_progress=True):
        n_rows += rec.item_ids.shape[0]
    return time.perf_counter() - t0, n_rows


def naive_check(bundle: ServingBundle, scorer: Scorer, k: int, n_sample: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    inner = np.sort(rng.choice(len(bundle.user_map), size=n_sample, replace=False))
    users = bundle.user_map.to_raw(inner).tolist()
    rec = scorer.recommend(users, k)
    s = (bundle.a_u[inner, None].astype(np.float64) + bundle.b_i[None, :]
         + bundle.p_u[inner].astype(np.float64) @ bundle.q_i.T.astype(np.float64))
    for r, u in enumerate(inner):
        s[r, bundle.seen_indices[bundle.seen_indptr[u]:bundle.seen_indptr[u + 1]]] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    ref_ids = bundle.item_map.to_raw(order.ravel()).reshape(order.shape)
    ref_scores = np.take_along_axis(s, order, 1)
    same = rec.item_ids == ref_ids
    # a position may differ only where the reference has a float32-level near-tie
    gaps = np.abs(np.diff(ref_scores, axis=1))
    near_tie = np.zeros_like(same)
    near_tie[:, :-1] |= gaps < 1e-5
    near_tie[:, 1:] |= gaps < 1e-5
    return {"n_users": n_sample, "identical_rows": int(same.all(axis=1).sum()),
            "mismatched_positions": int((~same).sum()),
            "mismatches_explained_by_near_ties": int((~same & near_tie).sum()),
            "max_abs_score_diff": float(np.max(np.abs(rec.scores - ref_scores))),
            "pass": bool(((~same) <= near_tie).all() and np.allclose(rec.scores, ref_scores, atol=1e-4))}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = ["bare torch matmul+topk", "serving scorer"]
    vals = [result["bare_seconds"], result["scorer_seconds"]]
    ax.barh(names, vals, color=["#999", "#4c72b0"])
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.1f}s ({result['n_users'] / v / 1e3:.0f}k users/s)", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(vals) * 1.5)
    ax.set_title(f"top-{result['k']} for {result['n_users']:,} users x {result['n_items']:,} items "
                 f"(k={result['n_factors']}, {result['threads']} threads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "scoring.png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000,
                   help="users in the random bundle, all scored (default: %(default)s)")
    p.add_argument("--items", type=int, default=10_000,
                   help="items in the random bundle's catalogue (default: %(default)s)")
    p.add_argument("--factors", type=int, default=32,
                   help="latent factors of the bundle (default: %(default)s)")
    p.add_argument("--k", type=int, default=10, help="recommendations per user, top-K (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=None, help="users per chunk (default: the scorer's)")
    p.add_argument("--sample", type=int, default=500, help="users checked against the naive reference")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random bundle and of the checked sample (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder for scoring.json and scoring.png (default: benchmarks/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bundle = random_bundle(args.users, args.items, args.factors, seed=args.seed)
    print(f"bundle: {args.users:,} users x {args.items:,} items, k={args.factors} "
          f"({time.perf_counter() - t0:.1f}s, RSS {rss_mb():.0f} MB)", flush=True)
    scorer = Scorer(bundle, chunk_size=args.chunk)
    users = bundle.user_map.raw_ids.tolist()
    rss_before = rss_mb()
    t_bare, _ = bare(bundle, args.k, scorer.chunk_size)
    print(f"bare torch: {t_bare:.1f}s", flush=True)
    t_scorer, n_rows = scorer_run(scorer, users, args.k)
    print(f"scorer:     {t_scorer:.1f}s ({n_rows:,} users)", flush=True)
    check = naive_check(bundle, scorer, args.k, min(args.sample, args.users), args.seed)
    result = {"n_users": args.users, "n_items": args.items, "n_factors": args.factors, "k": args.k,
              "chunk_size": scorer.chunk_size, "threads": torch.get_num_threads(),
              "bare_seconds": round(t_bare, 2), "scorer_seconds": round(t_scorer, 2),
              "ratio_scorer_over_bare": round(t_scorer / t_bare, 3),
              "users_per_second": round(args.users / t_scorer),
              "peak_rss_mb": round(rss_mb()), "rss_before_scoring_mb": round(rss_before),
              "chunk_scores_mb": round(scorer.chunk_size * args.items * 4 / 2**20),
              "naive_reference": check,
              "bar": {"ratio <= 2": t_scorer <= 2 * t_bare, "identical to naive": check["pass"]}}
    print(json.dumps(result, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scoring.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out)
    return 0 if all(result["bar"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
