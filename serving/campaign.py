"""List dormant users for a reactivation campaign (``fedrec dormant``).

A user is dormant at ``--as-of`` T when it has at least ``--min-history`` interactions before T and
none in the ``--inactive-days`` days before T (:func:`fedrec.eval.retention.dormant_users`). The
output has one row per dormant user: ``user_id, n_history, first_activity, last_activity,
days_inactive`` (activity times as ISO-8601 UTC), sorted by user id; it is the ``--users`` input of
``fedrec recommend``. The output location is checked before anything is read and the file is written
atomically; when nobody is dormant it holds only the header (``fedrec recommend`` accepts that as an
empty campaign). The interactions go through the validated reader (errors name file, line, column);
their columns are named with ``--user-column``/``--item-column``/``--time-column``, and no rating is
needed (an event log works as is).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

EPILOG = """examples:
  fedrec dormant --interactions ratings.csv --as-of 2024-06-01 --out dormant.csv
  fedrec dormant --interactions ratings.parquet --as-of 1717200000 --inactive-days 60 \\
      --min-history 10 --out dormant.parquet
  fedrec dormant --interactions events.csv --user-column customer --item-column product \\
      --time-column event_time --as-of 2024-06-01 --out dormant.csv      # a bank's event log
"""

logger = logging.getLogger(__name__)
DAY = 86_400


def parse_time(text: str) -> int:
    """Unix seconds from an integer or an ISO-8601 date/time (UTC when no zone is given). Nothing
    else: ``01/10/2020`` is January 10 in one country and October 1 in another, so it is refused."""
    from datetime import UTC, datetime

    s = text.strip()
    if s.lstrip("-").isdigit():
        if len(s) == 8:  # 20201001 as Unix seconds is 1970-08-23: refuse the ambiguity
            raise argparse.ArgumentTypeError(f"ambiguous date: {text!r} looks like YYYYMMDD but reads as "
                                             "Unix seconds (1970); write 2020-10-01, or Unix seconds")
        return int(s)
    try:
        if len(s) < 10 or s[4] != "-" or s[7] != "-":  # fromisoformat also takes 20201001 and 2020-W40
            raise ValueError(s)
        ts = datetime.fromisoformat(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date: {text!r} (use YYYY-MM-DD, e.g. 2020-10-01 for "
                                         "1 October, an ISO-8601 time such as 2020-10-01T08:00:00+02:00, "
                                         "or Unix seconds)") from exc
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp())


def _day(ts: float) -> str:
    return f"{pd.Timestamp(int(ts), unit='s', tz='UTC'):%Y-%m-%d}"


def as_of_warning(inter: pd.DataFrame, as_of: int, inactive_days: float, source: object) -> str | None:
    """Why ``as_of`` makes a meaningless campaign on these interactions, or ``None``: before the first
    interaction (nobody has a history), or more than ``inactive_days`` after the last one (everybody
    with a history is dormant by construction). Issue #13: the README's ``--as-of 2020-10-01`` ran on
    1997-98 MovieLens data and marked 898 of 943 users dormant without a word."""
    if not len(inter):
        return None
    first, last = int(inter["timestamp"].min()), int(inter["timestamp"].max())
    span = f"{source} spans {_day(first)} to {_day(last)}"
    if as_of <= first:
        return (f"--as-of {_day(as_of)} is before the first interaction: {span}, so nobody has a history "
                f"yet and nobody can be dormant. Pick a date inside the data")
    late = (as_of - last) / DAY
    if late > inactive_days:
        return (f"--as-of {_day(as_of)} is {late:.0f} days after the last interaction ({span}): with "
                f"--inactive-days {inactive_days:g} every user with enough history is dormant. Pick a date "
                f"inside the data (e.g. {_day(last - (last - first) // 10)}), or check that this is the "
                f"file you meant")
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interactions", type=Path, required=True,
                   help="interactions or events (CSV/TSV with header or Parquet: user, item and time "
                        "columns; a rating column is not needed)")
    p.add_argument("--user-column", default="user_id", help="the user id column (user_id)")
    p.add_argument("--item-column", default="item_id", help="the item id column (item_id)")
    p.add_argument("--time-column", default="timestamp",
                   help="the time column: Unix seconds or ISO-8601 (timestamp)")
    p.add_argument("--as-of", type=parse_time, required=True,
                   help="the campaign date T (YYYY-MM-DD, ISO-8601 or Unix seconds; UTC)")
    p.add_argument("--inactive-days", type=float, default=30.0,
                   help="no interaction in this many days before T (30)")
    p.add_argument("--min-history", type=int, default=5, help="at least this many interactions before T (5)")
    p.add_argument("--out", type=Path, required=True, help="output file (.csv, .tsv or .parquet)")


def run(args: argparse.Namespace) -> int:
    from fedrec.data import DataValidationError, read_interactions, write_table
    from fedrec.data.idmap import id_keys
    from fedrec.data.tables import check_output_file, replacing_note
    from fedrec.eval.retention import dormant_users

    try:
        check_output_file(args.out, (".csv", ".tsv", ".parquet"))  # before reading: a bad --out costs nothing
        note = replacing_note(args.out)
        if note:
            print(note, file=sys.stderr)
        columns = {args.user_column: "user_id", args.item_column: "item_id", args.time_column: "timestamp"}
        # only who did something when matters here: an event log without ratings is read as is
        inter, _ = read_interactions(args.interactions, columns=columns, rating_scale=None, implicit=True)
        warning = as_of_warning(inter, args.as_of, args.inactive_days, args.interactions)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        table = dormant_users(inter, args.as_of, args.inactive_days, args.min_history)
        table["user_id"] = id_keys(table["user_id"], source="user ids")  # text, as every output's ids
        for col in ("first_activity", "last_activity"):
            table[col] = pd.to_datetime(table[col], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        table["days_inactive"] = table["days_inactive"].round(2)
        write_table(table, args.out)  # atomic
    except (FileNotFoundError, DataValidationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_users = inter.loc[inter["timestamp"] < args.as_of, "user_id"].nunique()
    print(f"{len(table)} dormant users (of {n_users} with history before "
          f"{pd.Timestamp(args.as_of, unit='s', tz='UTC'):%Y-%m-%d %H:%M}Z) -> {args.out}")
    return 0
