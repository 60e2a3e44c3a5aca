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

Scoring a new click (:func:`score_clicks`): the platform computes the click's partials
``z_H, e_H`` from its saved half (``HeteroFMHost.load(...).export_partials(ids, features)``;
``fedrec ads partials``) and sends them; the advertiser joins them with its own terms. The advertiser
thus learns, per scored click, the two numbers per factor the platform's half gives it - as during
training (docs/SECURITY.md).
"""

from __future__ import annotations

import logging
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

__all__ = ["MODEL_DEFAULTS", "RECENT", "ConversionSplit", "conversion_model", "score_clicks",
           "split_for_training"]

#: what the recent clicks at the cut-off become (module docstring)
RECENT = ("drop", "holdout", "keep_positives")

#: the ``[model]`` table of the conversion model (both parties; HeteroFMConfig fields). Few large batches:
#: label DP's noise per release is fixed while the signal grows with the batch
#: (benchmarks/results/leakage.md). ``validation = "none"`` keeps ε a formal bound for the whole training.
MODEL_DEFAULTS: dict[str, Any] = {
    "objective": "logistic", "use_user_id": False, "use_history": False, "use_history_length": False,
    "n_factors": 4, "lr": 0.05, "batch_size": 4096, "epochs": 3, "validation": "none",
}


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
                       recent: Literal["drop", "holdout", "keep_positives"] = "drop") -> ConversionSplit:
    """The advertiser / platform views for training at ``cutoff`` (module docstring). Without ``cutoff``
    every labelled click trains (labels taken as final: e.g. a log labelled long after its last click)."""
    if recent not in RECENT:
        raise ValueError(f"recent must be one of {RECENT}, got {recent!r}")
    if clicks.labels == "none":
        raise ValueError(f"{clicks.source}: the clicks carry no conversion labels yet; attribute the "
                         "conversions first (fedrec ads prepare --conversions FILE --window 7D)")
    _, platform = vertical_views(clicks)
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
