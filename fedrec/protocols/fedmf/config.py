"""The configuration the server and every client of the federated MF agree on (checked at ``Hello``).

:class:`FedMFConfig` holds the model, the training schedule and the protocol's policies. The agreed
fields (:data:`AGREED_FIELDS`) plus the item catalogue's size and digest (:func:`catalogue_digest`)
travel in the party layer's ``Hello``; a client whose values differ refuses it, naming the field.

Defaults (chosen on ML-100K, ``k = 16``, every user a client, all clients every round: test RMSE
0.9113 after 100 rounds against 0.9112 for the centralized :class:`~fedrec.models.BiasedMF` of the same
``k``; ``benchmarks/fedmf.py``). Synthetic ratings want less regularization (``l2 = 0.06``,
``l2_bias = 0.05``), as usual for MF the regularization is the dataset's:

* model: ``n_factors`` (``k``), ``init_std`` (``p, q ~ N(0, init_std²)``), ``l2`` (``λ``) and
  ``l2_bias`` (``λ_b``);
* schedule: ``rounds``, ``local_epochs`` (``E``), ``lr`` (the item step ``η``, applied by the server
  on ciphertexts), ``item_damping`` (``κ``: an item's step is divided by its rating count ``+ κ``,
  :mod:`.core`), ``user_lr`` (``η_u``, the clients' local user steps), ``clients_per_round``
  (``0``: every client every round), ``seed`` (initial item factors and client selection);
* policy: ``min_ok`` (a round needs at least that many uploads, else :class:`RoundFailed`),
  ``retries`` (a failed round is tried again that many times, with fresh masks), ``timeout`` (seconds
  the server waits for one client at one step);
* crypto: ``backend`` (``ckks``, or ``plain``: NO encryption, debugging and exactness tests only),
  ``ckks_preset``, ``value_bound`` (uploads are clipped to ``|x| <= value_bound``, counted, and a
  decrypted model beyond ``model_bound`` is refused as corrupt), ``masks`` (secure aggregation:
  pairwise and self masks inside the encrypted uploads, :mod:`fedrec.protocols.fedmf.masking`; **on by
  default**: without them a server that registers one client of its own, which receives the shared key
  like any other, decrypts every upload; ``masks = false`` is logged as a warning by the server at every
  run, for exactness tests and benchmarks of the unmasked protocol; a masked secure sum needs at least
  two clients) with
  ``mask_threshold`` (Shamir threshold; 0: a majority of the round's clients) and ``mask_scale_bits``
  (masks within ``±2^bits`` per term; 0: chosen from the number of clients,
  :func:`.masking.mask_scale`) and ``mask_group`` (a secure sum is masked within groups of at most
  that many clients, :mod:`.secure_sum`), ``roster_sha256`` (optional: the clients' pin of the list of
  clients and their X25519 keys the server relays; ``None``: trust the server's);
* ``idle_timeout``: how long a client waits for the server's next request (a client not selected for
  many rounds waits that long; the server's death is noticed at once through the transport).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

BACKENDS = ("ckks", "plain")
PROTOCOL = "fedmf"
PROTOCOL_VERSION = 1

#: fields the server and every client must hold identical values for
AGREED_FIELDS = (
    "n_factors", "init_std", "l2", "l2_bias", "rounds", "local_epochs", "lr", "user_lr", "item_damping",
    "clients_per_round", "seed", "backend", "ckks_preset", "value_bound", "model_bound", "masks",
    "mask_threshold", "mask_scale_bits", "mask_group",
)
#: fields added at run time from the data: the catalogue every party must share
CATALOGUE_FIELDS = ("n_items", "catalogue_sha256")


def catalogue_digest(item_ids: Sequence[Any]) -> str:
    """SHA-256 of the catalogue in its agreed order (``str`` of each id, newline-separated)."""
    h = hashlib.sha256()
    for item in item_ids:
        h.update(str(item).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class FedMFConfig:
    """The federated MF's settings (see the module docstring)."""

    # -- model
    n_factors: int = 16
    init_std: float = 0.1
    l2: float = 0.12
    l2_bias: float = 0.1
    # -- schedule
    rounds: int = 100
    local_epochs: int = 2
    lr: float = 1.0
    user_lr: float = 0.6
    item_damping: float = 2.0
    clients_per_round: int = 0
    seed: int = 0
    # -- policy
    min_ok: int = 1
    retries: int = 1
    timeout: float = 300.0
    # -- crypto
    backend: str = "ckks"
    ckks_preset: str = "n8192"
    value_bound: float = 64.0
    model_bound: float = 1e4
    masks: bool = True
    mask_threshold: int = 0
    mask_scale_bits: int = 0
    mask_group: int = 100
    idle_timeout: float = 3600.0
    roster_sha256: str | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.n_factors >= 1, "n_factors", ">= 1"),
            (self.init_std > 0, "init_std", "> 0"),
            (self.l2 >= 0, "l2", ">= 0"),
            (self.l2_bias >= 0, "l2_bias", ">= 0"),
            (self.rounds >= 0, "rounds", ">= 0"),
            (self.local_epochs >= 0, "local_epochs", ">= 0"),
            (self.lr > 0, "lr", "> 0"),
            (self.user_lr > 0, "user_lr", "> 0"),
            (self.item_damping > 0, "item_damping", "> 0 (an item's step is divided by its count + this)"),
            (self.clients_per_round >= 0, "clients_per_round", ">= 0 (0: every client)"),
            (self.min_ok >= 1, "min_ok", ">= 1"),
            (self.retries >= 0, "retries", ">= 0"),
            (self.timeout > 0, "timeout", "> 0"),
            (self.backend in BACKENDS, "backend", "|".join(BACKENDS)),
            (0 < self.value_bound < 2.0 ** 20, "value_bound", "in (0, 2^20)"),
            (0 < self.model_bound < 2.0 ** 30, "model_bound", "in (0, 2^30)"),
            (self.mask_threshold >= 0, "mask_threshold", ">= 0 (0: a majority of the clients)"),
            (self.mask_scale_bits == 0 or 8 <= self.mask_scale_bits <= 40, "mask_scale_bits",
             "0 (automatic) or in 8..40"),
            (self.idle_timeout > 0, "idle_timeout", "> 0"),
            (2 <= self.mask_group <= 4096, "mask_group", "in 2..4096"),
            (self.roster_sha256 is None or len(self.roster_sha256) == 64, "roster_sha256",
             "None or 64 hex digits"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"FedMFConfig: {name} must be {allowed}, got {getattr(self, name)!r}")

    def agreed(self, n_items: int, catalogue_sha256: str) -> dict[str, Any]:
        """The agreed values plus the catalogue's size and digest (the ``Hello`` config)."""
        d = asdict(self)
        out = {k: d[k] for k in AGREED_FIELDS}
        out.update(n_items=int(n_items), catalogue_sha256=catalogue_sha256)
        return out

    @property
    def agreed_names(self) -> tuple[str, ...]:
        return AGREED_FIELDS + CATALOGUE_FIELDS

    def selected_per_round(self, n_clients: int) -> int:
        """How many clients a round selects out of ``n_clients``."""
        m = self.clients_per_round or n_clients
        return min(m, n_clients)
