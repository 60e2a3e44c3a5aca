"""Last-click attribution within a window, and the labels observable at a training cut-off.

**Attribution** (:func:`attribute`). A conversion event ``(user u, campaign c, time t)`` belongs to the
*last* click ``k`` with ``user_k = u`` and ``campaign_k = c`` (``by=("user_id",)``: any campaign of the
user) and ``t - window <= time_k <= t``; a conversion without such a click stays unattributed (organic,
or too late). Clicks at the same second are ordered by click id (the larger wins). A click's label is
``converted = 1`` when at least one conversion is attributed to it, ``conversion_time`` the first of
them; ``n_conversions`` counts them. TalkingData and Ali-CCP come labelled by their own post-click
attribution and keep it; the synthetic funnel emits conversions as separate delayed events, which this
step links back (:func:`fedrec.ads.data.synthetic_funnel`).

**Delay** (:func:`observable_labels`). A model trained at cut-off ``T`` sees the clicks up to ``T`` and
the conversions up to ``T``. A click at ``time > T - window`` has not had its whole window yet: not
having converted *so far* does not make it a negative. Such recent clicks are excluded:

* ``recent="drop"`` (default): every click after ``T - window`` is left out, converted or not. Each kept
  click had its full window, so the kept labels are final and unbiased (the conversion rate of the kept
  clicks is the true one).
* ``recent="keep_positives"``: only the recent clicks *not yet* converted are left out (they are not
  negatives); recent clicks already converted stay as positives. More positives, but the kept recent
  clicks are selected on their outcome (their conversion rate is inflated).

Conversions after ``T`` are unknown at ``T``: a click converted only after ``T`` counts as not converted
(and is recent, hence excluded, unless it is older than the window - then its conversion came too late to
be attributed anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from fedrec.ads.data import TIME_DTYPE, ClickLog

log = logging.getLogger(__name__)

__all__ = ["AttributionReport", "DelayReport", "attribute", "observable_labels", "window_seconds"]


def window_seconds(window: float | int | pd.Timedelta | str) -> int:
    """A window as whole seconds: a number of seconds, a ``Timedelta`` or a string like ``"7D"``."""
    try:
        td = window if isinstance(window, pd.Timedelta) else (
            pd.Timedelta(window) if isinstance(window, str) else pd.Timedelta(seconds=float(window)))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"window: expected seconds, a Timedelta or a string like '7D', got "
                         f"{window!r}") from exc
    secs = int(td.total_seconds())
    if secs <= 0:
        raise ValueError(f"window must be positive, got {window!r}")
    return secs


@dataclass(frozen=True)
class AttributionReport:
    conversions: int
    attributed: int
    unattributed: int
    converted_clicks: int
    clicks_with_several: int
    window_seconds: int
    by: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, by=list(self.by))


def _need_times(log_: ClickLog, what: str) -> None:
    if not log_.timed:
        raise ValueError(f"{what}: {log_.source} has no click times; attribution windows and delay cut-offs "
                         "need them (this log's labels are the source's own)")


def attribute(clicks: ClickLog, conversions: pd.DataFrame, *, window: float | int | pd.Timedelta | str,
              by: Sequence[str] = ("user_id", "campaign")) -> tuple[ClickLog, AttributionReport]:
    """Label ``clicks`` with the ``conversions`` attributed to them (see the module docstring).

    ``conversions``: ``user_id``, ``campaign`` (str) and ``time`` (datetime64 UTC) per event (the index
    names the events; :func:`fedrec.ads.data.read_conversions` reads such a file). Returns the labelled
    log (``labels="attributed"``, ``window_seconds``; a column ``n_conversions`` is added) and counts."""
    _need_times(clicks, "attribute")
    secs = window_seconds(window)
    keys = list(by)
    if not keys or not set(keys) <= {"user_id", "campaign"} or "user_id" not in keys:
        raise ValueError(f"attribute: by must be ('user_id',) or ('user_id', 'campaign'), got {by!r}")
    missing = [c for c in (*keys, "time") if c not in conversions.columns]
    if missing:
        raise ValueError(f"attribute: conversions lack column(s) {missing}; have {list(conversions.columns)}")
    ev = pd.DataFrame({k: conversions[k].astype("str").to_numpy() for k in keys})
    ev["time"] = pd.to_datetime(conversions["time"], utc=True).astype(TIME_DTYPE).to_numpy()
    if ev["time"].isna().any():
        raise ValueError("attribute: a conversion has no time (NaT)")
    ev["event"] = np.arange(len(ev))
    f = clicks.frame
    cl = pd.DataFrame({k: f[k].astype("str").to_numpy() for k in keys})
    cl["time"], cl["click_id"] = f["time"].to_numpy(), f.index.to_numpy()
    cl = cl.sort_values(["time", "click_id"], kind="stable")
    ev_sorted = ev.sort_values("time", kind="stable")
    merged = pd.merge_asof(ev_sorted, cl.rename(columns={"time": "click_time"}), left_on="time",
                           right_on="click_time", by=keys, direction="backward",
                           tolerance=pd.Timedelta(seconds=secs), allow_exact_matches=True)
    hit = merged.loc[merged["click_id"].notna()]
    per_click = hit.groupby(hit["click_id"].astype(np.int64))["time"].agg(["min", "size"])
    frame = f.copy()
    n = per_click["size"].reindex(f.index, fill_value=0).to_numpy(dtype=np.int64)
    frame["converted"] = (n > 0).astype(np.int8)
    first = pd.Series(pd.NaT, index=f.index, dtype=TIME_DTYPE)
    if len(per_click):
        first.loc[per_click.index] = per_click["min"].astype(TIME_DTYPE).to_numpy()
    frame["conversion_time"] = first.array
    frame["n_conversions"] = n
    report = AttributionReport(len(ev), len(hit), len(ev) - len(hit), int((n > 0).sum()), int((n > 1).sum()),
                               secs, tuple(keys))
    log.info("attribution (%s, window %d s): %d of %d conversions attributed to %d clicks", "+".join(keys),
             secs, report.attributed, report.conversions, report.converted_clicks)
    return replace(clicks, frame=frame, labels="attributed", window_seconds=secs), report


@dataclass(frozen=True)
class DelayReport:
    cutoff: str
    window_seconds: int
    recent: str
    clicks_in: int
    after_cutoff: int
    converted_after_cutoff: int
    recent_excluded: int
    recent_positives_kept: int
    kept: int
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def observable_labels(log_: ClickLog, cutoff: pd.Timestamp | str, *,
                      window: float | int | pd.Timedelta | str | None = None,
                      recent: Literal["drop", "keep_positives"] = "drop") -> tuple[ClickLog, DelayReport]:
    """The clicks and labels a model trained at ``cutoff`` may use (see the module docstring).

    ``window``: the attribution window (default: the one ``log_`` was attributed with; required for a
    log labelled by its source, e.g. TalkingData, whose window is not recorded)."""
    _need_times(log_, "observable_labels")
    if recent not in ("drop", "keep_positives"):
        raise ValueError(f"observable_labels: recent must be 'drop' or 'keep_positives', got {recent!r}")
    if window is None and log_.window_seconds is None:
        raise ValueError(f"observable_labels: {log_.source} records no attribution window; pass window=")
    secs = window_seconds(window) if window is not None else int(log_.window_seconds or 0)
    cut = pd.Timestamp(cutoff)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    f = log_.frame
    before = (f["time"] <= cut).to_numpy()
    conv_time = f["conversion_time"]
    seen = (f["converted"].to_numpy() == 1) & (conv_time <= cut).fillna(False).to_numpy(dtype=bool)
    late = (f["converted"].to_numpy() == 1) & ~seen & before
    is_recent = before & (f["time"] > cut - pd.Timedelta(seconds=secs)).to_numpy()
    exclude = is_recent if recent == "drop" else is_recent & ~seen
    keep = before & ~exclude
    frame = f.loc[keep].copy()
    frame["converted"] = seen[keep].astype(np.int8)
    frame["conversion_time"] = conv_time.where(pd.Series(seen, index=f.index)).loc[keep].array
    if "n_conversions" in frame:
        frame["n_conversions"] = np.where(seen[keep], frame["n_conversions"].to_numpy(), 0)
    pos = int(frame["converted"].sum())
    kept_pos = int((is_recent & seen).sum()) if recent == "keep_positives" else 0
    report = DelayReport(str(cut), secs, recent, len(f), int((~before).sum()), int(late.sum()),
                         int(exclude.sum()), kept_pos, int(keep.sum()), pos, int(keep.sum()) - pos)
    log.info("labels at %s (window %d s, recent=%s): %d clicks kept (%d positive), %d recent excluded, %d "
             "after the cut-off", cut, secs, recent, report.kept, pos, report.recent_excluded,
             report.after_cutoff)
    return replace(log_, frame=frame, cutoff=cut, window_seconds=secs), report
