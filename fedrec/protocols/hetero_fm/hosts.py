"""The guest's view of its hosts: one :class:`HostLink` per host and the rounds that reach them.

One guest and ``H ≥ 1`` hosts (issue #11). Every host runs the unchanged single-host protocol
(:mod:`.host`): it sees one guest, its own aligned set, its own ``Setup``, partials requests for its
aligned users, the encrypted residuals of ITS aligned users and one release per batch of ITS gradient.
Hosts never talk to each other; nothing a host receives names another host or depends on another host's
aligned set beyond the values of the shared residual rows (see below and docs/SECURITY.md).

Model (``E_H = Σ_j e_Hj``; users without a row at host ``j`` have ``z_Hj = e_Hj = 0``)::

    z = z_G + Σ_j z_Hj + <e_G, E_H> + Σ_{j<l} <e_Hj, e_Hl>
      = z_G + Σ_j z_Hj + <e_G, E_H> + ½ (‖E_H‖² − Σ_j ‖e_Hj‖²)

so ``∂z/∂z_Hj = 1`` and ``∂z/∂e_Hj = e_G + E_H − e_Hj``: host ``j``'s per-user rows ``R_u``
(:mod:`.packing`) use ``Q̂_u = N_s Σ_{s∈u} δ_s (e_G(s) + E_H(u))`` — the TOTAL embedding, the same
rows for every host, restricted to each host's aligned users. With one host this is the single-host
protocol exactly (the guest skips the host–host term, so a 1-host run is the same computation bit for
bit).

Failures. A host that dies, times out or answers wrongly at any step is named (``HeteroFMError(host,
step, ...)``). ``host_failure="stop"`` (default) ends the training there; the run resumes from the
newest checkpoint every host holds. ``"continue"`` drops the host for the rest of the run: its users get
zero partials from then on (exactly the model without it from that batch on), logged and reported in
:attr:`HeteroFMGuest.dropped_hosts`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fedrec.protocols.hetero_fm import label_dp
from fedrec.protocols.hetero_fm.messages import HeteroFMError
from fedrec.protocols.party import PEER_FAILURES, PartyError, Peer, fan_out
from fedrec.transport.wire import Message

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")

HOST_FAILURE = ("stop", "continue")
#: the failures of a host (as opposed to bugs of the guest, which propagate)
HOST_FAILURES = PEER_FAILURES


@dataclass
class HostLink:
    """What the guest keeps about one host: its aligned list (declared at ``Setup``), the positions of
    the guest's training users in it, its ``SetupAck`` bounds and its label-DP mechanism."""

    name: str
    declared: list[str] = field(default_factory=list)
    #: raw id (as str) -> position in ``declared``
    aligned_ids: dict[str, int] = field(default_factory=dict)
    #: per guest inner user id: position in ``declared``, or -1
    aligned_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_features: int = 0
    rows: label_dp.RowBounds = field(default_factory=lambda: label_dp.RowBounds(0, 0.0, 0.0, 0.0))
    label_dp: label_dp.LabelDP | None = None
    #: batch-user occurrences of users aligned with another host but not this one (zero partials)
    zero_partials: int = 0
    rolled_back: list[list[Any]] = field(default_factory=list)


def journal_name(host: str, n_hosts: int) -> str:
    """The label-DP journal of the releases to ``host`` (``label_dp`` with one host, as before)."""
    return "label_dp" if n_hosts == 1 else "label_dp-" + re.sub(r"[^A-Za-z0-9_.-]", "_", host)


class HostRounds:
    """Ask several hosts at once (:func:`fedrec.protocols.party.fan_out`: one thread each) under the
    failure policy. With one host every call is the plain ``Peer.ask`` on the caller's thread."""

    def __init__(self, peers: Mapping[str, Peer], policy: str) -> None:
        if policy not in HOST_FAILURE:
            raise ValueError(f"host_failure must be one of {HOST_FAILURE}, got {policy!r}")
        self.peers = dict(peers)
        self.policy = policy
        self.active: list[str] = list(peers)
        #: host -> "step: error" of the hosts dropped under policy "continue"
        self.dropped: dict[str, str] = {}
        #: serialises the guest's own crypto (encryption/decryption) between host threads
        self.crypto = threading.Lock()

    @property
    def single(self) -> bool:
        return len(self.peers) == 1

    def fail(self, host: str, step: str, exc: BaseException) -> None:
        """Apply the policy to ``host``'s failure at ``step``: raise (stop) or drop it (continue)."""
        if self.single or (isinstance(exc, PartyError) and exc.peer == host and self.policy == "stop"):
            raise exc  # one host: exactly the single-host protocol's errors
        if self.policy == "stop":
            raise HeteroFMError(host, step, f"host failed ({type(exc).__name__}: {exc}); host_failure="
                                            f"'stop': the run stops (rerun every party to resume from the "
                                            f"newest common checkpoint)") from exc
        if host in self.active:
            self.active.remove(host)
        self.dropped[host] = f"{step}: {exc}"
        logger.error("guest: host %r failed at %s (%s); host_failure='continue': training goes on without "
                     "it (its users get zero partials from now on)", host, step, exc)

    def each(self, hosts: list[str], fn: Callable[[str], T], step: str) -> dict[str, T]:
        """``fn(host)`` for every host of ``hosts`` (in parallel when several); failures by policy, in
        the order of ``hosts`` (configuration order: the first failed host is the one named)."""
        results, failures = fan_out(hosts, fn, step=step)
        for h, exc in failures.items():
            self.fail(h, step, exc)
        return results

    def ask(self, requests: Mapping[str, Message], expected: type[M], step: str) -> dict[str, M]:
        """Send each host its request; the answers of those that answered (policy for the others)."""
        return self.each(list(requests), lambda h: self.peers[h].ask(requests[h], expected, step), step)

    def ask_all(self, msg: Message, expected: type[M], step: str) -> dict[str, M]:
        """The same message to every active host."""
        return self.ask({h: msg for h in self.active}, expected, step)
