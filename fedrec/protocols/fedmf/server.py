"""The server of the federated MF: drives the rounds and holds the item model **encrypted**, never a key.

The server holds ``Enc(θ)``, ``θ = [vec(Q), b]`` (:mod:`.core`), as one backend ``EncryptedVector``
under the clients' shared CKKS key, of which it has only the public context (relayed to it by the key
holder, :mod:`.keys`; its backend cannot decrypt: tested). It never sees a gradient or an item factor in
plaintext. Its loop (:meth:`FedMFServer.run`):

1. set-up: ``Hello`` to every client (a client that refuses or fails is left out of the job and
   logged); the key holder (first client of the roster by name) answers ``KeyRequest`` with the public
   context, the sealed secret contexts and ``Enc(θ_0)``; ``KeyDelivery`` relays every box; then the
   global statistics by a secure sum (``μ``, item counts: only the clients can decrypt them);
2. per round ``t``: select clients (:func:`.core.select_clients` among those not known dead), one
   secure sum of their ``Δ_c`` (``gather``: failures are data; an upload that does not deserialize as a
   ciphertext of the model's size at the wire level is that client's failure, naming it and the step),
   fewer than ``min_ok`` uploads -> :class:`~fedrec.protocols.party.RoundFailed`, retried ``retries``
   times with a fresh selection and fresh masks, then fatal; with masks on, the recovery step of
   :mod:`.masking` adds the plaintext correction;
3. ``θ_{t+1} = θ_t + Σ_c Δ_c``: ciphertext **additions only**;
4. ``Finish(Enc(θ_T))`` to every client still in the job, then ``Done``.

Checkpoints (``checkpoint=`` a :class:`~fedrec.protocols.checkpoint.Checkpointer`; what each role's
holds: :mod:`.state`). After the set-up (cursor ``R = 0``) and after every ``every_batches``-th round
(0 or 1: every round; always after the last), the two-phase agreement of
:mod:`fedrec.protocols.checkpoint`, with every client in the job as a responder: ``Checkpoint(R)`` to
each (it writes its state and answers its digest), then the server writes ``Enc(θ_R)`` and the digests
it got. A client that fails to checkpoint is logged (and left out only if it died): it keeps training,
but could not resume from there. A crash between the two leaves the clients one checkpoint ahead,
never behind (``keep >= 2``). On a restart under the same run id (the Checkpointer's ``run.json``):
``Hello``, then, if the server holds a checkpoint, ``Resume`` offering its newest one to each client
that was in the job there (with that client's digest); each loads its state at that cursor (a client
that had already worked on round ``R``, never aggregated, goes back to its state before it) and the
rounds continue from ``R`` with the restored ``Enc(θ_R)``, public context, roster and exclusions: no
new key, no new statistics, so the resumed run computes what the uninterrupted one would have (plain:
exactly; CKKS: within the noise; with masks: within their rounding, the masks being fresh). A client
that cannot resume (no such checkpoint, or it refuses it) is left out, naming why. A checkpoint of
another config, catalogue or roster is refused (:class:`~fedrec.artifacts.ArtifactError` naming the
field), as is a tampered one.

Why the ciphertexts' scale and level never change (CKKS). Clients fold the learning rate and the
per-item ``1/n_i`` into ``Δ_c = −η·g/n_i`` in plaintext before encrypting, so the SGD step
``θ ← θ − η·Σ g/n`` is ``θ ← θ + Σ Δ_c``. CKKS addition of two ciphertexts at the same level and scale
``Δ`` adds their polynomials coefficient-wise: the result has the same level and the same scale ``Δ``,
no rescale, no key; only the noise grows, additively (``≈ √(terms) · e_0`` with ``e_0`` a fresh
encryption's error, ``≈ 1e-12`` at the wire level of n8192: 1e-11 after 1000 additions, measured). A
plaintext multiply on the server (``η·Σ``) would instead consume a level per round and, without the
secret key, could never be refreshed: after ``depth`` rounds the model would be stuck. Masks' plaintext
correction is an ``add_plain`` (also level- and scale-preserving). The magnitudes stay far inside the
modulus room at the wire level (``2^46`` for n8192): ``|θ| <= model_bound`` (checked by every client at
decryption) and masks ``<= (|U|+1)·2^mask_scale_bits``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from fedrec import faults
from fedrec.artifacts import ArtifactError
from fedrec.compute.executor import Executor
from fedrec.crypto.backend import CryptoBackend, CryptoError, EncryptedVector, KeyPin, load_public
from fedrec.data.idmap import id_keys
from fedrec.profiling import StageClock
from fedrec.progress import progress_bar
from fedrec.protocols.fedmf import core, keys
from fedrec.protocols.fedmf.config import PROTOCOL, PROTOCOL_VERSION, FedMFConfig, catalogue_digest
from fedrec.protocols.fedmf.messages import (
    FedMFError,
    Finish,
    KeyAck,
    KeyBundle,
    KeyDelivery,
    KeyRequest,
    RoundRequest,
    StatsRequest,
    StatsResult,
)
from fedrec.protocols.fedmf.secure_sum import RequestFactory, RoundReport, SecureSum
from fedrec.protocols.fedmf.state import ServerState
from fedrec.protocols.messages import (
    Ack,
    Checkpoint,
    Checkpointed,
    CheckpointRef,
    Done,
    Hello,
    Resume,
    ResumeAt,
)
from fedrec.protocols.party import Peer, RoundFailed, gather
from fedrec.transport.channel import Channel
from fedrec.transport.errors import PeerDiedError
from fedrec.transport.wire import Message

if TYPE_CHECKING:
    from fedrec.protocols.checkpoint import Checkpointer

__all__ = ["FedMFPeer", "FedMFServer", "RoundReport"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class FedMFPeer(Peer):
    """The party layer's :class:`~fedrec.protocols.party.Peer` (kept as a name): its malformed or
    unexpected answers are already the peer's failure (:class:`FedMFError` when built with
    ``error=FedMFError``), which ``gather`` records, not an exception that ends the server."""


class FedMFServer:
    """``FedMFServer(peers, client_keys, config, catalogue).run()``; see the module docstring.

    ``peers``: one :class:`Peer` per client (:meth:`over_channel` makes them from a channel);
    ``client_keys``: each client's X25519 public key (its CURVE key), relayed in the roster;
    ``checkpoint``: where to checkpoint and resume from (its ``run.json`` gives the run id)."""

    def __init__(self, peers: Mapping[str, Peer], client_keys: Mapping[str, bytes], config: FedMFConfig,
                 catalogue: Sequence[Any], run_id: str | None = None,
                 checkpoint: Checkpointer | None = None, executor: Executor | None = None) -> None:
        missing = sorted(set(peers) - set(client_keys))
        if missing:
            raise ValueError(f"FedMFServer: no public key for client(s) {missing[:5]}")
        self.peers, self.config = dict(peers), config
        self.client_keys = {n: bytes(k) for n, k in client_keys.items()}
        self.n_items = len(catalogue)
        self.digest = catalogue_digest(id_keys(catalogue, source="catalogue"))
        self.checkpoint = checkpoint
        #: where the uploads of a secure sum are loaded and added (``[compute]``; ``None``: here)
        self.executor = executor
        self.run_id = run_id or (checkpoint.run_id if checkpoint is not None else uuid.uuid4().hex)
        #: the cursor this run resumed from (``None``: started afresh)
        self.resumed_from: int | None = None
        self.roster: list[str] = []
        self.alive: set[str] = set()
        self.excluded: dict[str, str] = {}
        self.dead: set[str] = set()
        self._public = b""
        self.backend: CryptoBackend | None = None
        self.model: EncryptedVector | None = None
        self.reports: list[RoundReport] = []
        #: seconds per stage (serialize model, deserialize uploads, aggregate, unmask, update model)
        self.stages = StageClock()
        self.rounds_done = 0
        self.public_context_sha256: str | None = None

    @classmethod
    def over_channel(cls, channel: Channel, client_keys: Mapping[str, bytes], config: FedMFConfig,
                     catalogue: Sequence[Any], run_id: str | None = None,
                     checkpoint: Checkpointer | None = None, executor: Executor | None = None) -> FedMFServer:
        peers = {n: FedMFPeer(channel, n, timeout=config.timeout, error=FedMFError) for n in channel.peers}
        return cls(peers, client_keys, config, catalogue, run_id, checkpoint, executor)

    @property
    def size(self) -> int:
        return core.model_size(self.n_items, self.config.n_factors)

    # ------------------------------------------------------------------ helpers
    def _drop(self, failures: Mapping[str, BaseException], why: str) -> None:
        for name, exc in failures.items():
            if isinstance(exc, PeerDiedError):
                self.dead.add(name)
            if isinstance(exc, PeerDiedError) or why:
                self.alive.discard(name)
                self.excluded.setdefault(name, f"{why or 'died'}: {exc}")

    def _gather(self, requests: Mapping[str, Message], expected: type[M], step: str, min_ok: int
                ) -> tuple[dict[str, M], dict[str, BaseException]]:
        if len(requests) < min_ok:
            raise RoundFailed(step, min_ok, {n: FedMFError(n, step, "not asked (not in the job)")
                                             for n in self.roster if n not in requests})
        results, failures = gather(self.peers, requests, expected, step=step, min_ok=min_ok)
        self._drop(failures, "")
        return results, failures

    def _ordered(self, names: Collection[str]) -> list[str]:
        return [n for n in self.roster if n in names]

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Hello, keys, global statistics (see the module docstring)."""
        self._hello()
        self._keys()
        self._stats()

    def _hello(self) -> None:
        c = self.config
        hello = Hello(PROTOCOL, PROTOCOL_VERSION, self.run_id, c.agreed(self.n_items, self.digest))
        ok, failures = self._gather({n: hello for n in sorted(self.peers)}, Ack, "fedmf/setup/hello",
                                    min_ok=min(c.min_ok, len(self.peers)))
        for name, exc in failures.items():
            self.excluded[name] = f"setup: {exc}"
            logger.error("server: client %r left out of the job: %s", name, exc)
        self.roster = sorted(ok)
        self.alive = set(self.roster)

    def _keys(self) -> None:
        step = "fedmf/setup/keys"
        while True:
            roster = self._ordered(self.alive)
            if len(roster) < self.config.min_ok:
                raise RoundFailed(step, self.config.min_ok, {n: FedMFError(n, step, e) for n, e in
                                                             self.excluded.items()})
            holder = roster[0]
            pks = [self.client_keys[n] for n in roster]
            try:
                bundle = self.peers[holder].ask(KeyRequest(roster, pks), KeyBundle, step)
                self._accept_bundle(holder, roster, bundle)
                break
            except (FedMFError, PeerDiedError, CryptoError) as exc:
                logger.error("server: key holder %r failed (%s); trying the next client", holder, exc)
                self.alive.discard(holder)
                if isinstance(exc, PeerDiedError):
                    self.dead.add(holder)
                self.excluded[holder] = f"key holder: {exc}"
        self.roster = roster
        assert self.public_context_sha256 is not None
        deliveries = {n: KeyDelivery(roster, pks, holder, self._public, bundle.sealed_context,
                                     bundle.sealed_keys[j]) for j, n in enumerate(roster)}
        acks, failures = self._gather(deliveries, KeyAck, "fedmf/setup/key-delivery",
                                      min_ok=min(self.config.min_ok, len(roster)))
        for n, a in acks.items():
            if a.context_sha256 != self.public_context_sha256:
                failures[n] = FedMFError(n, "fedmf/setup/key-delivery", "acknowledged another context")
        self._drop(failures, "key set-up")
        logger.info("server: %d client(s) hold the key (holder %r); public context sha256 %s",
                    len(self.alive), holder, self.public_context_sha256[:16])

    def _accept_bundle(self, holder: str, roster: list[str], bundle: KeyBundle) -> None:
        step = "fedmf/setup/keys"
        if len(bundle.sealed_keys) != len(roster) or bundle.sealed_keys[0]:
            raise FedMFError(holder, step, f"{len(bundle.sealed_keys)} sealed keys for a roster of "
                                           f"{len(roster)} (and none for itself)")
        try:
            backend = load_public(bundle.public_context, KeyPin(None, peer=holder))
        except CryptoError as exc:
            raise FedMFError(holder, step, f"public context refused: {exc}", "public_context") from exc
        if backend.name != self.config.backend:
            raise FedMFError(holder, step, f"public context is {backend.name!r}, the config says "
                                           f"{self.config.backend!r}", "public_context")
        preset = getattr(getattr(backend, "preset", None), "name", None)
        if backend.name == "ckks" and preset != self.config.ckks_preset:
            raise FedMFError(holder, step, f"public context is CKKS {preset!r}, the agreed ckks_preset is "
                                           f"{self.config.ckks_preset!r}", "ckks_preset")
        if backend.has_secret_key and backend.name != "plain":
            raise FedMFError(holder, step, "the public context carries a secret key", "public_context")
        try:
            model = keys.read_ciphertext(backend, bundle.model, self.size)
        except CryptoError as exc:
            raise FedMFError(holder, step, f"initial model refused: {exc}", "model") from exc
        self.backend, self.model, self._public = backend, model, bundle.public_context
        self.public_context_sha256 = hashlib.sha256(bundle.public_context).hexdigest()

    def _stats(self) -> None:
        c = self.config
        for attempt in range(c.retries + 1):
            participants = self._ordered(self.alive)
            def request(p: list[str], k: list[bytes], s: list[bytes], a: int = attempt) -> Message:
                return StatsRequest(a, p, k, s)

            try:
                total, ok, _ = self.secure_sum("stats", 0, attempt, participants, self.n_items + 2, request)
                break
            except RoundFailed as exc:
                if attempt == c.retries:
                    raise
                logger.warning("server: statistics attempt %d failed (%s); retrying", attempt, exc)
        assert self.backend is not None
        # clients left out of the statistics are left out of the job: their ratings are not counted
        for n in set(self.alive) - set(ok):
            self.alive.discard(n)
            self.excluded.setdefault(n, "no statistics")
        blob = self.backend.serialize(total)
        acks, failures = self._gather({n: StatsResult(blob) for n in self._ordered(self.alive)}, Ack,
                                      "fedmf/setup/stats-result", min_ok=min(c.min_ok, len(self.alive)))
        self._drop(failures, "statistics")

    # ------------------------------------------------------------------ secure sum
    def secure_sum(self, purpose: str, round_: int, attempt: int, selected: list[str], length: int,
                   make_request: RequestFactory
                   ) -> tuple[EncryptedVector, list[str], dict[str, BaseException]]:
        """One secure sum over ``selected`` (:class:`.secure_sum.SecureSum`): ``(Enc(Σ x_c over the
        clients that counted), their names, failures)``; :class:`RoundFailed` below ``min_ok``."""
        assert self.backend is not None
        summer = SecureSum(self.config, self.backend, self._gather, self.roster, self.client_keys,
                           self.run_id, self.stages, self.executor)
        acc, ok, failures, report = summer(purpose, round_, attempt, selected, length, make_request)
        self.reports.append(report)
        return acc, ok, failures

    # ------------------------------------------------------------------ rounds
    def train_round(self, t: int) -> None:
        """Round ``t`` with its retries (see the module docstring)."""
        c, backend = self.config, self.backend
        assert backend is not None and self.model is not None
        m = c.selected_per_round(len(self.roster))
        for attempt in range(c.retries + 1):
            pool = self._ordered(self.alive)
            selected = core.select_clients(pool, min(m, len(pool)), c.seed, t, attempt)
            with self.stages("serialize model"):
                blob = backend.serialize(self.model)
            self.stages.count("model_bytes", len(blob))

            def request(p: list[str], k: list[bytes], s: list[bytes], a: int = attempt, m: bytes = blob
                        ) -> Message:
                return RoundRequest(t, a, p, k, s, m)

            try:
                acc, ok, failures = self.secure_sum("train", t, attempt, selected, self.size, request)
            except RoundFailed as exc:
                if attempt == c.retries:
                    raise
                logger.warning("server: round %d attempt %d failed (%s); retrying with fresh masks", t,
                               attempt, exc)
                continue
            tc = time.perf_counter()
            self.model = backend.add(self.model, acc)
            self.stages.add("update model", time.perf_counter() - tc)
            self.reports[-1].server_crypto_seconds += time.perf_counter() - tc
            r = self.reports[-1]
            logger.info("server: round %d/%d: %d of %d upload(s) added (%.2f s%s)", t + 1, c.rounds, len(ok),
                        len(selected), r.seconds, f", {len(failures)} failed" if failures else "")
            return

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_due(self) -> bool:
        """After every ``every_batches``-th round (0 or 1: every round) and after the last."""
        ckpt = self.checkpoint
        return ckpt is not None and (self.rounds_done % max(ckpt.every_batches, 1) == 0
                                     or self.rounds_done == self.config.rounds)

    def _checkpoint(self) -> None:
        """The clients in the job first (each answers its state's digest), then ours (module docstring)."""
        ckpt = self.checkpoint
        if ckpt is None:
            return
        assert self.backend is not None and self.model is not None
        r = self.rounds_done
        step = f"fedmf/r{r}/checkpoint"
        names = self._ordered(self.alive)
        acks, failures = self._gather({n: Checkpoint(r, 0, False) for n in names}, Checkpointed, step,
                                      min_ok=0)
        for n, exc in failures.items():
            logger.error("server: client %r did not checkpoint round %d (it could not resume from it): %s",
                         n, r, exc)
        state = ServerState(self.run_id, r, self.config.agreed(self.n_items, self.digest), list(self.roster),
                            [self.client_keys[n] for n in self.roster], sorted(self.client_keys),
                            self._ordered(self.alive), dict(self.excluded), self._public,
                            self.backend.serialize(self.model), {n: a.digest for n, a in acks.items()},
                            [rep.to_state() for rep in self.reports])
        arrays, meta = state.to_arrays()
        faults.reached(f"job/checkpoint/r{r}")
        ckpt.save(r, 0, False, run_id=self.run_id, role="server", arrays=arrays, meta=meta)

    def _resume(self) -> bool:
        """Offer our newest checkpoint of this run to the clients that were in the job there; restore it.
        ``False``: no checkpoint, start afresh."""
        ckpt = self.checkpoint
        infos = [] if ckpt is None else ckpt.list(self.run_id, role="server")
        if ckpt is None or not infos:
            return False
        info = infos[0]
        state = ServerState.from_artifact(ckpt.load(info), self.config.agreed(self.n_items, self.digest),
                                          self.client_keys)
        step = f"fedmf/r{state.rounds_done}/resume"
        back = set(self.roster)
        offers = {n: Resume(self.run_id, [CheckpointRef(state.rounds_done, 0, False, info.digest,
                                                        state.client_digests[n])])
                  for n in state.alive if n in back and n in state.client_digests}
        answers, failures = self._gather(offers, ResumeAt, step, min_ok=0)
        excluded = dict(state.excluded)
        for n in state.alive:
            if n in answers and answers[n].found and answers[n].epoch == state.rounds_done:
                continue
            why = (f"did not come back: {self.excluded.get(n, 'no Hello')}" if n not in back else
                   "wrote no checkpoint at that round" if n not in state.client_digests else
                   f"{failures[n]}" if n in failures else "does not hold that checkpoint")
            excluded[n] = f"resume at round {state.rounds_done}: {why}"
            logger.error("server: client %r left out of the resumed run: %s", n, excluded[n])
        for n in back - set(state.roster):
            excluded.setdefault(n, "not in the resumed run's roster")
        try:
            pin = KeyPin(state.public_context_sha256, peer="checkpoint")
            backend = load_public(state.public_context, pin)
            model = keys.read_ciphertext(backend, state.model, self.size)
        except CryptoError as exc:
            raise ArtifactError(f"{info.path}: field 'model'/'public_context' refused: {exc}") from exc
        self.backend, self.model, self._public = backend, model, state.public_context
        self.public_context_sha256 = state.public_context_sha256
        self.roster = state.roster
        self.alive = {n for n in state.alive if n not in excluded}
        self.excluded = excluded
        self.rounds_done = state.rounds_done
        try:
            self.reports = [RoundReport.from_state(r) for r in state.reports]
        except (ValueError, TypeError, KeyError) as exc:
            raise ArtifactError(f"{info.path}: field 'reports': {exc}") from exc
        self.resumed_from = state.rounds_done
        logger.info("server: resuming run %s at round %d (checkpoint %s) with %d client(s) in the job",
                    self.run_id, state.rounds_done, info.path.name, len(self.alive))
        return True

    def finish(self) -> None:
        """``Finish(Enc(θ_T))`` then ``Done`` to every client still in the job."""
        assert self.backend is not None and self.model is not None
        blob = self.backend.serialize(self.model)
        names = self._ordered(self.alive)
        _, failures = self._gather({n: Finish(self.rounds_done, blob) for n in names}, Ack, "fedmf/finish",
                                   min_ok=0)
        for n, exc in failures.items():
            logger.error("server: client %r did not finish: %s", n, exc)
        self.close("training finished")

    def close(self, reason: str) -> None:
        """``Done`` to every client not known dead, in the job or left out (failures only logged)."""
        names = [n for n in sorted(self.peers) if n not in self.dead]
        _, failures = gather(self.peers, {n: Done(reason) for n in names}, Ack, step="fedmf/done", min_ok=0)
        for n, exc in failures.items():
            logger.info("server: Done not acknowledged by %r: %s", n, exc)

    def run(self) -> FedMFServer:
        """Set-up, ``rounds`` rounds, finish; returns ``self`` (:meth:`summary`)."""
        t0 = time.perf_counter()
        if not self.config.masks:
            logger.warning("server: secure aggregation is OFF (masks = false): a client colluding with the "
                           "server (or a Sybil client the server registers, which gets the shared key) "
                           "decrypts every upload; docs/SECURITY.md")
        try:
            self._hello()
            if not self._resume():
                self._keys()
                self._stats()
                self._checkpoint()
            c = self.config
            bar = progress_bar(total=c.rounds, initial=self.rounds_done, desc="fedmf rounds",
                               disable=not c.show_progress)
            for t in range(self.rounds_done, c.rounds):
                self.train_round(t)
                self.rounds_done = t + 1
                if self._checkpoint_due():
                    self._checkpoint()
                bar.update()
            bar.close()
        except BaseException:
            self.close("the server failed")
            raise
        self.finish()
        logger.info("server: %d round(s) in %.1f s", self.rounds_done, time.perf_counter() - t0)
        return self

    def summary(self) -> dict[str, Any]:
        """What the server may keep: counts, timings, failures; nothing it could decrypt (it cannot)."""
        train = [r for r in self.reports if r.step.startswith("fedmf/train")]
        return {"run_id": self.run_id, "clients": len(self.peers), "in_job": len(self.alive),
                "excluded": dict(self.excluded), "rounds": self.rounds_done, "backend": self.config.backend,
                "masks": self.config.masks, "public_context_sha256": self.public_context_sha256,
                "upload_bytes": max((r.upload_bytes for r in self.reports), default=0),
                "round_seconds": [round(r.seconds, 4) for r in train],
                "failed_uploads": sum(len(r.failed) for r in train),
                "secure_sums": [r.to_json() for r in self.reports]}
