"""Federated advertising (DESIGN §4.4): click logs with conversions, attribution and the delay cut
(:mod:`fedrec.ads.data`, :mod:`fedrec.ads.attribution`) and the platform's conversion model on its own
features (:mod:`fedrec.ads.platform_model`)."""

from fedrec.ads.attribution import AttributionReport, DelayReport, attribute, observable_labels
from fedrec.ads.data import (
    ClickLog,
    read_ali_ccp,
    read_click_log,
    read_conversions,
    read_talkingdata,
    synthetic_funnel,
    vertical_views,
)
from fedrec.ads.platform_model import PlatformLogit

__all__ = [
    "AttributionReport", "ClickLog", "DelayReport", "PlatformLogit", "attribute", "observable_labels",
    "read_ali_ccp", "read_click_log", "read_conversions", "read_talkingdata", "synthetic_funnel",
    "vertical_views",
]
