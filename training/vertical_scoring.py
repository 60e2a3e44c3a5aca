"""Score a vertical FM from its two exported halves: the guest's model and the host's partials.

``z(u, i) = z_G(u, i) + z_H(u) + <e_G(u, i), e_H(u)>`` (DESIGN §4.2): ``z_G, e_G`` come from the guest's
:class:`~fedrec.models.fm.FactorizationMachine` artifact (``party_terms(...)["guest"]``), ``z_H, e_H``
from the host's ``partials.parquet`` (``user_id, z_H, e_H_0..e_H_{k-1}``), joined by the user id in
its normalised text form (as PSI compares ids: ``7`` and ``"7"`` are the same user). A user without a
host partial is scored with the guest terms only; that fallback is explicit and counted in
``last_fallbacks``, never silent. Predictions are finished as the guest model's (clipped ratings).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.models import FactorizationMachine
from fedrec.models.base import check_frame

log = logging.getLogger(__name__)


class VerticalScorer:
    """``VerticalScorer.load(guest_model_dir, partials_path).predict(pairs)``."""

    def __init__(self, guest: FactorizationMachine, partials: pd.DataFrame, source: str = "partials") -> None:
        k = guest.config.n_factors
        cols = ["user_id", "z_H", *[f"e_H_{f}" for f in range(k)]]
        missing = [c for c in cols if c not in partials.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; the guest model has {k} factors, so "
                             f"expected {cols[:3]} .. e_H_{k - 1}")
        keys = partials["user_id"].astype(str)
        if keys.duplicated().any():
            raise ValueError(f"{source}: duplicate user_id {keys[keys.duplicated()].iloc[0]!r}")
        values = partials[cols[1:]].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
            raise ValueError(f"{source}: row {row}: non-finite partial")
        self.guest = guest
        self.index = pd.Index(keys)
        self.z_h = values[:, 0]
        self.e_h = values[:, 1:]
        self.last_fallbacks: dict[str, int] = {}

    @classmethod
    def load(cls, guest_dir: str | Path, partials_path: str | Path) -> VerticalScorer:
        guest = FactorizationMachine.load(guest_dir)
        return cls(guest, pd.read_parquet(partials_path), source=str(partials_path))

    def decision_function(self, pairs: pd.DataFrame) -> np.ndarray:
        """Raw ``z`` per row of ``pairs`` (``user_id, item_id`` [, ``timestamp``])."""
        pairs = check_frame(pairs, "pairs", ("user_id", "item_id")).reset_index(drop=True)
        g = self.guest.party_terms(pairs)["guest"]
        pos = self.index.get_indexer(pd.Index(pairs["user_id"].astype(str)))
        found = pos >= 0
        z = g.z.copy()
        z[found] += self.z_h[pos[found]] + np.sum(g.e[found] * self.e_h[pos[found]], axis=1)
        n_users = pairs.loc[~found, "user_id"].nunique()
        self.last_fallbacks = {"host_partials_users": int(n_users), "host_partials_rows": int((~found).sum())}
        if n_users:
            log.info("%d user(s) (%d rows) have no host partials: scored with the guest terms only",
                     n_users, int((~found).sum()))
        return z

    def predict(self, pairs: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.guest._finish(self.decision_function(pairs)), dtype=np.float64)
