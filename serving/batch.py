"""Write top-K recommendations for a campaign's users (``fedrec recommend``).

Reads a serving bundle (or a saved fedrec model directory, exported on the fly), optionally the
host's per-user partials for a vertical bundle, and a users file (CSV/TSV/Parquet with a ``user_id``
column — e.g. the output of ``fedrec dormant`` — or a ``.txt`` file with one id per line). Writes
``user_id, rank, item_id, score, fallback`` (CSV/TSV or Parquet, streamed chunk by chunk, so memory
stays bounded) and prints how many users got each fallback (``none``, ``no_host_partial``,
``unknown_user``; see :mod:`serving.scorer`). Items already seen in training are filtered unless
``--keep-seen``; ``--allow``/``--deny`` files restrict the catalogue (same formats, column ``item_id``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

EPILOG = """examples:
  fedrec recommend --model artifacts/bundle --users dormant.csv --k 10 --out recs.csv
  fedrec recommend --model artifacts/guest_bundle --host-partials host_partials.parquet \\
      --users dormant.parquet --k 20 --deny discontinued.txt --out recs.parquet
"""

logger = logging.getLogger(__name__)
OUT_SUFFIXES = (".csv", ".tsv", ".parquet")


class InputFileError(ValueError):
    """A users/items list file is missing or malformed."""


def read_id_list(path: Path, column: str) -> list[str]:
    """Ids from a ``.txt`` file (one per line) or a CSV/TSV/Parquet file with ``column`` (as strings)."""
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text().splitlines()
            return [s.strip() for s in lines if s.strip()]
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        else:
            raise InputFileError(f"{path}: use .txt (one id per line), .csv, .tsv or .parquet")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        if isinstance(exc, InputFileError):
            raise
        raise InputFileError(f"{path}: cannot read ({exc})") from exc
    if column not in df.columns:
        raise InputFileError(f"{path}: no column {column!r}; it has {list(df.columns)}")
    ids = df[column].astype(str).str.strip()
    blank = (ids == "") | df[column].isna().to_numpy()
    if blank.any():
        row = int(blank.to_numpy().nonzero()[0][0])
        raise InputFileError(f"{path}: row {row + 1}, column {column!r}: empty id")
    return ids.tolist()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True,
                   help="serving bundle directory (serving.json) or saved fedrec model (meta.json)")
    p.add_argument("--host-partials", type=Path, default=None,
                   help="host per-user partials (CSV/Parquet: user_id, z_H, e_H_0..) for a vertical bundle")
    p.add_argument("--users", type=Path, required=True, help="users file (.csv/.tsv/.parquet with user_id, "
                   "or .txt one id per line)")
    p.add_argument("--k", type=int, default=10, help="items per user (10)")
    p.add_argument("--out", type=Path, required=True, help="output file (.csv, .tsv or .parquet)")
    p.add_argument("--allow", type=Path, default=None, help="only recommend these items (item_id list)")
    p.add_argument("--deny", type=Path, default=None, help="never recommend these items (item_id list)")
    p.add_argument("--keep-seen", action="store_true", help="do not filter items seen in training")
    p.add_argument("--chunk-size", type=int, default=None, help="users per scoring chunk (auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _write(frames: list[pd.DataFrame], out: Path, writer: object) -> object:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.concat(frames, ignore_index=True)
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


def run(args: argparse.Namespace) -> int:
    from fedrec.models.base import UNKNOWN_USER
    from serving.artifacts import ArtifactError, read_host_partials
    from serving.export import load_serving_bundle
    from serving.scorer import FALLBACKS, Scorer

    out: Path = args.out
    if out.suffix.lower() not in OUT_SUFFIXES:
        print(f"error: --out {out}: use one of {', '.join(OUT_SUFFIXES)}", file=sys.stderr)
        return 2
    try:
        bundle = load_serving_bundle(args.model)
        partials = None if args.host_partials is None else read_host_partials(args.host_partials,
                                                                               bundle.n_factors)
        scorer = Scorer(bundle, partials, chunk_size=args.chunk_size)
        users = read_id_list(args.users, "user_id")
        allow = None if args.allow is None else read_id_list(args.allow, "item_id")
        deny = None if args.deny is None else read_id_list(args.deny, "item_id")
        chunks = scorer.iter_recommend(users, args.k, filter_seen=not args.keep_seen, allow=allow, deny=deny,
                                       show_progress=not args.no_progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        counts = dict.fromkeys(FALLBACKS, 0)
        unknown: list[str] = []
        writer: object = None
        for rec in chunks:
            for key in FALLBACKS:
                counts[key] += rec.counts[key]
            unknown.extend(rec.user_ids[rec.fallback == UNKNOWN_USER].tolist())
            writer = _write([rec.to_frame()], out, writer)
    except (ArtifactError, InputFileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if writer is None:  # no users: still write the header / schema
        writer = _write([pd.DataFrame({"user_id": [], "rank": [], "item_id": [], "score": [],
                                       "fallback": []})], out, None)
    if hasattr(writer, "close"):
        writer.close()
    print(f"{len(users)} users -> {out} (k={args.k}); fallback: " +
          ", ".join(f"{k}={v}" for k, v in counts.items()))
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        print(f"warning: {len(unknown)} user(s) unknown to the model are ranked by its item scores b_i "
              f"(fallback unknown_user): {shown}", file=sys.stderr)
    if scorer.host_report:
        print("host partials: " + ", ".join(f"{k}={v}" for k, v in scorer.host_report.items()))
    return 0
