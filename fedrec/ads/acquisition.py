"""Acquisition scoring (lookalike): rank the platform's users who are not yet the advertiser's customers for
a campaign, with the conversion model of :mod:`fedrec.ads.conversion`.

**Where scoring happens: at the platform.** The candidates are the platform's users outside the audience
overlap; the advertiser must not learn who they are (issue 15: "without the advertiser seeing the
platform's users outside the overlap"), so their features and ids never leave the platform. The
advertiser sends a **campaign card** instead (:func:`campaign_card`): per campaign, its half of the model
for that campaign, ``z_G(c)`` and ``e_G(c)`` (``k + 1`` numbers), so that for a candidate ``u`` with the
platform's features ``x_u``::

    score(u, c) = σ(z_G(c) + z_H(x_u) + <e_G(c), e_H(x_u)>)

the conversion model's probability, computed by the platform from its saved half
(:meth:`fedrec.protocols.hetero_fm.HeteroFMHost.load` + ``export_partials``) - :func:`rank_candidates`.

**What each side learns.**

* The advertiser learns nothing about the candidates (not their number, ids or scores). It may later learn
  conversions of the users the platform reached, through its own conversion log.
* The platform learns the card: ``k + 1`` numbers per campaign, a function of the advertiser's half of the
  model, which was trained on the exact conversion labels. That is an aggregate over all the campaign's
  training clicks (a campaign's base rate and how it interacts with the platform's factors), not any one
  click's label, but it is **not covered by the label-DP ε** of training (which bounds what the platform's
  own gradients reveal). With the card and its own half the platform can score any click, including its
  own past clicks of this campaign; the benchmark's completion attack measures what such a model knows
  about the training labels beyond the population (``benchmarks/results/ads.md``).
* **A minimum of clicks per campaign** (:data:`MIN_CARD_CLICKS`, ``min_clicks``). A campaign's terms are
  fitted on its training clicks' labels; the platform logged those clicks, so a card of a campaign with a
  handful of clicks is close to telling it how many of *those* clicks converted. A campaign with fewer
  training clicks than the minimum is refused when named, and left out (logged) when the card covers
  every campaign; a card with no campaign left is refused. The count is the advertiser's training clicks
  per campaign (:func:`training_clicks` of the clicks it trained on).
* The customers are excluded by the platform with the PSI intersection it already holds (``aligned.csv``
  of ``fedrec psi`` between the advertiser's customers and the platform's users): nothing new is revealed.

**A refitted model** (:mod:`fedrec.ads.refit`, ``fedrec ads card --refit``: the advertiser's default
deliverable) scores ``σ(o_c + γ h)`` with ``h = z_H + <e_G(c), e_H>``; its card carries ``z_G = o_c``,
``e_G = γ e_G(c)`` and ``host_scale = γ`` (the platform's ``z_H`` is multiplied by it), so the platform
computes the refit's probability with the same formula, ``σ(z_G + host_scale·z_H + <e_G, e_H>)``. It
learns one more number (``γ``, how much the advertiser trusts the platform's half) and the refitted
campaign offsets in place of the FM's; the minimum of clicks applies the same way.

The alternative - scoring at the advertiser - would need the platform to send every candidate's partials
``z_H, e_H`` under an id, showing the advertiser the platform's non-customers; it is not offered.

The card file (:func:`write_card` / :func:`read_card`) is JSON, written atomically (mode 0600)::

    {"format": "fedrec.ads.campaign_card", "format_version": 2, "run_id": the training run,
     "n_factors": k, "host_scale": γ (1 for the FM as trained),
     "campaigns": {"<campaign>": {"z_G": float, "e_G": [k floats]}, ...}}

(version 1, without ``host_scale``, is read as ``host_scale = 1``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedrec.artifacts import ArtifactError, check_format, read_json, write_json_atomic
from fedrec.data.idmap import id_keys

if TYPE_CHECKING:
    from fedrec.ads.refit import CampaignRefit
    from fedrec.models.fm import FactorizationMachine
    from fedrec.protocols.hetero_fm import HeteroFMHost

log = logging.getLogger(__name__)

__all__ = ["CARD_FORMAT", "MIN_CARD_CLICKS", "CampaignCard", "campaign_card", "rank_candidates", "read_card",
           "training_clicks", "write_card"]

CARD_FORMAT, CARD_VERSION = "fedrec.ads.campaign_card", 2
#: the fewest training clicks a campaign must have to be on a card (module docstring). Ads Data Hub
#: releases nothing about fewer than 50 users; one conversion among 100 clicks still moves a campaign's
#: rate by 1%, so the default asks for 100.
MIN_CARD_CLICKS = 100


@dataclass(frozen=True)
class CampaignCard:
    """The advertiser's terms per campaign: ``z_g[c]``, ``e_g[c]``, and the scale of the platform's ``z_H``
    (``host_scale``: 1, or a refit's ``γ``; module docstring)."""

    campaigns: tuple[str, ...]
    z_g: np.ndarray
    e_g: np.ndarray
    run_id: str | None = None
    host_scale: float = 1.0

    def __post_init__(self) -> None:
        k = len(self.campaigns)
        if self.z_g.shape != (k,) or self.e_g.ndim != 2 or self.e_g.shape[0] != k:
            raise ValueError(f"CampaignCard: {k} campaigns, z_g {self.z_g.shape}, e_g {self.e_g.shape}")
        finite = np.isfinite(self.z_g).all() and np.isfinite(self.e_g).all()
        finite = finite and math.isfinite(self.host_scale)
        if not finite:
            raise ValueError("CampaignCard: non-finite terms")
        if len(set(self.campaigns)) != k:
            raise ValueError("CampaignCard: a campaign appears twice")

    @property
    def n_factors(self) -> int:
        return int(self.e_g.shape[1])

    def terms(self, campaign: Any) -> tuple[float, np.ndarray]:
        key = str(campaign)
        if key not in self.campaigns:
            shown = ", ".join(self.campaigns[:10]) + (" ..." if len(self.campaigns) > 10 else "")
            raise KeyError(f"campaign {key[:40]!r} is not on the card (campaigns: {shown})")
        j = self.campaigns.index(key)
        return float(self.z_g[j]), self.e_g[j]


def training_clicks(interactions: pd.DataFrame) -> pd.Series:
    """Training clicks per campaign (``item_id``) of the advertiser's training interactions."""
    if "item_id" not in interactions.columns:
        raise ValueError("training_clicks: the advertiser's clicks need an 'item_id' (campaign) column, got "
                         f"{list(map(str, interactions.columns))}")
    counts = interactions["item_id"].value_counts()
    counts.index = counts.index.map(str)
    return counts


def campaign_card(guest: FactorizationMachine, campaigns: Iterable[Any] | None = None,
                  run_id: str | None = None, *, clicks: Mapping[Any, int] | pd.Series,
                  min_clicks: int = MIN_CARD_CLICKS, refit: CampaignRefit | None = None) -> CampaignCard:
    """The card of ``campaigns`` (default: every campaign the model knows with at least ``min_clicks``
    training clicks) from the advertiser's half. ``clicks``: training clicks per campaign
    (:func:`training_clicks`); a named campaign below ``min_clicks`` is refused (module docstring). The
    guest's user fields must be off (a conversion model's are: one click per "user"), so the terms do not
    depend on who clicks. ``refit``: the card of the refitted model (module docstring), of the same run."""
    if refit is not None and refit.run_id and run_id and refit.run_id != run_id:
        raise ValueError(f"campaign_card: the refit is of training run {refit.run_id}, the model of {run_id}")
    if isinstance(min_clicks, bool) or not isinstance(min_clicks, int) or min_clicks < 1:
        raise ValueError(f"campaign_card: min_clicks must be an integer >= 1, got {min_clicks!r}")
    count = {str(k): int(v) for k, v in dict(clicks).items()}
    c = guest.config
    if c.objective != "logistic":
        raise ValueError(f"campaign_card: a conversion model is logistic, this one is {c.objective!r}")
    if c.use_user_id or c.use_history or c.use_history_length:
        raise ValueError("campaign_card: the advertiser's model uses per-user fields (use_user_id / "
                         "use_history); a campaign card needs them off")
    _, item_map, _ = guest._require_fitted()
    known = list(item_map.to_raw(np.arange(len(item_map)))) if campaigns is None else list(campaigns)
    if not known:
        raise ValueError("campaign_card: no campaign")
    few = [(x, count.get(str(x), 0)) for x in known if count.get(str(x), 0) < min_clicks]
    if few and campaigns is not None:
        shown = ", ".join(f"{str(x)[:40]!r} ({n})" for x, n in few[:10]) + (" ..." if len(few) > 10 else "")
        raise ValueError(f"campaign_card: campaign(s) with fewer than {min_clicks} training clicks are not "
                         f"carded (their terms are too close to those clicks' labels): {shown}")
    if few:
        log.warning("campaign card: %d of %d campaigns have fewer than %d training clicks and are left out",
                    len(few), len(known), min_clicks)
        dropped = {str(x) for x, _ in few}
        known = [x for x in known if str(x) not in dropped]
        if not known:
            raise ValueError(f"campaign_card: no campaign has {min_clicks} training clicks or more (the "
                             f"largest has {max(count.values(), default=0)})")
    inner = item_map.to_inner(pd.Series(known, dtype=object), unknown="mask")
    if (inner < 0).any():
        bad = known[int(np.argmax(inner < 0))]
        raise ValueError(f"campaign_card: campaign {str(bad)[:40]!r} is unknown to the model")
    pairs = pd.DataFrame({"user_id": ["__card__"] * len(known), "item_id": known,
                          "timestamp": np.zeros(len(known), np.int64)})
    terms = guest.party_terms(pairs)["guest"]
    if refit is None:
        return CampaignCard(tuple(str(x) for x in known), np.asarray(terms.z, np.float64),
                            np.asarray(terms.e, np.float64), run_id)
    if refit.gamma <= 0:
        log.warning("campaign card: the refit gives the platform's terms no positive weight (gamma %.3g): "
                    "every candidate of a campaign gets the same score", refit.gamma)
    return CampaignCard(tuple(str(x) for x in known), refit.offset(known),
                        refit.gamma * np.asarray(terms.e, np.float64), run_id, refit.gamma)


def write_card(card: CampaignCard, path: str | Path) -> Path:
    doc = {"format": CARD_FORMAT, "format_version": CARD_VERSION, "run_id": card.run_id,
           "n_factors": card.n_factors, "host_scale": float(card.host_scale),
           "campaigns": {c: {"z_G": float(card.z_g[j]), "e_G": [float(x) for x in card.e_g[j]]}
                         for j, c in enumerate(card.campaigns)}}
    write_json_atomic(Path(path), doc)
    return Path(path)


def _bad(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: not a campaign card ({what})")


def read_card(path: str | Path) -> CampaignCard:
    """A card written by :func:`write_card`; every field checked (errors name the file and the field)."""
    p = Path(path)
    doc = read_json(p, "campaign card")
    version = check_format(doc, p, CARD_FORMAT, (1, CARD_VERSION), what="campaign card")
    scale = doc.get("host_scale", 1.0) if version == CARD_VERSION else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
        raise _bad(p, f"field 'host_scale' {scale!r} is not a finite number")
    k = doc.get("n_factors")
    camps = doc.get("campaigns")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= 1024:
        raise _bad(p, f"field 'n_factors' {k!r} is not an integer in 1..1024")
    if not isinstance(camps, Mapping) or not camps:
        raise _bad(p, "field 'campaigns' is not a non-empty object")
    names, z, e = [], [], []
    for name, t in camps.items():
        ok = isinstance(t, Mapping) and isinstance(t.get("z_G"), (int, float)) and \
            isinstance(t.get("e_G"), list) and len(t["e_G"]) == k and \
            all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in t["e_G"])
        if not ok or not math.isfinite(float(t["z_G"])) or not all(math.isfinite(x) for x in t["e_G"]):
            raise _bad(p, f"campaign {str(name)[:40]!r}: expected finite 'z_G' and {k} finite 'e_G'")
        names.append(str(name))
        z.append(float(t["z_G"]))
        e.append([float(x) for x in t["e_G"]])
    run_id = doc.get("run_id")
    return CampaignCard(tuple(names), np.array(z), np.array(e).reshape(len(names), k),
                        run_id if isinstance(run_id, str) else None, float(scale))


def rank_candidates(card: CampaignCard, campaign: Any, host: HeteroFMHost, candidates: pd.DataFrame, *,
                    exclude: Collection[Any] = (), n: int | None = 100, chunk_size: int = 100_000
                    ) -> tuple[pd.DataFrame, dict[str, int]]:
    """The ``n`` best candidates for ``campaign`` (``None``: all), best first: columns ``rank`` (1-based),
    ``user_id`` (as in ``candidates``' index), ``score`` (the conversion probability). ``candidates``: the
    platform's feature rows (the columns its half was trained on), indexed by user id; ``exclude``: ids
    never ranked (the advertiser's customers: the PSI intersection). Returns the ranking and counts
    (``candidates``, ``excluded``, ``scored``)."""
    if host.config.n_factors != card.n_factors:
        raise ValueError(f"the campaign card has k={card.n_factors} factors, the platform's half "
                         f"k={host.config.n_factors}: not the same model")
    if card.run_id and host.run_id and card.run_id != host.run_id:
        raise ValueError(f"the campaign card is of training run {card.run_id}, the platform's half of "
                         f"{host.run_id}: not the same model")
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 (or None for all), got {n}")
    z_g, e_g = card.terms(campaign)
    keys = pd.Index(id_keys(candidates.index.tolist(), source="candidates index"))
    if keys.has_duplicates:
        raise ValueError(f"candidates: user id {str(keys[keys.duplicated()][0])[:40]!r} appears twice")
    drop = keys.isin(pd.Index(id_keys(list(exclude), source="exclude"))) if len(exclude) else \
        np.zeros(len(keys), bool)
    pool = candidates.loc[~drop]
    ids, scores = [], []
    for lo in range(0, len(pool), chunk_size):
        part = pool.iloc[lo:lo + chunk_size]
        parts = host.export_partials(part.index.tolist(), part)
        e_h = parts[[f"e_H_{f}" for f in range(card.n_factors)]].to_numpy(np.float64)
        z = z_g + card.host_scale * parts["z_H"].to_numpy(np.float64) + e_h @ e_g
        ids.extend(parts["user_id"].tolist())
        scores.append(1.0 / (1.0 + np.exp(-z)))
    s = np.concatenate(scores) if scores else np.zeros(0)
    order = np.lexsort((np.arange(len(s)), -s))[: (len(s) if n is None else n)]  # ties: input order
    out = pd.DataFrame({"rank": np.arange(1, len(order) + 1, dtype=np.int64),
                        "user_id": [ids[i] for i in order], "score": s[order]})
    counts = {"candidates": len(candidates), "excluded": int(drop.sum()), "scored": len(s)}
    log.info("campaign %s: %d candidates, %d customers excluded, %d scored, top %d written", campaign,
             counts["candidates"], counts["excluded"], counts["scored"], len(out))
    return out, counts
