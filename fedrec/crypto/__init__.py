"""Crypto backends (CKKS default, Paillier, plain), masks and differential privacy.

Key holder: ``backend = make_backend("ckks")``; other party:
``peer = load_public(backend.public_bytes(), KeyPin())``. See :mod:`fedrec.crypto.backend` for the
operations, :mod:`fedrec.crypto.masks` for the mask/precision trade-off and :mod:`fedrec.crypto.dp` for
DP mechanisms and accounting. Protocols own their packing layouts (the vertical FM's is
:mod:`fedrec.protocols.hetero_fm.packing`).
"""

from fedrec.crypto.backend import (
    CryptoBackend,
    CryptoError,
    EncryptedVector,
    KeyPin,
    ReleasePolicy,
    load_public,
    make_backend,
)
from fedrec.crypto.masks import MaskSpec, draw_mask, mask_ciphertext

__all__ = [
    "CryptoBackend", "CryptoError", "EncryptedVector", "KeyPin", "MaskSpec", "ReleasePolicy", "draw_mask",
    "load_public", "make_backend", "mask_ciphertext",
]
