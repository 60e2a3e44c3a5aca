"""CKKS backend over TenSEAL (the default).

Presets (all within the HomomorphicEncryption.org 128-bit table: total modulus ≤ 109 / 218 / 438 bits
for N = 4096 / 8192 / 16384; the last prime is SEAL's special key-switching prime)::

    name    N      modulus chain (bits)        Δ      depth slots  Q at last level  e0*
    n4096   4096   [40, 29 | 40]         =109  2^29   1     2048   2^40 (|x|<2^9)   1.5e-5  (tests only)
    n8192   8192   [60, 43, 55 | 60]     =218  2^55   1     4096   2^103 (|x|<2^46) 4.5e-13 (default)
    n16384  16384  [60, 60, 50, 50, 50 | 60] =330 2^50 3   8192   2^120 (|x|<2^68) 2.9e-11

(*) With ``u = N/Δ`` and values ``|x| <= v`` (``v >= 1``): a fresh encryption has error
``e0 = 2·u·v`` (measured on n8192: 0.8–1.6 u). A plaintext product summed over ``terms`` products
with ``|w| <= plain_bound`` (e.g. :meth:`CKKSBackend.dot_plain` summing 256 users' products)
has ``e1 = 4·√terms · (plain_bound·e0 + 32·u·v)`` — a high-probability bound, the errors of the
terms being independent (measured on n8192, v = 1: 38 u for 1 term against 136 u; 418 u for 256
terms against 2176 u; n4096 similar). ``n8192`` is the default: depth 1 is what §4.2 needs (one
plaintext product, then additions, which consume no level); the 43-bit prime only adds room (103 bits
at level 1) for large masks. ``n4096`` is too small for masked release (room 2^9).

Release (:meth:`CryptoBackend.decrypt_for_release`): an exact CKKS decryption ``m + e`` handed back to
the ciphertext's author leaks ``e`` and through it the secret key (Li & Micciancio, EUROCRYPT 2021).
The key holder therefore adds Gaussian noise with ``σ = 2^16 · B_e`` (``B_e`` = :meth:`error_bound` of
the computation) and rounds to the power-of-two grid ``≤ σ``. The classical statistical argument would
want a ratio ``2^s`` for ``s``-bit distance; the Rényi-divergence analyses of IND-CPA-D CKKS
(Li, Micciancio, Schultz, Sorrell, CRYPTO 2022) get by with about ``2^{s/2}`` per released decryption,
so ``2^16`` corresponds to ``s ≈ 32``. Numbers for n8192, level 1, ``plain_bound = 1``:
``terms = 1``: B_e = 3.1e-11, σ = 2.0e-6; ``terms = 256``: B_e = 5.0e-10, σ = 3.2e-5, grid 2^-15 — far
above the CKKS error and far below gradient magnitudes (1e-3…1e2). Keys are fresh per backend (per job).

Fast paths (:mod:`fedrec.crypto.ckks_seal`): ``encrypt`` / :meth:`CKKSBackend.encrypt_at`
(symmetric when the context holds the secret key, and then kept in SEAL's *seeded* form: ``c0`` plus
the seed ``c1 = a`` is expanded from, half the bytes on the wire; a public-key encryption has no seed),
:meth:`CKKSBackend.drop_level` (modulus switching), :meth:`CKKSBackend.dot_plain` (``Σ_t ct_t ⊙ p_t``
with one rescale), ``add`` and ``add_mask`` (``ct + Enc_pk(0) + mask``: fresh randomness re-randomises
the result) work on the SEAL ciphertexts below TenSEAL and keep them ``raw`` in :class:`CKKSCiphertext`;
the other operations get a TenSEAL vector built from the same SEAL blobs on demand. Levels and scales
are identical either way (plaintexts are encoded at the scale of the prime the rescale drops, as
TenSEAL does), so ciphertexts from both paths pass the same :meth:`CKKSBackend.deserialize` checks.

Hostile bytes: TenSEAL accepts e.g. ``b""`` as a vector with no ciphertext (a later operation crashes
the process) and loads bit-flipped or foreign-key ciphertexts that decrypt to garbage. ``deserialize``
therefore parses its own envelope, checks every SEAL blob's header and length against the preset,
rebuilds the TenSEAL protobuf itself (so sizes and chunk counts are the receiver's), and after loading
checks one 2-polynomial NTT-form ciphertext per chunk with the level's ``parms_id`` and scale. Garbage
that passes (valid but foreign/flipped) is caught by the range check of every decryption.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal as ts

from fedrec.crypto.backend import (
    CryptoBackend,
    CryptoError,
    EncryptedVector,
    FloatArray,
    ReleasePolicy,
    as_vector,
    pack_envelope,
    unpack_envelope,
)
from fedrec.crypto.ckks_seal import SealOps, proto, proto_blobs
from fedrec.crypto.masks import secure_rng

logger = logging.getLogger(__name__)

TAG = "ckks"
#: σ_flood / B_e, see the module docstring
FLOOD_RATIO = 2.0 ** 16
_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")


@dataclass(frozen=True)
class CKKSPreset:
    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    #: plaintext products (rescales by the primes right before the special one) a ciphertext allows
    depth: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    def chain_bits(self, level: int) -> int:
        """Bits of the data modulus after ``level`` rescales (special prime excluded)."""
        return sum(self.coeff_mod_bit_sizes[:-1 - level])

    def raw_ciphertext_bytes(self, level: int) -> int:
        return 2 * self.poly_modulus_degree * (len(self.coeff_mod_bit_sizes) - 1 - level) * 8


PRESETS: dict[str, CKKSPreset] = {
    p.name: p for p in (
        CKKSPreset("n4096", 4096, (40, 29, 40), 29, 1),
        CKKSPreset("n8192", 8192, (60, 43, 55, 60), 55, 1),
        CKKSPreset("n16384", 16384, (60, 60, 50, 50, 50, 60), 50, 3),
    )
}
DEFAULT_PRESET = "n8192"


@dataclass
class CKKSCiphertext(EncryptedVector):
    """A TenSEAL vector, or (``raw``) the SEAL ciphertexts of the fast paths; the backend converts
    between the two on demand (:meth:`CKKSBackend.tenseal_vector`)."""

    vec: ts.CKKSVector | None
    size: int
    level: int
    raw: list[Any] | None = None
    #: the SEAL blobs of a fresh symmetric encryption in SEAL's seeded form (half the bytes); what
    #: :meth:`CKKSBackend.serialize` sends; ``raw`` is loaded from them only if an operation needs it
    blobs: list[bytes] | None = None


@dataclass
class CKKSPlain:
    """Plaintexts encoded ahead for :meth:`CKKSBackend.dot_plain` (one per slot chunk)."""

    pts: list[Any]
    size: int
    level: int


class CKKSBackend(CryptoBackend):
    """CKKS over TenSEAL; see the module docstring for presets, errors and the release rule."""

    name = TAG
    #: key holders send their encryptions in SEAL's seeded form (``False``: full ciphertexts, as before
    #: issue #17; kept for measuring what the seed saves)
    seeded = True

    def __init__(self, context: ts.Context, preset: CKKSPreset, rotations: bool) -> None:
        self.ctx = context
        self.preset = preset
        self.rotations = rotations
        self.slots = preset.slots
        self.max_level = preset.depth
        self._scale = 2.0 ** preset.scale_bits
        self.seal = SealOps(context)
        self._levels = self._reference_levels()
        self._seal_head = self._reference_header()

    # -- keys and contexts -------------------------------------------------------------------------
    @classmethod
    def keygen(cls, preset: str = DEFAULT_PRESET, rotations: bool = False) -> CKKSBackend:
        """Fresh secret/public keys. ``rotations=True`` also generates Galois keys (~35 MB for n8192)
        and ships them in :meth:`public_bytes`; no operation of this backend rotates, so the default
        leaves them out."""
        if preset not in PRESETS:
            raise CryptoError(f"unknown CKKS preset {preset!r}; expected one of {sorted(PRESETS)}")
        p = PRESETS[preset]
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
        ctx.global_scale = 2.0 ** p.scale_bits
        if rotations:
            ctx.generate_galois_keys()
        return cls(ctx, p, rotations)

    @property
    def has_secret_key(self) -> bool:
        return bool(self.ctx.is_private())

    def public_bytes(self) -> bytes:
        body = self.ctx.serialize(save_public_key=True, save_secret_key=False,
                                  save_galois_keys=self.rotations, save_relin_keys=False)
        head = TAG.encode().ljust(8, b"\0") + self.preset.name.encode().ljust(16, b"\0")
        return head + bytes([int(self.rotations)]) + body

    @classmethod
    def from_public_bytes(cls, data: bytes) -> CKKSBackend:
        """Load a public context; refuses secret keys, unknown presets and parameter mismatches."""
        data = bytes(data)
        if len(data) < 25 or data[:8].rstrip(b"\0") != TAG.encode():
            raise CryptoError("CKKS public context: missing 'ckks' header")
        name = data[8:24].rstrip(b"\0").decode("ascii", "replace")
        if name not in PRESETS or data[24] not in (0, 1):
            raise CryptoError(f"CKKS public context: unknown preset {name!r} or flag {data[24]}")
        p, rotations = PRESETS[name], bool(data[24])
        limit = p.raw_ciphertext_bytes(0) * (200 if rotations else 4)
        if len(data) > limit:
            raise CryptoError(f"CKKS public context: {len(data)} bytes, more than {limit} for preset {name}")
        try:
            ctx = ts.context_from(data[25:])
        except Exception as exc:
            raise CryptoError(f"CKKS public context: TenSEAL refused it: {exc}") from exc
        if ctx.is_private() or not ctx.has_public_key():
            raise CryptoError("CKKS public context: must carry a public key and no secret key")
        if bool(ctx.has_galois_keys()) != rotations:
            raise CryptoError(f"CKKS public context: Galois keys present={ctx.has_galois_keys()}, "
                              f"header says {rotations}")
        cd = ctx.seal_context().data.first_context_data()
        chain = []
        while cd is not None:
            chain.append(cd.total_coeff_modulus_bit_count())
            cd = cd.next_context_data()
        expected = [p.chain_bits(level) for level in range(len(p.coeff_mod_bit_sizes) - 1)]
        degree = ctx.seal_context().data.first_context_data().parms().poly_modulus_degree()
        if degree != p.poly_modulus_degree or chain != expected or ctx.global_scale != 2.0 ** p.scale_bits:
            raise CryptoError(f"CKKS public context: N={degree}, chain bits {chain}, scale "
                              f"{ctx.global_scale}; preset {name} wants N={p.poly_modulus_degree}, "
                              f"{expected}, 2^{p.scale_bits}")
        return cls(ctx, p, rotations)

    def _reference_levels(self) -> list[tuple[list[int], float]]:
        """``(parms_id, scale)`` a legitimate ciphertext has at each level."""
        v = ts.ckks_vector(self.ctx, [0.5])
        out = []
        for level in range(self.max_level + 1):
            ct = v.ciphertext()[0]
            out.append((list(ct.parms_id()), float(ct.scale)))
            if level < self.max_level:
                v = v * [1.0]
        return out

    def _reference_header(self) -> bytes:
        """Bytes 2..6 of a SEAL blob (header size, version, compression) as this build writes them."""
        blob = proto_blobs(ts.ckks_vector(self.ctx, [0.0]).serialize())[0]
        return blob[2:6]

    # -- numbers ------------------------------------------------------------------------------------
    def error_bound(self, level: int = 0, plain_bound: float = 1.0, terms: int = 1,
                    value_bound: float = 1.0) -> float:
        unit = self.preset.poly_modulus_degree / self._scale
        e = 2.0 * unit * max(1.0, value_bound)
        for _ in range(level):
            e = 4.0 * math.sqrt(terms) * (plain_bound * e + 32.0 * unit * max(1.0, value_bound))
        return e

    def max_plain_magnitude(self, level: int) -> float:
        return 2.0 ** (self.preset.chain_bits(level) - 2 - self.preset.scale_bits)

    def release_policy(self, bound: float = 2.0 ** 30, plain_bound: float = 1.0,
                       terms: int = 1, level: int = 1, value_bound: float = 1.0) -> ReleasePolicy:
        sigma = FLOOD_RATIO * self.error_bound(level, plain_bound, terms, value_bound)
        precision = 2.0 ** math.floor(math.log2(sigma))
        if bound >= self.max_plain_magnitude(level) or bound * 2.0 ** -52 > precision:
            raise CryptoError(f"release bound {bound:g} is beyond the modulus room "
                              f"{self.max_plain_magnitude(level):g} or float64 resolution at precision "
                              f"{precision:g} (preset {self.preset.name}, level {level})")
        return ReleasePolicy(bound=bound, flood_sigma=sigma, precision=precision)

    # -- validation ---------------------------------------------------------------------------------
    def _chunk_sizes(self, size: int) -> list[int]:
        n = -(-size // self.slots)
        return [self.slots] * (n - 1) + [size - self.slots * (n - 1)]

    def _wrap(self, vec: ts.CKKSVector, size: int, level: int) -> CKKSCiphertext:
        return CKKSCiphertext(vec, size, level)

    def tenseal_vector(self, c: CKKSCiphertext) -> ts.CKKSVector:
        """``c`` as a TenSEAL vector (built once from the SEAL blobs of a raw ciphertext)."""
        if c.vec is None:
            blobs = c.blobs if c.blobs is not None else [self.seal.save(ct) for ct in self._raw(c)]
            c.vec = ts.ckks_vector_from(self.ctx, proto(self._chunk_sizes(c.size), blobs, self._scale))
        return c.vec

    def _raw(self, c: CKKSCiphertext) -> list[Any]:
        if c.raw is None and c.blobs is not None:
            c.raw = [self.seal.load(b) for b in c.blobs]
        return c.raw if c.raw is not None else list(self.tenseal_vector(c).ciphertext())

    def _check(self, ct: EncryptedVector, op: str) -> CKKSCiphertext:
        if not isinstance(ct, CKKSCiphertext):
            raise CryptoError(f"ckks.{op}: expected a CKKSCiphertext, got {type(ct).__name__}")
        return ct

    def deserialize(self, data: bytes, size: int, level: int) -> CKKSCiphertext:
        if not 1 <= size <= 64 * self.slots or not 0 <= level <= self.max_level:
            raise CryptoError(f"ckks.deserialize: size {size} / level {level} outside 1..{64 * self.slots} / "
                              f"0..{self.max_level}")
        sizes = self._chunk_sizes(size)
        raw = self.preset.raw_ciphertext_bytes(level)
        # a seeded blob holds c0 only (half), and SEAL compresses both forms (zstd) by a few percent
        parts = unpack_envelope(data, TAG, size, level, len(sizes), (raw // 4, raw + 4096))
        for i, blob in enumerate(parts):
            magic, hsize, vmaj, vmin, compr, _, nbytes = _SEAL_HEADER.unpack_from(blob)
            if magic != _SEAL_MAGIC or bytes([hsize, vmaj, vmin, compr]) != self._seal_head \
                    or nbytes != len(blob):
                raise CryptoError(f"ckks.deserialize: chunk {i} has a bad SEAL header (magic {magic:#x}, "
                                  f"declared {nbytes} bytes of {len(blob)})")
        try:
            vec = ts.ckks_vector_from(self.ctx, proto(sizes, parts, self._scale))
        except Exception as exc:
            raise CryptoError(f"ckks.deserialize: SEAL refused a chunk: {exc}") from exc
        cts = vec.ciphertext()
        parms_id, scale = self._levels[level]
        if len(cts) != len(sizes) or vec.size() != size:
            raise CryptoError(f"ckks.deserialize: loaded {len(cts)} ciphertexts of size {vec.size()}, "
                              f"expected {len(sizes)} / {size}")
        for i, ct in enumerate(cts):
            if ct.size() != 2 or not ct.is_ntt_form() or list(ct.parms_id()) != parms_id \
                    or ct.scale != scale:
                raise CryptoError(f"ckks.deserialize: chunk {i} has {ct.size()} polynomials, scale "
                                  f"{ct.scale}, parms_id {list(ct.parms_id())}; expected 2, {scale}, "
                                  f"{parms_id} (level {level})")
        return CKKSCiphertext(vec, size, level, list(cts))  # the checked SEAL ciphertexts, for the fast paths

    def serialize(self, ct: EncryptedVector) -> bytes:
        c = self._check(ct, "serialize")
        if c.blobs is not None:
            blobs = c.blobs
        elif c.raw is not None and c.vec is None:
            blobs = [self.seal.save(x) for x in c.raw]
        else:
            blobs = proto_blobs(self.tenseal_vector(c).serialize())
        return pack_envelope(TAG, c.size, c.level, blobs)

    # -- operations ---------------------------------------------------------------------------------
    def encrypt(self, values: npt.ArrayLike) -> CKKSCiphertext:
        return self.encrypt_at(values, 0)

    def encrypt_at(self, values: npt.ArrayLike, level: int) -> CKKSCiphertext:
        """A fresh encryption directly at ``level`` (fewer primes: smaller and cheaper than encrypting at
        level 0 and :meth:`drop_level`). With the secret key it is symmetric and kept in SEAL's seeded
        form, which :meth:`serialize` sends: half the bytes (the receiver expands ``c1`` from the seed)."""
        arr = as_vector(values, "ckks.encrypt values")
        if not 0 <= level <= self.max_level:
            raise CryptoError(f"ckks.encrypt: level {level} outside 0..{self.max_level}")
        limit = self.max_plain_magnitude(self.max_level)
        if np.max(np.abs(arr)) >= limit:
            raise CryptoError(f"ckks.encrypt: |value| {np.max(np.abs(arr)):g} >= {limit:g}, the most "
                              f"preset {self.preset.name} holds")
        parms_id = self._levels[level][0]
        pieces = [arr[i:i + self.slots] for i in range(0, arr.size, self.slots)]
        if self.has_secret_key and self.seeded:
            return CKKSCiphertext(None, arr.size, level, None,
                                  [self.seal.encrypt_seeded(p, parms_id) for p in pieces])
        return CKKSCiphertext(None, arr.size, level, [self.seal.encrypt(p, parms_id) for p in pieces])

    def drop_level(self, ct: EncryptedVector, level: int) -> CKKSCiphertext:
        """``ct`` mod-switched down to ``level`` (the scale stays ``Δ``; adds a rounding error of the order
        of a fresh encryption's; for ciphertexts no product will touch again: smaller on the wire)."""
        c = self._check(ct, "drop_level")
        if not c.level <= level <= self.max_level:
            raise CryptoError(f"ckks.drop_level: from level {c.level} to {level}; allowed "
                              f"{c.level}..{self.max_level}")
        if level == c.level:
            return c
        raw = self._raw(c)
        for _ in range(level - c.level):
            raw = [self.seal.mod_switch(x) for x in raw]
        return CKKSCiphertext(None, c.size, level, raw)

    def decrypt(self, ct: EncryptedVector, bound: float | None = None) -> FloatArray:
        c = self._check(ct, "decrypt")
        if not self.has_secret_key:
            raise CryptoError("ckks.decrypt: this context holds no secret key (a public context)")
        if c.raw is not None or c.blobs is not None:
            sizes = self._chunk_sizes(c.size)
            out = np.concatenate([self.seal.decrypt(x, n) for x, n in zip(self._raw(c), sizes, strict=True)])
        else:
            out = np.asarray(self.tenseal_vector(c).decrypt(self.ctx.secret_key()), dtype=np.float64)
        if bound is not None:
            bad = np.flatnonzero(~(np.abs(out) <= bound))
            if bad.size:
                raise CryptoError(f"ckks.decrypt: value {out[bad[0]]!r} at index {int(bad[0])} exceeds "
                                  f"{bound}; corrupt or foreign-key ciphertext")
        return out

    def add(self, a: EncryptedVector, b: EncryptedVector) -> CKKSCiphertext:
        x, y = self._check(a, "add"), self._check(b, "add")
        self.check_pair(x, y, "add")
        if x.raw is not None or y.raw is not None:
            raw = [self.seal.add(a, b) for a, b in zip(self._raw(x), self._raw(y), strict=True)]
            return CKKSCiphertext(None, x.size, x.level, raw)
        return self._wrap(self.tenseal_vector(x) + self.tenseal_vector(y), x.size, x.level)

    def add_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> CKKSCiphertext:
        x = self._check(a, "add_plain")
        arr = np.asarray(values, dtype=np.float64)
        p = as_vector(np.full(x.size, float(arr)) if arr.ndim == 0 else arr, "ckks.add_plain values", x.size)
        return self._wrap(self.tenseal_vector(x) + p.tolist(), x.size, x.level)

    def mul_plain(self, a: EncryptedVector, values: npt.ArrayLike) -> CKKSCiphertext:
        x = self._check(a, "mul_plain")
        self.check_level(x, "mul_plain")
        arr = np.asarray(values, dtype=np.float64)
        p = as_vector(np.full(x.size, float(arr)) if arr.ndim == 0 else arr, "ckks.mul_plain values", x.size)
        return self._wrap(self.tenseal_vector(x) * p.tolist(), x.size, x.level + 1)

    def prepare_plain(self, values: npt.ArrayLike, level: int) -> CKKSPlain:
        """``values`` encoded (per slot chunk) for :meth:`dot_plain` with ciphertexts at ``level``."""
        arr = as_vector(values, "ckks.prepare_plain values")
        if not 0 <= level < self.max_level:
            raise CryptoError(f"ckks.prepare_plain: level {level}; products need 0..{self.max_level - 1}")
        parms_id = self._levels[level][0]
        pts = [self.seal.encode_for_product(arr[i:i + self.slots], parms_id)
               for i in range(0, arr.size, self.slots)]
        return CKKSPlain(pts, arr.size, level)

    def encrypt_mask(self, mask: npt.ArrayLike, pad_range: float, level: int) -> CKKSCiphertext:
        """``Enc_pk(mask ‖ pad)`` at ``level``: what :meth:`add_mask` adds, made ahead of the ciphertext."""
        m = as_vector(mask, "ckks.encrypt_mask mask")
        if not 0 <= level <= self.max_level:
            raise CryptoError(f"ckks.encrypt_mask: level {level} outside 0..{self.max_level}")
        n = -(-m.size // self.slots)
        pad = secure_rng().uniform(-pad_range, pad_range, size=n * self.slots)
        parms_id = self._levels[level][0]
        raw = [self.seal.encrypt_public(m[i * self.slots:(i + 1) * self.slots],
                                        pad[i * self.slots:(i + 1) * self.slots], parms_id) for i in range(n)]
        return CKKSCiphertext(None, m.size, level, raw)

    def dot_plain(self, cts: Sequence[EncryptedVector], plains: Sequence[Any]) -> CKKSCiphertext:
        """``Σ_t cts[t] ⊙ plains[t]`` with one rescale (:meth:`SealOps.dot`), per slot chunk; a plaintext
        may be a :class:`CKKSPlain` from :meth:`prepare_plain` (no encoding here)."""
        xs = [self._check(c, "dot_plain") for c in cts]
        if not xs or len(xs) != len(plains):
            raise CryptoError(f"ckks.dot_plain: {len(xs)} ciphertexts and {len(plains)} plaintexts")
        for x in xs:
            self.check_pair(xs[0], x, "dot_plain")
        self.check_level(xs[0], "dot_plain")
        size, level = xs[0].size, xs[0].level
        ps: list[Any] = []
        for p in plains:
            if isinstance(p, CKKSPlain):
                if (p.size, p.level) != (size, level):
                    raise CryptoError(f"ckks.dot_plain: a plaintext prepared for size/level "
                                      f"{p.size}/{p.level}, the ciphertexts are {size}/{level}")
                ps.append(p.pts)
            else:
                arr = as_vector(p, "ckks.dot_plain plaintext", size)
                ps.append([arr[i * self.slots:(i + 1) * self.slots] for i in range(-(-size // self.slots))])
        raws = [self._raw(x) for x in xs]
        out = [self.seal.dot([r[i] for r in raws], [p[i] for p in ps]) for i in range(len(raws[0]))]
        return CKKSCiphertext(None, size, level + 1, out)

    def add_mask(self, a: EncryptedVector, mask: npt.ArrayLike, pad_range: float) -> CKKSCiphertext:
        """``a + Enc_pk(mask ‖ pad)`` chunk by chunk, at ``a``'s level and scale (fresh randomness)."""
        x = self._check(a, "add_mask")
        m = as_vector(mask, "ckks.add_mask mask", x.size)
        raw = self._raw(x)
        pad = secure_rng().uniform(-pad_range, pad_range, size=len(raw) * self.slots)
        out = [self.seal.add_fresh(ct, m[i * self.slots:(i + 1) * self.slots],
                                   pad[i * self.slots:(i + 1) * self.slots]) for i, ct in enumerate(raw)]
        return CKKSCiphertext(None, x.size, x.level, out)
