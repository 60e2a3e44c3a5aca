"""Federated advertising (DESIGN §4.4): click logs with conversions, attribution and the delay cut
(:mod:`fedrec.ads.data`, :mod:`fedrec.ads.readers`, :mod:`fedrec.ads.attribution`), conversions returned to
the platform under differential privacy with a persisted budget (:mod:`fedrec.ads.returns`,
:mod:`fedrec.ads.budget`) and the platform's model on what it gets back (:mod:`fedrec.ads.platform_model`)."""

from fedrec.ads.attribution import AttributionReport, DelayReport, attribute, observable_labels
from fedrec.ads.budget import BudgetError, BudgetExceededError, PrivacyBudget, Release
from fedrec.ads.data import ClickLog, synthetic_funnel, vertical_views
from fedrec.ads.platform_model import PlatformLogit, fit_on_event_return, fit_on_reports, rr_prior_model
from fedrec.ads.readers import read_ali_ccp, read_click_log, read_conversions, read_talkingdata
from fedrec.ads.returns import (
    AggregateReport,
    EventReturn,
    aggregate_report,
    aggregate_reports,
    bound_contributions,
    return_randomized,
    return_staged_with_prior,
    return_with_prior,
    rr_debias,
    rr_flip_probability,
    rr_prior_table,
    rr_rate,
    rr_with_prior,
)

__all__ = [
    "AggregateReport", "AttributionReport", "BudgetError", "BudgetExceededError", "ClickLog", "DelayReport",
    "EventReturn", "PlatformLogit", "PrivacyBudget", "Release", "aggregate_report", "aggregate_reports",
    "attribute", "bound_contributions", "fit_on_event_return", "fit_on_reports", "observable_labels",
    "read_ali_ccp", "read_click_log", "read_conversions", "read_talkingdata", "return_randomized",
    "return_staged_with_prior", "return_with_prior", "rr_debias", "rr_flip_probability", "rr_prior_model",
    "rr_prior_table", "rr_rate", "rr_with_prior", "synthetic_funnel", "vertical_views",
]
