"""Crypto backends (CKKS default, Paillier, plain), packing, masks and differential privacy.

Key holder: ``backend = make_backend("ckks")``; other party:
``peer = load_public(backend.public_bytes(), KeyPin())``. See :mod:`fedrec.crypto.backend` for the
operations, :mod:`fedrec.crypto.packing` for the §4.2 layouts, :mod:`fedrec.crypto.masks` for the
mask/precision trade-off and :mod:`fedrec.crypto.dp` for DP mechanisms and accounting.
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
from fedrec.crypto.packing import (
    PackedRows,
    RowLayout,
    deserialize_rows,
    outer_sum,
    pack_rows,
    row_layout,
    serialize_rows,
    sum_rows,
    unpack_outer,
)

__all__ = [
    "CryptoBackend", "CryptoError", "EncryptedVector", "KeyPin", "MaskSpec", "PackedRows", "ReleasePolicy",
    "RowLayout", "deserialize_rows", "draw_mask", "load_public", "make_backend", "mask_ciphertext",
    "outer_sum", "pack_rows", "row_layout", "serialize_rows", "sum_rows", "unpack_outer",
]
