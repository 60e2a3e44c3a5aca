"""Every message of the vertical FM conversation (DESIGN §4.2). The guest asks, the host answers.

::

    guest                                                  host
    ── setup (party layer: fedrec.protocols.messages) ──────────────────────────────────────────────
    Hello("hetero_fm", version, run id, agreed config)  ──►  checks config field by field
                                                      ◄──  Ack
    [Resume(run id, guest's checkpoints)              ──►  ◄── ResumeAt(cursor)   only with checkpoints]
    Setup(public context, its sha256, aligned users,  ──►  checks the pin and the CKKS preset; a fresh
          batches per epoch)                               key every setup; once per Hello (an identical
                                                           retransmit gets the same answer, applied once)
                                                      ◄──  SetupAck(n_host_features, n_matched, max_row_nnz)
    ── per batch e/b with aligned users (steps "fm/e{e}/b{b}/...") ──────────────────────────────────
    PartialsRequest("train", batch's aligned users)   ──►  (first: zero-gradient Adam steps for the
                                                      ◄──   batches before b that had no aligned user)
                                                           Partials(z_H[u], e_H[u, k])
    (guest: predictions, loss, δ_b; R_u = [Q̂_u, D̂_u·1_k, Δ̂_u, c_u] or compact, see packing.py)
    EncryptedResiduals(part p of n_parts, n_samples, lanes, Enc(R) chunks)  ──►   (p = 0..n_parts-1:
                                       ◄──  MaskedGradients(result cts: Σ_u M_j(u) ⊙ R_u + mask)
    (guest: decrypt, sum user groups and parts, fold, [label-DP noise], flood + round)
    ReleasedGradients(values[n_results·lanes, k+1|k+2])  ──►  unmask, ÷ n_samples, Adam step
                                                      ◄──  Ack
    [Checkpoint(epoch, batch)                         ──►  ◄── Checkpointed(digest)   every N batches]
    ── per epoch ───────────────────────────────────────────────────────────────────────────────────
    PartialsRequest("validate", aligned validation users)  ──►  ◄── Partials
    EpochEnd(epoch, stop, n_batches, best_epoch)      ──►  zero steps for the trailing batches without
                                                           aligned users; keep this epoch's parameters
                                                           (last patience + 1); at stop, restore the
                                                           best epoch's (the only early-stopping news)
                                                      ◄──  Ack
    [Checkpoint(epoch + 1, 0, final=stop)             ──►  ◄── Checkpointed(digest)   with checkpoints]
    ── inference / end ─────────────────────────────────────────────────────────────────────────────
    PredictRequest(raw ids, all in the aligned set)   ──►  ◄── Partials(found mask)
    Done(reason)                                      ──►  ◄── Ack; host.serve() returns

Users are only ever referenced inside the aligned (PSI) set declared in ``Setup``: ``PartialsRequest``
by position in that list, ``PredictRequest`` by raw id; the host refuses anything else. A batch whose
users are all outside the aligned set costs no round trip (the guest uses ``z_H = e_H = 0`` for them).
A batch's encrypted work is split into ``n_parts`` parts (consecutive slices
``numpy.array_split(batch users, n_parts)``) when one part's masked release would not fit the CKKS
modulus; the guest releases ONE sum over the parts (:mod:`fedrec.protocols.hetero_fm.packing`).

Every count, index and cursor the guest sends is bounded by what the set-up allows: epochs by the agreed
``epochs``, batch numbers (``PartialsRequest``, ``EpochEnd.n_batches``, ``Checkpoint``) by the batches
per epoch declared in ``Setup`` (which the host learns at the first ``EpochEnd`` anyway), users by the
aligned set, parts by the batch's users.
Any request the host cannot honour (wrong step, shapes, config mismatch, a user outside the aligned set,
a cursor beyond the set-up) is answered with ``Rejected`` (:class:`ProtocolRejected` here) naming the
field; the guest raises :class:`HeteroFMError` naming the step. The set of messages this protocol
speaks is :data:`MESSAGES`.
Nothing label-derived ever travels guest -> host except inside ciphertexts (``EncryptedResiduals``)
and the masked, flooded aggregates (``ReleasedGradients``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedrec.protocols import messages as party_messages
from fedrec.protocols.messages import MAX_BATCH, MAX_EPOCH, Ack, Done, Rejected
from fedrec.protocols.party import PartyError
from fedrec.transport.wire import Message, WireReader, WireWriter, register_message

__all__ = ["MESSAGES", "Ack", "Done", "EncryptedResiduals", "EpochEnd", "HeteroFMError", "MaskedGradients",
           "Partials", "PartialsRequest", "PredictRequest", "ProtocolRejected", "ReleasedGradients", "Setup",
           "SetupAck"]

MAX_USERS = 10_000_000
MAX_BLOBS = 100_000
PURPOSES = ("train", "validate", "predict")


class HeteroFMError(PartyError):
    """The peer rejected a protocol step, or answered something the protocol does not allow."""

    protocol = "hetero FM"


#: the party layer's ``Rejected`` under the name this protocol has always used
ProtocolRejected = Rejected


@register_message
@dataclass(frozen=True)
class Setup(Message):
    """The guest's public key material (no secret key) and its pin, and the aligned users (the PSI
    intersection, which the host already knows): the only users ever referenced later. (The config was
    agreed in the party layer's ``Hello`` just before.)"""

    TYPE: ClassVar[str] = "hetero_fm.Setup"
    public_context: bytes
    context_sha256: str
    user_ids: list[str]
    #: batches per epoch (``ceil(training rows / batch_size)``): bounds every batch number later
    n_batches: int = 1

    def to_wire(self, w: WireWriter) -> None:
        w.put_blob("public_context", self.public_context)
        w.put_str("context_sha256", self.context_sha256)
        w.put_str_list("user_ids", self.user_ids)
        w.put_int("n_batches", self.n_batches)

    @classmethod
    def from_wire(cls, r: WireReader) -> Setup:
        return cls(public_context=bytes(r.get_blob("public_context", max_bytes=60 << 20)),
                   context_sha256=r.get_str("context_sha256", max_len=64),
                   user_ids=r.get_str_list("user_ids", max_len=MAX_USERS, max_str_len=256),
                   n_batches=r.get_int("n_batches", lo=1, hi=party_messages.MAX_BATCH))


@register_message
@dataclass(frozen=True)
class SetupAck(Message):
    """The host's feature space size, how many aligned users it has rows for, and bounds over the aligned
    users' rows ``x(u)`` for the label-DP sensitivity (:mod:`.label_dp`): the most non-zero features
    ``d``, the largest ``|x_j|``, and the largest ``Σ_j x_j²`` and ``Σ_j x_j⁴`` of one row."""

    TYPE: ClassVar[str] = "hetero_fm.SetupAck"
    n_host_features: int
    n_matched: int
    max_row_nnz: int
    max_abs_value: float
    max_row_sq: float
    max_row_quad: float

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("n_host_features", self.n_host_features)
        w.put_int("n_matched", self.n_matched)
        w.put_int("max_row_nnz", self.max_row_nnz)
        w.put_float("max_abs_value", self.max_abs_value)
        w.put_float("max_row_sq", self.max_row_sq)
        w.put_float("max_row_quad", self.max_row_quad)

    @classmethod
    def from_wire(cls, r: WireReader) -> SetupAck:
        n = r.get_int("n_host_features", lo=1, hi=1 << 24)
        return cls(n, r.get_int("n_matched", lo=0, hi=MAX_USERS), r.get_int("max_row_nnz", lo=0, hi=n),
                   r.get_float("max_abs_value", lo=0.0, hi=float(2 ** 12)),
                   r.get_float("max_row_sq", lo=0.0, hi=float(2 ** 60)),
                   r.get_float("max_row_quad", lo=0.0, hi=float(2 ** 120)))


@register_message
@dataclass(frozen=True)
class PartialsRequest(Message):
    """Partials for ``users`` (inner ids = positions in ``Setup.user_ids``)."""

    TYPE: ClassVar[str] = "hetero_fm.PartialsRequest"
    purpose: str
    epoch: int
    batch: int
    users: np.ndarray

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("purpose", self.purpose)
        w.put_int("epoch", self.epoch)
        w.put_int("batch", self.batch)
        w.put_array("users", np.ascontiguousarray(self.users, dtype=np.int64))

    @classmethod
    def from_wire(cls, r: WireReader) -> PartialsRequest:
        return cls(r.get_str("purpose", choices=PURPOSES), r.get_int("epoch", lo=0, hi=MAX_EPOCH),
                   r.get_int("batch", lo=0, hi=MAX_BATCH),
                   r.get_array("users", dtype=np.int64, ndim=1, max_elems=MAX_USERS))


@register_message
@dataclass(frozen=True)
class PredictRequest(Message):
    """Partials for raw user ids of the aligned set (inference; the host refuses any other id; aligned
    users without a host feature row come back ``found=False``)."""

    TYPE: ClassVar[str] = "hetero_fm.PredictRequest"
    user_ids: list[str]

    def to_wire(self, w: WireWriter) -> None:
        w.put_str_list("user_ids", self.user_ids)

    @classmethod
    def from_wire(cls, r: WireReader) -> PredictRequest:
        return cls(r.get_str_list("user_ids", max_len=MAX_USERS, max_str_len=256))


@register_message
@dataclass(frozen=True)
class Partials(Message):
    """Host -> guest: ``z_H[u]``, ``e_H[u, k]`` and whether the host has a feature row for ``u``."""

    TYPE: ClassVar[str] = "hetero_fm.Partials"
    z: np.ndarray
    e: np.ndarray
    found: np.ndarray

    def to_wire(self, w: WireWriter) -> None:
        w.put_array("z", np.ascontiguousarray(self.z, dtype=np.float64))
        w.put_array("e", np.ascontiguousarray(self.e, dtype=np.float64))
        w.put_array("found", np.ascontiguousarray(self.found, dtype=np.bool_))

    @classmethod
    def from_wire(cls, r: WireReader) -> Partials:
        z = r.get_array("z", dtype=np.float64, ndim=1, max_elems=MAX_USERS)
        e = r.get_array("e", dtype=np.float64, shape=(len(z), None), max_elems=MAX_USERS * 1024)
        found = r.get_array("found", dtype=np.bool_, shape=(len(z),))
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(e))):
            raise ValueError("Partials: NaN or inf in z/e")
        return cls(z, e, found)


@register_message
@dataclass(frozen=True)
class EncryptedResiduals(Message):
    """Guest -> host: ``Enc(R)`` chunks (layout in :mod:`fedrec.protocols.hetero_fm.packing`)."""

    TYPE: ClassVar[str] = "hetero_fm.EncryptedResiduals"
    epoch: int
    batch: int
    n_samples: int
    users_per_chunk: int
    lanes: int
    chunks: list[bytes]
    part: int = 0
    n_parts: int = 1

    def to_wire(self, w: WireWriter) -> None:
        for name in ("epoch", "batch", "n_samples", "users_per_chunk", "lanes", "part", "n_parts"):
            w.put_int(name, getattr(self, name))
        w.put_blobs("chunks", self.chunks)

    @classmethod
    def from_wire(cls, r: WireReader) -> EncryptedResiduals:
        head = (r.get_int("epoch", lo=0, hi=MAX_EPOCH), r.get_int("batch", lo=0, hi=MAX_BATCH),
                r.get_int("n_samples", lo=1, hi=1 << 40),
                r.get_int("users_per_chunk", lo=1, hi=MAX_USERS), r.get_int("lanes", lo=1, hi=1 << 16))
        part, n_parts = r.get_int("part", lo=0, hi=MAX_USERS), r.get_int("n_parts", lo=1, hi=MAX_USERS)
        if part >= n_parts:
            raise ValueError(f"EncryptedResiduals: part {part} of {n_parts}")
        return cls(*head, [bytes(b) for b in r.get_blobs("chunks", max_count=MAX_BLOBS)], part, n_parts)


@register_message
@dataclass(frozen=True)
class MaskedGradients(Message):
    """Host -> guest: one masked ciphertext per group of ``lanes`` host feature columns."""

    TYPE: ClassVar[str] = "hetero_fm.MaskedGradients"
    results: list[bytes]

    def to_wire(self, w: WireWriter) -> None:
        w.put_blobs("results", self.results)

    @classmethod
    def from_wire(cls, r: WireReader) -> MaskedGradients:
        return cls([bytes(b) for b in r.get_blobs("results", max_count=MAX_BLOBS)])


@register_message
@dataclass(frozen=True)
class ReleasedGradients(Message):
    """Guest -> host: the decrypted, user-summed, folded, flooded and rounded masked aggregates."""

    TYPE: ClassVar[str] = "hetero_fm.ReleasedGradients"
    epoch: int
    batch: int
    values: np.ndarray

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("epoch", self.epoch)
        w.put_int("batch", self.batch)
        w.put_array("values", np.ascontiguousarray(self.values, dtype=np.float64))

    @classmethod
    def from_wire(cls, r: WireReader) -> ReleasedGradients:
        v = r.get_array("values", dtype=np.float64, ndim=2, max_elems=1 << 26)
        if not np.all(np.isfinite(v)):
            raise ValueError("ReleasedGradients: NaN or inf")
        return cls(r.get_int("epoch", lo=0, hi=MAX_EPOCH), r.get_int("batch", lo=0, hi=MAX_BATCH), v)


@register_message
@dataclass(frozen=True)
class EpochEnd(Message):
    """End of an epoch of ``n_batches`` batches (the host zero-steps the trailing ones it did not see).

    No per-epoch "improved" bit: the host keeps the parameters of the last ``patience + 1`` epochs and
    learns only, when training stops, which epoch's parameters are the result (``best_epoch``, 1-based;
    0 = the initial parameters; -1 while training goes on)."""

    TYPE: ClassVar[str] = "hetero_fm.EpochEnd"
    epoch: int
    stop: bool
    n_batches: int
    best_epoch: int = -1

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("epoch", self.epoch)
        w.put_bool("stop", self.stop)
        w.put_int("n_batches", self.n_batches)
        w.put_int("best_epoch", self.best_epoch)

    @classmethod
    def from_wire(cls, r: WireReader) -> EpochEnd:
        epoch, stop = r.get_int("epoch", lo=0, hi=MAX_EPOCH), r.get_bool("stop")
        n_batches = r.get_int("n_batches", lo=0, hi=MAX_BATCH)
        best = r.get_int("best_epoch", lo=-1, hi=epoch + 1)
        if stop != (best >= 0):
            raise ValueError(f"EpochEnd: best_epoch {best} with stop={stop} (a best epoch only at the stop)")
        return cls(epoch, stop, n_batches, best)


#: every message of this protocol: the party layer's plus its own
MESSAGES: tuple[type[Message], ...] = (*party_messages.MESSAGES, Setup, SetupAck, PartialsRequest,
                                       PredictRequest, Partials, EncryptedResiduals, MaskedGradients,
                                       ReleasedGradients, EpochEnd)
