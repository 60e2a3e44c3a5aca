"""Vertical federated factorization machine (DESIGN §4.2): guest = labels + its fields, host = user features.

Public API (stable; the processes/CLI build on it)::

    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost

    cfg = HeteroFMConfig(objective="regression", n_factors=16, epochs=20, backend="ckks")  # both parties

    # host process (holds user_features indexed by raw user_id, already aligned by PSI)
    host = HeteroFMHost(channel, guest="guest", config=cfg)
    host.serve(user_features, checkpoint=Checkpointer("ck/host"))  # -> self, returns when the guest says
    host.save(directory)                                 # done; a bad message is answered with an error
    df = host.export_partials(user_ids)                  # and serving goes on
    #   -> DataFrame[user_id, z_H, e_H_0 .. e_H_{k-1}]   (serving: the scorer joins these by user id)
    HeteroFMHost.load(directory).export_partials(ids, user_features=next_month)   # no retraining

    # guest process (holds the interactions = labels, and item features): a Recommender
    guest = HeteroFMGuest(channel, host="host", config=cfg)
    guest.fit(interactions, item_features=None, validation=None,   # -> self; validation as FM.fit;
              aligned_users=None,    # the PSI intersection (default: all users): no other user is
                                     # ever referenced to the host (they get z_H = e_H = 0 locally)
              checkpoint=Checkpointer("ck/guest", every_batches=0))   # resumes from the newest
                                     # checkpoint both parties hold (fedrec.protocols.checkpoint)
    scores = guest.predict(pairs)            # asks the host for the partials of the pairs' aligned users;
    guest.last_fallbacks                     # the others use the guest-only terms (counted)
    ids, scores = guest.recommend(user_ids, k=10, filter_seen=True, filter_items=None)
    guest.save(directory)                    # guest half: a FactorizationMachine artifact + hetero.json
    guest.close()                            # tells the host it is done (also done by fit's caller)
    guest.privacy_spent(), host.privacy_spent()   # ε of label DP (guest) / partials DP (host), or None

``HeteroFMConfig`` extends ``FMConfig`` (objective regression|logistic|ranking, loss, n_factors, l2s,
lr, optimizer (adam|sgd), batch_size (rows, as the centralized FM), epochs, patience, init_std,
n_negatives, validation, seed)
plus the protocol fields (backend ckks|paillier|plain, ckks_preset, value_bound, plain_bound,
mask_hiding_bits, layout (hiding|compact), context_sha256, timeout) and DP options (host partials,
guest label DP); see :mod:`.config`.

The conversation is in :mod:`.messages`, the packing layout / CKKS parameters / error in :mod:`.packing`,
the guest and host in :mod:`.guest` and :mod:`.host` (both on the party layer,
:mod:`fedrec.protocols.party`), their checkpointed state in :mod:`.state`; what each party learns
is in ``docs/SECURITY.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedrec.protocols.hetero_fm.config import HeteroFMConfig
    from fedrec.protocols.hetero_fm.guest import HeteroFMGuest
    from fedrec.protocols.hetero_fm.host import HeteroFMHost
    from fedrec.protocols.hetero_fm.messages import ProtocolRejected

_EXPORTS = {
    "HeteroFMConfig": "config",
    "HeteroFMGuest": "guest",
    "HeteroFMHost": "host",
    "ProtocolRejected": "messages",
}
__all__ = ["HeteroFMConfig", "HeteroFMGuest", "HeteroFMHost", "ProtocolRejected"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedrec.protocols.hetero_fm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedrec.protocols.hetero_fm.{module}"), name)
