"""Inference of the vertical FM guest: the host's partials for the users being scored, joined with the
guest's own terms by :mod:`fedrec.models.vertical` (the one vertical join).

Only aligned users the guest model knows are ever sent to the host (``PredictRequest``, ids by
:func:`~fedrec.data.idmap.id_key`); every other known user gets ``z_H = 0, e_H = 0``, the guest terms
only (counted as ``no_host_partial``), and a user the model does not know has all its user fields
empty (``unknown_user``, counted by :class:`~fedrec.models.base.Recommender`)::

    z(u, i)     = z_G + z_H(u) + <e_G, e_H(u)>
    score(u, i) = (a_u + z_H + <p_u, e_H>) + b_i + <p_u + e_H, q_i>      (recommend: one matmul)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedrec.data.idmap import id_keys
from fedrec.models.vertical import HostPartials
from fedrec.protocols.hetero_fm.messages import HeteroFMError, Partials, PredictRequest
from fedrec.protocols.party import Peer

__all__ = ["ask_host_partials"]


def ask_host_partials(peer: Peer, aligned: Mapping[str, int], n_factors: int, raw_users: list[Any]
                      ) -> HostPartials:
    """Host partials of ``raw_users`` (aligned to them). Only the aligned ones are asked for, in one
    ``PredictRequest``; the others are not found (zeros) and never mentioned to the host."""
    keys = id_keys(raw_users, source="user_ids")
    raw = np.empty(len(keys), dtype=object)
    raw[:] = list(raw_users)
    on = np.array([u in aligned for u in keys], dtype=bool)
    z, e, found = np.zeros(len(keys)), np.zeros((len(keys), n_factors)), np.zeros(len(keys), dtype=bool)
    if on.any():
        ask = [keys[j] for j in np.flatnonzero(on)]
        ans = peer.ask(PredictRequest(ask), Partials, "fm/predict")
        if ans.z.shape != (len(ask),) or ans.e.shape != (len(ask), n_factors):
            raise HeteroFMError(peer.name, "fm/predict", f"partials of shape {ans.z.shape}/{ans.e.shape} for "
                                                         f"{len(ask)} users and k={n_factors}")
        z[on], e[on], found[on] = ans.z, ans.e, ans.found
    return HostPartials(raw, z, e, found, f"host {peer.name!r}")
