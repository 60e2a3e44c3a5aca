"""What a FedMF checkpoint holds, per role: explicit data (arrays + JSON through :mod:`fedrec.artifacts`,
never pickle), on the platform's :class:`~fedrec.protocols.checkpoint.Checkpointer`.

The cursor is the number of rounds done ``R`` (written as the Checkpointer's ``epoch = R, batch = 0``):
the state after round ``R - 1`` was aggregated, before round ``R``. ``R = 0`` is the state after the
set-up (key, global statistics).

* :class:`ServerState` — ``R``; ``Enc(θ_R)`` as the backend's serialized ciphertext bytes (at the wire
  level, read back through :func:`.keys.read_ciphertext`: size and level checked); the public context
  and its SHA-256 (no secret key: the server never had one); the roster (names and X25519 keys, in
  roster order: the masks' ids), the configured peers, who is in the job and who was left out and why;
  the agreed config with the catalogue's size and digest; each client's state digest at ``R`` (the
  two-phase agreement of :mod:`fedrec.protocols.checkpoint`); the secure-sum reports (the summary).
  The selection needs no RNG state: round ``t``'s clients are ``select_clients(alive, m, seed, t,
  attempt)``, a function of the restored ``alive`` and the agreed seed.
* :class:`ClientState` — ``R``; the users' ``p_u, b_u``; ``μ`` and the global item counts (the set-up's
  secure sum, not redone: with masks it is exact only up to the masks' rounding); the **secret CKKS
  context** (parameters, public and secret key: what decrypts ``Enc(θ)``; sensitive, files 0600 in a
  0700 directory, :mod:`fedrec.artifacts`), the roster, the rounds this client took part in, the
  clipping count; digests of its ratings and the agreed config.

A checkpoint of another agreed config, catalogue, roster or rating set, or of another client, is refused
with an :class:`~fedrec.artifacts.ArtifactError` naming the file and the field; a tampered one is refused
by the Checkpointer's content digest before any field is read.
What is never in a checkpoint: mask keys and Shamir shares (a resumed round draws fresh masks), the
server's sealed key boxes, a round's uploads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec.artifacts import Artifact, ArtifactError
from fedrec.protocols.fedmf.core import ClientData

__all__ = ["ClientState", "ServerState", "check_agreed", "data_digest"]

KEY_BYTES = 32


def _bytes_array(b: bytes) -> np.ndarray:
    return np.frombuffer(bytes(b), dtype=np.uint8).copy()


def _keys_array(keys: Sequence[bytes]) -> np.ndarray:
    if any(len(k) != KEY_BYTES for k in keys):
        raise ValueError(f"roster keys must be {KEY_BYTES} bytes each")
    flat = np.frombuffer(b"".join(bytes(k) for k in keys), dtype=np.uint8)
    return flat.reshape(len(keys), KEY_BYTES).copy()


def data_digest(data: ClientData) -> str:
    """SHA-256 of a client's ratings (user ids, then the ``u, i, r`` arrays in their sorted order)."""
    h = hashlib.sha256()
    for u in data.users:
        h.update(str(u).encode("utf-8") + b"\0")
    for arr in (data.u.astype("<i8"), data.i.astype("<i8"), data.r.astype("<f8")):
        h.update(arr.tobytes())
    return h.hexdigest()


def check_agreed(art: Artifact, mine: Mapping[str, Any]) -> None:
    """The checkpoint's agreed config (with the catalogue's size and digest) must equal ``mine``."""
    saved = art.meta.get("agreed")
    if not isinstance(saved, dict):
        raise ArtifactError(f"{art.path}: field 'agreed' is missing or not an object")
    bad = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if bad:
        raise ArtifactError(f"{art.path}: the checkpoint was written with another configuration or "
                            f"catalogue (field {bad[0]!r}: {saved.get(bad[0])!r} there, "
                            f"{mine.get(bad[0])!r} now); start the run afresh (--restart) or restore that "
                            f"configuration")


def _field(art: Artifact, name: str, kind: type | tuple[type, ...]) -> Any:
    value = art.meta.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        what = getattr(kind, "__name__", kind)
        raise ArtifactError(f"{art.path}: field {name!r} is missing or not a {what}")
    return value


def _array(art: Artifact, name: str, dtype: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    arr = art.arrays.get(name)
    if arr is None:
        raise ArtifactError(f"{art.path}: array {name!r} is missing")
    if arr.dtype != np.dtype(dtype) or arr.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        raise ArtifactError(f"{art.path}: array {name!r} is {arr.dtype}{list(arr.shape)}, expected "
                            f"{np.dtype(dtype)}{list(shape)}")
    return arr


def _roster(art: Artifact) -> tuple[list[str], list[bytes]]:
    names = _field(art, "roster", list)
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ArtifactError(f"{art.path}: field 'roster' must list unique client names")
    keys = _array(art, "roster_keys", np.uint8, (len(names), KEY_BYTES))
    return names, [bytes(k) for k in keys]


def _check_role(art: Artifact, party_state: str, role: str) -> None:
    m = art.meta
    if m.get("party_state") != party_state or m.get("role") != role:
        raise ArtifactError(f"{art.path}: not a {party_state} checkpoint (field 'party_state' "
                            f"{m.get('party_state')!r}, role {m.get('role')!r})")


@dataclass
class ServerState:
    """The server at cursor ``rounds_done`` (see the module docstring)."""

    run_id: str
    rounds_done: int
    agreed: dict[str, Any]
    roster: list[str]
    roster_keys: list[bytes]
    peers: list[str]
    alive: list[str]
    excluded: dict[str, str]
    public_context: bytes
    model: bytes
    client_digests: dict[str, str]
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def public_context_sha256(self) -> str:
        return hashlib.sha256(self.public_context).hexdigest()

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"model": _bytes_array(self.model), "public_context": _bytes_array(self.public_context),
                  "roster_keys": _keys_array(self.roster_keys)}
        meta = {"party_state": "fedmf.server", "rounds_done": self.rounds_done, "agreed": self.agreed,
                "roster": self.roster, "peers": self.peers, "alive": self.alive, "excluded": self.excluded,
                "public_context_sha256": self.public_context_sha256, "client_digests": self.client_digests,
                "model_sha256": hashlib.sha256(self.model).hexdigest(), "reports": self.reports}
        return arrays, meta

    @classmethod
    def from_artifact(cls, art: Artifact, agreed: Mapping[str, Any], client_keys: Mapping[str, bytes]
                      ) -> ServerState:
        """Read and check against the server's current ``agreed`` config and configured ``client_keys``."""
        _check_role(art, "fedmf.server", "server")
        check_agreed(art, agreed)
        names, keys = _roster(art)
        peers = _field(art, "peers", list)
        now = sorted(client_keys)
        if sorted(map(str, peers)) != now:
            diff = sorted(set(map(str, peers)) ^ set(now))
            raise ArtifactError(f"{art.path}: field 'peers': the checkpoint's clients differ from the "
                                f"configured ones (client {diff[0]!r} is in only one of them); start afresh "
                                f"(--restart) or restore that roster")
        for n, k in zip(names, keys, strict=True):
            if bytes(client_keys[n]) != k:
                raise ArtifactError(f"{art.path}: field 'roster_keys': client {n!r} has another public key "
                                    f"now than in the checkpoint; start afresh (--restart) or restore its "
                                    f"key")
        alive = _field(art, "alive", list)
        excluded = _field(art, "excluded", dict)
        digests = _field(art, "client_digests", dict)
        if not set(alive) <= set(names) or not all(isinstance(v, str) for v in [*excluded.values(),
                                                                                *digests.values()]):
            raise ArtifactError(f"{art.path}: fields 'alive'/'excluded'/'client_digests' are inconsistent")
        rounds = _field(art, "rounds_done", int)
        if not 0 <= rounds <= int(agreed["rounds"]):
            raise ArtifactError(f"{art.path}: field 'rounds_done' is {rounds}, outside 0..{agreed['rounds']}")
        public = _array(art, "public_context", np.uint8, (None,)).tobytes()
        model = _array(art, "model", np.uint8, (None,)).tobytes()
        if hashlib.sha256(public).hexdigest() != art.meta.get("public_context_sha256"):
            raise ArtifactError(f"{art.path}: field 'public_context_sha256' does not match the public "
                                "context")
        if hashlib.sha256(model).hexdigest() != art.meta.get("model_sha256"):
            raise ArtifactError(f"{art.path}: field 'model_sha256' does not match the model")
        reports = art.meta.get("reports", [])
        if not isinstance(reports, list):
            raise ArtifactError(f"{art.path}: field 'reports' must be a list")
        return cls(_field(art, "run_id", str), rounds, dict(agreed), names, keys, list(map(str, peers)),
                   list(alive), {str(k): v for k, v in excluded.items()}, public, model,
                   {str(k): v for k, v in digests.items()}, reports)


@dataclass
class ClientState:
    """One client at cursor ``rounds_done`` (see the module docstring)."""

    run_id: str
    name: str
    rounds_done: int
    agreed: dict[str, Any]
    data_sha256: str
    p: np.ndarray
    bu: np.ndarray
    mu: float
    item_counts: np.ndarray
    secret_context: bytes
    public_context_sha256: str
    roster: list[str]
    roster_keys: list[bytes]
    took_part: list[int]
    clipped: int

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"p": self.p, "bu": self.bu, "item_counts": self.item_counts,
                  "secret_context": _bytes_array(self.secret_context),
                  "roster_keys": _keys_array(self.roster_keys)}
        meta = {"party_state": "fedmf.client", "name": self.name, "rounds_done": self.rounds_done,
                "agreed": self.agreed, "data_sha256": self.data_sha256, "mu": self.mu,
                "public_context_sha256": self.public_context_sha256, "roster": self.roster,
                "took_part": self.took_part, "clipped": self.clipped}
        return arrays, meta

    @classmethod
    def from_artifact(cls, art: Artifact, *, name: str, agreed: Mapping[str, Any], data: ClientData,
                      public_key: bytes) -> ClientState:
        """Read and check against this client: its name, agreed config, ratings and X25519 key."""
        _check_role(art, "fedmf.client", "client")
        if art.meta.get("name") != name:
            raise ArtifactError(f"{art.path}: field 'name' is {art.meta.get('name')!r}: a checkpoint of "
                                f"another client than {name!r}")
        check_agreed(art, agreed)
        if art.meta.get("data_sha256") != data_digest(data):
            raise ArtifactError(f"{art.path}: field 'data_sha256': the checkpoint was written with other "
                                f"ratings than this client's; start afresh (--restart) or restore them")
        names, keys = _roster(art)
        if name not in names or keys[names.index(name)] != bytes(public_key):
            raise ArtifactError(f"{art.path}: field 'roster_keys': this client's key is not the one in the "
                                f"checkpoint's roster")
        k, n_u, n_i = int(agreed["n_factors"]), len(data.users), int(agreed["n_items"])
        mu = art.meta.get("mu")
        if not isinstance(mu, float) or not np.isfinite(mu):
            raise ArtifactError(f"{art.path}: field 'mu' must be a finite number")
        took = _field(art, "took_part", list)
        clipped = _field(art, "clipped", int)
        rounds = _field(art, "rounds_done", int)
        if not 0 <= rounds <= int(agreed["rounds"]) or not all(isinstance(t, int) and 0 <= t < rounds
                                                                for t in took) or clipped < 0:
            raise ArtifactError(f"{art.path}: fields 'rounds_done'/'took_part'/'clipped' are out of range")
        return cls(_field(art, "run_id", str), name, rounds, dict(agreed), art.meta["data_sha256"],
                   _array(art, "p", np.float64, (n_u, k)).copy(),
                   _array(art, "bu", np.float64, (n_u,)).copy(),
                   mu, _array(art, "item_counts", np.float64, (n_i,)).copy(),
                   _array(art, "secret_context", np.uint8, (None,)).tobytes(),
                   _field(art, "public_context_sha256", str), names, keys, took, clipped)
