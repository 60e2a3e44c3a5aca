"""Sharded batch scoring over an executor (``fedrec recommend --engine local|process|ray``): a
partitioned Parquet dataset, one file per shard, resumable shard by shard.

The users file is cut into shards of ``shard_users`` consecutive users (a multiple of the scorer's
chunk size, so every chunk is the one the single-process scorer computes: the rows are bit for bit
the same). A task scores one shard in a worker, which loads the model once (cached per worker process
for the following shards) and streams the shard chunk by chunk into its file: a worker's memory is
the model plus one chunk, whatever the number of users. The output directory::

    part-00000.parquet    user_id, rank, item_id, score, fallback   (the single-file output's schema)
    part-00000.json       the shard's record: job fingerprint, users [start, stop), rows, sha256 of
                          the .parquet, fallback counts, seconds, worker (host:pid) and its peak
                          RSS (written after the .parquet, both atomically)
    ...
    _manifest.json        {"format": "fedrec.recommendations", "format_version": 1, "fingerprint",
                           "job", "n_users", "n_shards", "shards": [{index, file, start, stop, users,
                           rows, sha256}], "counts", "complete"}

``complete: false`` while the run is in progress, ``true`` (with every shard listed) when it is done.
Reading the shards in index order gives exactly the rows of ``fedrec recommend --out x.parquet``.

**Resume.** The fingerprint is a SHA-256 of what determines the output: the model's files, the host
partials' files, the users (their ids, in order), ``k``, the seen filter, the allow/deny lists, the
chunk and shard sizes. A shard whose record carries this fingerprint and whose ``.parquet`` has the
recorded SHA-256 is done and is not redone; any other shard is (re)scored. So after ``kill -9`` of the
driver, rerunning the same command scores only the missing shards; a worker killed under Ray costs
one task (Ray re-runs it), under the process pool the run stops and a rerun resumes. A directory
written for another job is refused (naming what it is), never mixed. Fault-injection steps
(:mod:`fedrec.faults`, for the crash tests): ``score/chunk/<shard>`` before each chunk is written,
``score/shard/<shard>`` after a shard's record is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedrec.artifacts import ArtifactError, atomic_file, file_sha256, read_json, write_json_atomic
from fedrec.compute.executor import Executor

log = logging.getLogger(__name__)

FORMAT = "fedrec.recommendations"
FORMAT_VERSION = 1
MANIFEST = "_manifest.json"
#: users per shard by default: the >= 100k users a task needs to amortize its cost
SHARD_USERS = 100_000


@dataclass(frozen=True)
class ShardJob:
    """What every shard task reads (put once into the engine's object store)."""

    model: str
    host_partials: tuple[str, ...] | None
    k: int
    filter_seen: bool
    allow: tuple[str, ...] | None
    deny: tuple[str, ...] | None
    chunk_size: int | None
    out_dir: str
    fingerprint: str = ""


def part_name(index: int) -> str:
    return f"part-{index:05d}"


# ------------------------------------------------------------------------------------------ worker side
_SCORERS: dict[tuple[Any, ...], Any] = {}


def _scorer(job: ShardJob) -> Any:
    """The job's :class:`~serving.scorer.Scorer`, loaded once per worker process (one model kept)."""
    from serving.artifacts import host_partials_arg
    from serving.export import load_serving_bundle
    from serving.scorer import Scorer

    key = (job.model, job.host_partials, job.chunk_size)
    if key not in _SCORERS:
        if any(k[:2] != key[:2] for k in _SCORERS):
            _SCORERS.clear()
        bundle = load_serving_bundle(job.model)
        partials = host_partials_arg(list(job.host_partials) if job.host_partials else None,
                                     bundle.host_width)
        scorer = Scorer(bundle, partials, chunk_size=job.chunk_size)
        _SCORERS[key] = _SCORERS[(*key[:2], scorer.chunk_size)] = scorer  # the plan's job resolves the chunk
    return _SCORERS[key]


def _max_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def plan_task(job: ShardJob, _item: object = None) -> dict[str, Any]:
    """Load the model in a worker and check the job (k, allow/deny lists) before any shard runs."""
    scorer = _scorer(job)
    if job.k > scorer.n_items:
        raise ValueError(f"--k {job.k} exceeds the catalogue size ({scorer.n_items} items)")
    scorer.item_bias(job.allow, job.deny)  # unknown allow/deny items: a ValueError naming the list
    scale = scorer.bundle.rating_scale
    return {"chunk_size": scorer.chunk_size, "n_items": scorer.n_items, "kind": scorer.bundle.kind,
            "score_kind": scorer.bundle.score_kind, "rating_scale": None if scale is None else list(scale)}


def score_shard(job: ShardJob, item: tuple[int, int, Sequence[str]]) -> dict[str, Any]:
    """Score one shard into ``part-NNNNN.parquet`` (atomically), then its record ``part-NNNNN.json``."""
    import pandas as pd

    from fedrec import faults
    from fedrec.models.base import UNKNOWN_USER
    from serving.batch import write_frame
    from serving.scorer import FALLBACKS

    index, start, users = item
    t0 = time.perf_counter()
    scorer = _scorer(job)
    before = dict(scorer.host_fallbacks)
    out = Path(job.out_dir)
    name = part_name(index)
    counts = dict.fromkeys(FALLBACKS, 0)
    unknown: list[str] = []
    rows = 0
    with atomic_file(out / f"{name}.parquet") as tmp:
        writer: Any = None
        for rec in scorer.iter_recommend(users, job.k, filter_seen=job.filter_seen, allow=job.allow,
                                         deny=job.deny):
            faults.reached(f"score/chunk/{index}")
            for key in FALLBACKS:
                counts[key] += rec.counts[key]
            if len(unknown) < 10:
                unknown.extend(rec.user_ids[rec.fallback == UNKNOWN_USER][:10 - len(unknown)].tolist())
            frame = rec.to_frame()
            rows += len(frame)
            writer = write_frame(frame, tmp, writer)
        if writer is None:
            writer = write_frame(pd.DataFrame({"user_id": [], "rank": [], "item_id": [], "score": [],
                                               "score_kind": [], "fallback": []}), tmp, None)
        writer.close()
    record = {"format": FORMAT + ".shard", "fingerprint": job.fingerprint, "index": index,
              "file": f"{name}.parquet", "start": start, "stop": start + len(users), "users": len(users),
              "rows": rows, "sha256": file_sha256(out / f"{name}.parquet"), "counts": counts,
              "unknown_examples": [str(u) for u in unknown],
              "host_fallbacks": {h: n - before.get(h, 0) for h, n in scorer.host_fallbacks.items()},
              "seconds": round(time.perf_counter() - t0, 3),
              "worker": f"{socket.gethostname()}:{os.getpid()}", "worker_max_rss_mb": _max_rss_mb()}
    write_json_atomic(out / f"{name}.json", record)
    faults.reached(f"score/shard/{index}")
    return record


# ------------------------------------------------------------------------------------------ driver side
def _digest_files(h: Any, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}\0{file_sha256(p)}\n".encode())


def fingerprint(job: ShardJob, users: Sequence[str], shard_users: int) -> str:
    """SHA-256 of everything that determines the dataset (module docstring)."""
    h = hashlib.sha256(f"{FORMAT}/{FORMAT_VERSION}\n".encode())
    _digest_files(h, Path(job.model))
    for hp in job.host_partials or ():
        _digest_files(h, Path(hp.partition("=")[2] if "=" in hp and not Path(hp).exists() else hp))
        h.update(hp.encode() + b"\n")
    spec = {"k": job.k, "filter_seen": job.filter_seen, "chunk_size": job.chunk_size,
            "shard_users": shard_users, "allow": job.allow, "deny": job.deny}
    h.update(json.dumps(spec, sort_keys=True).encode())
    u = hashlib.sha256()
    for uid in users:
        u.update(uid.encode("utf-8", "surrogatepass") + b"\n")
    h.update(u.digest())
    return h.hexdigest()


def _done_shards(out: Path, fp: str, plan: list[tuple[int, int]]) -> dict[int, dict[str, Any]]:
    """Shards already written for this fingerprint (record + matching file digest)."""
    done: dict[int, dict[str, Any]] = {}
    for i, (start, stop) in enumerate(plan):
        meta, part = out / f"{part_name(i)}.json", out / f"{part_name(i)}.parquet"
        if not meta.is_file() or not part.is_file():
            continue
        try:
            rec = read_json(meta, "shard record")
        except ArtifactError as exc:
            log.warning("%s: unreadable (%s); the shard is redone", meta, exc)
            continue
        if rec.get("fingerprint") == fp and rec.get("start") == start and rec.get("stop") == stop \
                and rec.get("sha256") == file_sha256(part):
            done[i] = rec
        else:
            log.warning("%s: does not match %s (another job or a damaged file); the shard is redone",
                        meta, part.name)
    return done


def _prepare_dir(out: Path, fp: str) -> None:
    """Refuse a directory that is not this job's dataset; drop the temporary files of killed tasks."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory; --out of a sharded run is a directory")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / MANIFEST
        if not manifest.is_file():
            raise ArtifactError(f"{out}: not empty and has no {MANIFEST}: not a recommendations dataset; "
                                "choose a new or empty directory")
        meta = read_json(manifest, "recommendations manifest")
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"{manifest}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("fingerprint") != fp:
            raise ArtifactError(f"{manifest}: written for another job (model, host partials, users, k, "
                                "filters or shard size differ: fingerprint "
                                f"{str(meta.get('fingerprint'))[:12]}..., this job {fp[:12]}...); delete "
                                "the directory or choose another --out")
        for tmp in out.glob(".part-*.tmp-*"):
            tmp.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class ShardedResult:
    n_users: int
    n_shards: int
    resumed: int
    counts: dict[str, int]
    unknown_examples: list[str]
    host_fallbacks: dict[str, int]
    seconds: float
    manifest: Path
    score_kind: str = "ranking_score"
    rating_scale: tuple[float, float] | None = None


def score_sharded(job: ShardJob, users: Sequence[str], executor: Executor, *,
                  shard_users: int = SHARD_USERS, progress: bool = False) -> ShardedResult:
    """Score ``users`` into the dataset ``job.out_dir`` over ``executor`` (module docstring)."""
    from fedrec.progress import progress_bar
    from serving.scorer import FALLBACKS

    t0 = time.perf_counter()
    if shard_users < 1:
        raise ValueError(f"--shard-users must be >= 1, got {shard_users}")
    out = Path(job.out_dir)
    info = executor.map(plan_task, [None], shared=job)[0]
    chunk = int(info["chunk_size"])
    shard = -(-shard_users // chunk) * chunk  # a multiple of the chunk size: the same chunks as one process
    job = ShardJob(**{**asdict(job), "chunk_size": chunk})
    fp = fingerprint(job, users, shard)
    job = ShardJob(**{**asdict(job), "fingerprint": fp})
    _prepare_dir(out, fp)
    plan = [(s, min(s + shard, len(users))) for s in range(0, len(users), shard)] or [(0, 0)]
    done = _done_shards(out, fp, plan)
    spec = {"model": job.model, "host_partials": job.host_partials, "k": job.k,
            "filter_seen": job.filter_seen,
            "allow": len(job.allow) if job.allow else None, "deny": len(job.deny) if job.deny else None,
            "chunk_size": chunk, "shard_users": shard, "engine": executor.engine, "workers": executor.workers}
    base = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fp, "job": spec,
            "n_users": len(users), "n_shards": len(plan)}
    write_json_atomic(out / MANIFEST, {**base, "complete": False, "shards": []})
    if done:
        log.info("%s: %d of %d shards already done (resumed)", out, len(done), len(plan))
    todo = [(i, s, list(users[s:e])) for i, (s, e) in enumerate(plan) if i not in done]
    bar = progress_bar(total=len(plan), initial=len(done), desc=f"recommend ({executor.engine})",
                       unit="shard", disable=not progress)
    records = dict(done)
    try:
        for j, rec in executor.imap_unordered(score_shard, todo, shared=job):
            records[todo[j][0]] = rec
            bar.update(1)
            log.info("shard %d: %d users, %d rows in %.1f s (%d/%d done)", rec["index"], rec["users"],
                     rec["rows"], rec["seconds"], len(records), len(plan))
    finally:
        bar.close()
    shards = [{k: records[i][k] for k in ("index", "file", "start", "stop", "users", "rows", "sha256")}
              for i in range(len(plan))]
    counts = {f: sum(int(records[i]["counts"].get(f, 0)) for i in records) for f in FALLBACKS}
    hosts: dict[str, int] = {}
    for rec in records.values():
        for h, n in rec.get("host_fallbacks", {}).items():
            hosts[h] = hosts.get(h, 0) + int(n)
    unknown = [u for i in sorted(records) for u in records[i].get("unknown_examples", [])][:10]
    manifest = write_json_atomic(out / MANIFEST, {**base, "complete": True, "shards": shards,
                                                  "counts": counts})
    scale = info.get("rating_scale")
    return ShardedResult(len(users), len(plan), len(done), counts, unknown, hosts,
                         time.perf_counter() - t0, manifest, str(info["score_kind"]),
                         None if scale is None else (float(scale[0]), float(scale[1])))


def read_dataset(directory: str | Path) -> Any:
    """The rows of a complete dataset as one pyarrow table, shards in order (checked against the
    manifest's digests)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(directory)
    meta = read_json(out / MANIFEST, "recommendations manifest")
    if meta.get("format") != FORMAT or not meta.get("complete"):
        raise ArtifactError(f"{out / MANIFEST}: not a complete {FORMAT} dataset")
    tables = []
    for s in meta["shards"]:
        part = out / s["file"]
        if file_sha256(part) != s["sha256"]:
            raise ArtifactError(f"{part}: content does not match the manifest's sha256")
        tables.append(pq.read_table(part))
    return pa.concat_tables(tables)
