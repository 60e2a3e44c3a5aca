"""A client of the federated MF: one user's device or a silo of many users (same code).

It answers the server through the party layer's :func:`~fedrec.protocols.party.serve` with the handler
table :meth:`FedMFClient.handlers` (the conversation is in :mod:`.messages`, the math in :mod:`.core`):

* ``Hello``: the agreed config and the catalogue (size and SHA-256) must equal ours;
* ``KeyRequest`` (the key holder only): a fresh CKKS context, its secret context sealed to every other
  client of the roster, ``Enc(θ_0)``; ``KeyDelivery``: our own key must be in the roster under our name
  (and the roster must match ``roster_sha256`` when pinned); the others open their box
  (:mod:`.keys`);
* secure sums (:mod:`.masking`): ``MaskRequest``, ``ShareRequest``, then ``StatsRequest`` (our
  ``[Σ r, N, per-item counts]``) or ``RoundRequest`` (decrypt ``θ_t``, ``E`` local epochs on our users,
  ``Δ_c`` for the whole catalogue, mask, encrypt), ``UnmaskRequest``;
* ``StatsResult``: ``μ`` and the global item counts; ``Finish``: the final ``θ_T``, on which the users
  are refit (``E`` epochs) for :meth:`FedMFClient.export_bundle`.

Retries: a ``RoundRequest`` for the round we last worked on (the server retries a failed round)
restarts from our users as they were before it, so a retried round is computed once.

Checkpoints (``checkpoint=`` a :class:`~fedrec.protocols.checkpoint.Checkpointer` of our own; what they
hold: :class:`.state.ClientState`, with the **secret** CKKS context, files 0600): ``Checkpoint(R)``
writes our state after ``R`` rounds and answers its digest; ``Resume`` (after a ``Hello`` of the same
run) loads the offered checkpoint we hold with that digest: users, ``μ``, item counts, the shared key and
the roster, so that the rounds continue from ``R`` without a new key. A client that worked on round
``R`` which the server never aggregated (it crashed) thus goes back to its state before it. Everything we
refuse (wrong order, round, config, roster, a ciphertext that does not decrypt within
``model_bound``) is answered ``Rejected`` naming the field; the server counts it as our failure.
What leaves this client: public key material and sealed boxes (key holder), mask public keys, sealed
Shamir shares and revealed shares (masks on), and ciphertexts of the same size whatever we rated.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedrec.artifacts import ArtifactError
from fedrec.crypto.backend import CryptoBackend, CryptoError
from fedrec.data.idmap import id_keys
from fedrec.profiling import StageClock
from fedrec.protocols import party
from fedrec.protocols.fedmf import core, keys
from fedrec.protocols.fedmf.config import PROTOCOL, PROTOCOL_VERSION, FedMFConfig, catalogue_digest
from fedrec.protocols.fedmf.core import ClientData, ItemModel, UserState
from fedrec.protocols.fedmf.masking import ClientMasks, mask_round_id
from fedrec.protocols.fedmf.messages import (
    Finish,
    KeyAck,
    KeyBundle,
    KeyDelivery,
    KeyRequest,
    MaskAdvert,
    MaskRequest,
    RoundRequest,
    SealedShares,
    ShareRequest,
    StatsRequest,
    StatsResult,
    UnmaskRequest,
    UnmaskShares,
    Upload,
)
from fedrec.protocols.fedmf.state import ClientState, data_digest
from fedrec.protocols.messages import Ack, Checkpoint, Checkpointed, Done, Hello, Resume, ResumeAt
from fedrec.protocols.party import Rejection
from fedrec.transport.channel import Channel, Received

if TYPE_CHECKING:
    from fedrec.protocols.checkpoint import Checkpointer

__all__ = ["FedMFClient", "client_data"]

logger = logging.getLogger(__name__)


def client_data(ratings: pd.DataFrame, catalogue: Sequence[Any]) -> tuple[ClientData, list[Any], list[Any]]:
    """``(ClientData, raw user ids in inner order, raw catalogue ids)`` from ``user_id, item_id, rating``
    rows; ids compare by :func:`fedrec.data.idmap.id_key`. An item outside the catalogue, a missing
    column or a non-finite rating is refused naming the row."""
    for col in ("user_id", "item_id", "rating"):
        if col not in ratings.columns:
            raise ValueError(f"client ratings: missing column {col!r}; found {list(ratings.columns)}")
    cat_keys = pd.Index(id_keys(catalogue, source="catalogue"))
    if cat_keys.has_duplicates:
        raise ValueError(f"catalogue: item {cat_keys[cat_keys.duplicated()][0]!r} appears twice")
    ukeys = id_keys(ratings["user_id"], source="ratings user_id")
    ikeys = id_keys(ratings["item_id"], source="ratings item_id")
    ipos = cat_keys.get_indexer(pd.Index(ikeys, dtype=object))
    if (ipos < 0).any():
        row = int(np.flatnonzero(ipos < 0)[0])
        raise ValueError(f"client ratings: row {row}: item {ikeys[row]!r} is not in the catalogue of "
                         f"{len(cat_keys)} items")
    r = ratings["rating"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"client ratings: row {int(np.argmin(np.isfinite(r)))}: rating is not finite")
    first_raw = dict(zip(ukeys, ratings["user_id"].tolist(), strict=True))
    users = sorted(first_raw)
    upos = pd.Index(users).get_indexer(pd.Index(ukeys, dtype=object))
    data = ClientData(users, upos, ipos, r, len(cat_keys))
    return data, [first_raw[u] for u in users], list(catalogue)


class FedMFClient:
    """``FedMFClient(channel, data, config, name=..., keys=X25519Keys).serve()``; see the module docstring.

    ``data``: :class:`~.core.ClientData` (:func:`client_data` builds it from a ratings frame);
    ``keys``: this client's long-term X25519 key pair (its CURVE key; sealed boxes reach it there);
    ``user_raw`` / ``catalogue``: raw ids for the exported bundle (default: the keys);
    ``backend_cache``: in-process simulations only (:func:`.keys.load_secret_context`);
    ``checkpoint``: this client's own checkpoint directory (``None``: it keeps none and cannot resume)."""

    def __init__(self, channel: Channel | None, data: ClientData, config: FedMFConfig, *, name: str,
                 keys: Any, server: str = "server", user_raw: Sequence[Any] | None = None,
                 catalogue: Sequence[Any] | None = None,
                 backend_cache: dict[str, CryptoBackend] | None = None,
                 checkpoint: Checkpointer | None = None) -> None:
        self.channel, self.data, self.config, self.name, self.keys = channel, data, config, name, keys
        self.checkpoint = checkpoint
        #: the cursor this run resumed from (``None``: started afresh)
        self.resumed_from: int | None = None
        self._roster: tuple[list[str], list[bytes]] | None = None
        self.public_context_sha256: str | None = None
        self.server = server
        self.backend_cache = backend_cache
        self.user_raw = list(user_raw) if user_raw is not None else list(data.users)
        self.catalogue = list(catalogue) if catalogue is not None else [str(j) for j in range(data.n_items)]
        if len(self.catalogue) != data.n_items:
            raise ValueError(f"FedMFClient: catalogue of {len(self.catalogue)} ids for {data.n_items} items")
        self.digest = catalogue_digest(id_keys(self.catalogue, source="catalogue"))
        self.users = UserState.initial(data, config)
        self.stats = party.ServeStats()
        self.run_id: str | None = None
        self.backend: CryptoBackend | None = None
        self.masks: ClientMasks | None = None
        self.mu: float | None = None
        self.item_counts: np.ndarray | None = None
        self.items: ItemModel | None = None
        self.finished = False
        self.clipped = 0
        self.rounds_done: list[int] = []
        self.timings: dict[str, float] = {"round_seconds": 0.0, "crypto_seconds": 0.0}
        #: seconds per stage (decrypt model, local training, mask, encrypt upload; fedrec.profiling)
        self.stages = StageClock()
        self._pending: tuple[int, UserState] | None = None
        #: our mask group in each secure sum (purpose, round, attempt)
        self._groups: dict[tuple[str, int, int], int] = {}

    # ------------------------------------------------------------------ serving
    def handlers(self) -> dict[type[Any], party.Handler]:
        return {Hello: self._on_hello, KeyRequest: self._on_key_request, KeyDelivery: self._on_key_delivery,
                MaskRequest: self._on_mask_request, ShareRequest: self._on_share_request,
                StatsRequest: self._on_stats_request, StatsResult: self._on_stats_result,
                RoundRequest: self._on_round, UnmaskRequest: self._on_unmask, Finish: self._on_finish,
                Done: self._on_done, Checkpoint: self._on_checkpoint, Resume: self._on_resume}

    def serve(self) -> FedMFClient:
        """Answer the server until ``Done``; returns ``self`` (final model and users, if it finished)."""
        if self.channel is None:
            raise RuntimeError("FedMFClient.serve: no channel")
        party.serve(self.channel, self.server, self.handlers(), timeout=self.config.idle_timeout,
                    until=(Done,), stats=self.stats, who=f"client {self.name}")
        return self

    @property
    def size(self) -> int:
        return core.model_size(self.data.n_items, self.config.n_factors)

    # ------------------------------------------------------------------ set-up
    def _on_hello(self, rec: Received[Hello]) -> Ack:
        c = self.config
        party.check_hello(rec.msg, PROTOCOL, PROTOCOL_VERSION, c.agreed(self.data.n_items, self.digest),
                          c.agreed_names, who="client")
        if not rec.msg.run_id or len(rec.msg.run_id) > 64:
            raise Rejection("run_id", "must be 1..64 characters")
        self.run_id = rec.msg.run_id
        self.backend = self.masks = self.mu = self.item_counts = self.items = self._pending = None
        self.users = UserState.initial(self.data, c)
        self.rounds_done, self.clipped, self.finished, self._groups = [], 0, False, {}
        self._roster, self.public_context_sha256, self.resumed_from = None, None, None
        return Ack("hello")

    def _check_roster(self, names: list[str], public_keys: list[bytes]) -> None:
        if self.run_id is None:
            raise Rejection("step", "key set-up before Hello")
        if self.name not in names:
            raise Rejection("names", f"this client {self.name!r} is not in the roster")
        if public_keys[names.index(self.name)] != self.keys.public:
            raise Rejection("public_keys", f"the roster lists another key for {self.name!r} than ours")
        pin = self.config.roster_sha256
        if pin is not None and keys.roster_digest(names, public_keys) != pin:
            raise Rejection("public_keys", "the roster does not match roster_sha256 (a key was substituted?)")

    def _on_key_request(self, rec: Received[KeyRequest]) -> KeyBundle:
        msg = rec.msg
        self._check_roster(msg.names, msg.public_keys)
        assert self.run_id is not None
        backend = keys.new_backend(self.config)
        public = backend.public_bytes()
        digest = hashlib.sha256(public).hexdigest()
        others = [(n, pk) for n, pk in zip(msg.names, msg.public_keys, strict=True) if n != self.name]
        sealed_context, boxes = keys.seal_secret_context(keys.secret_context(backend), others,
                                                         run_id=self.run_id, public_sha256=digest)
        by_name = dict(zip([n for n, _ in others], boxes, strict=True))
        sealed = [by_name.get(n, b"") for n in msg.names]
        theta0 = core.initial_items(self.data.n_items, self.config).pack()
        self.backend = backend
        logger.info("client %s: made the CKKS key (public context sha256 %s) and sealed it to %d client(s)",
                    self.name, digest[:16], len(others))
        return KeyBundle(public, sealed_context, sealed, keys.encrypt_for_wire(backend, theta0))

    def _on_key_delivery(self, rec: Received[KeyDelivery]) -> KeyAck:
        msg = rec.msg
        self._check_roster(msg.names, msg.public_keys)
        assert self.run_id is not None
        digest = hashlib.sha256(msg.public_context).hexdigest()
        if msg.holder == self.name:
            if self.backend is None or self.backend.public_bytes() != msg.public_context:
                raise Rejection("public_context", "is not the context this key holder made")
        else:
            try:
                secret = keys.open_secret_context(msg.sealed_context, msg.sealed_key, self.keys.secret,
                                                  self.keys.public, run_id=self.run_id, me=self.name,
                                                  public_sha256=digest)
                self.backend = keys.load_secret_context(secret, digest, self.config, self.backend_cache)
            except CryptoError as exc:
                raise Rejection("sealed_key", str(exc)) from exc
        self._set_roster(msg.names, msg.public_keys)
        self.public_context_sha256 = digest
        return KeyAck(digest)

    def _set_roster(self, names: list[str], public_keys: list[bytes]) -> None:
        assert self.run_id is not None
        roster = {n: (j, pk) for j, (n, pk) in enumerate(zip(names, public_keys, strict=True))}
        self.masks = ClientMasks(self.name, self.keys, roster, self.run_id, self.config, self.config.masks)
        self._roster = (list(names), [bytes(k) for k in public_keys])

    def _require_keys(self, what: str) -> tuple[CryptoBackend, ClientMasks]:
        if self.backend is None or self.masks is None:
            raise Rejection("step", f"{what} before the key set-up")
        return self.backend, self.masks

    # ------------------------------------------------------------------ secure sums
    def _on_mask_request(self, rec: Received[MaskRequest]) -> MaskAdvert:
        _, masks = self._require_keys("MaskRequest")
        if not self.config.masks:
            raise Rejection("masks", "masks are off in the agreed config")
        m = rec.msg
        self._check_cursor(m.purpose, m.round, m.attempt, m.group)
        self._groups = {k: g for k, g in self._groups.items() if k[1] >= m.round - 2}
        self._groups[(m.purpose, m.round, m.attempt)] = m.group
        return MaskAdvert(masks.advertise(self._rid(m.purpose, m.round, m.attempt)))

    def _check_cursor(self, purpose: str, round_: int, attempt: int, group: int = 0) -> None:
        """A round, attempt or group beyond what the agreed config allows is refused: the server's numbers
        never make this client keep state for rounds that cannot exist (issue #9)."""
        c = self.config
        if purpose == "stats" and round_ != 0:
            raise Rejection("round", f"the statistics have no round {round_}")
        if not 0 <= round_ < c.rounds:
            raise Rejection("round", f"round {round_} beyond the agreed {c.rounds} round(s)")
        if not 0 <= attempt <= c.retries:
            raise Rejection("attempt", f"attempt {attempt} beyond the agreed {c.retries} retr(y/ies)")
        roster = len(self.masks.roster) if self.masks is not None else 1
        if not 0 <= group < max(roster, 1):
            raise Rejection("group", f"group {group} of a roster of {roster}")

    def _rid(self, purpose: str, round_: int, attempt: int) -> int:
        return mask_round_id(purpose, round_, attempt, self._groups.get((purpose, round_, attempt), 0))

    def _on_share_request(self, rec: Received[ShareRequest]) -> SealedShares:
        _, masks = self._require_keys("ShareRequest")
        m = rec.msg
        self._check_cursor(m.purpose, m.round, m.attempt)
        return SealedShares(masks.share(self._rid(m.purpose, m.round, m.attempt), m.names))

    def _upload(self, purpose: str, round_: int, attempt: int, values: np.ndarray, participants: list[str],
                mask_keys: list[bytes], shares: list[bytes]) -> Upload:
        backend, masks = self._require_keys(purpose)
        self._check_cursor(purpose, round_, attempt)
        if self.name not in participants:
            raise Rejection("participants", f"this client {self.name!r} is not among them")
        if self.config.masks != bool(mask_keys):
            raise Rejection("mask_keys", f"masks are {'on' if self.config.masks else 'off'} in the agreed "
                                         "config")
        if self.config.masks and len(participants) < min(2, len(masks.roster)):
            raise Rejection("participants", "a masked sum needs another participant: alone, the unmasking "
                                            "would reveal this client's upload")
        t0 = time.perf_counter()
        rid = self._rid(purpose, round_, attempt)
        if self.config.masks:
            masks.receive(rid, participants, shares)
        tag = "" if purpose == "train" else f" ({purpose})"
        with self.stages("mask" + tag):
            masked = masks.mask(values, rid, participants, mask_keys)
        with self.stages("encrypt" + tag):
            blob = keys.encrypt_for_wire(backend, masked)
        self.stages.count("upload_bytes" + tag, len(blob))
        self.timings["crypto_seconds"] += time.perf_counter() - t0
        return Upload(purpose, round_, attempt, blob)

    def _on_stats_request(self, rec: Received[StatsRequest]) -> Upload:
        m, d = rec.msg, self.data
        values = np.concatenate([[d.r.sum(), float(d.r.size)], d.item_counts()])
        return self._upload("stats", 0, m.attempt, values, m.participants, m.mask_keys, m.shares)

    def _decrypt(self, blob: bytes, size: int, bound: float, what: str) -> np.ndarray:
        backend, _ = self._require_keys(what)
        try:
            return backend.decrypt(keys.read_ciphertext(backend, blob, size), bound=bound)
        except CryptoError as exc:
            raise Rejection(what, str(exc)) from exc

    def _on_stats_result(self, rec: Received[StatsResult]) -> Ack:
        n = self.data.n_items
        total = self._decrypt(rec.msg.total, n + 2, 2.0 ** 45, "total")
        count, counts = round(float(total[1])), np.round(total[2:])
        if count < 1 or np.any(counts < 0) or abs(float(counts.sum()) - count) > 0.5:
            raise Rejection("total", f"inconsistent statistics: {count} ratings, item counts summing to "
                                     f"{float(counts.sum()):.0f}")
        self.mu, self.item_counts = float(total[0]) / count, counts
        logger.info("client %s: global mean %.4f over %d ratings", self.name, self.mu, count)
        return Ack("stats")

    def _on_round(self, rec: Received[RoundRequest]) -> Upload:
        m, c = rec.msg, self.config
        if self.mu is None or self.item_counts is None:
            raise Rejection("step", "RoundRequest before the global statistics")
        if self.rounds_done and m.round < self.rounds_done[-1]:
            raise Rejection("round", f"round {m.round} after round {self.rounds_done[-1]}")
        self._check_cursor("train", m.round, m.attempt)
        t0 = time.perf_counter()
        if self._pending is not None and self._pending[0] == m.round:
            self.users = self._pending[1].copy()  # a retried round starts from the users before it
        else:
            self._pending = (m.round, self.users.copy())
        with self.stages("decrypt"):
            theta = self._decrypt(m.model, self.size, c.model_bound, "model")
        with self.stages("local training"):
            items = ItemModel.unpack(theta, self.data.n_items, c.n_factors)
            core.local_epochs(self.data, self.users, items, self.mu, c)
            g, h = core.item_gradient(self.data, self.users, items, self.mu, c)
            delta, clipped = core.upload_vector(g, h, self.item_counts, c)
        if clipped:
            self.clipped += clipped
            logger.warning("client %s: round %d: %d upload value(s) beyond value_bound %g clipped", self.name,
                           m.round, clipped, c.value_bound)
        self.rounds_done.append(m.round)
        self.timings["round_seconds"] += time.perf_counter() - t0
        return self._upload("train", m.round, m.attempt, delta, m.participants, m.mask_keys, m.shares)

    def _on_unmask(self, rec: Received[UnmaskRequest]) -> UnmaskShares:
        _, masks = self._require_keys("UnmaskRequest")
        m = rec.msg
        self._check_cursor(m.purpose, m.round, m.attempt)
        try:
            b, s = masks.reveal(self._rid(m.purpose, m.round, m.attempt), m.survivors, m.dropped)
        except CryptoError as exc:
            raise Rejection("survivors", str(exc)) from exc
        return UnmaskShares(b, s)

    # ------------------------------------------------------------------ end
    def _on_finish(self, rec: Received[Finish]) -> Ack:
        if self.mu is None:
            raise Rejection("step", "Finish before the global statistics")
        if rec.msg.rounds > self.config.rounds:
            raise Rejection("rounds", f"{rec.msg.rounds} rounds done, more than the agreed "
                                      f"{self.config.rounds}")
        theta = self._decrypt(rec.msg.model, self.size, self.config.model_bound, "model")
        self.items = ItemModel.unpack(theta, self.data.n_items, self.config.n_factors)
        self._pending = None
        core.local_epochs(self.data, self.users, self.items, self.mu, self.config)
        self.finished = True
        logger.info("client %s: training finished after %d round(s) (took part in %d)", self.name,
                    rec.msg.rounds, len(set(self.rounds_done)))
        return Ack("finish")

    # ------------------------------------------------------------------ checkpoints
    def _agreed(self) -> dict[str, Any]:
        return self.config.agreed(self.data.n_items, self.digest)

    def _on_checkpoint(self, rec: Received[Checkpoint]) -> Checkpointed:
        msg, ckpt = rec.msg, self.checkpoint
        if ckpt is None:
            raise Rejection("checkpoint", "this client keeps no checkpoints")
        backend, _ = self._require_keys("Checkpoint")
        if self.mu is None or self.item_counts is None or self._roster is None or self.run_id is None:
            raise Rejection("step", "Checkpoint before the global statistics")
        r = msg.epoch
        if msg.batch != 0 or msg.final or not 0 <= r <= self.config.rounds:
            raise Rejection("epoch", f"checkpoint cursor e{r} b{msg.batch} final={msg.final}: fedmf "
                                     f"checkpoints "
                                     f"rounds 0..{self.config.rounds} (batch 0, not final)")
        if self.rounds_done and self.rounds_done[-1] >= r:
            raise Rejection("epoch", f"checkpoint at round {r} after working on round {self.rounds_done[-1]}")
        assert self.public_context_sha256 is not None
        state = ClientState(self.run_id, self.name, r, self._agreed(), data_digest(self.data), self.users.p,
                            self.users.bu, self.mu, self.item_counts, keys.secret_context(backend),
                            self.public_context_sha256, *self._roster, sorted(set(self.rounds_done)),
                            self.clipped)
        arrays, meta = state.to_arrays()
        info = ckpt.save(r, 0, False, run_id=self.run_id, role="client", arrays=arrays, meta=meta)
        return Checkpointed(info.digest)

    def _on_resume(self, rec: Received[Resume]) -> ResumeAt:
        msg, ckpt = rec.msg, self.checkpoint
        if self.run_id is None or msg.run_id != self.run_id:
            raise Rejection("run_id", f"Resume for run {msg.run_id!r}, but the Hello said {self.run_id!r}")
        if ckpt is None:
            logger.warning("client %s: the server resumes run %s, but this client keeps no checkpoints",
                           self.name, msg.run_id)
            return ResumeAt(False)
        for ref in msg.checkpoints:
            info = ckpt.find(ref.epoch, ref.batch, ref.final, ref.peer_digest, msg.run_id)
            if info is None:
                continue
            try:
                state = ClientState.from_artifact(ckpt.load(info), name=self.name, agreed=self._agreed(),
                                                  data=self.data, public_key=self.keys.public)
                backend = keys.load_secret_context(state.secret_context, state.public_context_sha256,
                                                   self.config, self.backend_cache)
            except (ArtifactError, CryptoError) as exc:
                logger.error("client %s: checkpoint %s refused: %s", self.name, info.path, exc)
                raise Rejection("checkpoint", f"{info.path.name} refused: {exc}") from exc
            self._restore(state, backend)
            logger.info("client %s: resuming run %s at round %d (checkpoint %s)", self.name, msg.run_id,
                        state.rounds_done, info.path.name)
            return ResumeAt(True, info.epoch, info.batch, info.digest)
        logger.warning("client %s: none of the server's %d checkpoint(s) of run %s is held here", self.name,
                       len(msg.checkpoints), msg.run_id)
        return ResumeAt(False)

    def _restore(self, state: ClientState, backend: CryptoBackend) -> None:
        self.users = UserState(state.p, state.bu)
        self.mu, self.item_counts, self.backend = state.mu, state.item_counts, backend
        self.public_context_sha256 = state.public_context_sha256
        self._set_roster(state.roster, state.roster_keys)
        self.rounds_done, self.clipped = list(state.took_part), state.clipped
        self._pending, self._groups, self.items, self.finished = None, {}, None, False
        self.resumed_from = state.rounds_done

    def _on_done(self, rec: Received[Done]) -> Ack:
        logger.info("client %s: server is done (%s)", self.name, rec.msg.reason)
        return Ack("done")

    # ------------------------------------------------------------------ outputs
    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``r̂`` for inner user ids and catalogue positions (after ``Finish``), unclipped."""
        if self.items is None or self.mu is None:
            raise RuntimeError(f"client {self.name}: not finished (no final model)")
        q, b = self.items.q, self.items.b
        return (self.mu + self.users.bu[users] + b[items]
                + np.einsum("nk,nk->n", self.users.p[users], q[items]))

    def factors(self) -> dict[str, Any]:
        """What a serving bundle of our users holds (``score = a_u + b_i + <p_u, q_i>``): ``a_u = b_u``,
        ``p_u``, ``b_i = μ + b_i``, ``q_i`` over the whole catalogue, the raw ids, and the items each
        user rated (CSR ``seen_indptr``/``seen_indices``); :func:`training.fedmf_job.write_bundle`
        writes it as a :class:`serving.artifacts.ServingBundle`."""
        if self.items is None or self.mu is None:
            raise RuntimeError(f"client {self.name}: not finished (no final model to export)")
        d = self.data
        return {"user_ids": list(self.user_raw), "item_ids": list(self.catalogue),
                "a_u": self.users.bu.copy(), "p_u": self.users.p.copy(), "b_i": self.mu + self.items.b,
                "q_i": self.items.q.copy(),
                "seen_indptr": np.concatenate([[0], np.cumsum(d.counts)]).astype(np.int64),
                "seen_indices": d.i.copy(), "run_id": self.run_id}
