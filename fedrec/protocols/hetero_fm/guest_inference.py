"""Inference of the vertical FM guest: ``decision_function``, ``predict`` and ``recommend`` with the
host's partials.

Only aligned users are ever sent to the host (``PredictRequest``); every other user gets
``z_H = 0, e_H = 0`` and ``found = False``, so its score uses the guest terms only (counted in
``last_fallbacks["host_partials"]``)::

    z(u, i)     = z_G + z_H(u) + <e_G, e_H(u)>
    score(u, i) = (a_u + z_H + <p_u, e_H>) + b_i + <p_u + e_H, q_i>      (recommend: one matmul)
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from fedrec.models.base import check_frame
from fedrec.models.fm import FactorizationMachine, ScoringFactors
from fedrec.protocols.hetero_fm.config import HeteroFMConfig
from fedrec.protocols.hetero_fm.messages import HeteroFMError, Partials, PredictRequest
from fedrec.transport.wire import Message

logger = logging.getLogger(__name__)


class _GuestInference(ABC):
    """The inference methods of :class:`~fedrec.protocols.hetero_fm.guest.HeteroFMGuest`."""

    host: str
    config: HeteroFMConfig
    local: FactorizationMachine
    last_fallbacks: dict[str, int]
    _aligned_ids: dict[str, int]

    @abstractmethod
    def _ask(self, msg: Message, expected: type[Any], step: str) -> Any:
        """Send ``msg`` to the host and return its ``expected`` answer (implemented by the guest)."""

    def _host_partials(self, raw_users: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host partials of the aligned users among ``raw_users`` (zeros, ``found=False`` for others:
        they are never sent)."""
        k = self.config.n_factors
        keys = [str(x) for x in raw_users]
        on = np.array([u in self._aligned_ids for u in keys], dtype=bool)
        z, e, found = np.zeros(len(keys)), np.zeros((len(keys), k)), np.zeros(len(keys), dtype=bool)
        if not on.any():
            return z, e, found
        ask = [keys[j] for j in np.flatnonzero(on)]
        ans: Partials = self._ask(PredictRequest(ask), Partials, "fm/predict")
        if ans.z.shape != (len(ask),) or ans.e.shape != (len(ask), k):
            raise HeteroFMError(self.host, "fm/predict", "partials of the wrong shape")
        z[on], e[on], found[on] = ans.z, ans.e, ans.found
        return z, e, found

    def decision_function(self, pairs: pd.DataFrame) -> np.ndarray:
        """``z = z_G + z_H + <e_G, e_H>``; users without host partials: ``z_G`` (counted in
        ``last_fallbacks["host_partials"]``)."""
        pairs = check_frame(pairs, "pairs", ("user_id", "item_id")).reset_index(drop=True)
        guest = self.local.party_terms(pairs)["guest"]
        uniq, inv = np.unique(pairs["user_id"].astype(str).to_numpy(), return_inverse=True)
        z_h, e_h, found = self._host_partials(list(uniq))
        missing = int((~found).sum())
        self.last_fallbacks = {"host_partials": missing}
        if missing:
            logger.info("guest: %d of %d users have no host partials; their scores use the guest terms only",
                        missing, len(uniq))
        return guest.z + z_h[inv] + np.sum(guest.e * e_h[inv], axis=1)

    def predict(self, pairs: pd.DataFrame) -> np.ndarray:
        """Predictions as :meth:`FactorizationMachine.predict` (clipped ratings, probabilities, scores)."""
        return np.asarray(self.local._finish(self.decision_function(pairs)), dtype=np.float64)

    def recommend(self, user_ids: Iterable[Any] | Any, N: int = 10, filter_already_seen: bool = True,
                  filter_items: Iterable[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items per user (raw ids, best first), host partials included:
        ``score = (a_u + z_H + <p_u, e_H>) + b_i + <p_u + e_H, q_i>``."""
        fm = self.local
        user_map, _, _ = fm._require_fitted()
        if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Iterable):
            user_ids = [user_ids]
        raw = list(user_ids)
        f = fm.scoring_factors()
        inner = user_map.to_inner(raw, unknown="mask")
        z_h, e_h, found = self._host_partials(raw)
        a, p = f.a_u.copy(), f.p_u.copy()
        ok = (inner >= 0) & found
        a[inner[ok]] += z_h[ok] + np.sum(p[inner[ok]] * e_h[ok], axis=1)
        p[inner[ok]] += e_h[ok]
        fm._factor_cache = ScoringFactors(a, p, f.b_i, f.q_i, fm.reference_time)
        try:
            return fm.recommend(raw, N=N, filter_already_seen=filter_already_seen, filter_items=filter_items)
        finally:
            fm._factor_cache = None
