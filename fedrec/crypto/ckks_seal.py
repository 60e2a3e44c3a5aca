"""SEAL-level fast paths under the CKKS backend (TenSEAL's ``sealapi`` bindings on TenSEAL's own context).

TenSEAL's vector operations re-encode, rescale and copy at every call. The host gradient of DESIGN §4.2
is a sum of ciphertext × plaintext products, so below TenSEAL we

* encode each plaintext once, at the scale of the prime the product will drop (``q_last``), so that a
  product rescaled by ``q_last`` keeps the ciphertext's scale exactly (TenSEAL does the same, so the
  results are byte-compatible with :class:`fedrec.crypto.ckks.CKKSBackend`'s level references);
* accumulate ``Σ_t ct_t ⊙ p_t`` at scale ``Δ·q_last`` and rescale ONCE (a rescale is an inverse and a
  forward NTT per prime: ~3.5 ms on N = 8192, more than the product itself);
* add masks as ``ct + Enc_pk(mask)`` at the ciphertext's own level and scale: the plaintext mask and
  the re-randomisation (fresh encryption randomness, which hides the host's plaintexts from the key
  holder's view of ``c1``) in one encryption, with no serialization round-trip;
* encrypt with the secret key when there is one (symmetric RLWE encryption: the same IND-CPA
  ciphertext distribution for everyone but the key holder, and half the work of public-key encryption).

Error of :meth:`SealOps.dot`: the plaintext rounding (``≤ ½`` per coefficient at scale ``q_last``) and
the ciphertext errors add over the ``T`` terms exactly as for TenSEAL's per-product rescale, minus the
``T - 1`` rounding errors of the skipped rescales, so :meth:`CKKSBackend.error_bound` still bounds it.

SEAL ciphertexts serialize only to files in these bindings; :meth:`SealOps.save` writes to a private
(0700) per-process directory (``/dev/shm`` when available) and reads the bytes back (~2.5 ms for N=8192).
The bindings and TenSEAL hold the GIL during every call (measured: a Python thread stalls for the
whole 0.4 s of a Galois key generation), so threads cannot use a second core here.

TenSEAL's wire form of a vector (``CKKSVectorProto``: sizes, SEAL blobs, scale) is written and parsed
by :func:`proto` / :func:`proto_blobs`, so that sizes and chunk counts are always the receiver's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
import threading
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from fedrec.crypto.backend import CryptoError, FloatArray

_DIR_LOCK = threading.Lock()
_DIR: str | None = None


def _private_dir() -> str:
    global _DIR
    with _DIR_LOCK:
        if _DIR is None or not os.path.isdir(_DIR):
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            _DIR = tempfile.mkdtemp(prefix="fedrec-ckks-", dir=base)
            atexit.register(shutil.rmtree, _DIR, True)
        return _DIR


class SealOps:
    """Evaluator, encoder and encryptors bound to one TenSEAL context (public or private)."""

    def __init__(self, ctx: ts.Context) -> None:
        self.sc: Any = ctx.seal_context().data
        self.evaluator = seal.Evaluator(self.sc)
        self.encoder = seal.CKKSEncoder(self.sc)
        self.slots = int(self.encoder.slot_count())
        self.public = seal.Encryptor(self.sc, ctx.public_key().data) if ctx.has_public_key() else None
        private = bool(ctx.is_private())
        self.symmetric = seal.Encryptor(self.sc, ctx.secret_key().data) if private else None
        self.decryptor = seal.Decryptor(self.sc, ctx.secret_key().data) if private else None
        self.scale = float(ctx.global_scale)

    def _full(self, values: FloatArray, pad: FloatArray | None = None) -> list[float]:
        if values.size > self.slots:
            raise CryptoError(f"ckks: {values.size} values do not fit one ciphertext of {self.slots} slots")
        if values.size == self.slots:
            return values.tolist()
        full = np.zeros(self.slots) if pad is None else pad.copy()
        full[:values.size] = values
        return full.tolist()

    def encrypt(self, values: FloatArray, parms_id: Any = None) -> Any:
        """A fresh ciphertext of ``values`` (zero-padded to the slot count) at ``parms_id`` (default: the
        first level), scale ``Δ``."""
        pt, ct = seal.Plaintext(), seal.Ciphertext()
        self.encoder.encode(self._full(values), parms_id or self.sc.first_parms_id(), self.scale, pt)
        if self.symmetric is not None:
            self.symmetric.encrypt_symmetric(pt, ct)
        elif self.public is not None:
            self.public.encrypt(pt, ct)
        else:
            raise CryptoError("ckks.encrypt: the context holds neither a public nor a secret key")
        return ct

    def encrypt_seeded(self, values: FloatArray, parms_id: Any = None) -> bytes:
        """The SEAL blob of a fresh SYMMETRIC encryption of ``values`` at ``parms_id`` in SEAL's seeded
        form: ``c0`` and the seed ``c1`` is expanded from (SEAL's ``Serializable<Ciphertext>``), half the
        bytes of a full ciphertext. Key holders only."""
        if self.symmetric is None:
            raise CryptoError("ckks.encrypt: a seeded (symmetric) encryption needs the secret key")
        pt = seal.Plaintext()
        self.encoder.encode(self._full(values), parms_id or self.sc.first_parms_id(), self.scale, pt)
        return self._via_file(self.symmetric.encrypt_symmetric(pt).save)

    def load(self, blob: bytes) -> Any:
        """A SEAL ciphertext from its blob (full or seeded; the caller validated the blob)."""
        ct = seal.Ciphertext()
        path = self._path()
        try:
            with open(path, "wb") as fh:
                fh.write(blob)
            ct.load(self.sc, path)
        except Exception as exc:
            raise CryptoError(f"ckks: SEAL refused a ciphertext blob: {exc}") from exc
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return ct

    def mod_switch(self, ct: Any) -> Any:
        """``ct`` at the next level of the chain, same scale (drops the last prime; no rescale)."""
        out = seal.Ciphertext()
        self.evaluator.mod_switch_to_next(ct, out)
        return out

    def _drop_prime(self, ct: Any) -> float:
        """The value of the prime a rescale of ``ct`` removes."""
        return float(self.sc.get_context_data(ct.parms_id()).parms().coeff_modulus()[-1].value())

    def encode_for_product(self, values: FloatArray, parms_id: Any) -> Any:
        """``values`` encoded to multiply ciphertexts at ``parms_id`` (scale: the prime a rescale drops)."""
        pt = seal.Plaintext()
        prime = float(self.sc.get_context_data(parms_id).parms().coeff_modulus()[-1].value())
        self.encoder.encode(self._full(values), parms_id, prime, pt)
        return pt

    def encrypt_public(self, values: FloatArray, pad: FloatArray, parms_id: Any) -> Any:
        """``Enc_pk(values ‖ pad)`` at ``parms_id``, scale ``Δ`` (fresh randomness, public key)."""
        if self.public is None:
            raise CryptoError("ckks.encrypt_mask: the context holds no public key")
        pt, ct = seal.Plaintext(), seal.Ciphertext()
        self.encoder.encode(self._full(values, pad), parms_id, self.scale, pt)
        self.public.encrypt(pt, ct)
        return ct

    def dot(self, cts: list[Any], plains: list[Any]) -> Any:
        """``rescale(Σ_t cts[t] ⊙ plains[t])``: one encoding per term (none for a plaintext encoded ahead
        by :meth:`encode_for_product` at the ciphertexts' level), one rescale in total."""
        if not cts or len(cts) != len(plains):
            raise CryptoError(f"ckks.dot_plain: {len(cts)} ciphertexts and {len(plains)} plaintexts")
        ev, tmp = self.evaluator, seal.Ciphertext()
        acc = None
        for ct, p in zip(cts, plains, strict=True):
            if isinstance(p, np.ndarray):
                pt = seal.Plaintext()
                self.encoder.encode(self._full(p), ct.parms_id(), self._drop_prime(ct), pt)
            else:
                pt = p
                if list(pt.parms_id()) != list(ct.parms_id()):
                    raise CryptoError("ckks.dot_plain: a plaintext prepared for another level")
            if acc is None:
                acc = seal.Ciphertext()
                ev.multiply_plain(ct, pt, acc)
            else:
                ev.multiply_plain(ct, pt, tmp)
                ev.add_inplace(acc, tmp)
        assert acc is not None
        ev.rescale_to_next_inplace(acc)
        acc.scale = cts[0].scale  # exact: q_last cancels (float rounding only)
        return acc

    def add(self, a: Any, b: Any) -> Any:
        out = seal.Ciphertext()
        self.evaluator.add(a, b, out)
        return out

    def add_fresh(self, ct: Any, values: FloatArray, pad: FloatArray) -> Any:
        """``ct + Enc_pk(values ‖ pad)`` at ``ct``'s level and scale (re-randomises ``ct``)."""
        if self.public is None:
            raise CryptoError("ckks.add_mask: the context holds no public key")
        pt, fresh = seal.Plaintext(), seal.Ciphertext()
        self.encoder.encode(self._full(values, pad), ct.parms_id(), ct.scale, pt)
        self.public.encrypt_zero(ct.parms_id(), fresh)  # = encrypt(pt) - pt in SEAL; measured 40% cheaper
        fresh.scale = ct.scale
        self.evaluator.add_plain_inplace(fresh, pt)
        self.evaluator.add_inplace(fresh, ct)
        return fresh

    def decrypt(self, ct: Any, size: int) -> FloatArray:
        if self.decryptor is None:
            raise CryptoError("ckks.decrypt: this context holds no secret key (a public context)")
        pt = seal.Plaintext()
        self.decryptor.decrypt(ct, pt)
        return np.asarray(self.encoder.decode_double(pt), dtype=np.float64)[:size]

    def save(self, ct: Any) -> bytes:
        """The SEAL blob of ``ct`` (as inside TenSEAL's serialization)."""
        return self._via_file(ct.save)

    @staticmethod
    def _path() -> str:
        return os.path.join(_private_dir(), f"ct-{os.getpid()}-{threading.get_ident()}")

    def _via_file(self, save: Any) -> bytes:
        path = self._path()
        try:
            save(path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CryptoError("malformed TenSEAL protobuf varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def proto(sizes: list[int], blobs: list[bytes], scale: float) -> bytes:
    """TenSEAL ``CKKSVectorProto`` {1: packed uint32 sizes, 2: bytes ciphertexts, 3: double scale}."""
    packed = b"".join(_varint(s) for s in sizes)
    out = [b"\x0a", _varint(len(packed)), packed]
    for blob in blobs:
        out += [b"\x12", _varint(len(blob)), blob]
    out += [b"\x19", struct.pack("<d", scale)]
    return b"".join(out)


def proto_blobs(buf: bytes) -> list[bytes]:
    """The ciphertext blobs of a ``CKKSVectorProto`` that TenSEAL itself produced."""
    pos, blobs = 0, []
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _read_varint(buf, pos)
            if field == 2:
                blobs.append(buf[pos:pos + length])
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 0:
            _, pos = _read_varint(buf, pos)
        else:
            raise CryptoError(f"unexpected protobuf wire type {wire} in a TenSEAL vector")
    return blobs
