"""ECDH private set intersection on ristretto255 or X25519 (id alignment between two parties).

Public API::

    run_psi(channel, peer, ids, *, role, chunk_size=16384, workers=None, timeout=300.0, progress=False,
            engine=None, max_peer_size=200_000_000, curve=None) -> PsiResult   # "ristretto255" | "x25519"
    PsiResult(ids, rows, n_input, n_unique, peer_size, seconds, stats).intersection_size / .n_duplicates
    PsiPeerError                       # the peer sent an invalid point, a wrong chunk, or disagrees
    encode_ids(values, source) -> list[bytes]          # the id normalisation rule (strings / ints)
    read_id_column(path, column) -> list[bytes]        # CSV / Parquet
    write_aligned(path, ids, rows)                     # aligned_index, id, row_index
    Engine(workers, curve=DEFAULT_CURVE, backend=None) # the thread pool of batched group operations
                                                       # backend (x25519): "auto" | "ifma" | "sodium"

Modules: :mod:`~fedrec.psi.protocol` (the protocol and what each party learns), :mod:`~fedrec.psi.group`
(ristretto255 over libsodium), :mod:`~fedrec.psi.curve25519` (X25519, Elligator2),
:mod:`~fedrec.psi.x25519_ifma` (the same X25519 8 points at a time with AVX-512 IFMA, bit-identical),
:mod:`~fedrec.psi.messages` (the conversation), :mod:`~fedrec.psi.align`, :mod:`~fedrec.psi.ids`;
the ``fedrec psi`` command is ``training/psi_cmd.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedrec.psi.group import Engine
    from fedrec.psi.ids import IdError, encode_ids, read_id_column, write_aligned
    from fedrec.psi.protocol import PsiPeerError, PsiResult, run_psi

_EXPORTS = {
    "Engine": "group",
    "IdError": "ids", "encode_ids": "ids", "read_id_column": "ids", "write_aligned": "ids",
    "PsiPeerError": "protocol", "PsiResult": "protocol", "run_psi": "protocol",
}
__all__ = [
    "Engine", "IdError", "PsiPeerError", "PsiResult", "encode_ids", "read_id_column", "run_psi",
    "write_aligned",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy, so `fedrec psi --help` does not load numpy and zmq
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedrec.psi' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedrec.psi.{module}"), name)
