"""The advertiser's refit: its own one-hot logistic regression on the campaign, with the federated model's
platform terms as one more column, fitted on its exact training labels.

Why (``benchmarks/results/ads.md``, TalkingData): under label DP the federated FM's platform half is noisy
and its campaign terms are trained beside that noise, so the FM as trained loses to the advertiser's own
logistic regression (0.932 against 0.9625 AUC). What the platform's half does know is in its terms::

    h(click) = z_H(x_click) + <e_G(campaign), e_H(x_click)>       (the platform's share of the logit)

and the advertiser can weigh them against its own campaign weights on the labels it holds::

    P(convert | click) = σ(b + w_campaign + γ h(click))          (:class:`CampaignRefit`)

fitted by :class:`~fedrec.ads.platform_model.PlatformLogit` (one-hot campaign + the numeric ``h``, L2 on
the summed loss). ``γ`` is learnt: a noisy platform half gets a small weight, a good one a large one; with
``h = 0`` (no platform terms) it is the advertiser's logistic regression alone (``advertiser_logit`` of
``benchmarks/ads.py``, which calls this module for both).

**What it reveals: nothing new.** The platform releases nothing for it and receives nothing: the
advertiser needs ``h`` of its training clicks, i.e. the platform's partials ``z_H, e_H`` of the aligned
training clicks at the end of training, which the guest receives for every batch during training anyway
(docs/SECURITY.md). The training job asks for them over the training channel before it ends
(``[ads] refit``, :mod:`training.hetero_fm_job`), exactly as ``[data] predict`` scoring does. Label DP's
ε is unchanged: the refit is the advertiser's post-processing of its own labels and what it was sent.

**No evaluation row in the fit.** The refit is fitted on the training clicks only (those the federated
model trained on); new clicks are scored with their partials (``fedrec ads predict``), and every AUC
reported of it (the benchmark's held-out folds, the demo's test period) is on clicks it never saw. Its L2,
with ``l2="auto"`` (the default), is chosen by stratified ``CV_FOLDS``-fold cross-validation *within* the
training clicks (:func:`choose_l2`: held-out log-loss on each fold, the grid :data:`L2_GRID`).

A campaign card (:mod:`fedrec.ads.acquisition`) of a refitted model carries ``b + w_c - γ·mean`` per
campaign, ``γ e_G(c)`` and ``host_scale = γ`` (the platform's ``z_H`` is scaled by it): the platform scores
its candidates with the refitted model without learning anything else about it.

The file (:func:`write_refit` / :func:`read_refit`, JSON, atomic, mode 0600)::

    {"format": "fedrec.ads.campaign_refit", "format_version": 1, "run_id": the training run,
     "gamma": γ, "default_offset": the logit offset of a campaign unseen in training,
     "campaigns": {"<campaign>": offset, ...}, "l2": chosen L2, "l2_choice": {grid, cv_log_loss, folds},
     "training": {"clicks", "conversions", "without_platform_terms"}}

with ``logit = offset(campaign) + γ h``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedrec.artifacts import ArtifactError, check_format, read_json, write_json_atomic

if TYPE_CHECKING:
    from fedrec.models.fm import FactorizationMachine
    from fedrec.models.vertical import HostPartials

log = logging.getLogger(__name__)

__all__ = ["CV_FOLDS", "L2_GRID", "REFIT_FORMAT", "REFIT_KINDS", "CampaignRefit", "check_l2", "choose_l2",
           "fit_campaign_logit", "platform_terms", "read_refit", "write_refit"]

REFIT_FORMAT, REFIT_VERSION = "fedrec.ads.campaign_refit", 1
#: ``[ads] refit`` values: ``"campaign"`` (this module) or ``"off"`` (the federated FM as trained)
REFIT_KINDS = ("campaign", "off")
#: the L2 values ``l2="auto"`` chooses from (on the summed loss; TalkingData's validation slices chose 0.1
#: for the advertiser alone, the synthetic funnel's 1)
L2_GRID = (0.01, 0.1, 1.0, 10.0)
CV_FOLDS = 5


def check_l2(l2: Any, where: str = "l2") -> float | str:
    """``"auto"`` or a finite number > 0 (a :class:`ValueError` naming ``where`` otherwise)."""
    if isinstance(l2, str):
        if l2 == "auto":
            return l2
        raise ValueError(f"{where} must be a number > 0 or \"auto\", got {l2!r}")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 <= 0:
        raise ValueError(f"{where} must be a number > 0 or \"auto\", got {l2!r}")
    return float(l2)


@dataclass(frozen=True)
class CampaignRefit:
    """``logit = offsets[campaign] + gamma * h`` (module docstring); an unseen campaign gets
    ``default_offset`` (the intercept: the campaigns' common rate)."""

    campaigns: tuple[str, ...]
    offsets: np.ndarray
    default_offset: float
    gamma: float
    l2: float
    run_id: str | None = None
    l2_choice: dict[str, Any] | None = None
    training: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.offsets.shape != (len(self.campaigns),):
            raise ValueError(f"CampaignRefit: {len(self.campaigns)} campaigns, offsets {self.offsets.shape}")
        if not (np.isfinite(self.offsets).all() and math.isfinite(self.default_offset)
                and math.isfinite(self.gamma)):
            raise ValueError("CampaignRefit: non-finite terms")
        if len(set(self.campaigns)) != len(self.campaigns):
            raise ValueError("CampaignRefit: a campaign appears twice")

    def offset(self, campaigns: Sequence[Any] | pd.Series | np.ndarray) -> np.ndarray:
        """The logit offset of each campaign (unseen ones: :attr:`default_offset`)."""
        pos = pd.Index(self.campaigns).get_indexer(pd.Index([str(c) for c in campaigns], dtype=object))
        return np.where(pos >= 0, self.offsets[np.maximum(pos, 0)] if len(self.offsets) else 0.0,
                        self.default_offset).astype(np.float64)

    def decision_function(self, campaigns: Sequence[Any] | pd.Series | np.ndarray, h: np.ndarray | None
                          ) -> np.ndarray:
        z = self.offset(campaigns)
        if h is not None:
            hv = np.asarray(h, dtype=np.float64)
            if hv.shape != z.shape:
                raise ValueError(f"CampaignRefit: {len(z)} campaigns but {hv.shape} platform terms")
            z = z + self.gamma * hv
        return z

    def predict_proba(self, campaigns: Sequence[Any] | pd.Series | np.ndarray, h: np.ndarray | None
                      ) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + np.exp(-self.decision_function(campaigns, h))), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"format": REFIT_FORMAT, "format_version": REFIT_VERSION, "run_id": self.run_id,
                "gamma": float(self.gamma), "default_offset": float(self.default_offset), "l2": self.l2,
                "l2_choice": self.l2_choice, "training": dict(self.training),
                "campaigns": {c: float(o) for c, o in zip(self.campaigns, self.offsets, strict=True)}}


def platform_terms(guest: FactorizationMachine, pairs: pd.DataFrame, partials: HostPartials) -> np.ndarray:
    """``h = z_H + <e_G, e_H>`` per row of ``pairs`` (``user_id`` = click id, ``item_id`` = campaign) from the
    advertiser's half and the platform's partials of those clicks; ``0`` for a click without partials
    (scored with the advertiser's terms alone, as :func:`fedrec.ads.conversion.score_clicks` does)."""
    from fedrec.models.vertical import join_pairs

    e_g = guest.party_terms(pairs)["guest"].e
    rows = partials.take(pairs["user_id"].tolist())
    return join_pairs(np.zeros(len(pairs)), e_g, rows)


def _frame(campaigns: Sequence[Any] | pd.Series | np.ndarray, h: np.ndarray | None) -> pd.DataFrame:
    x = pd.DataFrame({"campaign": pd.Series(np.asarray(campaigns, dtype=object)).astype("str").to_numpy()})
    if h is not None:
        x["h"] = np.asarray(h, dtype=np.float64)
    return x


def _fit_fixed(campaigns: Any, labels: np.ndarray, h: np.ndarray | None, l2: float) -> CampaignRefit:
    from fedrec.ads.platform_model import PlatformLogit

    model = PlatformLogit(["campaign"], ["h"] if h is not None else [], l2=l2)
    model.fit(_frame(campaigns, h), labels)
    assert model.coef_ is not None
    enc = model.encoder
    block = enc.blocks[0]
    assert block.levels is not None
    w_c = model.coef_[enc.offsets["campaign"]:enc.offsets["campaign"] + len(block.levels)]
    gamma, shift = 0.0, 0.0
    if h is not None:
        num = enc.blocks[1]
        gamma = float(model.coef_[enc.offsets["h"]] / num.sd)
        shift = gamma * num.mean
    b = model.intercept_ - shift
    return CampaignRefit(tuple(map(str, block.levels)), np.asarray(w_c + b, dtype=np.float64), float(b),
                         gamma, float(l2))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def choose_l2(campaigns: Any, labels: np.ndarray, h: np.ndarray | None, *, grid: Sequence[float] = L2_GRID,
              folds: int = CV_FOLDS, seed: int = 0) -> tuple[float, dict[str, Any]]:
    """The L2 of ``grid`` with the lowest held-out log-loss over ``folds`` stratified folds of the training
    clicks (each fold's fit sees only the other folds; ties: the larger L2). Returns it and the table."""
    y = np.asarray(labels, dtype=np.float64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for label in (0.0, 1.0):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold[idx] = np.arange(len(idx)) % folds
    camp = np.asarray(pd.Series(np.asarray(campaigns, dtype=object)).astype("str"), dtype=object)
    losses = []
    for l2 in grid:
        total = 0.0
        for f in range(folds):
            tr, te = fold != f, fold == f
            m = _fit_fixed(camp[tr], y[tr], None if h is None else h[tr], l2)
            total += _log_loss(y[te], m.predict_proba(camp[te], None if h is None else h[te])) * te.sum()
        losses.append(total / len(y))
    best = min(range(len(grid)), key=lambda j: (round(losses[j], 12), -grid[j]))
    return float(grid[best]), {"grid": [float(g) for g in grid], "cv_log_loss": losses, "folds": folds}


def fit_campaign_logit(campaigns: Sequence[Any] | pd.Series | np.ndarray, labels: np.ndarray,
                       h: np.ndarray | None = None, *, l2: float | str = "auto", run_id: str | None = None
                       ) -> CampaignRefit:
    """The refit (module docstring) on the training clicks' ``campaigns`` and 0/1 ``labels``, with the
    platform's terms ``h`` of the same clicks (``None``: the advertiser's logistic regression alone).
    ``l2="auto"``: :func:`choose_l2` within these clicks."""
    y = np.asarray(labels, dtype=np.float64)
    n = len(y)
    if n == 0 or len(campaigns) != n:
        raise ValueError(f"fit_campaign_logit: {len(campaigns)} campaigns and {n} labels; need the same "
                         "number, at least one")
    if not np.isin(y, (0.0, 1.0)).all():
        bad = y[~np.isin(y, (0.0, 1.0))][0]
        raise ValueError(f"fit_campaign_logit: labels must be 0/1 conversions, got {bad!r}")
    if not 0 < y.sum() < n:
        raise ValueError(f"fit_campaign_logit: the {n} training clicks need conversions and non-conversions "
                         f"(got {int(y.sum())} conversions)")
    hv = None
    if h is not None:
        hv = np.asarray(h, dtype=np.float64)
        if hv.shape != (n,) or not np.isfinite(hv).all():
            raise ValueError(f"fit_campaign_logit: platform terms must be {n} finite numbers, got shape "
                             f"{hv.shape}")
    chosen = check_l2(l2, "fit_campaign_logit: l2")
    choice = None
    if chosen == "auto":
        chosen, choice = choose_l2(campaigns, y, hv)
    assert isinstance(chosen, float)
    fit = _fit_fixed(campaigns, y, hv, chosen)
    training = {"clicks": n, "conversions": int(y.sum()),
                "without_platform_terms": int(np.sum(hv == 0.0)) if hv is not None else n}
    out = CampaignRefit(fit.campaigns, fit.offsets, fit.default_offset, fit.gamma, chosen, run_id, choice,
                        training)
    log.info("refit: %d clicks, %d conversions, L2 %g%s, gamma %.3f", n, int(y.sum()), chosen,
             " (cross-validated)" if choice else "", out.gamma)
    return out


def write_refit(refit: CampaignRefit, path: str | Path) -> Path:
    write_json_atomic(Path(path), refit.to_dict())
    return Path(path)


def _bad(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: not a campaign refit ({what})")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def read_refit(path: str | Path) -> CampaignRefit:
    """A refit written by :func:`write_refit`; every field checked (errors name the file and the field)."""
    p = Path(path)
    doc = read_json(p, "campaign refit")
    check_format(doc, p, REFIT_FORMAT, (REFIT_VERSION,), what="campaign refit")
    for key in ("gamma", "default_offset", "l2"):
        if not _finite(doc.get(key)):
            raise _bad(p, f"field {key!r} {doc.get(key)!r} is not a finite number")
    camps = doc.get("campaigns")
    if not isinstance(camps, Mapping):
        raise _bad(p, "field 'campaigns' is not an object")
    for name, off in camps.items():
        if not _finite(off):
            raise _bad(p, f"campaign {str(name)[:40]!r}: offset {off!r} is not a finite number")
    run_id = doc.get("run_id")
    raw_training = doc.get("training")
    training: Mapping[str, Any] = raw_training if isinstance(raw_training, Mapping) else {}
    choice = doc.get("l2_choice") if isinstance(doc.get("l2_choice"), Mapping) else None
    return CampaignRefit(tuple(map(str, camps)), np.array([float(v) for v in camps.values()], np.float64),
                         float(doc["default_offset"]), float(doc["gamma"]), float(doc["l2"]),
                         run_id if isinstance(run_id, str) else None,
                         None if choice is None else dict(choice),
                         {str(k): int(v) for k, v in training.items() if _finite(v)})
