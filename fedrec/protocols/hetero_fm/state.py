"""The explicit protocol state of each party of the vertical FM: what a checkpoint holds.

Both are data (arrays + JSON through :mod:`fedrec.artifacts`, no pickle), captured between batches:

* :class:`GuestState` — the training loop's :class:`~fedrec.models.training.LoopState` (cursor, running
  loss, parameters, optimizer, best parameters and metric, history, the epoch sampler's RNG state),
  the label-DP accountant's events, the clipping count, the digest of the aligned set declared to the
  host, and the host's state digest at the same cursor.
* :class:`HostState` — cursor, the host field's parameters and optimizer state (a ``LoopState`` too), its
  parameters after each of the last ``patience + 1`` epochs (early stopping restores one of them), the
  partial-DP accountant's events and the aligned set's digests.

What is never in a checkpoint: CKKS keys and contexts, masks, the current batch's encrypted work (a
checkpoint is taken between batches; a resumed run makes a fresh key at its ``Setup``). The agreed
config is recorded and must match on resume (a checkpoint of another config is refused naming the
field).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedrec.artifacts import Artifact, ArtifactError
from fedrec.crypto.backend import CryptoError
from fedrec.crypto.dp import PrivacyAccountant
from fedrec.models.training import LoopState
from fedrec.protocols.hetero_fm.config import HeteroFMConfig

__all__ = ["GuestState", "HostState", "aligned_digest"]


def aligned_digest(ids: Iterable[str], ordered: bool = True) -> str:
    """sha256 over the aligned ids (NUL-separated) in declared order (``ordered``: positions matter, as
    in every request) or sorted (the set only, e.g. against the PSI file's order)."""
    h = hashlib.sha256()
    for u in (ids if ordered else sorted(str(x) for x in ids)):
        h.update(str(u).encode("utf-8") + b"\0")
    return h.hexdigest()


def _check_config(art: Artifact, config: HeteroFMConfig) -> None:
    saved = art.meta.get("agreed")
    if not isinstance(saved, dict):
        raise ArtifactError(f"{art.path}: field 'agreed' is missing or not an object")
    mine = config.agreed()
    bad = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if bad:
        raise ArtifactError(f"{art.path}: the checkpoint was written with another configuration (field "
                            f"{bad[0]!r}: {saved.get(bad[0])!r} there, {mine.get(bad[0])!r} now); start the "
                            f"run afresh (--restart) or restore that configuration")


def _accountant(meta: Mapping[str, Any], art: Artifact) -> PrivacyAccountant | None:
    raw = meta.get("accountant")
    if raw is None:
        return None
    try:
        return PrivacyAccountant.from_json(raw)
    except (CryptoError, TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{art.path}: field 'accountant' is invalid: {exc}") from exc


def _loop(art: Artifact, prefix: str = "loop.") -> LoopState:
    arrays = {k[len(prefix):]: v for k, v in art.arrays.items() if k.startswith(prefix)}
    loop_meta = art.meta.get("loop")
    if not isinstance(loop_meta, dict):
        raise ArtifactError(f"{art.path}: field 'loop' is missing or not an object")
    try:
        return LoopState.from_arrays(arrays, loop_meta)
    except ValueError as exc:
        raise ArtifactError(f"{art.path}: {exc}") from exc


@dataclass
class HostState:
    run_id: str
    aligned_sha256: str
    aligned_set_sha256: str
    n_aligned: int
    epoch: int
    batch: int
    final: bool
    loop: LoopState
    accountant: PrivacyAccountant | None
    snapshots: dict[int, dict[str, torch.Tensor]]

    @classmethod
    def capture(cls, run_id: str, aligned: list[str], cursor: tuple[int, int], final: bool,
                params: torch.nn.Module, opt: torch.optim.Optimizer,
                snapshots: Mapping[int, Mapping[str, torch.Tensor]], accountant: PrivacyAccountant | None,
                config: HeteroFMConfig) -> HostState:
        loop = LoopState(epoch=cursor[0], batch=cursor[1],
                         params={k: v.detach().clone() for k, v in params.state_dict().items()},
                         optimizer=opt.state_dict(), settings={"agreed": config.agreed()})
        acc = None if accountant is None else PrivacyAccountant.from_json(accountant.to_json())
        kept = {int(e): {k: v.detach().clone() for k, v in snap.items()} for e, snap in snapshots.items()}
        return cls(run_id, aligned_digest(aligned), aligned_digest(aligned, ordered=False), len(aligned),
                   cursor[0], cursor[1], final, loop, acc, kept)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, loop_meta = self.loop.to_arrays()
        meta = {"party_state": "hetero_fm.host", "aligned_sha256": self.aligned_sha256,
                "aligned_set_sha256": self.aligned_set_sha256, "n_aligned": self.n_aligned,
                "agreed": self.loop.settings["agreed"], "loop": loop_meta,
                "accountant": None if self.accountant is None else self.accountant.to_json(),
                "snapshots": {str(e): sorted(snap) for e, snap in self.snapshots.items()}}
        out = {f"loop.{k}": v for k, v in arrays.items()}
        for e, snap in self.snapshots.items():
            out.update({f"snap.{e}.{k}": v.detach().numpy().copy() for k, v in snap.items()})
        return out, meta

    @classmethod
    def from_artifact(cls, art: Artifact, config: HeteroFMConfig) -> HostState:
        m = art.meta
        if m.get("party_state") != "hetero_fm.host" or m.get("role") != "host":
            raise ArtifactError(f"{art.path}: not a hetero_fm host checkpoint (party_state "
                                f"{m.get('party_state')!r}, role {m.get('role')!r})")
        _check_config(art, config)
        loop = _loop(art)
        for key in ("aligned_sha256", "aligned_set_sha256", "run_id"):
            if not isinstance(m.get(key), str):
                raise ArtifactError(f"{art.path}: field {key!r} must be a string")
        listed = m.get("snapshots")
        if not isinstance(listed, dict) or not all(str(e).isdigit() and isinstance(n, list) for e, n in
                                                   listed.items()):
            raise ArtifactError(f"{art.path}: field 'snapshots' must map epochs to parameter names")
        try:
            snaps = {int(e): {k: torch.from_numpy(art.arrays[f"snap.{e}.{k}"].copy()) for k in names}
                     for e, names in listed.items()}
        except KeyError as exc:
            raise ArtifactError(f"{art.path}: snapshot array {exc} is missing") from exc
        return cls(m["run_id"], m["aligned_sha256"], m["aligned_set_sha256"], int(m.get("n_aligned", 0)),
                   loop.epoch, loop.batch, bool(m.get("final")), loop, _accountant(m, art), snaps)

    def apply(self, params: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Load the parameters and the optimizer state into freshly built ``params`` / ``opt``."""
        params.load_state_dict(self.loop.params)
        opt.load_state_dict(self.loop.optimizer)


@dataclass
class GuestState:
    run_id: str
    aligned_sha256: str
    loop: LoopState
    clipped_values: int
    accountant: PrivacyAccountant | None
    epoch_seconds: float = 0.0
    #: several hosts (issue #11): the label-DP accountant of each host's releases (``accountant`` is None)
    accountants: dict[str, PrivacyAccountant] | None = None
    #: validation releases so far (in every host's account; counted once when hosts collude)
    val_releases: int = 0
    #: hosts dropped under host_failure="continue": name -> step and error
    dropped: dict[str, str] = field(default_factory=dict)

    def to_arrays(self, config: HeteroFMConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, loop_meta = self.loop.to_arrays()
        meta = {"party_state": "hetero_fm.guest", "aligned_sha256": self.aligned_sha256,
                "agreed": config.agreed(), "loop": loop_meta, "clipped_values": self.clipped_values,
                "epoch_seconds": self.epoch_seconds,
                "accountant": None if self.accountant is None else self.accountant.to_json()}
        if self.accountants is not None:  # several hosts only: a one-host checkpoint is as it always was
            meta.update({"accountants": {h: a.to_json() for h, a in self.accountants.items()},
                         "val_releases": self.val_releases, "dropped_hosts": dict(self.dropped)})
        return {f"loop.{k}": v for k, v in arrays.items()}, meta

    @classmethod
    def from_artifact(cls, art: Artifact, config: HeteroFMConfig) -> GuestState:
        m = art.meta
        if m.get("party_state") != "hetero_fm.guest" or m.get("role") != "guest":
            raise ArtifactError(f"{art.path}: not a hetero_fm guest checkpoint (party_state "
                                f"{m.get('party_state')!r}, role {m.get('role')!r})")
        _check_config(art, config)
        clipped = m.get("clipped_values")
        if not isinstance(clipped, int) or clipped < 0 or not isinstance(m.get("aligned_sha256"), str):
            raise ArtifactError(f"{art.path}: fields 'clipped_values'/'aligned_sha256' are invalid")
        accs = m.get("accountants")
        if accs is not None and not isinstance(accs, dict):
            raise ArtifactError(f"{art.path}: field 'accountants' must map hosts to accountants")
        per_host = (None if accs is None
                    else {str(h): _accountant({"accountant": a}, art) for h, a in accs.items()})
        dropped = m.get("dropped_hosts") or {}
        val = m.get("val_releases", 0)
        if not isinstance(dropped, dict) or not isinstance(val, int) or val < 0:
            raise ArtifactError(f"{art.path}: fields 'dropped_hosts'/'val_releases' are invalid")
        return cls(str(m["run_id"]), m["aligned_sha256"], _loop(art), clipped, _accountant(m, art),
                   float(m.get("epoch_seconds", 0.0)),
                   None if per_host is None else {h: a for h, a in per_host.items() if a is not None},
                   val, {str(h): str(v) for h, v in dropped.items()})
