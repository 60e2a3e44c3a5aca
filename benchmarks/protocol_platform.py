#!/usr/bin/env python3
"""Protocol-platform benchmark: what the party layer and checkpoints cost the vertical FM.

Measured in one run, as ratios (the machine is shared: medians of interleaved repeats):

* **platform vs before** — the same training (guest and host in one process over the in-memory
  channel, identical config and data) on this tree and on a reference commit from before the party
  layer (``--ref``, default ``bcc925b``; checked out with ``git worktree`` into a temporary folder);
* **checkpoint cost** — this tree without checkpoints, with one per epoch (the default of
  ``fedrec train``), and every ``--every`` batches; plus the size of one checkpoint per party and the
  time a resumed run takes to reach its first batch.

Data: MovieLens 100K (``DATA/ml-100k``; ``DATA`` = ``$FEDREC_DATA_DIR`` or ``../shared/data``), else
the synthetic generator at ML-100K's shape; the host holds the demographic user features
(``vertical_split``). Each measurement is a fresh subprocess (``--worker``) so no run warms another.

    .venv/bin/python benchmarks/protocol_platform.py [--quick] [--repeats 3] [--epochs 2] [--ref bcc925b]

Writes benchmarks/results/protocol_platform.json and protocol_platform.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("FEDREC_DATA_DIR", ROOT.parent / "shared" / "data"))
MODES = ("none", "epoch", "batches")

EPILOG = """examples:
  python benchmarks/protocol_platform.py --quick                 # plain only, 1 repeat (a smoke run)
  python benchmarks/protocol_platform.py --repeats 3 --epochs 2  # plain and ckks, the numbers in results/
  python benchmarks/protocol_platform.py --ref HEAD~5            # compare against another commit
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="plain backend only, one repeat, one epoch")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats per configuration (median)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per training run")
    p.add_argument("--every", type=int, default=20, help="batches between checkpoints in mode 'batches'")
    p.add_argument("--backends", default="plain,ckks", help="comma-separated crypto backends")
    p.add_argument("--ref", default="bcc925b", help="git commit of the code before the party layer "
                                                    "('' to skip the comparison)")
    p.add_argument("--out", type=Path, default=OUT,
                   help="folder for protocol_platform.json / protocol_platform.png")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="plain", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="none", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One training run in this process (the fedrec on sys.path: this tree or the reference)."""
    import torch

    from fedrec.data import SyntheticConfig, generate, load_ml100k, vertical_split
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork

    torch.set_num_threads(1)
    if (DATA / "ml-100k" / "u.data").is_file():
        ds, name = load_ml100k(DATA / "ml-100k"), "ml-100k"
    else:
        ds = generate(SyntheticConfig(n_users=943, n_items=1682, n_ratings=100_000, seed=0)).dataset
        name = "synthetic-ml100k-shape"
    gv, hv = vertical_split(ds, seed=0)
    # the protocol's own cost, comparable with trees before label DP was on by default
    off = {"label_dp": "off"} if "label_dp" in HeteroFMConfig.__dataclass_fields__ else {}
    cfg = HeteroFMConfig(backend=args.backend, n_factors=16, batch_size=1024, lr=0.01, epochs=args.epochs,
                         validation="none", timeout=600, **off)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    kw_g: dict[str, Any] = {}
    kw_h: dict[str, Any] = {}
    ck_dir = Path(tempfile.mkdtemp(prefix="fedrec-bench-ck-"))
    if args.mode != "none":
        from fedrec.protocols.checkpoint import Checkpointer

        every = args.every if args.mode == "batches" else 0
        kw_g["checkpoint"] = Checkpointer(ck_dir / "guest", every_batches=every)
        kw_h["checkpoint"] = Checkpointer(ck_dir / "host", every_batches=every)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            host.serve(hv.user_features, **kw_h)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def run_once() -> float:
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        t0 = time.perf_counter()
        guest.fit(gv.interactions, item_features=gv.item_features, validation="none", **kw_g)
        seconds = time.perf_counter() - t0
        guest.close()
        th.join(60)
        if errors or th.is_alive():
            raise RuntimeError(f"host failed or hung: {errors}")
        return seconds

    seconds = run_once()
    out: dict[str, Any] = {"data": name, "rows": len(gv.interactions), "backend": args.backend,
                           "mode": args.mode, "epochs": len(guest.history.train_loss), "fit_seconds": seconds,
                           "seconds_per_epoch": seconds / max(len(guest.history.train_loss), 1)}
    if args.mode != "none":
        sizes = {}
        for role in ("guest", "host"):
            made = [p for p in (ck_dir / role).iterdir() if p.name.startswith("e")]
            newest = max(made, key=lambda p: p.name)
            sizes[role] = sum(f.stat().st_size for f in newest.iterdir())
        out["checkpoint_bytes"] = sizes
        if args.resume:  # a second fit finds the final checkpoint: the cost of resuming
            net2 = MemoryNetwork()
            host = HeteroFMHost(net2.channel("host", ["guest"]), "guest", cfg)
            guest = HeteroFMGuest(net2.channel("guest", ["host"]), "host", cfg)
            out["resume_seconds"] = run_once()
    return out


# ---------------------------------------------------------------------------------------------- main
def _worktree(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="fedrec-ref-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def _run_worker(tree: Path, backend: str, mode: str, args: argparse.Namespace, resume: bool = False
                ) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--backend", backend, "--mode", mode,
           "--epochs", str(args.epochs), "--every", str(args.every)] + (["--resume"] if resume else [])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {backend}/{mode} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.repeats, args.epochs, args.backends = 1, 1, "plain"
    backends = [b for b in args.backends.split(",") if b]
    ref_tree = _worktree(args.ref) if args.ref else None
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for rep in range(args.repeats):
            for backend in backends:
                plan = [("now", m) for m in MODES] + ([("ref", "none")] if ref_tree else [])
                for who, mode in plan:
                    tree = ROOT if who == "now" else ref_tree
                    assert tree is not None
                    res = _run_worker(tree, backend, mode, args, resume=(mode == "epoch" and rep == 0))
                    runs.setdefault(f"{backend}/{who}/{mode}", []).append(res)
                    print(f"[{rep + 1}/{args.repeats}] {backend:6s} {who:3s} {mode:8s} "
                          f"{res['seconds_per_epoch']:7.2f} s/epoch", flush=True)
    finally:
        if ref_tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)],
                           capture_output=True, check=False)
    table = summarize(runs, backends, args)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
              "machine": {"python": _platform.python_version(), "cpus": os.cpu_count(),
                          "load_avg_at_end": os.getloadavg()},
              "summary": table, "runs": runs}
    (args.out / "protocol_platform.json").write_text(json.dumps(result, indent=1, default=str))
    plot(table, backends, args.out / "protocol_platform.png")
    print(f"wrote {args.out / 'protocol_platform.json'} and protocol_platform.png")
    return 0


def summarize(runs: dict[str, list[dict[str, Any]]], backends: list[str], args: argparse.Namespace
              ) -> dict[str, Any]:
    table: dict[str, Any] = {}
    print(f"\n{'backend':8s} {'code':5s} {'checkpoints':12s} {'s/epoch (median)':>17s} {'vs now/none':>12s}")
    for backend in backends:
        base = statistics.median(r["seconds_per_epoch"] for r in runs[f"{backend}/now/none"])
        rows = {}
        for key in (f"{backend}/now/none", f"{backend}/now/epoch", f"{backend}/now/batches",
                    f"{backend}/ref/none"):
            if key not in runs:
                continue
            med = statistics.median(r["seconds_per_epoch"] for r in runs[key])
            _, who, mode = key.split("/")
            label = {"none": "off", "epoch": "every epoch", "batches": f"every {args.every} b"}[mode]
            rows[f"{who}/{mode}"] = {"seconds_per_epoch": med, "ratio_to_now_none": med / base}
            print(f"{backend:8s} {who:5s} {label:12s} {med:17.2f} {med / base:12.3f}")
        ck = runs.get(f"{backend}/now/epoch", [{}])[0]
        rows["checkpoint_bytes"] = ck.get("checkpoint_bytes")
        rows["resume_seconds_final"] = ck.get("resume_seconds")
        table[backend] = rows
    return table


def plot(table: dict[str, Any], backends: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 3.6), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        rows = {k: v for k, v in table[backend].items() if isinstance(v, dict) and "seconds_per_epoch" in v}
        names = list(rows)
        ax.bar(range(len(names)), [rows[n]["seconds_per_epoch"] for n in names],
               color=["#4c72b0" if n.startswith("now") else "#999999" for n in names])
        ax.set_xticks(range(len(names)), [n.replace("/", "\n") for n in names])
        ax.set_ylabel("seconds per epoch (median)")
        ax.set_title(f"vertical FM, {backend}: platform and checkpoints")
        for i, n in enumerate(names):
            ax.text(i, rows[n]["seconds_per_epoch"], f"{rows[n]['ratio_to_now_none']:.2f}x", ha="center",
                    va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
