"""Conversion data in the vertical FM's shape: one click = one "user" entity of the protocol.

The vertical FM (:mod:`fedrec.protocols.hetero_fm`) joins the two parties on a user id; for post-click
conversion prediction the entity both parties know is the **click** (the platform logged it, the
advertiser received it with its click id), so every click is one protocol "user":

* the **guest** (advertiser, holds the conversion labels) gets interaction rows
  ``user_id = click id, item_id = the advertised app / campaign, rating = converted (0.0/1.0),
  timestamp = click time (Unix seconds)`` and, for the synthetic funnel, item features
  (``campaign_category``);
* the **host** (ad platform) gets ``user_features`` indexed by click id: what the platform logged
  about the click. Categorical columns are strings (one-hot fields of the FM), numeric ones numbers.

The item (app / campaign) stays with the advertiser: it is the advertiser's own catalogue, and with it at
the guest the guest-only model is the "advertiser alone" baseline, so the federated gain is exactly what
the platform's columns add (giving it to both parties would count it twice). Each click occurs once, so
the guest's per-user fields (user id, history) carry nothing; benchmarks switch them off.

Both splits return ``(GuestView, HostView)`` as :func:`fedrec.data.vertical_split` does:
``HeteroFMGuest.fit(guest.interactions, item_features=guest.item_features)`` and
``HeteroFMHost.serve(host.user_features)`` take them directly.

TalkingData (``train_sample.csv`` of the 2018 Kaggle AdTracking challenge; 100,000 clicks, 227
downloads): the host holds ``ip, device, os, channel`` (categorical); the click id is the 1-based data row
of the file (the header is not counted), so ids stay put when bad rows are skipped.
``attributed_time`` (the download time) is read and checked but is never a feature: it leaks the label.

Synthetic ad funnel (:mod:`fedrec.data.synthetic_ads`): the clicked impressions; the click id is the
``impression_id``, the item the ``campaign_id``; the host holds the impression's ``placement`` and
``hour`` (categorical), the platform's own id of the user who clicked (``platform_user``, categorical:
a platform always knows its user, as TalkingData's ``ip`` approximates; ``platform_user=False`` leaves
it out) and the platform's features of that user (the synthetic ``user_features``: categorical and
numeric columns). The advertiser's own signal (its customers' tastes
and activity) has no column in this shape; the guest-only model sees the campaign only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedrec.data.partition import GuestView, HostView
from fedrec.data.schema import DataValidationError, Errors, Issue, validate_interactions, where
from fedrec.data.tables import TextTable, read_delimited

if TYPE_CHECKING:
    from fedrec.data.synthetic import SyntheticData

__all__ = [
    "TALKINGDATA_COLUMNS", "TALKINGDATA_HOST_COLUMNS", "load_talkingdata", "synthetic_ads_split",
    "talkingdata_split",
]

TALKINGDATA_COLUMNS: tuple[str, ...] = ("ip", "app", "device", "os", "channel", "click_time",
                                        "attributed_time", "is_attributed")
#: the ad platform's columns (the host); ``app`` stays with the advertiser (see the module docstring)
TALKINGDATA_HOST_COLUMNS: tuple[str, ...] = ("ip", "device", "os", "channel")
_CODES = ("ip", "app", "device", "os", "channel")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: the rating scale of a 0/1 conversion label
LABEL_SCALE = (0.0, 1.0)


def _flag(tt: TextTable, mask: np.ndarray, reason: str, column: str, expected: str) -> TextTable:
    """Move the rows in ``mask`` out of the table into issues named by their line and column."""
    if not mask.any():
        return tt
    issues = [Issue(reason, int(tt.line_numbers[i]), column, tt.frame[column].iloc[i], expected)
              for i in np.flatnonzero(mask).tolist()]
    return TextTable(tt.frame.loc[~mask].reset_index(drop=True), tt.line_numbers[~mask],
                     tt.issues + tuple(issues))


def _seconds(text: pd.Series) -> pd.Series:
    """``YYYY-MM-DD HH:MM:SS`` (UTC) -> Unix seconds as float (NaN when it does not parse)."""
    dt = pd.to_datetime(text.str.strip(), format=_TIME_FORMAT, errors="coerce", utc=True)
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("float64")


def load_talkingdata(path: str | Path, *, errors: Errors = "raise") -> pd.DataFrame:
    """Read and check a TalkingData AdTracking click log (``train_sample.csv`` or ``train.csv``).

    Returns one row per click, indexed by ``click_id`` (the 1-based data row of the file): ``ip, app,
    device, os, channel`` (int64 codes), ``click_time`` (int64 Unix seconds, UTC), ``attributed_time``
    (nullable Int64; ``<NA>`` without a download) and ``is_attributed`` (int64 0/1). Checks, each naming
    file, line and column: the header has every column of :data:`TALKINGDATA_COLUMNS`; codes are
    non-negative integers; ``click_time`` is ``YYYY-MM-DD HH:MM:SS``; ``is_attributed`` is 0 or 1;
    ``attributed_time`` is such a time exactly when ``is_attributed`` is 1. ``errors="skip"`` drops bad
    rows (counted in ``frame.attrs["validation"]`` and logged) instead of raising on the first one.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not found; expected the TalkingData click log (train_sample.csv)")
    tt = read_delimited(p, sep=",", header=True)
    missing = [c for c in TALKINGDATA_COLUMNS if c not in tt.frame.columns]
    if missing:
        raise DataValidationError(
            f"{where(str(p), None, 'line', missing[0])}: missing column(s) {missing}; a TalkingData click "
            f"log needs {list(TALKINGDATA_COLUMNS)}, found {list(tt.frame.columns)}",
            source=str(p), column=missing[0], reason="missing_column")
    for c in _CODES:
        bad = ~tt.frame[c].str.strip().str.fullmatch(r"[0-9]{1,18}").fillna(False).to_numpy(dtype=bool)
        tt = _flag(tt, bad, "code_not_integer", c, "a non-negative integer code (at most 18 digits)")
    tt = _flag(tt, _seconds(tt.frame["click_time"]).isna().to_numpy(), "timestamp_unparsable", "click_time",
               "a UTC date-time YYYY-MM-DD HH:MM:SS like '2017-11-07 09:30:38'")
    label = tt.frame["is_attributed"].str.strip()
    tt = _flag(tt, ~label.isin(["0", "1"]).to_numpy(), "label_invalid", "is_attributed", "0 or 1")
    attributed = tt.frame["attributed_time"].str.strip()
    converted = (tt.frame["is_attributed"].str.strip() == "1").to_numpy()  # every label is 0/1 here
    parsed = _seconds(tt.frame["attributed_time"]).notna().to_numpy()
    bad = np.where(converted, ~parsed, (attributed != "").to_numpy())
    tt = _flag(tt, bad, "attributed_time_inconsistent", "attributed_time",
               "a date-time when is_attributed is 1, empty when it is 0")

    f = tt.frame
    click_id = (tt.line_numbers - 1).astype(np.int64)  # the header is line 1
    frame = pd.DataFrame({"user_id": click_id, "item_id": f["app"], "rating": f["is_attributed"],
                          "timestamp": _seconds(f["click_time"]).to_numpy()})
    # the label and time checks as every interaction table gets them (and the one error/report format)
    inter, report = validate_interactions(frame, source=str(p), errors=errors, rating_scale=LABEL_SCALE,
                                          id_type="int", line_numbers=tt.line_numbers,
                                          prior_issues=tt.issues)
    keep = inter.index.to_numpy()
    att = _seconds(f["attributed_time"].iloc[keep])
    out = pd.DataFrame({c: f[c].iloc[keep].str.strip().astype("int64").to_numpy() for c in _CODES},
                       index=pd.Index(click_id[keep], name="click_id"))
    out["click_time"] = inter["timestamp"].to_numpy(dtype=np.int64)
    out["attributed_time"] = pd.array(att.to_numpy(), dtype="Float64").astype("Int64")
    out["is_attributed"] = inter["rating"].to_numpy().astype(np.int64)
    out.attrs["validation"] = report.to_dict()
    return out


def _views(name: str, interactions: pd.DataFrame, item_features: pd.DataFrame | None,
           host: pd.DataFrame) -> tuple[GuestView, HostView]:
    host.index = pd.Index(host.index.to_numpy(), name="user_id")
    guest = GuestView(name, interactions.reset_index(drop=True), item_features, LABEL_SCALE)
    return guest, HostView(name, host)


def talkingdata_split(clicks: pd.DataFrame, *, host_columns: Sequence[str] = TALKINGDATA_HOST_COLUMNS,
                      name: str = "talkingdata") -> tuple[GuestView, HostView]:
    """The advertiser (guest) / ad platform (host) split of :func:`load_talkingdata`'s clicks (see the
    module docstring). ``host_columns``: a subset of ``ip, device, os, channel`` (as strings: categorical)."""
    allowed = set(TALKINGDATA_HOST_COLUMNS)
    cols = list(host_columns)
    if not cols or not set(cols) <= allowed or len(set(cols)) != len(cols):
        raise ValueError(f"talkingdata_split: host_columns must be distinct names among "
                         f"{list(TALKINGDATA_HOST_COLUMNS)}, got {cols!r}")
    need = [c for c in ("app", "click_time", "is_attributed", *cols) if c not in clicks.columns]
    if need:
        raise ValueError(f"talkingdata_split: clicks lack column(s) {need}; pass load_talkingdata's frame")
    ids = clicks.index.to_numpy()
    interactions = pd.DataFrame({"user_id": ids, "item_id": clicks["app"].to_numpy(dtype=np.int64),
                                 "rating": clicks["is_attributed"].to_numpy(dtype=np.float64),
                                 "timestamp": clicks["click_time"].to_numpy(dtype=np.int64)})
    host = pd.DataFrame({c: clicks[c].astype("int64").astype("str").to_numpy() for c in cols}, index=ids)
    for c in cols:
        host[c] = host[c].astype("str")
    return _views(name, interactions, None, host)


def synthetic_ads_split(data: SyntheticData, *, platform_user: bool = True, name: str | None = None
                        ) -> tuple[GuestView, HostView]:
    """The advertiser / platform split of the synthetic funnel's clicked impressions (module docstring).

    Guest: ``user_id = impression_id`` of each click, ``item_id = campaign_id``, ``rating = conversion``,
    ``timestamp = impression_ts``; item features ``campaign_category`` per campaign. Host: ``placement``,
    ``hour`` (``"h00"``..``"h23"``), ``platform_user`` (``"u<user_id>"``, when ``platform_user``) and the
    impression's user's ``data.dataset.user_features``.
    """
    ads = data.ads
    clicks = ads.loc[ads["click"].to_numpy() == 1]
    if clicks.empty:
        raise ValueError("synthetic_ads_split: the funnel has no click (raise impressions_per_user or "
                         "click_rate)")
    users = data.dataset.user_features
    if users is None:
        raise ValueError("synthetic_ads_split: the synthetic dataset has no user_features")
    ids = clicks["impression_id"].to_numpy(dtype=np.int64)
    interactions = pd.DataFrame({"user_id": ids, "item_id": clicks["campaign_id"].to_numpy(dtype=np.int64),
                                 "rating": clicks["conversion"].to_numpy(dtype=np.float64),
                                 "timestamp": clicks["impression_ts"].to_numpy(dtype=np.int64)})
    camp = ads.drop_duplicates("campaign_id").set_index("campaign_id")["campaign_category"]
    items = pd.DataFrame({"campaign_category": camp.astype("str")}).sort_index()
    items.index.name = "item_id"
    host = users.loc[clicks["user_id"].to_numpy()].set_axis(ids, axis=0)
    if platform_user:
        who = pd.Series([f"u{u}" for u in clicks["user_id"]], index=ids, dtype="str")
        host.insert(0, "platform_user", who)
    host.insert(0, "hour", pd.Series([f"h{h:02d}" for h in clicks["hour"]], index=ids, dtype="str"))
    host.insert(0, "placement", clicks["placement"].astype("str").to_numpy())
    host["placement"] = host["placement"].astype("str")
    return _views(name or f"synthetic-ads-seed{data.config.seed}", interactions, items, host)
