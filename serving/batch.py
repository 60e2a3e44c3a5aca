"""Write top-K recommendations for a campaign's users (``fedrec recommend``).

Reads a serving bundle (or a saved fedrec model directory, exported on the fly), optionally the
host's per-user partials for a vertical bundle, and a users file (CSV/TSV/Parquet with a ``user_id``
column — e.g. the output of ``fedrec dormant`` — or a ``.txt`` file with one id per line). Writes
``user_id, rank, item_id, score, score_kind, fallback`` (CSV/TSV or Parquet, streamed chunk by chunk, so
memory stays bounded; ``item_id`` as text, ``score`` a predicted rating clipped to the rating scale, a
probability or a ranking score as ``score_kind`` says, :mod:`serving.scorer`) and prints how many users
got each fallback (``none``, ``no_host_partial``, ``unknown_user``; see :mod:`serving.scorer`). Items
already seen in training are filtered unless ``--keep-seen``; ``--allow``/``--deny`` files restrict the
catalogue (same formats, column ``item_id``).

With ``--engine local|process|ray`` the users are scored in shards over that engine
(:mod:`fedrec.compute`) into a partitioned Parquet dataset in the directory ``--out``, resumable shard
by shard and row for row identical to the single file (:mod:`serving.sharded`).

The output is written atomically (a hidden temporary file renamed when complete) after its location
was checked before any work; every input goes through the validated reader, so a malformed file is an
error naming file, line and column. A users file with only a header (``fedrec dormant`` found nobody) is
accepted and gives an output with no rows, with a warning; an id listed twice is an error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

EPILOG = """examples:
  fedrec recommend --model artifacts/bundle --users dormant.csv --k 10 --out recs.csv
  fedrec recommend --model artifacts/bundle --users all_users.parquet --k 10 --engine ray --out recs/
  fedrec recommend --model artifacts/bundle --users all_users.parquet --engine ray --address auto --out recs/
  fedrec recommend --config guest.toml --model artifacts/bundle --users all_users.parquet --out recs/
  fedrec recommend --model artifacts/guest_bundle --host-partials host_partials.parquet \\
      --users dormant.parquet --k 20 --deny discontinued.txt --out recs.parquet
"""

logger = logging.getLogger(__name__)
OUT_SUFFIXES = (".csv", ".tsv", ".parquet")
#: how the summary line names a score kind (serving.artifacts.SCORE_KINDS)
_KIND_TEXT = {"predicted_rating": "predicted rating", "probability": "probability",
              "ranking_score": "ranking score, only the order means something"}
ENGINES = ("local", "process", "ray")  # fedrec.compute.ENGINES (not imported: --help stays light)


class InputFileError(ValueError):
    """A users/items list file is missing or malformed."""


def read_id_list(path: Path, column: str, *, allow_empty: bool = False) -> list[str]:
    """Ids from a ``.txt`` file (one per line) or a CSV/TSV/Parquet file with ``column`` (as stripped
    strings), through the validated reader (:func:`fedrec.data.tables.read_ids`: ragged lines, BOM, binary,
    huge fields, blank ids ... are errors naming file, line and column). An id listed twice is an error
    naming both lines. No ids: an error unless ``allow_empty``."""
    from fedrec.data.schema import DataValidationError
    from fedrec.data.tables import read_ids, table_location

    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv", ".tsv", ".parquet"):
        raise InputFileError(f"{path}: use .txt (one id per line), .csv, .tsv or .parquet")
    try:
        values, lines = read_ids(path, column, allow_empty=allow_empty)
    except (DataValidationError, FileNotFoundError) as exc:
        raise InputFileError(str(exc)) from exc
    ids = [v.strip() if isinstance(v, str) else str(v) for v in values]
    first: dict[str, int] = {}
    for j, key in enumerate(ids):
        if key in first:
            col = None if suffix == ".txt" else column
            raise InputFileError(f"{table_location(path, int(lines[j]), col)}: id listed twice (first at "
                                 f"{'line' if suffix != '.parquet' else 'row'} {int(lines[first[key]])})")
        first[key] = j
    return ids


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True,
                   help="serving bundle directory (serving.json) or saved fedrec model (meta.json)")
    p.add_argument("--host-partials", action="append", default=None, metavar="[HOST=]PATH",
                   help="host per-user partials (CSV/Parquet: user_id, z_H, e_H_0..) for a vertical bundle; "
                        "a multi-host model: once per host as HOST=PATH")
    p.add_argument("--users", type=Path, required=True, help="users file (.csv/.tsv/.parquet with user_id, "
                   "or .txt one id per line)")
    p.add_argument("--k", type=int, default=10, help="items per user (10)")
    p.add_argument("--out", type=Path, required=True, help="output file (.csv, .tsv or .parquet)")
    p.add_argument("--allow", type=Path, default=None, help="only recommend these items (item_id list)")
    p.add_argument("--deny", type=Path, default=None, help="never recommend these items (item_id list)")
    p.add_argument("--keep-seen", action="store_true", help="do not filter items seen in training")
    p.add_argument("--chunk-size", type=int, default=None, help="users per scoring chunk (auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("scale-out (the [compute] keys; docs/SCALE.md)")
    g.add_argument("--config", type=Path, default=None, metavar="PARTY.toml",
                   help="take --engine/--address/--workers from this party configuration's [compute] table "
                        "(the flags, when given, win)")
    g.add_argument("--engine", choices=ENGINES, default=None,
                   help="score in shards on this engine: local (this process), process (a local pool) or "
                        "ray (pip install 'fedrec[ray]'); --out is then a directory: a partitioned Parquet "
                        "dataset (part-NNNNN.parquet + _manifest.json), resumed shard by shard when rerun")
    g.add_argument("--address", default=None,
                   help="ray: a running cluster (auto, HOST:6379, ray://HOST:10001); default: a private "
                        "local Ray")
    g.add_argument("--workers", type=int, default=None, help="worker processes (0: all cores)")
    g.add_argument("--shard-users", type=int, default=None,
                   help="users per shard, rounded up to a multiple of the chunk size (100000)")


def _shown(ids: list[str], n: int = 10) -> str:
    """At most ``n`` ids, each cut to 40 characters (a file's id is named, never echoed whole)."""
    cut = [i if len(i) <= 40 else i[:40] + "..." for i in ids[:n]]
    return ", ".join(cut) + (" ..." if len(ids) > n else "")


def write_frame(frame: pd.DataFrame, out: Path, writer: Any) -> Any:
    """Append ``frame`` to ``out`` (Parquet: one row group through ``writer``, created on the first call;
    CSV/TSV: appended text); returns the writer for the next call (close a Parquet one at the end)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out.suffix.lower() == ".parquet":
        table = pa.Table.from_pandas(frame.astype({"user_id": str, "item_id": str}), preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema)
        assert isinstance(writer, pq.ParquetWriter)
        writer.write_table(table)
        return writer
    sep = "\t" if out.suffix.lower() == ".tsv" else ","
    frame.to_csv(out, sep=sep, index=False, mode="a" if writer else "w", header=writer is None,
                 lineterminator="\n", float_format="%.6g")
    return True


def _write(frames: list[pd.DataFrame], out: Path, writer: Any) -> Any:
    return write_frame(pd.concat(frames, ignore_index=True), out, writer)


def run(args: argparse.Namespace) -> int:
    """Preflight (output location, before any work), read, score chunk by chunk into a hidden temporary
    file beside ``--out``, rename it to ``--out`` when complete: a killed run leaves no ``--out`` (or the
    previous one), never a partial file that looks valid. Host partials of another training run than
    the model's are refused (:func:`fedrec.models.vertical.check_run_id`)."""
    from fedrec.artifacts import atomic_file
    from fedrec.data.schema import DataValidationError
    from fedrec.data.tables import check_output_file, replacing_note
    from fedrec.models.base import UNKNOWN_USER
    from serving.artifacts import ArtifactError, host_partials_arg
    from serving.export import load_serving_bundle
    from serving.scorer import FALLBACKS, Scorer

    out: Path = args.out
    if args.config is not None:
        try:
            compute = compute_table(args.config)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        args.engine = args.engine or (compute.engine if "engine" in compute.given else None)
        args.address = args.address or compute.address
        args.workers = compute.workers if args.workers is None else args.workers
    if args.engine is not None:
        return run_sharded(args)
    try:
        check_output_file(out, OUT_SUFFIXES)
        note = replacing_note(out)
        if note:
            print(note, file=sys.stderr)
        if args.k < 1:
            raise ValueError(f"--k must be >= 1, got {args.k}")
        users = read_id_list(args.users, "user_id", allow_empty=True)
        allow = None if args.allow is None else read_id_list(args.allow, "item_id")
        deny = None if args.deny is None else read_id_list(args.deny, "item_id")
        bundle = load_serving_bundle(args.model)
        partials = host_partials_arg(args.host_partials, bundle.host_width)
        scorer = Scorer(bundle, partials, chunk_size=args.chunk_size)
        if not users:
            print(f"warning: {args.users} lists no users (only a header): {out} will have no rows",
                  file=sys.stderr)
        chunks = scorer.iter_recommend(users, args.k, filter_seen=not args.keep_seen, allow=allow, deny=deny,
                                       show_progress=not args.no_progress)
        counts = dict.fromkeys(FALLBACKS, 0)
        unknown: list[str] = []
        with atomic_file(out) as tmp:
            writer: object = None
            for rec in chunks:
                for key in FALLBACKS:
                    counts[key] += rec.counts[key]
                unknown.extend(rec.user_ids[rec.fallback == UNKNOWN_USER].tolist())
                writer = _write([rec.to_frame()], tmp, writer)
            if writer is None:  # no users: still write the header / schema
                writer = _write([pd.DataFrame({"user_id": [], "rank": [], "item_id": [], "score": [],
                                               "score_kind": [], "fallback": []})], tmp, None)
            if hasattr(writer, "close"):
                writer.close()
    except (ArtifactError, InputFileError, DataValidationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scale = scorer.bundle.rating_scale
    kind = _KIND_TEXT[scorer.bundle.score_kind] + ("" if scale is None else f" {scale[0]:g}..{scale[1]:g}")
    print(f"{len(users)} users -> {out} (k={args.k}, score: {kind}); "
          "fallback: " +
          ", ".join(f"{k}={v}" for k, v in counts.items()))
    if unknown:
        print(f"warning: {len(unknown)} user(s) unknown to the model are ranked by its item scores b_i "
              f"(fallback unknown_user): {_shown(unknown)}", file=sys.stderr)
    if scorer.host_report:
        print("host partials: " + ", ".join(f"{k}={v}" for k, v in scorer.host_report.items()))
    return 0


class _Compute:
    def __init__(self, engine: str, address: str | None, workers: int, given: set[str]) -> None:
        self.engine, self.address, self.workers, self.given = engine, address, workers, given


def compute_table(path: Path) -> _Compute:
    """The ``[compute]`` table of a party configuration (training/config.py): its keys, checked, and which
    were given. Errors name the file, the table and the key."""
    import tomllib

    from fedrec.compute import ComputeConfig

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read as TOML: {exc}") from None
    table = doc.get("compute", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: compute must be a table [compute]")
    types = {"engine": str, "address": str, "workers": int}
    for key, value in table.items():
        if key not in types:
            raise ValueError(f"{path}: unknown key [compute] {key}; allowed: {', '.join(types)}")
        if not isinstance(value, types[key]) or isinstance(value, bool):
            what = "an integer" if key == "workers" else "a string"
            raise ValueError(f"{path}: [compute] {key} must be {what}, got {value!r}")
    try:
        cfg = ComputeConfig(**table)
    except ValueError as exc:
        raise ValueError(f"{path}: [compute]: {exc}") from None
    return _Compute(cfg.engine, cfg.address, cfg.workers, set(table))


def run_sharded(args: argparse.Namespace) -> int:
    """``--engine``: the sharded, resumable run of :mod:`serving.sharded` into the directory ``--out``."""
    from fedrec.artifacts import ArtifactError
    from fedrec.compute import ComputeConfig, ExecutorError, make_executor
    from fedrec.data.schema import DataValidationError
    from serving.sharded import SHARD_USERS, ShardJob, score_sharded

    out: Path = args.out
    try:
        if out.suffix.lower() in OUT_SUFFIXES:
            raise ValueError(f"--out {out}: with --engine the output is a directory (a partitioned Parquet "
                             "dataset), not a single file; give a directory name, e.g. recs/")
        if args.k < 1:
            raise ValueError(f"--k must be >= 1, got {args.k}")
        config = ComputeConfig(engine=args.engine, address=args.address, workers=args.workers or 0)
        users = read_id_list(args.users, "user_id", allow_empty=True)
        allow = None if args.allow is None else tuple(read_id_list(args.allow, "item_id"))
        deny = None if args.deny is None else tuple(read_id_list(args.deny, "item_id"))
        if not users:
            print(f"warning: {args.users} lists no users (only a header): {out} will have no rows",
                  file=sys.stderr)
        job = ShardJob(model=str(args.model.resolve()),
                       host_partials=tuple(args.host_partials) if args.host_partials else None, k=args.k,
                       filter_seen=not args.keep_seen, allow=allow, deny=deny, chunk_size=args.chunk_size,
                       out_dir=str(out.resolve()))
        with make_executor(config) as executor:
            result = score_sharded(job, users, executor, shard_users=args.shard_users or SHARD_USERS,
                                   progress=not args.no_progress)
    except ExecutorError as exc:
        cause = exc.__cause__
        known = (ArtifactError, InputFileError, DataValidationError, ValueError, OSError)
        print(f"error: {cause if isinstance(cause, known) else exc}", file=sys.stderr)
        if out.is_dir():
            print(f"note: finished shards in {out} are kept; rerun the same command to resume",
                  file=sys.stderr)
        return 2
    except (ArtifactError, InputFileError, DataValidationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    resumed = f" ({result.resumed} resumed)" if result.resumed else ""
    scale = result.rating_scale
    kind = _KIND_TEXT[result.score_kind] + ("" if scale is None else f" {scale[0]:g}..{scale[1]:g}")
    print(f"{result.n_users} users -> {out}/ in {result.n_shards} shard(s){resumed} on {args.engine}, "
          f"{result.seconds:.1f} s (k={args.k}, score: {kind}); fallback: "
          + ", ".join(f"{k}={v}" for k, v in result.counts.items()))
    if result.counts.get("unknown_user"):
        print(f"warning: {result.counts['unknown_user']} user(s) unknown to the model are ranked by its item "
              f"scores b_i (fallback unknown_user): {_shown(result.unknown_examples)}", file=sys.stderr)
    return 0
