"""Click logs with conversions: one typed :class:`ClickLog` from the real logs, a generic file and the
synthetic funnel, and the advertiser / platform views of it.

A :class:`ClickLog` is one row per ad click, indexed by ``click_id`` (int64, unique)::

    user_id          str       who clicked (TalkingData: the ip; the synthetic funnel: the user)
    time             datetime64[ns, UTC]; all NaT for a log without times (the Ali-CCP sample)
    campaign         str       what was advertised (TalkingData: app; Ali-CCP: item 205; synthetic: campaign)
    converted        int8      1 when a conversion is attributed to the click
    conversion_time  datetime64[ns, UTC]; the first attributed conversion, NaT without one (or untimed)
    <advertiser columns>       the advertiser's own description of the ad (e.g. campaign_category)
    <platform columns>         what the ad platform logged: channel / device / os / hour / ... (categorical
                               columns are str, numeric ones float64)

An in-memory ``ClickLog`` is checked on construction (:func:`check_click_log`; errors name the source,
the click id and the column). The file readers (:mod:`fedrec.ads.readers`) check their files the way the
rest of the data layer does, naming file, line and column.

Sources (the first three in :mod:`fedrec.ads.readers`):

* ``read_talkingdata``: ``load_talkingdata`` + ``talkingdata_split`` of :mod:`fedrec.data.ads_split`; the
  label is TalkingData's own post-click attribution (``is_attributed``, ``attributed_time``), kept as
  given; platform columns ``ip, device, os, channel`` and the click ``hour`` (``"h09"``, UTC).
* ``read_ali_ccp``: the Ali-CCP sample (``click, purchase``, 23 sparse field ids, 8 dense weights); the
  clicked impressions, ``purchase`` as the post-click conversion; no times.
* ``read_click_log``: fedrec's own format, CSV/TSV/Parquet with ``click_id, user_id, time, campaign,
  converted`` (+ optional ``conversion_time``) and any dimension columns; times ISO-8601 or Unix seconds.
* :func:`synthetic_funnel` (here): the synthetic funnel's clicks *without* labels and its conversions as
  separate events (user, campaign, time; a delay after the click), for
  :func:`fedrec.ads.attribution.attribute` to link back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from fedrec.data.ads_split import synthetic_ads_split, talkingdata_split
from fedrec.data.partition import GuestView, HostView
from fedrec.data.schema import DataValidationError, where

if TYPE_CHECKING:
    from fedrec.data.synthetic import SyntheticData

__all__ = ["CORE_COLUMNS", "ClickLog", "TIME_DTYPE", "check_click_log", "synthetic_funnel", "vertical_views"]

CORE_COLUMNS: tuple[str, ...] = ("user_id", "time", "campaign", "converted", "conversion_time")
TIME_DTYPE: Final = "datetime64[ns, UTC]"
_MISSING = ("", "nan", "NaN", "NAN", "NA", "<NA>", "null", "NULL", "None")


@dataclass(frozen=True)
class ClickLog:
    """Clicks with their conversion labels (see the module docstring for the columns).

    ``labels`` says where ``converted`` comes from: ``"source"`` (the log's own attribution, kept),
    ``"attributed"`` (:func:`~fedrec.ads.attribution.attribute` with ``window_seconds``), ``"none"`` (no
    conversions joined yet). ``cutoff``: labels are what was observable at that time
    (:func:`~fedrec.ads.attribution.observable_labels`)."""

    frame: pd.DataFrame
    source: str
    advertiser_columns: tuple[str, ...] = ()
    platform_columns: tuple[str, ...] = ()
    labels: str = "source"
    window_seconds: int | None = None
    cutoff: pd.Timestamp | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_click_log(self.frame, self.source, self.advertiser_columns, self.platform_columns)
        if self.labels not in ("source", "attributed", "none"):
            raise ValueError(f"ClickLog.labels must be 'source', 'attributed' or 'none', got {self.labels!r}")

    @property
    def n_clicks(self) -> int:
        return len(self.frame)

    @property
    def n_conversions(self) -> int:
        return int(self.frame["converted"].sum())

    @property
    def timed(self) -> bool:
        """Whether clicks carry times (needed by attribution and the delay cut)."""
        return bool(len(self.frame)) and bool(self.frame["time"].notna().all())

    def platform_frame(self) -> pd.DataFrame:
        """The platform's columns (indexed by click id): what the platform-side model may use."""
        return self.frame.loc[:, list(self.platform_columns)]

    def take(self, mask_or_index: np.ndarray | pd.Index) -> ClickLog:
        """The clicks selected by a boolean mask or an index of click ids (same metadata)."""
        m = np.asarray(mask_or_index)
        frame = self.frame.loc[m] if m.dtype == bool else self.frame.loc[pd.Index(m)]
        return replace(self, frame=frame)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "clicks": self.n_clicks, "conversions": self.n_conversions,
                "users": int(self.frame["user_id"].nunique()),
                "campaigns": int(self.frame["campaign"].nunique()),
                "labels": self.labels, "window_seconds": self.window_seconds,
                "cutoff": None if self.cutoff is None else str(self.cutoff),
                "advertiser_columns": list(self.advertiser_columns),
                "platform_columns": list(self.platform_columns)}


def _raise(source: str, row: Any, column: str | None, value: Any, expected: str, reason: str) -> None:
    val = "" if value is None else f": value {value!r}"
    raise DataValidationError(f"{where(source, row, 'index', column)}{val}; expected {expected} [{reason}]",
                              source=source, row=row, column=column, value=value, reason=reason)


def check_click_log(frame: pd.DataFrame, source: str, advertiser_columns: Sequence[str] = (),
                    platform_columns: Sequence[str] = ()) -> None:
    """Raise :class:`DataValidationError` (row = click id) unless ``frame`` is a valid click log."""
    if frame.index.name != "click_id" or not pd.api.types.is_integer_dtype(frame.index.dtype):
        raise DataValidationError(f"{source}: a click log is indexed by integer 'click_id', got "
                                  f"{frame.index.name!r} ({frame.index.dtype})", source=source,
                                  reason="bad_index")
    dims = [*advertiser_columns, *platform_columns]
    missing = [c for c in (*CORE_COLUMNS, *dims) if c not in frame.columns]
    if missing or len(set(dims)) != len(dims) or set(dims) & set(CORE_COLUMNS):
        raise DataValidationError(f"{source}: click log columns {list(frame.columns)}; need "
                                  f"{list(CORE_COLUMNS)} and distinct dimension columns {dims} (missing "
                                  f"{missing})", source=source, column=missing[0] if missing else None,
                                  reason="missing_column")
    ids = frame.index
    dup = ids.duplicated()
    if dup.any():
        first = ids[dup][0].item()
        _raise(source, first, "click_id", first, "each click_id once", "duplicate_id")
    for c in ("time", "conversion_time"):
        if str(frame[c].dtype) != TIME_DTYPE:
            raise DataValidationError(f"{source}: column {c!r} is {frame[c].dtype}, expected {TIME_DTYPE}",
                                      source=source, column=c, reason="bad_dtype")
    for c in ("user_id", "campaign", *[d for d in dims if not pd.api.types.is_numeric_dtype(frame[d].dtype)]):
        bad = frame[c].isna().to_numpy() | frame[c].astype("str").isin(_MISSING).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            _raise(source, ids[i].item(), c, frame[c].iloc[i], "a non-empty value (no NaN)", "value_missing")
    for c in [d for d in dims if pd.api.types.is_numeric_dtype(frame[d].dtype)]:
        bad = ~np.isfinite(frame[c].to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.argmax(bad))
            _raise(source, ids[i].item(), c, frame[c].iloc[i], "a finite number", "value_not_finite")
    conv = frame["converted"]
    bad = ~conv.isin([0, 1]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        _raise(source, ids[i].item(), "converted", conv.iloc[i], "0 or 1", "label_invalid")
    t, ct = frame["time"], frame["conversion_time"]
    timed = t.notna()
    if timed.any() and not timed.all():
        i = int(np.argmax(~timed.to_numpy()))
        _raise(source, ids[i].item(), "time", None, "a click time on every click (or on none)",
               "time_missing")
    bad = (ct.notna() & (conv == 0)).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        _raise(source, ids[i].item(), "conversion_time", ct.iloc[i], "NaT when converted is 0",
               "conversion_time_inconsistent")
    if timed.all() and len(frame):
        bad = ((conv == 1) & ct.isna()).to_numpy() | (ct < t).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            i = int(np.argmax(bad))
            _raise(source, ids[i].item(), "conversion_time", ct.iloc[i],
                   "a conversion time at or after the click when converted is 1",
                   "conversion_time_inconsistent")


def _seconds_to_time(secs: Any) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(secs, dtype=np.int64), unit="s", utc=True)).astype(TIME_DTYPE)


def _time_from_int64(values: pd.Series) -> np.ndarray:
    """Nullable Int64 Unix seconds -> datetime64 values (NaT for <NA>)."""
    out = pd.Series(pd.NaT, index=values.index, dtype=TIME_DTYPE)
    ok = values.notna().to_numpy()
    if ok.any():
        out.iloc[np.flatnonzero(ok)] = _seconds_to_time(values[ok].astype("int64")).to_numpy()
    return out.to_numpy()


def _as_time(values: Any) -> Any:
    """Any datetime-like column (naive = UTC) as a tz-aware :data:`TIME_DTYPE` array."""
    return pd.to_datetime(pd.Series(values).reset_index(drop=True), utc=True).astype(TIME_DTYPE).array


def _make_log(index: np.ndarray, core: Mapping[str, Any], dims: pd.DataFrame, source: str,
              advertiser: Sequence[str], platform: Sequence[str], **kw: Any) -> ClickLog:
    frame = pd.DataFrame({"user_id": np.asarray(core["user_id"]).astype(str),
                          "time": _as_time(core["time"]),
                          "campaign": np.asarray(core["campaign"]).astype(str),
                          "converted": np.asarray(core["converted"]).astype(np.int8),
                          "conversion_time": _as_time(core["conversion_time"])},
                         index=pd.Index(np.asarray(index, dtype=np.int64), name="click_id"))
    for c in dims.columns:
        col = dims[c].to_numpy()
        frame[c] = col.astype(np.float64) if pd.api.types.is_numeric_dtype(dims[c].dtype) else \
            pd.Series(col.astype(str), dtype="str").to_numpy()
    for c in ("user_id", "campaign", *[c for c in dims.columns if frame[c].dtype == object]):
        frame[c] = frame[c].astype("str")
    return ClickLog(frame, source, tuple(advertiser), tuple(platform), **kw)

# --------------------------------------------------------------------------------------------- synthetic
def synthetic_funnel(data: SyntheticData, *, organic_per_click: float = 0.0, seed: int = 0
                     ) -> tuple[ClickLog, pd.DataFrame]:
    """The synthetic funnel as the two parties log it: ``(clicks, conversions)``.

    ``clicks``: a :class:`ClickLog` of the clicked impressions with ``labels="none"`` (click id =
    ``impression_id``; advertiser column ``campaign_category``; platform columns those of
    ``synthetic_ads_split``'s host view: ``placement, hour, platform_user`` and the user's features).
    ``conversions``: one event per generated conversion (``user_id, campaign, time, value=1``; the
    generator's delay ``Exp(20 s) + LogNormal(log(conversion_delay_hours), 1)`` after the click), in time
    order, plus ``organic_per_click x clicks`` organic conversions of random users / campaigns at uniform
    times (no click behind them; ``seed`` draws them). The generator's click-conversion link is not passed
    on: :func:`fedrec.ads.attribution.attribute` recovers it."""
    g, h = synthetic_ads_split(data)
    ads = data.ads.set_index("impression_id")
    ids = g.interactions["user_id"].to_numpy()
    rows = ads.loc[ids]
    camp = g.item_features["campaign_category"] if g.item_features is not None else None
    dims = h.user_features.loc[ids].reset_index(drop=True)
    adv = pd.DataFrame({"campaign_category": camp.loc[rows["campaign_id"]].to_numpy()}) if camp is not None \
        else pd.DataFrame(index=range(len(ids)))
    nat = pd.Series(pd.NaT, index=range(len(ids)), dtype=TIME_DTYPE)
    core = {"user_id": rows["user_id"].to_numpy(), "time": _seconds_to_time(rows["impression_ts"]).to_numpy(),
            "campaign": rows["campaign_id"].to_numpy(), "converted": np.zeros(len(ids), np.int8),
            "conversion_time": nat}
    clicks = _make_log(ids, core, pd.concat([adv, dims], axis=1), f"synthetic-ads-seed{data.config.seed}",
                       tuple(adv.columns), tuple(dims.columns), labels="none", meta={"kind": "synthetic"})
    conv = rows.loc[rows["conversion"].to_numpy() == 1]
    events = pd.DataFrame({"user_id": conv["user_id"].astype(str).to_numpy(),
                           "campaign": conv["campaign_id"].astype(str).to_numpy(),
                           "time": _seconds_to_time(conv["conversion_ts"].astype("int64")).to_numpy()})
    n_org = int(round(organic_per_click * len(ids)))
    if n_org:
        rng = np.random.default_rng(seed)
        cfg = data.config
        t = cfg.start_ts + np.floor(rng.random(n_org) * cfg.horizon_days * 86_400).astype(np.int64)
        who = data.truth.user_ids
        org = pd.DataFrame({"user_id": rng.choice(who, n_org).astype(str),
                            "campaign": (rng.integers(0, cfg.n_campaigns, n_org) + 1).astype(str),
                            "time": _seconds_to_time(t).to_numpy()})
        events = pd.concat([events, org], ignore_index=True)
    events = events.sort_values("time", kind="stable").reset_index(drop=True)
    events["value"] = 1.0
    events.index = pd.Index(np.arange(1, len(events) + 1, dtype=np.int64), name="conversion_id")
    for c in ("user_id", "campaign"):
        events[c] = events[c].astype("str")
    return clicks, events


# --------------------------------------------------------------------------------------------- views
def vertical_views(labelled: ClickLog, *, name: str | None = None) -> tuple[GuestView, HostView]:
    """The advertiser (guest) and platform (host) views of a labelled click log, in the vertical FM's shape
    of :mod:`fedrec.data.ads_split` (one click = one protocol user): the guest gets ``user_id = click id,
    item_id = campaign, rating = converted, timestamp = click time`` and, as item features, the advertiser
    columns (they must be constant per campaign); the host gets the platform columns by click id.

    A TalkingData log goes through ``talkingdata_split`` itself (identical views), plus the click hour."""
    if labelled.labels == "none":
        raise ValueError(f"vertical_views: {labelled.source} has no labels yet; attribute conversions first")
    if not labelled.timed:
        raise ValueError(f"vertical_views: {labelled.source} has no click times (the vertical FM's rows need "
                         "one)")
    f = labelled.frame
    secs = ((f["time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    view_name = name or Path(labelled.source).stem
    if labelled.meta.get("kind") == "talkingdata":
        clicks = pd.DataFrame({c: f[c].astype("int64").to_numpy() for c in ("ip", "device", "os", "channel")},
                              index=f.index)
        clicks["app"] = f["campaign"].astype("int64").to_numpy()
        clicks["click_time"], clicks["is_attributed"] = secs, f["converted"].to_numpy(dtype=np.int64)
        guest, td_host = talkingdata_split(clicks, name=view_name)
        td_host.user_features["hour"] = f["hour"].to_numpy()
        return guest, td_host
    camp = f["campaign"]
    item = camp.astype("int64") if camp.str.fullmatch(r"-?[0-9]{1,18}").all() else camp
    inter = pd.DataFrame({"user_id": f.index.to_numpy(), "item_id": item.to_numpy(),
                          "rating": f["converted"].to_numpy(dtype=np.float64), "timestamp": secs})
    items = None
    if labelled.advertiser_columns:
        adv = f.loc[:, list(labelled.advertiser_columns)].assign(item_id=item.to_numpy())
        varying = [c for c in labelled.advertiser_columns if (adv.groupby("item_id")[c].nunique() > 1).any()]
        if varying:
            raise ValueError(f"vertical_views: advertiser column(s) {varying} vary within a campaign; the "
                             "guest's item features must be one row per campaign")
        items = adv.drop_duplicates("item_id").set_index("item_id").sort_index()
    host = f.loc[:, list(labelled.platform_columns)].copy()
    host.index = pd.Index(f.index.to_numpy(), name="user_id")
    return GuestView(view_name, inter, items, (0.0, 1.0)), HostView(view_name, host)
