"""Every message of the horizontal federated MF (DESIGN §4.3). The server asks, the clients answer.

::

    server                                                     each client
    ── set-up (party layer: Hello / Ack) ───────────────────────────────────────────────────────────
    Hello("fedmf", version, run id, agreed config + n_items + catalogue sha256)  ──►  checks, field by field
                                                           ◄──  Ack
    ── keys (the key holder: the first client by name) ───────────────────────────────────────────
    KeyRequest(roster: names + X25519 public keys)        ──►  key holder: makes the CKKS context,
                                                                seals its secret context once to an
                                                                envelope key, that key to every other
                                                                client's key, encrypts θ_0
                                                           ◄──  KeyBundle(public context, sealed context,
                                                                          sealed keys[], Enc(θ_0))
    KeyDelivery(roster, holder, public context, sealed    ──►  every client: checks its own key in the
                context, the key sealed to you)                roster; the others open their boxes and
                                                               check it gives that public context
                                                           ◄──  KeyAck(sha256 of the public context)
    ── every secure sum, masks on (fedrec.protocols.fedmf.masking; off: only the request/Upload) ──────
    MaskRequest(purpose, round, attempt, group)            ──►  ◄── MaskAdvert(fresh mask key)       -> U1
    ShareRequest(U1 + mask keys)                           ──►  ◄── SealedShares(box per peer)      -> U2
    (then the Stats/RoundRequest below carries U2, their mask keys and the boxes sealed to you)
    ── global statistics (a secure sum) ───────────────────────────────────────────────────────────
    StatsRequest(attempt, participants[, masking])         ──►  ◄── Upload("stats", Enc([Σr, N, n_i] + mask))
    [UnmaskRequest / UnmaskShares as below]
    StatsResult(Enc(Σ over clients))                       ──►  μ = Σr / N, item counts n_i   ◄── Ack
    ── round t, attempt a (selected clients; steps "fedmf/r{t}/a{a}/...") ───────────────────────────
    RoundRequest(t, a, participants[, masking], Enc(θ_t))  ──►  decrypt, E local epochs, item gradient
                                                           ◄──  Upload("train", t, a, Enc(Δ_c + mask))
    [UnmaskRequest(t, a, survivors, dropped)              ──►  ◄── UnmaskShares(b shares of survivors,
                                                                    s shares of the dropped)  masks on]
    (server: θ_{t+1} = θ_t + Σ Δ_c, ciphertext additions only)
    ── checkpoints (party layer; with a Checkpointer: after the set-up, every N rounds, after the last) ──
    Checkpoint(R, 0)                                       ──►  writes its state after R rounds
                                                           ◄──  Checkpointed(its state's digest)
    (then the server writes Enc(θ_R) and the digests: clients are never behind it)
    ── on a restart of the same run, after Hello, if the server holds a checkpoint ────────────────────
    Resume(run id, [(R, 0, server digest, your digest)])   ──►  loads its state at R (users, μ, key)
                                                           ◄──  ResumeAt(found, R, 0, digest)
    (then the rounds from R: no key set-up, no statistics)
    ── end ────────────────────────────────────────────────────────────────────────────────────────────
    Finish(rounds done, Enc(θ_T))                          ──►  decrypt, final user refit  ◄── Ack
    Done(reason)                                           ──►  ◄── Ack; the client's serve() returns

Nothing but ciphertexts, public key material, sealed boxes, names and counters ever reaches the server.
Every ``Upload`` of a run has the same size (the whole catalogue, whatever the client rated).
A client refuses a request it cannot honour (wrong order, round, size, config) with ``Rejected`` naming
the field; the server treats a refusal, a death, a timeout or a malformed/invalid upload of a selected
client as a failure of that client in the round (``gather``'s failures), never as a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedrec.protocols import messages as party_messages
from fedrec.protocols.messages import Ack, Done, Rejected
from fedrec.protocols.party import PartyError
from fedrec.transport.wire import Message, WireReader, WireWriter, register_message

__all__ = ["MESSAGES", "PURPOSES", "Ack", "Done", "FedMFError", "Finish", "KeyAck", "KeyBundle",
           "KeyDelivery", "KeyRequest", "MaskAdvert", "MaskRequest", "Rejected", "RoundRequest",
           "SealedShares", "ShareRequest", "StatsRequest", "StatsResult", "UnmaskRequest", "UnmaskShares",
           "Upload"]

MAX_CLIENTS = 100_000
MAX_ROUNDS = 1 << 24
MAX_ATTEMPTS = 1 << 10
KEY_BYTES = 32
#: a serialized ciphertext of the whole model (n8192 at the last level: ~60 KB per 4096 values)
MAX_CIPHERTEXT = 60 << 20
#: a CKKS context with its secret key (sealed) or a public one
MAX_CONTEXT = 8 << 20
#: an envelope key sealed to one client: 48 + 32 (context tag) + 32 bytes
SEALED_KEY = 112
PURPOSES = ("stats", "train")
#: one Shamir share on the wire (fedrec.crypto.secagg.Share.to_bytes)
SHARE_BYTES = 40


class FedMFError(PartyError):
    """A peer rejected a protocol step, answered something the protocol does not allow, or sent an
    invalid upload."""

    protocol = "fedmf"


def _names(r: WireReader, field: str) -> list[str]:
    names = r.get_str_list(field, max_len=MAX_CLIENTS, max_str_len=64)
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"field {field!r}: names must be unique and non-empty")
    return names


def _keys(r: WireReader, field: str, n: int, allow_empty: bool = False) -> list[bytes]:
    keys = [bytes(k) for k in r.get_blobs(field, max_count=MAX_CLIENTS, max_bytes=KEY_BYTES)]
    if len(keys) != n or any(len(k) != KEY_BYTES and not (allow_empty and not k) for k in keys):
        raise ValueError(f"field {field!r}: expected {n} keys of {KEY_BYTES} bytes")
    return keys


def _roster(r: WireReader) -> tuple[list[str], list[bytes]]:
    names = _names(r, "names")
    return names, _keys(r, "public_keys", len(names))


def _shares(r: WireReader, field: str, n: int, size: int | None = None) -> list[bytes]:
    boxes = [bytes(b) for b in r.get_blobs(field, max_count=MAX_CLIENTS, max_bytes=4096)]
    if len(boxes) != n or (size is not None and any(len(b) != size for b in boxes)):
        raise ValueError(f"field {field!r}: expected {n} entries" + (f" of {size} bytes" if size else ""))
    return boxes


@register_message
@dataclass(frozen=True)
class KeyRequest(Message):
    """To the key holder: the clients (names, in the server's order) and their X25519 public keys (the
    CURVE keys the server authenticated them with)."""

    TYPE: ClassVar[str] = "fedmf.KeyRequest"
    names: list[str]
    public_keys: list[bytes]

    def to_wire(self, w: WireWriter) -> None:
        w.put_str_list("names", self.names)
        w.put_blobs("public_keys", self.public_keys)

    @classmethod
    def from_wire(cls, r: WireReader) -> KeyRequest:
        return cls(*_roster(r))


@register_message
@dataclass(frozen=True)
class KeyBundle(Message):
    """From the key holder: the public context (no secret key), the secret context sealed once to an
    envelope key, that key sealed to each client of the roster (empty for itself; :mod:`.keys`), and
    the encrypted initial model ``Enc(θ_0)``."""

    TYPE: ClassVar[str] = "fedmf.KeyBundle"
    public_context: bytes
    sealed_context: bytes
    sealed_keys: list[bytes]
    model: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_blob("public_context", self.public_context)
        w.put_blob("sealed_context", self.sealed_context)
        w.put_blobs("sealed_keys", self.sealed_keys)
        w.put_blob("model", self.model)

    @classmethod
    def from_wire(cls, r: WireReader) -> KeyBundle:
        return cls(bytes(r.get_blob("public_context", max_bytes=MAX_CONTEXT)),
                   bytes(r.get_blob("sealed_context", max_bytes=MAX_CONTEXT)),
                   [bytes(b) for b in r.get_blobs("sealed_keys", max_count=MAX_CLIENTS,
                                                  max_bytes=SEALED_KEY)],
                   bytes(r.get_blob("model", max_bytes=MAX_CIPHERTEXT)))


@register_message
@dataclass(frozen=True)
class KeyDelivery(Message):
    """To a client: the roster (as the key holder got it), who made the key, the public context, the
    sealed secret context and the envelope key sealed to this client (empty for the key holder)."""

    TYPE: ClassVar[str] = "fedmf.KeyDelivery"
    names: list[str]
    public_keys: list[bytes]
    holder: str
    public_context: bytes
    sealed_context: bytes
    sealed_key: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_str_list("names", self.names)
        w.put_blobs("public_keys", self.public_keys)
        w.put_str("holder", self.holder)
        w.put_blob("public_context", self.public_context)
        w.put_blob("sealed_context", self.sealed_context)
        w.put_blob("sealed_key", self.sealed_key)

    @classmethod
    def from_wire(cls, r: WireReader) -> KeyDelivery:
        names, keys = _roster(r)
        holder = r.get_str("holder", max_len=64)
        if holder not in names:
            raise ValueError(f"field 'holder': {holder!r} is not in the roster")
        return cls(names, keys, holder, bytes(r.get_blob("public_context", max_bytes=MAX_CONTEXT)),
                   bytes(r.get_blob("sealed_context", max_bytes=MAX_CONTEXT)),
                   bytes(r.get_blob("sealed_key", max_bytes=SEALED_KEY)))


@register_message
@dataclass(frozen=True)
class KeyAck(Message):
    """A client holds the secret key of this public context (SHA-256 of its bytes)."""

    TYPE: ClassVar[str] = "fedmf.KeyAck"
    context_sha256: str

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("context_sha256", self.context_sha256)

    @classmethod
    def from_wire(cls, r: WireReader) -> KeyAck:
        digest = r.get_str("context_sha256", max_len=64)
        if len(digest) != 64:
            raise ValueError("field 'context_sha256': expected 64 hex digits")
        return cls(digest)


def _put_masking(w: WireWriter, participants: list[str], mask_keys: list[bytes], shares: list[bytes]) -> None:
    w.put_str_list("participants", participants)
    w.put_blobs("mask_keys", mask_keys)
    w.put_blobs("shares", shares)


def _get_masking(r: WireReader) -> tuple[list[str], list[bytes], list[bytes]]:
    names = _names(r, "participants")
    keys = [bytes(k) for k in r.get_blobs("mask_keys", max_count=MAX_CLIENTS, max_bytes=KEY_BYTES)]
    shares = [bytes(b) for b in r.get_blobs("shares", max_count=MAX_CLIENTS, max_bytes=4096)]
    if keys or shares:  # masks on: one key and one box (empty: our own) per participant
        if len(keys) != len(names) or any(len(k) != KEY_BYTES for k in keys) or len(shares) != len(names):
            raise ValueError(f"fields 'mask_keys'/'shares': expected {len(names)} keys of {KEY_BYTES} bytes "
                             f"and {len(names)} boxes")
    return names, keys, shares


@register_message
@dataclass(frozen=True)
class MaskRequest(Message):
    """Masks on: make fresh mask keys for this secure sum (``purpose``, ``round``, ``attempt``), in which
    you belong to mask group ``group`` (:mod:`.secure_sum`)."""

    TYPE: ClassVar[str] = "fedmf.MaskRequest"
    purpose: str
    round: int
    attempt: int
    group: int = 0

    def to_wire(self, w: WireWriter) -> None:
        _put_round(w, self.purpose, self.round, self.attempt)
        w.put_int("group", self.group)

    @classmethod
    def from_wire(cls, r: WireReader) -> MaskRequest:
        return cls(*_get_round(r), r.get_int("group", lo=0, hi=MAX_CLIENTS))


@register_message
@dataclass(frozen=True)
class MaskAdvert(Message):
    """A client's fresh mask public key ``S_i`` for one secure sum."""

    TYPE: ClassVar[str] = "fedmf.MaskAdvert"
    mask_key: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_blob("mask_key", self.mask_key)

    @classmethod
    def from_wire(cls, r: WireReader) -> MaskAdvert:
        key = bytes(r.get_blob("mask_key", max_bytes=KEY_BYTES))
        if len(key) != KEY_BYTES:
            raise ValueError(f"field 'mask_key': expected {KEY_BYTES} bytes")
        return cls(key)


@register_message
@dataclass(frozen=True)
class ShareRequest(Message):
    """The clients that advertised (U1) and their mask keys: seal your shares to each of them."""

    TYPE: ClassVar[str] = "fedmf.ShareRequest"
    purpose: str
    round: int
    attempt: int
    names: list[str]
    mask_keys: list[bytes]

    def to_wire(self, w: WireWriter) -> None:
        _put_round(w, self.purpose, self.round, self.attempt)
        w.put_str_list("names", self.names)
        w.put_blobs("mask_keys", self.mask_keys)

    @classmethod
    def from_wire(cls, r: WireReader) -> ShareRequest:
        head = _get_round(r)
        names = _names(r, "names")
        return cls(*head, names, _keys(r, "mask_keys", len(names)))


@register_message
@dataclass(frozen=True)
class SealedShares(Message):
    """One sealed box of (b share, s share) per client of the ShareRequest (empty for the sender)."""

    TYPE: ClassVar[str] = "fedmf.SealedShares"
    boxes: list[bytes]

    def to_wire(self, w: WireWriter) -> None:
        w.put_blobs("boxes", self.boxes)

    @classmethod
    def from_wire(cls, r: WireReader) -> SealedShares:
        return cls([bytes(b) for b in r.get_blobs("boxes", max_count=MAX_CLIENTS, max_bytes=4096)])


@register_message
@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Reveal your shares of the survivors' self-mask seeds and of the dropped clients' mask keys."""

    TYPE: ClassVar[str] = "fedmf.UnmaskRequest"
    purpose: str
    round: int
    attempt: int
    survivors: list[str]
    dropped: list[str]

    def to_wire(self, w: WireWriter) -> None:
        _put_round(w, self.purpose, self.round, self.attempt)
        w.put_str_list("survivors", self.survivors)
        w.put_str_list("dropped", self.dropped)

    @classmethod
    def from_wire(cls, r: WireReader) -> UnmaskRequest:
        head = _get_round(r)
        survivors = _names(r, "survivors")
        dropped = r.get_str_list("dropped", max_len=MAX_CLIENTS, max_str_len=64)
        if set(survivors) & set(dropped) or len(set(dropped)) != len(dropped):
            raise ValueError("fields 'survivors'/'dropped': overlapping or repeated names")
        return cls(*head, survivors, dropped)


@register_message
@dataclass(frozen=True)
class UnmaskShares(Message):
    """Shares (40 bytes each, :class:`fedrec.crypto.secagg.Share`) in the order of the request."""

    TYPE: ClassVar[str] = "fedmf.UnmaskShares"
    survivor_shares: list[bytes]
    dropped_shares: list[bytes]

    def to_wire(self, w: WireWriter) -> None:
        w.put_blobs("survivor_shares", self.survivor_shares)
        w.put_blobs("dropped_shares", self.dropped_shares)

    @classmethod
    def from_wire(cls, r: WireReader) -> UnmaskShares:
        b = [bytes(x) for x in r.get_blobs("survivor_shares", max_count=MAX_CLIENTS, max_bytes=SHARE_BYTES)]
        s = [bytes(x) for x in r.get_blobs("dropped_shares", max_count=MAX_CLIENTS, max_bytes=SHARE_BYTES)]
        if any(len(x) != SHARE_BYTES for x in b + s):
            raise ValueError(f"fields 'survivor_shares'/'dropped_shares': shares are {SHARE_BYTES} bytes")
        return cls(b, s)


def _put_round(w: WireWriter, purpose: str, round_: int, attempt: int) -> None:
    w.put_str("purpose", purpose)
    w.put_int("round", round_)
    w.put_int("attempt", attempt)


def _get_round(r: WireReader) -> tuple[str, int, int]:
    return (r.get_str("purpose", choices=PURPOSES), r.get_int("round", lo=0, hi=MAX_ROUNDS),
            r.get_int("attempt", lo=0, hi=MAX_ATTEMPTS))


@register_message
@dataclass(frozen=True)
class StatsRequest(Message):
    """Upload ``Enc([Σ r, N, n_1..n_n])`` of your ratings, masked among ``participants`` (with masks on:
    their mask keys and the share boxes they sealed to you; empty lists with masks off)."""

    TYPE: ClassVar[str] = "fedmf.StatsRequest"
    attempt: int
    participants: list[str]
    mask_keys: list[bytes]
    shares: list[bytes]

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("attempt", self.attempt)
        _put_masking(w, self.participants, self.mask_keys, self.shares)

    @classmethod
    def from_wire(cls, r: WireReader) -> StatsRequest:
        return cls(r.get_int("attempt", lo=0, hi=MAX_ATTEMPTS), *_get_masking(r))


@register_message
@dataclass(frozen=True)
class StatsResult(Message):
    """The encrypted sum of every client's statistics (``μ`` and the item counts, once decrypted)."""

    TYPE: ClassVar[str] = "fedmf.StatsResult"
    total: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_blob("total", self.total)

    @classmethod
    def from_wire(cls, r: WireReader) -> StatsResult:
        return cls(bytes(r.get_blob("total", max_bytes=MAX_CIPHERTEXT)))


@register_message
@dataclass(frozen=True)
class RoundRequest(Message):
    """Round ``round`` (attempt ``attempt``): the encrypted item model and who takes part (with masks
    on: the participants' mask keys and the share boxes they sealed to you; else empty lists)."""

    TYPE: ClassVar[str] = "fedmf.RoundRequest"
    round: int
    attempt: int
    participants: list[str]
    mask_keys: list[bytes]
    shares: list[bytes]
    model: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("round", self.round)
        w.put_int("attempt", self.attempt)
        _put_masking(w, self.participants, self.mask_keys, self.shares)
        w.put_blob("model", self.model)

    @classmethod
    def from_wire(cls, r: WireReader) -> RoundRequest:
        round_, attempt = r.get_int("round", lo=0, hi=MAX_ROUNDS), r.get_int("attempt", lo=0, hi=MAX_ATTEMPTS)
        names, mask_keys, shares = _get_masking(r)
        model = bytes(r.get_blob("model", max_bytes=MAX_CIPHERTEXT))
        return cls(round_, attempt, names, mask_keys, shares, model)


@register_message
@dataclass(frozen=True)
class Upload(Message):
    """A client's encrypted (masked) contribution to a secure sum: statistics or ``Δ_c`` of a round."""

    TYPE: ClassVar[str] = "fedmf.Upload"
    purpose: str
    round: int
    attempt: int
    ciphertext: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_str("purpose", self.purpose)
        w.put_int("round", self.round)
        w.put_int("attempt", self.attempt)
        w.put_blob("ciphertext", self.ciphertext)

    @classmethod
    def from_wire(cls, r: WireReader) -> Upload:
        return cls(r.get_str("purpose", choices=PURPOSES), r.get_int("round", lo=0, hi=MAX_ROUNDS),
                   r.get_int("attempt", lo=0, hi=MAX_ATTEMPTS),
                   bytes(r.get_blob("ciphertext", max_bytes=MAX_CIPHERTEXT)))


@register_message
@dataclass(frozen=True)
class Finish(Message):
    """Training is over after ``rounds`` rounds: the final encrypted model (refit your users on it)."""

    TYPE: ClassVar[str] = "fedmf.Finish"
    rounds: int
    model: bytes

    def to_wire(self, w: WireWriter) -> None:
        w.put_int("rounds", self.rounds)
        w.put_blob("model", self.model)

    @classmethod
    def from_wire(cls, r: WireReader) -> Finish:
        return cls(r.get_int("rounds", lo=0, hi=MAX_ROUNDS),
                   bytes(r.get_blob("model", max_bytes=MAX_CIPHERTEXT)))


#: every message of this protocol: the party layer's plus its own
MESSAGES: tuple[type[Message], ...] = (*party_messages.MESSAGES, KeyRequest, KeyBundle, KeyDelivery, KeyAck,
                                       MaskRequest, MaskAdvert, ShareRequest, SealedShares, StatsRequest,
                                       StatsResult, RoundRequest, Upload, UnmaskRequest, UnmaskShares, Finish)
