"""Horizontal federated matrix factorization (DESIGN §4.3): a server that holds only ciphertexts and many
clients (a user's device, or a silo of many users: same code).

* :mod:`.core` — the model, one round's math (the module docstring defines a round), the server step;
* :mod:`.messages` — the whole conversation; :mod:`.config` — :class:`FedMFConfig` (agreed at Hello);
* :mod:`.server` — :class:`FedMFServer`, the driver: encrypted item model, selection, ``gather`` with
  failures as data, secure sums, ciphertext additions only;
* :mod:`.client` — :class:`FedMFClient`, the handler table; :mod:`.keys` — the shared CKKS key sealed
  to each client's X25519 key through the server; :mod:`.masking` — secure aggregation
  (:mod:`fedrec.crypto.secagg`) at one place on each side;
* :mod:`.state` — what a checkpoint holds per role (the server: ``Enc(θ_R)``; a client: its users and
  the secret context), on :class:`fedrec.protocols.checkpoint.Checkpointer`;
* :mod:`.reference` — the centralized twin (same schedule, torch autograd) the plain run equals;
* :mod:`.simulation` — hundreds or thousands of on-device clients in one process, same protocol code.
"""

from fedrec.protocols.fedmf.client import FedMFClient, client_data
from fedrec.protocols.fedmf.config import FedMFConfig, catalogue_digest
from fedrec.protocols.fedmf.core import ClientData, ItemModel, UserState
from fedrec.protocols.fedmf.messages import MESSAGES, FedMFError
from fedrec.protocols.fedmf.reference import ReferenceMF, fit_reference
from fedrec.protocols.fedmf.server import FedMFPeer, FedMFServer, RoundReport

__all__ = ["MESSAGES", "ClientData", "FedMFClient", "FedMFConfig", "FedMFError", "FedMFPeer", "FedMFServer",
           "ItemModel", "ReferenceMF", "RoundReport", "UserState", "catalogue_digest", "client_data",
           "fit_reference"]
