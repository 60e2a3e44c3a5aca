"""The conversion model: the vertical logistic FM of :mod:`fedrec.protocols.hetero_fm` on ad clicks.

Parties (DESIGN §4.4): the **advertiser** is the protocol's *guest* (the conversion labels, the advertised
``campaign``/app and its own campaign columns, and the only CKKS key); the **ad platform** is the *host*
(what it logged about each click: TalkingData ``ip, device, os, channel`` and the click ``hour``; the
synthetic funnel's placement, hour, platform user and user features). One click is one protocol "user"
(:mod:`fedrec.data.ads_split`), so PSI aligns click ids: the platform learns which of its clicks the
advertiser holds (all of the campaign's clicks it reported), never which converted. The model is::

    P(convert | click) = σ(z),   z = z_G(campaign) + z_H(x_click) + <e_G(campaign), e_H(x_click)>

trained with the logistic loss; the platform's half steps on its own aggregated gradient, released under
**label DP** (on by default, ε = 2 for the whole training: ``fedrec.protocols.hetero_fm.label_dp``).
The guest's per-user fields (click id, history) carry nothing for one-click "users" and are off
(:data:`MODEL_DEFAULTS`).

**Delay** (:func:`split_for_training`). At a training cut-off ``T`` a click newer than ``T - window`` has not
had its whole attribution window: "not converted yet" is not a negative. ``recent`` says what happens to
those clicks (:func:`fedrec.ads.attribution.observable_labels`):

* ``"drop"`` (default): left out of training; the kept labels are final.
* ``"holdout"``: left out of training, and returned as :attr:`ConversionSplit.holdout` (unlabelled pairs)
  for the advertiser to score after training (the job's ``[data] predict``) - e.g. to bid on them now,
  or to evaluate once their window has passed.
* ``"keep_positives"``: recent clicks that already converted stay as positives (more positives, biased
  towards fast converters); the unconverted recent clicks are left out.

**Platform features** (:func:`platform_features`, applied by :func:`split_for_training`). Under label DP
every column the platform releases a gradient for gets the same noise, whatever its number of clicks; a
value seen on a handful of clicks (most TalkingData ips: 34,857 values on 100k clicks, none with 5
conversions) can only learn noise, and the optimizer turns that noise into a random weight on every click
carrying it. So the platform pools the values of each categorical column seen on fewer than
``min_clicks`` of its clicks into one ``"<rare>"`` level, and replaces the identity column ``ip`` by what
it says that a level cannot: how many clicks it made (``ip_clicks``, a power-of-two bucket). Both are
computed from the platform's own log, without labels. Measured on validation folds
(``benchmarks/results/ads.md``, "Where the federated model loses").

Scoring a new click (:func:`score_clicks`): the platform computes the click's partials
``z_H, e_H`` from its saved half (``HeteroFMHost.load(...).export_partials(ids, features)``;
``fedrec ads partials``) and sends them; the advertiser joins them with its own terms. The advertiser
thus learns, per scored click, the two numbers per factor the platform's half gives it - as during
training (docs/SECURITY.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from fedrec.ads.attribution import DelayReport, observable_labels
from fedrec.ads.data import ClickLog, vertical_views

if TYPE_CHECKING:
    from fedrec.data.partition import GuestView, HostView
    from fedrec.models.fm import FactorizationMachine
    from fedrec.models.vertical import HostPartials

log = logging.getLogger(__name__)

__all__ = ["MODEL_DEFAULTS", "PLATFORM_MIN_CLICKS", "RARE", "RECENT", "ConversionSplit", "conversion_model",
           "platform_defaults", "platform_features", "score_clicks", "split_for_training"]

#: the level a platform value seen on fewer than ``min_clicks`` clicks is pooled into
RARE = "<rare>"
#: the default ``min_clicks`` of :func:`platform_features` (chosen on validation folds)
PLATFORM_MIN_CLICKS = 20

#: what the recent clicks at the cut-off become (module docstring)
RECENT = ("drop", "holdout", "keep_positives")

#: the ``[model]`` table of the conversion model (both parties; HeteroFMConfig fields). Few large batches:
#: label DP's noise per epoch grows with the number of batches (each is one release, calibrated for all of
#: them) while the signal does not (benchmarks/results/ads.md: one batch per epoch is best; 16384 clicks
#: keeps a CKKS message of a batch under the transport's 64 MiB). A light L2 (chosen on validation: the
#: FM's L2 is per occurrence, so 0.01 held a campaign with a 0.2% rate far from its log-odds). The label
#: term is clipped alone (half the noise for the same ε; :mod:`fedrec.protocols.hetero_fm.label_dp`).
#: ``validation = "none"`` keeps ε a formal bound for the whole training.
MODEL_DEFAULTS: dict[str, Any] = {
    "objective": "logistic", "use_user_id": False, "use_history": False, "use_history_length": False,
    "n_factors": 4, "lr": 0.05, "batch_size": 16384, "epochs": 3, "validation": "none",
    "l2_linear": 1e-3, "l2_factors": 1e-2, "dp_guest_clip_part": "label",
}


def platform_defaults(clicks: ClickLog) -> tuple[int, tuple[str, ...]]:
    """``(min_clicks, count_columns)`` of :func:`platform_features` by default: on TalkingData
    (:data:`PLATFORM_MIN_CLICKS`, ``("ip",)``: ip is who clicked, as an address), where it was chosen on
    validation folds; other logs are kept as logged (``(1, ())``) until measured."""
    if clicks.meta.get("kind") == "talkingdata" and "ip" in clicks.platform_columns:
        return PLATFORM_MIN_CLICKS, ("ip",)
    return 1, ()


def platform_features(features: pd.DataFrame, *, min_clicks: int = PLATFORM_MIN_CLICKS,
                      count_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The platform's click features as the conversion model uses them (module docstring): for each column
    of ``count_columns``, a new categorical ``<column>_clicks`` = ``"2^b"`` with ``b = ⌊log2 n⌋``, ``n`` the
    clicks of that value in ``features``; then every categorical column's values seen on fewer than
    ``min_clicks`` rows become :data:`RARE` (``min_clicks=1`` pools nothing). Numeric columns are kept.
    Label-free: a function of the platform's rows only."""
    if isinstance(min_clicks, bool) or not isinstance(min_clicks, int) or min_clicks < 1:
        raise ValueError(f"platform_features: min_clicks must be an integer >= 1, got {min_clicks!r}")
    missing = [c for c in count_columns if c not in features.columns]
    if missing:
        raise ValueError(f"platform_features: count column(s) {missing} are not platform columns "
                         f"{list(map(str, features.columns))}")
    out = features.copy()
    categorical = [c for c in out.columns if not pd.api.types.is_numeric_dtype(out[c].dtype)]
    for c in count_columns:
        if c not in categorical:
            raise ValueError(f"platform_features: count column {c!r} is numeric; expected a categorical id")
        n = out[c].map(out[c].value_counts()).to_numpy(dtype=np.float64)
        out[f"{c}_clicks"] = pd.Series(np.floor(np.log2(n)).astype(np.int64), index=out.index).map(
            lambda b: f"2^{b}").astype(out[c].dtype)
        categorical.append(f"{c}_clicks")
    if min_clicks > 1:
        for c in categorical:
            seen = out[c].map(out[c].value_counts())
            out[c] = out[c].where(seen.to_numpy() >= min_clicks, RARE)
    return out


def conversion_model(**overrides: Any) -> dict[str, Any]:
    """:data:`MODEL_DEFAULTS` with ``overrides`` (e.g. ``backend="ckks"``, ``dp_guest_epsilon=2``)."""
    unknown = set(overrides) - _config_fields()
    if unknown:
        raise ValueError(f"conversion_model: unknown model field(s) {sorted(unknown)}")
    return {**MODEL_DEFAULTS, **overrides}


def _config_fields() -> set[str]:
    from dataclasses import fields

    from fedrec.protocols.hetero_fm import HeteroFMConfig

    return {f.name for f in fields(HeteroFMConfig)}


@dataclass(frozen=True)
class ConversionSplit:
    """The two parties' training data and what was held back for the delay.

    ``advertiser``: the guest's interactions (``user_id`` = click id, ``item_id`` = campaign, ``rating`` =
    converted, ``timestamp``) and item features; ``platform``: the host's features of *every* click of the
    log (training, recent and later clicks: the platform logged them all; PSI aligns the training ones);
    ``holdout``: ``user_id, item_id, timestamp`` of the recent clicks to score (``recent="holdout"``),
    else empty; ``delay``: the cut-off's report (``None`` without a cut-off)."""

    advertiser: GuestView
    platform: HostView
    holdout: pd.DataFrame
    delay: DelayReport | None

    def summary(self) -> dict[str, Any]:
        g = self.advertiser.interactions
        return {"training_clicks": len(g), "training_conversions": int(g["rating"].sum()),
                "platform_clicks": len(self.platform.user_features),
                "platform_columns": list(map(str, self.platform.user_features.columns)),
                "holdout_clicks": len(self.holdout),
                "delay": None if self.delay is None else self.delay.to_dict()}


def split_for_training(clicks: ClickLog, *, cutoff: pd.Timestamp | str | None = None,
                       window: float | int | pd.Timedelta | str | None = None,
                       recent: Literal["drop", "holdout", "keep_positives"] = "drop",
                       min_clicks: int | None = None,
                       count_columns: Sequence[str] | None = None) -> ConversionSplit:
    """The advertiser / platform views for training at ``cutoff`` (module docstring). Without ``cutoff``
    every labelled click trains (labels taken as final: e.g. a log labelled long after its last click).
    The platform's features go through :func:`platform_features` over all of its clicks (``min_clicks``,
    ``count_columns``; ``None``: :func:`platform_defaults`; ``min_clicks=1, count_columns=()`` keeps them
    as logged)."""
    if recent not in RECENT:
        raise ValueError(f"recent must be one of {RECENT}, got {recent!r}")
    if clicks.labels == "none":
        raise ValueError(f"{clicks.source}: the clicks carry no conversion labels yet; attribute the "
                         "conversions first (fedrec ads prepare --conversions FILE --window 7D)")
    _, platform = vertical_views(clicks)
    floor, counted = platform_defaults(clicks)
    floor = floor if min_clicks is None else min_clicks
    counted = counted if count_columns is None else tuple(count_columns)
    if floor != 1 or counted:
        from fedrec.data.partition import HostView

        platform = HostView(platform.name, platform_features(platform.user_features, min_clicks=floor,
                                                             count_columns=counted))
    delay: DelayReport | None = None
    train_log = clicks
    holdout = pd.DataFrame({"user_id": pd.Series(dtype=np.int64), "item_id": pd.Series(dtype=object),
                            "timestamp": pd.Series(dtype=np.int64)})
    if cutoff is not None:
        train_log, delay = observable_labels(clicks, cutoff, window=window,
                                             recent="drop" if recent == "holdout" else recent)
        if recent == "holdout":
            cut = train_log.cutoff
            assert cut is not None
            t = clicks.frame["time"]
            recent_mask = ((t <= cut) & (t > cut - pd.Timedelta(seconds=delay.window_seconds))).to_numpy()
            if recent_mask.any():
                g_recent, _ = vertical_views(clicks.take(recent_mask))
                holdout = g_recent.interactions.loc[:, ["user_id", "item_id", "timestamp"]]
                holdout = holdout.reset_index(drop=True)
    if train_log.n_clicks == 0:
        raise ValueError(f"{clicks.source}: no click is old enough to train on at cut-off {cutoff} "
                         f"(window {window}); move the cut-off later or shorten the window")
    advertiser, _ = vertical_views(train_log)
    log.info("conversion model data: %d training clicks (%d conversions), %d platform rows, %d held out",
             len(advertiser.interactions), int(advertiser.interactions["rating"].sum()),
             len(platform.user_features), len(holdout))
    return ConversionSplit(advertiser, platform, holdout, delay)


def score_clicks(guest: FactorizationMachine, pairs: pd.DataFrame, partials: HostPartials) -> np.ndarray:
    """``P(convert)`` per row of ``pairs`` (``user_id`` = click id, ``item_id`` = campaign) from the
    advertiser's half and the platform's partials of those clicks (``partials`` matched by click id; a
    click without partials is scored with the advertiser's terms alone and counted in the log)."""
    from fedrec.models.vertical import join_pairs

    if guest.config.objective != "logistic":
        raise ValueError(f"score_clicks: a conversion model is logistic, this one is "
                         f"{guest.config.objective!r}")
    terms = guest.party_terms(pairs)["guest"]
    rows = partials.take(pairs["user_id"].tolist())
    assert rows.found is not None
    missing = int((~rows.found).sum())
    if missing:
        log.warning("%d of %d click(s) have no platform partials: scored with the advertiser's terms only",
                    missing, len(pairs))
    return np.asarray(guest.finish(join_pairs(terms.z, terms.e, rows)), dtype=np.float64)
