#!/usr/bin/env python3
"""Scale-out measured: local Ray with 1 vs 2 workers, and 2 ``ray start`` nodes on this machine, on CKKS
batches and on sharded batch scoring; a projection to 16 cores and 100M users / 100M ids.

Workloads (each on a warmed engine: workers started, CKKS context / model loaded; Ray's start-up is
reported apart):

* **CKKS encrypt**: ``--vectors`` vectors of 4096 values (one n8192 ciphertext each) in tasks of 32
  (:func:`fedrec.compute.ckks.encrypt_many`): ``tasks`` = the workers' part (encrypt + serialize, bytes
  back to the driver), ``end to end`` = plus the driver loading every ciphertext (serial).
* **CKKS products**: ``Σ_t ct_t ⊙ p_t`` over T = 4 ciphertexts per group, groups in tasks of 32
  (:func:`~fedrec.compute.ckks.dot_many`), the workers' part (the inputs shipped as bytes).
* **scoring**: ``--users`` x ``--items`` (k = 32 factors, top-10) through :mod:`serving.sharded` into a
  Parquet dataset (``--shard-users`` per task), checked row for row against the local engine's output;
  each worker's peak RSS is read from its shard records (bounded: model + one chunk).

Engines: ``local`` (the driver, 1 BLAS thread: the serial baseline), ``ray`` with 1 and 2 CPUs (a private
local Ray each), and ``multinode``: a head and a worker node started with ``ray start --block --num-cpus 1``
(two raylets on this machine, token authentication on), the driver joining with ``address``.

The projection (written into the JSON and the table): throughput per worker ``r`` and the 2-worker
efficiency ``e2`` measured here; the driver's serial share ``s`` (Amdahl) from the end-to-end CKKS
run; ``T(N, W) = N / (W r e) + s N`` with ``e = e2`` (tasks are independent; no shared state beyond
the read-only model/context). PSI uses ``benchmarks/results/psi.json`` (1M x 1M, measured) scaled the
same way over buckets.

Run with ``nice -n 10`` and one BLAS thread per process (the engines set it for their workers; Ray's
workers are kept at the driver's niceness, ``RAY_worker_niceness=0``, not Ray's default +15)::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 \\
        python benchmarks/ray_scaling.py [--vectors 512] [--users 100000] [--items 10000] [--repeats 3]

Writes ``benchmarks/results/ray_scaling.json``, ``ray_scaling.png`` and ``ray_scaling.md``.

``--training`` (issue #14, item 1): the vertical FM's batch work on the ``[compute]`` executor (``process``
by default, ``--training-engine ray``): the host's products + masks + serialization on the chunks as
received (:func:`fedrec.compute.ckks.host_products_many`), the guest's encryption and decryption, serial
in-process vs 1 vs 2 workers (paired); writes ``ray_scaling_training.{json,md,png}``::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 \\
        python benchmarks/ray_scaling.py --training --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from crypto import ckks_backend, median_seconds  # noqa: E402  (benchmarks/crypto.py: the CKKS setup)

from fedrec.compute import Executor, LocalExecutor, RayExecutor  # noqa: E402
from fedrec.compute.ckks import _dot_task, _encrypt_task  # noqa: E402
from fedrec.crypto.ckks import CKKSBackend  # noqa: E402
from serving.artifacts import random_bundle  # noqa: E402
from serving.sharded import ShardJob, read_dataset, score_sharded  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
BATCH = 32
T_TERMS = 4


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


class CKKSWork:
    """The two CKKS workloads, built once from ``vectors`` random rows: ``encrypt`` (tasks of
    :data:`BATCH` rows) and ``products`` (``n_groups`` groups of :data:`T_TERMS` ciphertexts, in tasks of
    :data:`BATCH` groups); ``pub`` is what every task is shipped (the public context)."""

    def __init__(self, be: CKKSBackend, vectors: int) -> None:
        rng = np.random.default_rng(0)
        self.vectors = vectors
        self.rows = rng.uniform(-1, 1, (vectors, be.slots))
        self.pub = be.public_bytes()
        self.enc_items = [self.rows[i:i + BATCH] for i in range(0, vectors, BATCH)]
        cts = [be.serialize(be.encrypt(r)) for r in self.rows[:BATCH * 2]]
        self.n_groups = vectors // T_TERMS
        plains = rng.uniform(-1, 1, (self.n_groups, T_TERMS, be.slots))
        groups = [[cts[(g * T_TERMS + t) % len(cts)] for t in range(T_TERMS)] for g in range(self.n_groups)]
        self.dot_items = [(groups[i:i + BATCH], plains[i:i + BATCH], be.slots, 0)
                          for i in range(0, self.n_groups, BATCH)]

    def warm(self, ex: Executor, per_worker: int) -> None:
        """Every worker loads the context."""
        ex.map(_encrypt_task, [self.rows[:2]] * max(per_worker * ex.workers, 2), shared=self.pub)

    def encrypt(self, ex: Executor) -> list[list[bytes]]:
        out: list[list[bytes]] = ex.map(_encrypt_task, self.enc_items, shared=self.pub)
        return out

    def products(self, ex: Executor) -> None:
        ex.map(_dot_task, self.dot_items, shared=self.pub)


def ckks_runs(ex: Executor, be: CKKSBackend, work: CKKSWork, repeats: int) -> dict[str, float]:
    work.warm(ex, 2)
    tasks = median_seconds(lambda: work.encrypt(ex), repeats)

    def end_to_end() -> None:
        [be.deserialize(b, be.slots, 0) for part in work.encrypt(ex) for b in part]

    e2e = median_seconds(end_to_end, repeats)
    dots = median_seconds(lambda: work.products(ex), repeats)
    return {"encrypt_tasks_s": tasks, "encrypt_end_to_end_s": e2e, "products_tasks_s": dots,
            "encrypt_per_s": work.vectors / tasks, "products_per_s": work.n_groups * T_TERMS / dots}


def scoring_run(ex: Executor, bundle_dir: Path, users: list[str], out: Path, shard_users: int
                ) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    job = ShardJob(model=str(bundle_dir), host_partials=None, k=10, filter_seen=True, allow=None, deny=None,
                   chunk_size=None, out_dir=str(out))
    # warm-up: every worker loads the model (a few users each, into a scratch directory)
    warm = out.with_name(out.name + "-warm")
    shutil.rmtree(warm, ignore_errors=True)
    score_sharded(ShardJob(**{**job.__dict__, "out_dir": str(warm)}), users[:ex.workers * 8], ex,
                  shard_users=8)
    shutil.rmtree(warm, ignore_errors=True)
    t = time.perf_counter()
    res = score_sharded(job, users, ex, shard_users=shard_users)
    seconds = time.perf_counter() - t
    records = [json.loads(p.read_text()) for p in sorted(out.glob("part-*.json"))]
    return {"seconds": seconds, "users_per_s": len(users) / seconds, "shards": res.n_shards,
            "worker_max_rss_mb": max(r["worker_max_rss_mb"] for r in records),
            "workers_used": len({r["worker"] for r in records})}


def paired(ex: Executor, work: CKKSWork, bundle_dir: Path, users: list[str], tmp: Path,
           shard_users: int, repeats: int) -> dict[str, Any]:
    """One task in flight vs ``2 x workers`` on the same warmed cluster, interleaved repeat by repeat (the
    order alternates), so both see the same load; speed-up = median(1 in flight) / median(all)."""
    job = ShardJob(model=str(bundle_dir), host_partials=None, k=10, filter_seen=True, allow=None, deny=None,
                   chunk_size=None, out_dir=str(tmp / "warm"))
    work.warm(ex, 4)  # warm: contexts and models loaded
    score_sharded(job, users[:16 * 8], ex, shard_users=8)
    times: dict[str, dict[int, list[float]]] = {k: {1: [], 2: []} for k in ("encrypt", "products", "scoring")}
    for r in range(repeats):
        for w in ((1, 2) if r % 2 == 0 else (2, 1)):
            ex.max_inflight = 1 if w == 1 else None
            t = time.perf_counter()
            work.encrypt(ex)
            times["encrypt"][w].append(time.perf_counter() - t)
            t = time.perf_counter()
            work.products(ex)
            times["products"][w].append(time.perf_counter() - t)
            out = tmp / f"paired-{r}-{w}"
            t = time.perf_counter()
            score_sharded(ShardJob(**{**job.__dict__, "out_dir": str(out)}), users, ex,
                          shard_users=shard_users)
            times["scoring"][w].append(time.perf_counter() - t)
            shutil.rmtree(out, ignore_errors=True)
    ex.max_inflight = None
    return {k: {"one_s": statistics.median(v[1]), "all_s": statistics.median(v[2]),
                "speedup": statistics.median(v[1]) / statistics.median(v[2]),
                "paired_ratios": [a / b for a, b in zip(v[1], v[2], strict=True)], "one": v[1], "all": v[2]}
            for k, v in times.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwoNodes:
    """A head and a worker node (``ray start --block``, 1 CPU each) on this machine; stopped by PID."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        ray_bin = str(Path(sys.executable).with_name("ray"))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token"}
        common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
        self.procs = [subprocess.Popen([ray_bin, "start", "--head", "--port", str(self.port),
                                        "--include-dashboard=false", *common], env=self.env,
                                       stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,
                                       start_new_session=True)]
        self.address = f"{socket.gethostbyname(socket.gethostname())}:{self.port}"
        self._wait(tmp / "head.log", "Ray runtime started")
        self.procs.append(subprocess.Popen([ray_bin, "start", "--address", self.address, *common],
                                           env=self.env,
                                           stdout=open(tmp / "node.log", "w"), stderr=subprocess.STDOUT,
                                           start_new_session=True))
        self._wait(tmp / "node.log", "Ray runtime started")
        os.environ["RAY_AUTH_MODE"] = "token"

    @staticmethod
    def _wait(log: Path, text: str, timeout: float = 120.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if log.exists() and text in log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"ray start did not report {text!r} within {timeout} s; see {log}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # this node's own process group (start_new_session)
                p.wait()
        os.environ.pop("RAY_AUTH_MODE", None)


def project(res: dict[str, Any]) -> dict[str, Any]:
    """The model of the module docstring, applied to 16 cores and 100M users / 100M ids."""
    c1, c2 = res["ckks"]["ray1"], res["ckks"]["ray2"]
    s1 = res["scoring"]["ray1"]
    pr = res["paired"]["ray2"]
    e_ckks = pr["encrypt"]["speedup"] / 2  # the paired measurements: same load for 1 and 2 workers
    e_score = pr["scoring"]["speedup"] / 2
    # driver's serial share of an end-to-end encryption: e2e - tasks at 2 workers, per vector
    serial_per_vec = max(c2["encrypt_end_to_end_s"] - c2["encrypt_tasks_s"], 0.0) / res["vectors"]
    r_enc, r_score = c1["encrypt_per_s"], s1["users_per_s"]
    out: dict[str, Any] = {"efficiency_ckks_2": e_ckks, "efficiency_scoring_2": e_score,
                           "ckks_encrypt_per_s_per_worker": r_enc, "scoring_users_per_s_per_worker": r_score,
                           "driver_serial_s_per_ciphertext": serial_per_vec}
    for cores in (2, 16):
        out[f"scoring_100M_users_{cores}_cores_h"] = 1e8 / (cores * r_score * e_score) / 3600
        out[f"scoring_10M_users_{cores}_cores_min"] = 1e7 / (cores * r_score * e_score) / 60
        par = 1e6 / (cores * r_enc * e_ckks)
        out[f"ckks_encrypt_1M_vectors_{cores}_cores_s"] = par
        out[f"ckks_encrypt_1M_vectors_{cores}_cores_with_driver_s"] = par + 1e6 * serial_per_vec
    psi = RESULTS / "psi.json"
    if psi.exists():
        rows = [r for name in ("fedrec-x25519-ifma", "fedrec-x25519")  # the fastest X25519 backend measured
                for r in json.loads(psi.read_text()).get("summary", [])
                if r.get("system") == name and r.get("n") == 1_000_000]
        if rows:
            r = rows[0]
            cpu = max(r["median_cpu_seconds"].values())  # the busier party's CPU seconds at 1M x 1M
            # per party: 2 blindings per id (its own, the peer's) -> CPU linear in n; bucket pairs spread over
            # 16 cores per party at the measured 2-worker efficiency; + 2 x 32 bytes per id each way, 1 Gb/s
            wire = 100e6 * 32 * 2 * 8 / 1e9
            out["psi_1M_measured_s"] = r["median_seconds"]
            out["psi_1M_cpu_s_per_party"] = cpu
            out["psi_100M_2x16_cores_min"] = (100 * cpu / (16 * e_ckks) + wire) / 60
            out["psi_fate_100M_2x16_cores_min"] = 50 + 54 / 60
    return out


def summarize_big(recs: Path) -> dict[str, Any]:
    """Facts of a (possibly interrupted) ``--big`` output directory, from its manifest and shard records:
    shards done, which were written before the last (re)start of the driver (the manifest is rewritten
    when a run starts, so a shard file older than it was not redone by that run), seconds and peak RSS
    per worker, users per second per worker."""
    manifest = json.loads((recs / "_manifest.json").read_text())
    started = (recs / "_manifest.json").stat().st_mtime
    records = [json.loads(p.read_text()) for p in sorted(recs.glob("part-*.json"))]
    before = [r["index"] for r in records if (recs / r["file"]).stat().st_mtime < started]
    per_worker: dict[str, list[float]] = {}
    for r in records:
        per_worker.setdefault(r["worker"], []).append(r["seconds"])
    users = sum(r["users"] for r in records)
    steady = sorted(s for r in records for s in [r["seconds"]])[: max(1, len(records) // 2)]
    return {"n_users": manifest["n_users"], "n_shards": manifest["n_shards"],
            "complete": manifest["complete"],
            "shards_done": len(records), "users_done": users, "rows_done": sum(r["rows"] for r in records),
            "shards_before_last_start_not_redone": before, "workers": len(per_worker),
            "shard_seconds_by_worker": per_worker,
            "worker_max_rss_mb": max(r["worker_max_rss_mb"] for r in records),
            "median_shard_seconds": statistics.median(r["seconds"] for r in records),
            "users_per_s_per_worker_fastest_half": records[0]["users"] / statistics.median(steady),
            "chunk_size": manifest["job"]["chunk_size"], "shard_users": manifest["job"]["shard_users"]}


def big_run(n_users: int, n_items: int, workers: int, shard_users: int, kill_after: int, out: Path) -> int:
    """``fedrec recommend --engine ray`` on ``n_users`` x ``n_items`` as a real command: SIGKILL of the
    driver once ``kill_after`` shards are done, then the same command again (it must resume, not redo);
    per-worker peak RSS from the shard records. Writes ``ray_scaling_big.json``."""
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-big-"))
    res: dict[str, Any] = {"users": n_users, "items": n_items, "factors": 32, "workers": workers,
                           "shard_users": shard_users, "load_before": _load()}
    try:
        t = time.perf_counter()
        random_bundle(n_users, n_items, 32, seed=1).save(tmp / "bundle")
        with open(tmp / "users.txt", "w") as f:
            for j in range(0, n_users, 1_000_000):
                f.write("".join(f"u{i}\n" for i in range(j, min(j + 1_000_000, n_users))))
        res["prepare_s"] = time.perf_counter() - t
        bundle_mb = sum(p.stat().st_size for p in (tmp / "bundle").iterdir()) / 1e6
        res["bundle_mb"] = bundle_mb
        cmd = [sys.executable, "-m", "training.cli", "recommend", "--model", str(tmp / "bundle"), "--users",
               str(tmp / "users.txt"), "--out", str(tmp / "recs"), "--engine", "ray", "--workers",
               str(workers), "--shard-users", str(shard_users), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        print(f"[big] {n_users} x {n_items}: bundle {bundle_mb:.0f} MB, load {_load()}", flush=True)
        t = time.perf_counter()
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        killed_at = None
        while first.poll() is None:
            done = len(list((tmp / "recs").glob("part-*.json"))) if (tmp / "recs").exists() else 0
            if kill_after and done >= kill_after and killed_at is None:
                os.killpg(first.pid, signal.SIGKILL)  # the driver and its private Ray: kill -9
                killed_at = time.perf_counter() - t
                res["killed_after_shards"] = done
            time.sleep(1.0)
        first_out = first.stdout.read() if first.stdout else ""
        res["first_run_s"] = time.perf_counter() - t
        res["first_returncode"] = first.returncode
        before = {p.name: p.stat().st_mtime_ns for p in (tmp / "recs").glob("part-*.parquet")}
        t = time.perf_counter()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        res["second_run_s"] = time.perf_counter() - t
        res["second_returncode"] = second.returncode
        res["second_stdout"] = second.stdout.strip()[-400:]
        after = {p.name: p.stat().st_mtime_ns for p in (tmp / "recs").glob("part-*.parquet")}
        res["shards_untouched_by_resume"] = sum(after.get(n) == m for n, m in before.items())
        res.update(summarize_big(tmp / "recs"))
        res["load_after"] = _load()
        if second.returncode != 0:
            print(first_out[-2000:], second.stdout[-2000:], second.stderr[-2000:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_scaling_big.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0 if res.get("second_returncode") == 0 else 1


def _psi_parties(mode: str, a: Any, b: Any, g: list[bytes], h: list[bytes], bucket: int) -> dict[str, Any]:
    from fedrec.psi.buckets import run_bucketed_psi
    from fedrec.psi.protocol import run_psi

    if mode == "bucketed":
        return {"guest": lambda: run_bucketed_psi(a, "host", g, role="guest", bucket_size=bucket, workers=1,
                                                  timeout=600),
                "host": lambda: run_bucketed_psi(b, "guest", h, role="host", bucket_size=bucket, workers=1,
                                                 timeout=600)}
    return {"guest": lambda: run_psi(a, "host", g, role="guest", workers=1, timeout=600),
            "host": lambda: run_psi(b, "guest", h, role="host", workers=1, timeout=600)}


def psi_run(n: int, bucket: int, repeats: int, out: Path) -> int:
    """Bucketed PSI (padded buckets) vs one session, ``n`` x ``n`` ids (half common), both parties in this
    process over the in-memory transport, one engine thread each: wall and process CPU seconds (CPU is
    what the shared machine's load does not distort). Writes ``ray_scaling_psi.json``."""
    from fedrec.psi.ids import encode_ids
    from fedrec.transport import MemoryNetwork, run_parties

    g = encode_ids([f"id{j}" for j in range(n)])
    h = encode_ids([f"id{j}" for j in range(n // 2, n + n // 2)])
    res: dict[str, Any] = {"n": n, "bucket_size": bucket, "load_before": _load(), "runs": {}}
    for mode in ("one_session", "bucketed") * repeats:
        net = MemoryNetwork()
        a, b = net.channel("guest", ["host"]), net.channel("host", ["guest"])
        parties = _psi_parties(mode, a, b, g, h, bucket)
        cpu, t = time.process_time(), time.perf_counter()
        out_ = run_parties(parties, timeout=3600)
        run = {"wall_s": time.perf_counter() - t, "cpu_s_both_parties": time.process_time() - cpu,
               "common": out_["guest"].intersection_size}
        assert run["common"] == n - n // 2, run
        res["runs"].setdefault(mode, []).append(run)
        print(f"[psi] {mode}: {run} load {_load()}", flush=True)
    for mode, runs in res["runs"].items():
        res[mode] = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s_both_parties")}
    one, bucketed = res["one_session"], res["bucketed"]
    res["bucketed_over_one_cpu"] = bucketed["cpu_s_both_parties"] / one["cpu_s_both_parties"]
    res["bucketed_over_one_wall"] = res["bucketed"]["wall_s"] / res["one_session"]["wall_s"]
    res["load_after"] = _load()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_scaling_psi.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    return 0


def _training_setup(be: CKKSBackend, users: int, k: int, columns: int, per_user: int, seed: int = 0
                    ) -> dict[str, Any]:
    """One vertical FM batch as the host sees it: ``users`` aligned users with ``per_user`` one-hot host
    features among ``columns`` (all touched), the host's parameters, the guest's residual rows, the plan
    both parties derive (:func:`packing.plan_parts`) and the guest's chunks as sent."""
    from fedrec.models.fields import Csr
    from fedrec.protocols.hetero_fm import HeteroFMConfig, packing

    rng = np.random.default_rng(seed)
    cfg = HeteroFMConfig(n_factors=k, layout="compact", backend="ckks")
    u = np.repeat(np.arange(users), per_user)
    cols = np.concatenate([rng.choice(columns, per_user, replace=False) for _ in range(users)])
    rows = Csr.from_lists(u, cols, np.ones(len(u)), users)
    v, w = rng.normal(0, 0.1, (columns, k)).astype(np.float32), rng.normal(0, 0.1, columns).astype(np.float32)
    plans = packing.plan_parts(be, users, k, columns, "compact", cfg.value_bound, cfg.plain_bound,
                               cfg.hiding_bits)
    assert len(plans) == 1, f"{users} users need {len(plans)} parts; use fewer --training-users"
    r = rng.uniform(-1, 1, (users, packing.width(k, "compact")))
    chunks = packing.encrypt_part(be, r, plans[0])
    return {"cfg": cfg, "rows": rows, "v": v, "w": w, "plan": plans[0], "residuals": r, "chunks": chunks,
            "users": np.arange(users), "columns": columns}


def _host_batch(be: CKKSBackend, st: dict[str, Any], executor: Executor | None) -> tuple[float, float, Any]:
    """The host's whole batch work through :class:`HostBatch` (the protocol's code): the work ahead, then
    the products on the chunks as received; ``(ahead s, arrival s, (results, mask sums))``."""
    from fedrec.profiling import StageClock
    from fedrec.protocols.hetero_fm.host_batch import HostBatch
    from fedrec.protocols.hetero_fm.messages import EncryptedResiduals

    plan = st["plan"]
    hb = HostBatch(0, 0, st["users"])
    t = time.perf_counter()
    hb.prepare(be, st["rows"], st["w"], st["v"], st["cfg"], st["columns"], StageClock(), executor)
    ahead = time.perf_counter() - t
    assert hb.ahead is not None
    msg = EncryptedResiduals(0, 0, 4 * len(st["users"]), plan.users_per_chunk, plan.lanes, st["chunks"])
    hb.check_part(msg)
    hb.start(msg)
    t = time.perf_counter()
    out = hb.products(be, msg, st["cfg"], StageClock(), executor)
    return ahead, time.perf_counter() - t, (out.results, hb.mask_sums)


def _burn(n: int) -> int:
    """A CPU-bound control task (pure Python): what 2 workers vs 1 gives on the machine right now."""
    s = 0
    for i in range(n):
        s += i * i
    return s


def training_run(args: argparse.Namespace) -> int:
    """``--training``: the vertical FM's batch work through the protocol's code (host:
    :class:`~fedrec.protocols.hetero_fm.host_batch.HostBatch` ahead + products; guest:
    :func:`packing.encrypt_part` / :func:`packing.decrypt_part`), serial in-process (``local``) vs the
    executor with 1 vs 2 workers (paired: 1 task in flight vs all, interleaved on one warmed engine).
    Writes ``ray_scaling_training.{json,md,png}``."""
    from fedrec.compute import ProcessExecutor
    from fedrec.protocols.hetero_fm import packing

    be = ckks_backend()
    st = _training_setup(be, args.training_users, 8, args.training_columns, args.training_per_user)
    plan = st["plan"]
    ex: Executor = ProcessExecutor(2) if args.training_engine == "process" else RayExecutor(workers=2)
    res: dict[str, Any] = {"engine": ex.engine, "users": args.training_users, "k": 8, "layout": "compact",
                           "columns": args.training_columns, "features_per_user": args.training_per_user,
                           "chunks": len(st["chunks"]), "results": plan.n_results(args.training_columns),
                           "plan": {"users_per_chunk": plan.users_per_chunk, "lanes": plan.lanes},
                           "cpus": os.cpu_count(), "load_before": _load(), "repeats": args.repeats}
    print(f"[training] {res}", flush=True)
    _, _, (serial_out, serial_sums) = _host_batch(be, st, None)
    _, _, (ex_out, ex_sums) = _host_batch(be, st, ex)  # warm: workers started, contexts loaded
    # the released aggregates (decrypted, lane-summed, masks removed) of both paths agree within CKKS noise
    agg = [packing.decrypt_part(be, o, plan)[:len(m)] - m for o, m in ((serial_out, serial_sums),
                                                                       (ex_out, ex_sums))]
    res["aggregates_max_abs_diff"] = float(np.abs(agg[0] - agg[1]).max())
    res["aggregates_max_abs"] = float(np.abs(agg[0]).max())
    packing.encrypt_part(be, st["residuals"], plan, None, ex)
    kinds = ("host_ahead", "host_arrival", "host_total", "guest_encrypt", "guest_decrypt", "control")
    times: dict[str, dict[str, list[float]]] = {k: {"serial": [], "one": [], "all": []} for k in kinds}

    def one_round(mode: str, executor: Executor | None) -> None:
        ahead, arrival, (out, _) = _host_batch(be, st, executor)
        times["host_ahead"][mode].append(ahead)
        times["host_arrival"][mode].append(arrival)
        times["host_total"][mode].append(ahead + arrival)
        t = time.perf_counter()
        packing.encrypt_part(be, st["residuals"], plan, None, executor)
        times["guest_encrypt"][mode].append(time.perf_counter() - t)
        t = time.perf_counter()
        packing.decrypt_part(be, out, plan, None, executor)
        times["guest_decrypt"][mode].append(time.perf_counter() - t)
        t = time.perf_counter()  # the control: 2 pure-Python tasks (serial: one after the other here)
        (executor or LocalExecutor()).map(_burn, [3_000_000] * 2)
        times["control"][mode].append(time.perf_counter() - t)

    try:
        for r in range(args.repeats):
            one_round("serial", None)
            for mode in (("one", "all") if r % 2 == 0 else ("all", "one")):
                ex.max_inflight = 1 if mode == "one" else None
                one_round(mode, ex)
            print(f"[training] repeat {r}: load {_load()} {({k: v['all'][-1] for k, v in times.items()})}",
                  flush=True)
    finally:
        ex.max_inflight = None
        ex.close()
    res["load_after"] = _load()
    res["workloads"] = {k: {"serial_s": statistics.median(v["serial"]),
                            "one_worker_s": statistics.median(v["one"]),
                            "two_workers_s": statistics.median(v["all"]),
                            "two_vs_one": statistics.median(v["one"]) / statistics.median(v["all"]),
                            "two_vs_serial": statistics.median(v["serial"]) / statistics.median(v["all"]),
                            "paired_ratios": [a / b for a, b in zip(v["one"], v["all"], strict=True)], **v}
                        for k, v in times.items()}
    write_training(res, args.out)
    return 0


def write_training(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_scaling_training.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"# Vertical FM batch work on the {res['engine']} engine ({res['cpus']} cores; load before "
             f"{res['load_before']}, after {res['load_after']})", "",
             f"One batch part: {res['users']} users, k = {res['k']} ({res['layout']}), {res['columns']} "
             f"touched columns ({res['features_per_user']} per user): {res['chunks']} chunks "
             f"({res['plan']['users_per_chunk']} users x {res['plan']['lanes']} lanes), {res['results']} "
             f"results; medians of {res['repeats']}, 1 vs 2 workers paired (1 task in flight vs all, "
             "interleaved on one warmed engine). The released aggregates of the serial and executor paths "
             f"differ by at most {res['aggregates_max_abs_diff']:.2g} (CKKS noise; values up to "
             f"{res['aggregates_max_abs']:.3g}).", "",
             "| workload | serial in-process s | 1 worker s | 2 workers s | 2 vs 1 | 2 workers vs serial |",
             "|---|---|---|---|---|---|"]
    for k, d in res["workloads"].items():
        lines.append(f"| {k} | {d['serial_s']:.2f} | {d['one_worker_s']:.2f} | {d['two_workers_s']:.2f} | "
                     f"{d['two_vs_one']:.2f}x | {d['two_vs_serial']:.2f}x |")
    lines += ["", "control: two CPU-bound pure-Python tasks (no CKKS, no data): its `2 vs 1` is what the "
                  "machine gave a second worker during this run (about 2x on a free second core, 1x when "
                  "other processes hold it).", "",
              "host_ahead: what the host does while the guest computes (multipliers, plaintext encoding "
                  "up to 1024 plaintexts and mask encryption in-process; masks only on the executor, whose "
                  "workers encode at arrival); host_arrival: on the chunks as received; host_total: both."]
    text = "\n".join(lines) + "\n"
    (out / "ray_scaling_training.md").write_text(text)
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(res["workloads"])
    x = np.arange(len(names))
    for j, (key, label) in enumerate((("serial_s", "serial (in-process)"), ("one_worker_s", "1 worker"),
                                      ("two_workers_s", "2 workers"))):
        ax.bar(x + (j - 1) * 0.27, [res["workloads"][n][key] for n in names], 0.27, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("seconds per batch part (median)")
    ax.set_title(f"vertical FM batch work, {res['engine']} engine (load {res['load_before'].split(',')[0]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ray_scaling_training.png", dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="example: nice -n 10 python "
                                "benchmarks/ray_scaling.py --vectors 512 --users 100000 --items 10000",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=512, help="CKKS vectors per run (512)")
    p.add_argument("--users", type=int, default=100_000, help="users to score (100000)")
    p.add_argument("--items", type=int, default=10_000, help="catalogue size (10000)")
    p.add_argument("--shard-users", type=int, default=25_000, help="users per scoring task (25000)")
    p.add_argument("--repeats", type=int, default=3, help="CKKS repeats, the median is kept (3)")
    p.add_argument("--no-multinode", action="store_true", help="skip the 2-node `ray start` layout")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--big", type=int, default=0, metavar="USERS",
                   help="instead: the large run (e.g. 10000000) of `fedrec recommend --engine ray` with a "
                        "kill -9 of the driver after --kill-after shards and a resume; writes "
                        "ray_scaling_big.json")
    p.add_argument("--kill-after", type=int, default=10, help="--big: shards done before the kill -9 (10)")
    p.add_argument("--workers", type=int, default=2, help="--big: Ray workers (2)")
    p.add_argument("--replot", action="store_true",
                   help="instead: recompute the projection and redraw the table and PNG from the stored JSON")
    p.add_argument("--summarize-big", type=Path, default=None, metavar="DIR",
                   help="instead: summarize the output directory of an interrupted --big run (its recs/ "
                        "folder) into ray_scaling_big.json")
    p.add_argument("--psi", type=int, default=0, metavar="N",
                   help="instead: bucketed PSI vs one session on N x N ids (writes ray_scaling_psi.json)")
    p.add_argument("--psi-bucket", type=int, default=50_000, help="--psi: ids per bucket (50000)")
    p.add_argument("--training", action="store_true",
                   help="instead: the vertical FM's batch work (host products + masks on received chunks, "
                        "guest encryption and decryption) serial vs 1 vs 2 workers; writes "
                        "ray_scaling_training.json")
    p.add_argument("--training-engine", choices=("process", "ray"), default="process",
                   help="--training: the engine (process)")
    p.add_argument("--training-users", type=int, default=1024, help="--training: users (one batch part)")
    p.add_argument("--training-columns", type=int, default=600, help="--training: touched host columns")
    p.add_argument("--training-per-user", type=int, default=6, help="--training: host features per user")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.replot:  # the projection is recomputed (e.g. after benchmarks/results/psi.json changed)
        stored = json.loads((args.out / "ray_scaling.json").read_text())
        stored["projection"] = project(stored)
        write(stored, args.out)
        return 0
    if args.summarize_big is not None:
        res = {"note": f"summary of an interrupted --big run in {args.summarize_big.name}",
               "load_now": _load(), **summarize_big(args.summarize_big)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ray_scaling_big.json").write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        return 0
    if args.psi:
        return psi_run(args.psi, args.psi_bucket, args.repeats, args.out)
    if args.training:
        return training_run(args)
    if args.big:
        return big_run(args.big, args.items, args.workers, max(args.shard_users, 100_000), args.kill_after,
                       args.out)
    logging.basicConfig(level=logging.WARNING)
    # Ray starts its workers at niceness +15 over the driver (capped at 19): on a shared machine they then
    # run below everything else and below the local baseline; 0 keeps them at the driver's (nice -n 10)
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    be = ckks_backend()
    work = CKKSWork(be, args.vectors)
    bundle = tmp / "bundle"
    random_bundle(args.users, args.items, 32, seed=0).save(bundle)
    users = [f"u{j}" for j in range(args.users)]
    res: dict[str, Any] = {"vectors": args.vectors, "users": args.users, "items": args.items, "factors": 32,
                           "shard_users": args.shard_users, "cpus": os.cpu_count(), "load_before": _load(),
                           "ckks": {}, "scoring": {}, "ray_start_s": {}}
    reference = None
    layouts: list[tuple[str, int]] = [("local", 1), ("ray1", 1), ("ray2", 2)]
    if not args.no_multinode:
        layouts.append(("multinode", 2))
    try:
        for name, workers in layouts:
            nodes = None
            t = time.perf_counter()
            if name == "local":
                ex: Executor = LocalExecutor()
            elif name == "multinode":
                nodes = TwoNodes(tmp)
                ex = RayExecutor(address=nodes.address)
                res["multinode"] = {"nodes": len(ray.nodes()), "address": nodes.address}
            else:
                ex = RayExecutor(workers=workers)
            res["ray_start_s"][name] = time.perf_counter() - t
            try:
                print(f"[{name}] workers={ex.workers} load {_load()}", flush=True)
                res["ckks"][name] = ckks_runs(ex, be, work, args.repeats)
                res["scoring"][name] = scoring_run(ex, bundle, users, tmp / f"recs-{name}", args.shard_users)
                table = read_dataset(tmp / f"recs-{name}")
                if reference is None:
                    reference = table
                res["scoring"][name]["identical_to_local"] = bool(table.equals(reference))
                res["scoring"][name]["load"] = _load()
                print(f"[{name}] ckks {res['ckks'][name]} scoring {res['scoring'][name]}", flush=True)
                if ex.workers >= 2:
                    res.setdefault("paired", {})[name] = paired(ex, work, bundle, users, tmp,
                                                                args.shard_users, args.repeats)
                    res["paired"][name]["load"] = _load()
                    print(f"[{name}] paired {res['paired'][name]}", flush=True)
            finally:
                ex.close()
                if ray.is_initialized():
                    ray.shutdown()
                if nodes is not None:
                    nodes.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_after"] = _load()
    c, s = res["ckks"], res["scoring"]
    res["speedup"] = {"ckks_encrypt_2v1": c["ray1"]["encrypt_tasks_s"] / c["ray2"]["encrypt_tasks_s"],
                      "ckks_encrypt_end_to_end_2v1": c["ray1"]["encrypt_end_to_end_s"]
                      / c["ray2"]["encrypt_end_to_end_s"],
                      "ckks_products_2v1": c["ray1"]["products_tasks_s"] / c["ray2"]["products_tasks_s"],
                      "scoring_2v1": s["ray1"]["seconds"] / s["ray2"]["seconds"]}
    if "multinode" in c:
        res["speedup"]["multinode_ckks_encrypt_vs_ray1"] = c["ray1"]["encrypt_tasks_s"] / \
            c["multinode"]["encrypt_tasks_s"]
        res["speedup"]["multinode_scoring_vs_ray1"] = s["ray1"]["seconds"] / s["multinode"]["seconds"]
    pr = res["paired"]["ray2"]
    res["bar"] = {"ckks >= 1.5x (paired, ray2)": pr["encrypt"]["speedup"] >= 1.5,
                  "scoring >= 1.5x (paired, ray2)": pr["scoring"]["speedup"] >= 1.5,
                  "identical outputs": all(v["identical_to_local"] for v in s.values())}
    res["projection"] = project(res)
    write(res, args.out)
    return 0


def write(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_scaling.json").write_text(json.dumps(res, indent=1) + "\n")
    names = list(res["ckks"])
    lines = [f"# Ray scaling ({res['cpus']} cores; load before {res['load_before']}, after "
             f"{res['load_after']})",
             "", f"CKKS: {res['vectors']} vectors of 4096 values, tasks of {BATCH}; scoring: {res['users']} "
             f"users x {res['items']} items, k=32, top-10, {res['shard_users']} users per task.", "",
             "| engine | start s | encrypt tasks s | encrypt + driver loads s | products s | scoring s | "
             "users/s | worker peak RSS MB | identical |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        c, s = res["ckks"][n], res["scoring"][n]
        lines.append(f"| {n} | {res['ray_start_s'][n]:.1f} | {c['encrypt_tasks_s']:.2f} | "
                     f"{c['encrypt_end_to_end_s']:.2f} | {c['products_tasks_s']:.2f} | {s['seconds']:.1f} | "
                     f"{s['users_per_s']:.0f} | {s['worker_max_rss_mb']:.0f} | {s['identical_to_local']} |")
    lines += ["", "| speed-up, separate clusters (1 CPU vs 2 CPUs, one after the other) | x |",
              "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["speedup"].items()]
    lines += ["", "Paired on one cluster (1 task in flight vs 2 per worker, interleaved; medians):", "",
              "| layout | workload | 1 worker s | all workers s | speed-up | load at end |",
              "|---|---|---|---|---|---|"]
    for name, d in res.get("paired", {}).items():
        for k in ("encrypt", "products", "scoring"):
            lines.append(f"| {name} | {k} | {d[k]['one_s']:.2f} | {d[k]['all_s']:.2f} | "
                         f"{d[k]['speedup']:.2f} | {d['load']} |")
    lines += ["", "| bar | met |", "|---|---|"] + [f"| {k} | {v} |" for k, v in res["bar"].items()]
    lines += ["", "| projection | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in res["projection"].items()]
    text = "\n".join(lines) + "\n"
    (out / "ray_scaling.md").write_text(text)
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    paired_res = res.get("paired", {})
    kinds = ("encrypt", "products", "scoring")
    x = np.arange(len(paired_res))
    for j, k in enumerate(kinds):
        ax[0].bar(x + (j - 1) * 0.27, [d[k]["speedup"] for d in paired_res.values()], 0.27, label=k)
    ax[0].axhline(1.5, ls="--", c="gray", lw=1)
    ax[0].set_xticks(x, [f"{n}\n(load {d['load'].split(',')[0]})" for n, d in paired_res.items()])
    ax[0].set_ylabel("2 workers vs 1 (paired, same load)")
    ax[0].set_ylim(0, 2.1)
    ax[0].legend()
    cores = np.array([1, 2, 4, 8, 16])
    p = res["projection"]
    r = p["scoring_users_per_s_per_worker"]
    e2 = p["efficiency_scoring_2"]
    for e, label in ((1.0, "e = 1"), (e2, f"measured e = {e2:.2f}")):
        eff = np.where(cores > 1, e, 1.0)
        ax[1].plot(cores, 1e8 / (cores * r * eff) / 3600, marker="o", label=f"scoring 100M x 10K, {label}")
    ax[1].set_xscale("log", base=2)
    ax[1].set_yscale("log")
    ax[1].set_xlabel("cores (workers)")
    ax[1].set_ylabel("hours (projected)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "ray_scaling.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
