"""Where secure aggregation plugs into the federated MF: a client's mask, the server's recovery.

Every secure sum of the protocol (the set-up statistics and each round's item updates) runs, per group
of at most ``mask_group`` selected clients (:mod:`.secure_sum`), one *mask round*, identified by
:func:`mask_round_id` ``(purpose, round, attempt, group)``; a retried round gets fresh masks (reusing a
mask for two different uploads would let the key-holding clients difference them). With
``masks = true`` (:mod:`fedrec.crypto.secagg`, Bonawitz et al. 2017, double masking) a mask round over
a group ``U0`` is::

    server                                      client i (roster id = its position in the roster)
    MaskRequest(..., group)                ──►  fresh mask key pair (s_i, S_i) and self-mask seed b_i
                                           ◄──  MaskAdvert(S_i)                               -> U1
    ShareRequest(U1 with their S_j)        ──►  Shamir shares of b_i and s_i (threshold t, x = id + 1),
                                                one pair per peer, sealed to the peer's roster X25519
                                                key for (run, mask round, sender, recipient)
                                           ◄──  SealedShares(box per peer of U1)              -> U2
    Stats/RoundRequest(U2, S_j, the boxes  ──►  opens and keeps its boxes (ShareKeeper), uploads
        addressed to i)                         Enc(y_i), y_i = x_i + PRG(b_i) + Σ_j ±PRG(agree(s_i, S_j))
                                           ◄──  Upload                                        -> U3
    UnmaskRequest(survivors U3, dropped    ──►  reveals b shares of survivors, s shares of the dropped
        U2 \\ U3)                                 (never both of one client: ShareKeeper)
                                           ◄──  UnmaskShares                          (>= t answers)
    server: b_i (i ∈ U3), s_d (d dropped) by Lagrange interpolation; Σ_{U3} Enc(y_i) + unmask_correction
            decrypts to Σ_{U3} x_i (the correction is plaintext: an ``add_plain``)

With masks off only the request/upload step runs and ``mask`` is the identity (:class:`ClientMasks`
with ``enabled=False``). The masks are real vectors on the grid ``scale · 2^-40`` within
``[-scale, scale)`` per term (:func:`mask_scale`: ``2^mask_scale_bits``, or chosen from the roster size
so that one secure sum is within ``MASK_TOLERANCE = 1e-6`` per coordinate); they cancel exactly as
integers, but the float64 rounding of ``x + mask`` before encryption leaves an error of about
``2^-52 · |mask|`` per upload and coordinate (:func:`fedrec.crypto.secagg.mask_error_bound`), which the
exactness tests budget. Hiding is ``value_bound / scale`` per coordinate (secagg's docstring): the
clients clip their uploads to ``value_bound``.
Cost: every client of a mask round seals ``|U1|`` boxes, splits two secrets among ``|U1|`` peers and
expands ``|U2|`` pairwise masks of the whole model: ``O(|U|²)`` per group, hence the groups
(``benchmarks/fedmf.py`` measures it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.crypto.backend import CryptoError
from fedrec.protocols.fedmf.config import FedMFConfig

__all__ = ["ClientMasks", "MaskRound", "mask_round_id", "recover_correction", "threshold"]

logger = logging.getLogger(__name__)

_PURPOSE_CODE = {"stats": 0, "train": 1}
#: per-coordinate error bound of one masked secure sum when the scale is automatic
MASK_TOLERANCE = 1e-6


def mask_round_id(purpose: str, round_: int, attempt: int, group: int = 0) -> int:
    """A distinct integer per ``(purpose, round, attempt, group)``:
    ``((round · 2^10 + attempt) · 2^17 + group) · 2 + purpose``."""
    return ((((round_ << 10) + attempt) << 17) + group) * 2 + _PURPOSE_CODE[purpose]


def mask_scale(config: FedMFConfig, n_clients: int) -> float:
    """``2^mask_scale_bits``, or (``mask_scale_bits = 0``) the largest power of two whose
    :func:`fedrec.crypto.secagg.mask_error_bound` for a full group (``min(n_clients, mask_group)`` of
    the roster's ``n_clients``) stays within :data:`MASK_TOLERANCE` per group sum
    (:func:`fedrec.crypto.secagg.choose_scale`): every party computes it from the roster size and the
    agreed ``mask_group``, so clients and server agree."""
    if config.mask_scale_bits:
        return 2.0 ** config.mask_scale_bits
    from fedrec.crypto.secagg import choose_scale

    return choose_scale(max(min(n_clients, config.mask_group), 2), tolerance=MASK_TOLERANCE)


def threshold(config: FedMFConfig, n_u1: int) -> int:
    """Shamir threshold ``t`` of a mask round with ``n_u1`` advertised clients: ``mask_threshold`` (capped
    at ``n_u1``), or a majority ``⌊n/2⌋ + 1``."""
    return min(config.mask_threshold, n_u1) if config.mask_threshold else n_u1 // 2 + 1


def mask_context(run_id: str) -> bytes:
    from fedrec.crypto.sealed import context_bytes

    return context_bytes("fedrec/fedmf/masks", run_id)


def _box_context(run_id: str, round_id: int, sender: str, recipient: str) -> bytes:
    from fedrec.crypto.sealed import context_bytes

    return context_bytes("fedrec/fedmf/shares", run_id, round_id, sender, recipient)


@dataclass
class MaskRound:
    """One client's secrets of one mask round."""

    round_id: int
    keys: Any  # secagg.MaskKeys
    b_seed: bytes
    own: tuple[Any, Any] | None = None  # our own (b, s) shares
    keeper: Any = None  # secagg.ShareKeeper once the boxes arrived


class ClientMasks:
    """A client's side: fresh keys per mask round, its shares for the peers, its mask, its reveal.

    ``roster``: name -> (roster id, long-term X25519 public key), the same for every client;
    ``keys``: this client's long-term X25519 key pair (its CURVE key)."""

    def __init__(self, me: str, keys: Any, roster: Mapping[str, tuple[int, bytes]], run_id: str,
                 config: FedMFConfig, enabled: bool) -> None:
        self.me, self.keys, self.roster, self.run_id = me, keys, dict(roster), run_id
        self.config, self.enabled = config, enabled
        self.rounds: dict[int, MaskRound] = {}
        self.scale = mask_scale(config, len(roster))

    @property
    def my_id(self) -> int:
        return self.roster[self.me][0]

    def _ids(self, names: Sequence[str]) -> list[int]:
        unknown = [n for n in names if n not in self.roster]
        if unknown:
            raise CryptoError(f"client(s) {unknown[:3]} are not in the roster")
        return [self.roster[n][0] for n in names]

    def advertise(self, round_id: int) -> bytes:
        """Fresh ``(s_i, S_i)`` and ``b_i`` for this mask round; returns ``S_i`` (older rounds forgotten)."""
        from fedrec.crypto.secagg import MaskKeys, new_seed

        keys = MaskKeys.generate()
        while len(self.rounds) >= 8:  # the newest few are enough (a round and its retries)
            del self.rounds[next(iter(self.rounds))]
        self.rounds[round_id] = MaskRound(round_id, keys, new_seed())
        return keys.public

    def _round(self, round_id: int) -> MaskRound:
        m = self.rounds.get(round_id)
        if m is None:
            raise CryptoError(f"no mask keys for mask round {round_id} (no MaskRequest for it)")
        return m

    def share(self, round_id: int, names: Sequence[str]) -> list[bytes]:
        """Shares of ``b_i`` and ``s_i`` for every client of ``names`` (U1, ourselves included: empty box
        for us, we keep our own share), each sealed to that client's roster key."""
        from fedrec.crypto.sealed import seal
        from fedrec.crypto.secagg import pack_shares, shamir_split

        m = self._round(round_id)
        ids = self._ids(names)
        if self.me not in names:
            raise CryptoError(f"ShareRequest: this client {self.me!r} is not among the participants")
        t = threshold(self.config, len(names))
        xs = [i + 1 for i in ids]
        b_sh = shamir_split(m.b_seed, len(names), t, xs=xs)
        s_sh = shamir_split(m.keys.secret, len(names), t, xs=xs)
        boxes = []
        for name, b, s in zip(names, b_sh, s_sh, strict=True):
            if name == self.me:
                m.own = (b, s)
                boxes.append(b"")
            else:
                boxes.append(seal(self.roster[name][1], pack_shares(b, s),
                                  context=_box_context(self.run_id, round_id, self.me, name)))
        return boxes

    def receive(self, round_id: int, names: Sequence[str], boxes: Sequence[bytes]) -> None:
        """Open the boxes the peers of U2 sealed to us and keep their shares."""
        from fedrec.crypto.sealed import open_sealed
        from fedrec.crypto.secagg import ShareKeeper, unpack_shares

        m = self._round(round_id)
        if len(boxes) != len(names):
            raise CryptoError(f"{len(boxes)} share boxes for {len(names)} participants")
        keeper = ShareKeeper(round_id)
        for name, box in zip(names, boxes, strict=True):
            owner = self.roster[name][0]
            if name == self.me:
                if m.own is None:
                    raise CryptoError("our own shares are missing (no ShareRequest answered)")
                keeper.add(owner, *m.own)
                continue
            plain = open_sealed(self.keys.secret, self.keys.public, box,
                                context=_box_context(self.run_id, round_id, name, self.me))
            keeper.add(owner, *unpack_shares(plain))
        m.keeper = keeper

    def mask(self, values: np.ndarray, round_id: int, names: Sequence[str], mask_keys: Sequence[bytes]
             ) -> np.ndarray:
        """``values + PRG(b_i) + Σ_{j ∈ U2, j ≠ i} ±PRG(agree(s_i, S_j))`` (identity with masks off)."""
        if not self.enabled:
            return values
        from fedrec.crypto.secagg import upload_mask

        m = self._round(round_id)
        if m.keeper is None:
            raise CryptoError(f"mask round {round_id}: the share boxes were not received")
        peers = {self.roster[n][0]: bytes(k) for n, k in zip(names, mask_keys, strict=True) if n != self.me}
        mask = upload_mask(self.my_id, m.keys, m.b_seed, peers, length=len(values),
                           round_id=round_id, context=mask_context(self.run_id), scale=self.scale)
        return values + mask

    def reveal(self, round_id: int, survivors: Sequence[str], dropped: Sequence[str]
               ) -> tuple[list[bytes], list[bytes]]:
        """Our shares of the survivors' ``b`` and the dropped clients' ``s`` (wire bytes, in order)."""
        m = self._round(round_id)
        if m.keeper is None:
            raise CryptoError(f"mask round {round_id}: no shares held")
        got = m.keeper.reveal(self._ids(survivors), self._ids(dropped))
        return ([got.b_shares[self.roster[n][0]].to_bytes() for n in survivors],
                [got.s_shares[self.roster[n][0]].to_bytes() for n in dropped])


def recover_correction(run_id: str, round_id: int, config: FedMFConfig, length: int,
                       roster: Mapping[str, tuple[int, bytes]], mask_keys: Mapping[str, bytes],
                       survivors: Sequence[str], dropped: Sequence[str],
                       answers: Mapping[str, tuple[list[bytes], list[bytes]]]) -> np.ndarray:
    """The server's recovery step: ``b_i`` of every survivor and ``s_d`` of every dropped client from the
    answering survivors' shares (at least the threshold), then :func:`secagg.unmask_correction`."""
    from fedrec.crypto.secagg import Share, recover_mask_secret, shamir_combine, unmask_correction

    b_seeds, s_keys = {}, {}
    for j, name in enumerate(survivors):
        b_seeds[roster[name][0]] = shamir_combine(Share.from_bytes(a[0][j]) for a in answers.values())
    for j, name in enumerate(dropped):
        shares = [Share.from_bytes(a[1][j]) for a in answers.values()]
        s_keys[roster[name][0]] = recover_mask_secret(shares, mask_keys[name])
    alive = {roster[n][0]: mask_keys[n] for n in survivors}
    return unmask_correction(s_keys, alive, b_seeds, length=length, round_id=round_id,
                             context=mask_context(run_id), scale=mask_scale(config, len(roster)))
