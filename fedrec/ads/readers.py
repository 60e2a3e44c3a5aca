"""Readers of click logs into :class:`~fedrec.ads.data.ClickLog`: TalkingData, the Ali-CCP sample, fedrec's
own click-log format, and conversion events.

Every reader checks its file the way the rest of the data layer does (:mod:`fedrec.data.schema`, with the
parser of :mod:`fedrec.data.tables`): a bad row raises :class:`~fedrec.data.schema.DataValidationError`
naming file, line and column (``errors="skip"`` drops bad rows, counted in ``log.meta["validation"]``):
ragged lines, missing or NaN values, unparsable times, labels other than 0/1, conversion times without a
conversion or before the click, duplicate click ids. Row checks flag the bad lines first; the click-id
checks of :func:`~fedrec.data.schema.validate_side_table` then raise the lowest line of all (or report them
all), so one error format covers every reader.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrec.ads.data import _MISSING, TIME_DTYPE, ClickLog, _make_log, _seconds_to_time, _time_from_int64
from fedrec.data.ads_split import _flag, load_talkingdata, talkingdata_split
from fedrec.data.schema import DataValidationError, Errors, RowKind, validate_side_table, where
from fedrec.data.tables import TextTable, read_delimited, read_table

log = logging.getLogger(__name__)

__all__ = ["ALI_CCP_ADVERTISER", "ALI_CCP_PLATFORM", "read_ali_ccp", "read_click_log", "read_conversions",
           "read_talkingdata"]

#: Ali-CCP fields held by the advertiser (the shop): item category, shop, intention node, brand
ALI_CCP_ADVERTISER: tuple[str, ...] = ("206", "207", "210", "216")
#: Ali-CCP fields held by the platform: user profile, position, 14-day behaviour, user x item crosses
ALI_CCP_PLATFORM: tuple[str, ...] = ("121", "122", "124", "125", "126", "127", "128", "129", "301", "109_14",
                                     "110_14", "127_14", "150_14", "508", "509", "702", "853", "D109_14",
                                     "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")

# --------------------------------------------------------------------------------------------- TalkingData
def read_talkingdata(path: str | Path, *, errors: Errors = "raise") -> ClickLog:
    """The TalkingData AdTracking log as a :class:`ClickLog` (click id = 1-based data row, user = ip,
    campaign = app; platform ``ip, device, os, channel, hour``). Also checks that a download is not
    before its click (``attributed_time >= click_time``)."""
    clicks = load_talkingdata(path, errors=errors)
    report = dict(clicks.attrs.get("validation", {}))
    early = (clicks["attributed_time"] < clicks["click_time"]).fillna(False).to_numpy(dtype=bool)
    if early.any():
        first = int(np.argmax(early))
        cid, val = int(clicks.index.to_numpy()[first]), clicks["attributed_time"].iloc[first]
        msg = (f"{where(str(path), cid + 1, 'line', 'attributed_time')}: value {int(val)} (Unix s) is before "
               "the click; expected a download at or after click_time [attributed_before_click]")
        if errors == "raise":
            raise DataValidationError(msg, source=str(path), row=cid + 1, column="attributed_time",
                                      reason="attributed_before_click")
        log.warning("%s; %d such row(s) dropped", msg, int(early.sum()))
        clicks = clicks.loc[~early]
        report.setdefault("dropped", {})["attributed_before_click"] = int(early.sum())
    _, host = talkingdata_split(clicks)
    plat = host.user_features.copy()
    hour = (clicks["click_time"].to_numpy() % 86_400) // 3600
    plat["hour"] = pd.Series([f"h{h:02d}" for h in hour], dtype="str").to_numpy()
    core = {"user_id": clicks["ip"].to_numpy(), "time": _seconds_to_time(clicks["click_time"]),
            "campaign": clicks["app"].to_numpy(), "converted": clicks["is_attributed"].to_numpy(),
            "conversion_time": _time_from_int64(clicks["attributed_time"])}
    return _make_log(clicks.index.to_numpy(), core, plat.reset_index(drop=True), str(path), (),
                     tuple(plat.columns), meta={"kind": "talkingdata", "validation": report})


# --------------------------------------------------------------------------------------------- Ali-CCP
def _integer_codes(tt: TextTable, columns: Sequence[str]) -> TextTable:
    for c in columns:
        bad = ~tt.frame[c].str.strip().str.fullmatch(r"[0-9]{1,18}").fillna(False).to_numpy(dtype=bool)
        tt = _flag(tt, bad, "code_not_integer", c, "a non-negative integer code")
    return tt


def _finite(tt: TextTable, columns: Sequence[str], lo: float = -np.inf, hi: float = np.inf) -> TextTable:
    for c in columns:
        v = pd.to_numeric(tt.frame[c].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | (v < lo) | (v > hi)
        rng = "" if not np.isfinite(lo) else f" in [{lo:g}, {hi:g}]"
        tt = _flag(tt, bad, "value_not_finite", c, f"a finite number{rng} (no NaN)")
    return tt


def _labels01(tt: TextTable, columns: Sequence[str]) -> TextTable:
    for c in columns:
        tt = _flag(tt, ~tt.frame[c].str.strip().isin(["0", "1"]).to_numpy(), "label_invalid", c, "0 or 1")
    return tt


def _finish(tt: TextTable, path: Path, errors: Errors, ids: np.ndarray | None = None,
            row_kind: RowKind = "line") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The last step of every text reader: click ids (missing / not integer / duplicate) checked with the
    prior issues by :func:`validate_side_table`, so one error (lowest line) or one report covers all."""
    frame = tt.frame.copy()
    if ids is not None:
        frame.insert(0, "click_id", ids)
    table, report = validate_side_table(frame, id_column="click_id", source=str(path), errors=errors,
                                        id_type="int", line_numbers=tt.line_numbers, prior_issues=tt.issues,
                                        row_kind=row_kind)
    return table, report.to_dict()


def read_ali_ccp(path: str | Path, *, errors: Errors = "raise") -> ClickLog:
    """The Ali-CCP sample (``ali_ccp_*_sample.csv``) as a :class:`ClickLog` of its *clicked* impressions.

    ``purchase`` is the post-click conversion (given by the source); ``click_id`` = the 1-based data row of
    the file; ``user_id`` = field ``101``; ``campaign`` = the item (``205``); advertiser columns
    :data:`ALI_CCP_ADVERTISER`; platform columns :data:`ALI_CCP_PLATFORM` (the dense ``D*`` weights
    numeric, in [0, 1]). The sample has no times: ``time`` is NaT (attribution windows do not apply).
    Checks: 0/1 labels, no purchase without a click, integer codes, finite dense weights."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not found; expected an Ali-CCP sample CSV")
    tt = read_delimited(p, sep=",", header=True)
    dense = [c for c in ALI_CCP_PLATFORM if c.startswith("D")]
    codes = ["101", "205", *ALI_CCP_ADVERTISER, *[c for c in ALI_CCP_PLATFORM if c not in dense]]
    need = ["click", "purchase", *codes, *dense]
    missing = [c for c in need if c not in tt.frame.columns]
    if missing:
        raise DataValidationError(f"{where(str(p), None, 'line', missing[0])}: missing column(s) {missing}; "
                                  f"an Ali-CCP sample needs {need}", source=str(p), column=missing[0],
                                  reason="missing_column")
    tt = _labels01(tt, ["click", "purchase"])
    bad = ((tt.frame["purchase"].str.strip() == "1") & (tt.frame["click"].str.strip() == "0")).to_numpy()
    tt = _flag(tt, bad, "purchase_without_click", "purchase", "purchase 0 when click is 0")
    tt = _finite(_integer_codes(tt, codes), dense, 0.0, 1.0)
    table, report = _finish(tt, p, errors, ids=(tt.line_numbers - 1).astype(str))
    n_imp = len(table)
    table = table.loc[table["click"].str.strip() == "1"]
    dims = pd.DataFrame({c: table[c].str.strip() for c in (*ALI_CCP_ADVERTISER, *ALI_CCP_PLATFORM)
                         if c not in dense})
    for c in dense:
        dims[c] = table[c].astype(np.float64)
    dims = dims.loc[:, [*ALI_CCP_ADVERTISER, *ALI_CCP_PLATFORM]].reset_index(drop=True)
    nat = pd.Series(pd.NaT, index=range(len(table)), dtype=TIME_DTYPE)
    core = {"user_id": table["101"].str.strip().to_numpy(), "time": nat, "campaign": table["205"].str.strip(),
            "converted": table["purchase"].str.strip().astype(int).to_numpy(), "conversion_time": nat}
    return _make_log(table.index.to_numpy(), core, dims, str(p), ALI_CCP_ADVERTISER, ALI_CCP_PLATFORM,
                     meta={"kind": "ali_ccp", "impressions": n_imp, "validation": report})


# --------------------------------------------------------------------------------------------- generic
def _parse_times(text: pd.Series) -> pd.Series:
    """ISO-8601 (a zone-less time is UTC) or integer Unix seconds -> datetime64[ns, UTC]; NaT otherwise."""
    s = text.astype("str").str.strip()
    is_int = s.str.fullmatch(r"-?[0-9]{1,12}").fillna(False).to_numpy(dtype=bool)
    out = pd.to_datetime(s.where(~is_int), format="ISO8601", utc=True, errors="coerce").astype(TIME_DTYPE)
    if is_int.any():
        secs = _seconds_to_time(s[is_int].astype("int64"))
        secs.index = out.index[is_int]
        out = out.where(~is_int, secs.reindex(out.index))
    return out


def _is_parquet(path: Path, fmt: str | None) -> bool:
    return (fmt or path.suffix.lstrip(".")).lower() in ("parquet", "pq")


def _read_table(path: Path, fmt: str | None, sep: str | None) -> TextTable:
    """Any supported file as string columns with its line numbers (text, 1-based) or rows (Parquet,
    0-based), through the validated reader :func:`fedrec.data.tables.read_table` (binary, bad encoding,
    huge fields, repeated or empty header names, not-Parquet, nested types: errors naming file/row/column).
    A Parquet cell becomes its text (``None``/``NaN``: a missing value for the checks below)."""
    if _is_parquet(path, fmt):
        tt = read_table(path, format="parquet")
        frame = pd.DataFrame({str(c): pd.Series(tt.frame[c].astype("str").to_numpy(), dtype="str")
                              for c in tt.frame.columns})
        return TextTable(frame, tt.line_numbers, tt.issues)
    suffix = (fmt or path.suffix.lstrip(".")).lower()
    fmt_ = "tsv" if suffix in ("tsv", "txt") else "csv"
    return read_table(path, format=fmt_, sep=sep or ("\t" if fmt_ == "tsv" else ","))


def _missing(tt: TextTable, columns: Sequence[str]) -> TextTable:
    for c in columns:
        tt = _flag(tt, tt.frame[c].str.strip().isin(_MISSING).to_numpy(), "value_missing", c,
                   "a non-empty value (no NaN)")
    return tt


def read_click_log(path: str | Path, *, platform_columns: Sequence[str] | None = None,
                   advertiser_columns: Sequence[str] = (), numeric: Sequence[str] = (),
                   format: str | None = None, sep: str | None = None, errors: Errors = "raise") -> ClickLog:
    """A click log in fedrec's format: columns ``click_id`` (integer, unique), ``user_id``, ``time`` (ISO-8601
    or Unix seconds), ``campaign``, optionally ``converted`` (0/1; without it the log is unlabelled,
    ``labels="none"``, for :func:`~fedrec.ads.attribution.attribute`) and ``conversion_time`` (a time at or
    after the click when converted, empty otherwise), and dimension columns: ``advertiser_columns`` and
    ``platform_columns`` (default: every other column); ``numeric`` dimensions parse as finite numbers, the
    others are categorical (no empty / NaN cell)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not found; expected a click log (CSV/TSV/Parquet)")
    tt = _read_table(p, format, sep)
    required = ["click_id", "user_id", "time", "campaign"]
    optional = ("converted", "conversion_time")
    labelled = "converted" in tt.frame.columns
    extra = [c for c in tt.frame.columns if c not in (*required, *optional)]
    plat = list(platform_columns) if platform_columns is not None else \
        [c for c in extra if c not in advertiser_columns]
    need = [*required, *advertiser_columns, *plat]
    missing = [c for c in need if c not in tt.frame.columns]
    if missing:
        raise DataValidationError(f"{where(str(p), None, 'line', missing[0])}: missing column(s) {missing}; "
                                  f"a click log needs {need}, found {list(tt.frame.columns)}", source=str(p),
                                  column=missing[0], reason="missing_column")
    fill = {c: ("0" if c == "converted" else "") for c in optional if c not in tt.frame.columns}
    if fill:
        tt = TextTable(tt.frame.assign(**fill), tt.line_numbers, tt.issues)
    tt = _missing(tt, ["user_id", "campaign"])
    tt = _flag(tt, _parse_times(tt.frame["time"]).isna().to_numpy(), "timestamp_unparsable", "time",
               "an ISO-8601 date-time or Unix seconds")
    tt = _labels01(tt, ["converted"])
    ctext = tt.frame["conversion_time"].str.strip()
    tt = _flag(tt, (_parse_times(ctext).isna() & (ctext != "")).to_numpy(), "timestamp_unparsable",
               "conversion_time", "an ISO-8601 date-time, Unix seconds or empty")
    ct, t = _parse_times(tt.frame["conversion_time"]), _parse_times(tt.frame["time"])
    conv = (tt.frame["converted"].str.strip() == "1").to_numpy()
    bad = (ct.notna().to_numpy() & ~conv) | (conv & ct.isna().to_numpy()) | \
        (ct < t).fillna(False).to_numpy(dtype=bool)
    tt = _flag(tt, bad, "conversion_time_inconsistent", "conversion_time",
               "a time at or after the click when converted is 1, empty when it is 0")
    tt = _finite(tt, numeric)
    tt = _missing(tt, [c for c in (*advertiser_columns, *plat) if c not in numeric])
    table, report = _finish(tt, p, errors, row_kind="row" if _is_parquet(p, format) else "line")
    dims = pd.DataFrame({c: (table[c].astype(np.float64) if c in numeric else table[c].str.strip())
                         for c in (*advertiser_columns, *plat)}).reset_index(drop=True)
    core = {"user_id": table["user_id"].str.strip().to_numpy(),
            "time": _parse_times(table["time"]).to_numpy(),
            "campaign": table["campaign"].str.strip().to_numpy(),
            "converted": table["converted"].str.strip().astype(int).to_numpy(),
            "conversion_time": _parse_times(table["conversion_time"]).to_numpy()}
    return _make_log(table.index.to_numpy(), core, dims, str(p), advertiser_columns, plat,
                     labels="source" if labelled else "none", meta={"kind": "generic", "validation": report})


def read_conversions(path: str | Path, *, format: str | None = None, sep: str | None = None,
                     errors: Errors = "raise") -> pd.DataFrame:
    """Conversion events (the advertiser's side: who converted on what, when), for attribution: columns
    ``conversion_id`` (integer, unique), ``user_id``, ``campaign``, ``time``; optional ``value`` (a finite
    number >= 0, default 1). Returns a frame indexed by ``conversion_id``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not found; expected conversion events (CSV/TSV/Parquet)")
    tt = _read_table(p, format, sep)
    need = ["conversion_id", "user_id", "campaign", "time"]
    missing = [c for c in need if c not in tt.frame.columns]
    if missing:
        raise DataValidationError(f"{where(str(p), None, 'line', missing[0])}: missing column(s) {missing}; "
                                  f"conversion events need {need}", source=str(p), column=missing[0],
                                  reason="missing_column")
    if "value" not in tt.frame.columns:
        tt = TextTable(tt.frame.assign(value="1"), tt.line_numbers, tt.issues)
    tt = _missing(tt, ["user_id", "campaign"])
    tt = _flag(tt, _parse_times(tt.frame["time"]).isna().to_numpy(), "timestamp_unparsable", "time",
               "an ISO-8601 date-time or Unix seconds")
    tt = _finite(tt, ["value"], 0.0, np.inf)
    frame = tt.frame.rename(columns={"conversion_id": "click_id"})
    table, report = _finish(TextTable(frame, tt.line_numbers, tt.issues), p, errors,
                            row_kind="row" if _is_parquet(p, format) else "line")
    out = pd.DataFrame({"user_id": table["user_id"].str.strip().astype("str"),
                        "campaign": table["campaign"].str.strip().astype("str"),
                        "time": _parse_times(table["time"]).to_numpy(),
                        "value": table["value"].astype(np.float64)},
                       index=table.index.rename("conversion_id"))
    out.attrs["validation"] = report
    return out
