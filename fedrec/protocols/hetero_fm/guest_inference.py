"""Inference of the vertical FM guest: ``decision_function``, ``predict`` and ``recommend`` with the
host's partials, through :class:`fedrec.models.vertical.VerticalFM` (the one vertical join).

Only aligned users the guest model knows are ever sent to the host (``PredictRequest``, ids by
:func:`~fedrec.data.idmap.id_key`); every other known user gets ``z_H = 0, e_H = 0``, the guest terms
only (``last_fallbacks["no_host_partial"]``), and a user the model does not know has all its user
fields empty (``last_fallbacks["unknown_user"]``)::

    z(u, i)     = z_G + z_H(u) + <e_G, e_H(u)>
    score(u, i) = (a_u + z_H + <p_u, e_H>) + b_i + <p_u + e_H, q_i>      (recommend: one matmul)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from fedrec.data.idmap import id_keys
from fedrec.models.fm import FactorizationMachine
from fedrec.models.vertical import HostPartials, VerticalFM
from fedrec.protocols.hetero_fm.config import HeteroFMConfig
from fedrec.protocols.hetero_fm.messages import HeteroFMError, Partials, PredictRequest
from fedrec.transport.wire import Message


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
        keys = id_keys(raw_users, source="user_ids")
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

    def _joined(self) -> VerticalFM:
        def partials_for(users: list[Any]) -> HostPartials:
            z, e, found = self._host_partials(users)
            return HostPartials(np.asarray(users, dtype=object), z, e, found, f"host {self.host!r}")

        return VerticalFM(self.local, partials_for)

    def decision_function(self, pairs: pd.DataFrame) -> np.ndarray:
        """``z = z_G + z_H + <e_G, e_H>``; known users without host partials: ``z_G`` (counted in
        ``last_fallbacks["no_host_partial"]``)."""
        joined = self._joined()
        try:
            return joined.decision_function(pairs)
        finally:
            self.last_fallbacks = joined.last_fallbacks

    def predict(self, pairs: pd.DataFrame) -> np.ndarray:
        """Predictions as :meth:`FactorizationMachine.predict` (clipped ratings, probabilities, scores)."""
        return np.asarray(self.local.finish(self.decision_function(pairs)), dtype=np.float64)

    def recommend(self, user_ids: Iterable[Any] | Any, N: int = 10, filter_already_seen: bool = True,
                  filter_items: Iterable[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items per user (raw ids, best first), host partials included:
        ``score = (a_u + z_H + <p_u, e_H>) + b_i + <p_u + e_H, q_i>``."""
        joined = self._joined()
        try:
            return joined.recommend(user_ids, N=N, filter_already_seen=filter_already_seen,
                                    filter_items=filter_items)
        finally:
            self.last_fallbacks = joined.last_fallbacks
