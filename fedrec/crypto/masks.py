"""Additive masks for the "compute on ciphertexts, mask, let the key holder decrypt" step (DESIGN §4.2).

The host adds a fresh mask ``r ~ U[-R, R]^n`` to its encrypted result ``g`` (``|g_i| <= V``), the guest
decrypts ``g + r`` and the host subtracts ``r``. For one coordinate the two distributions ``g + r`` and
``g' + r`` are at statistical distance ``|g - g'| / (2R) <= V / R``; with ``R = V · 2^h`` a masked value
hides the true one up to distance ``2^-h`` (and ``n · 2^-h`` for the whole vector, union bound).

The trade-off with CKKS precision (a mask too large destroys precision): the masked value ``g + r`` has
magnitude up to ``M = R + V`` and must

* fit in the ciphertext modulus left at its level: ``M · Δ < Q_level / 2``; for the default preset
  ``n8192`` (``Q_1 ≈ 2^103``, ``Δ = 2^55``) that is ``M < 2^47``;
* survive float64 decoding and the host's subtraction ``(g + r + noise) - r``: the absolute rounding
  error is ``M · 2^-53``; it must stay below the release grid (``2^-15`` for ``terms = 256``), i.e.
  ``M <= 2^37``;

and the released value carries the flooding noise (``σ ≈ 3e-5``, see :mod:`fedrec.crypto.ckks`), so
the useful precision is independent of ``R`` until ``M · 2^-53`` reaches ``σ``. Default: ``h = 20``
hiding bits (per-value distance ``<= 2^-21``, ``≈ 5e-7``) for values clipped to ``V <= 2^10`` gives
``R <= 2^30``: 7 bits of headroom below the float64 limit and 17 below the modulus limit.
:func:`check_mask_fits` enforces both limits for a given backend.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from fedrec.crypto.backend import CryptoBackend, CryptoError, EncryptedVector, FloatArray

DEFAULT_HIDING_BITS = 20
#: float64 has a 53-bit significand; keep this many bits of the masked value below the release grid
_FLOAT_BITS = 52


def secure_rng() -> np.random.Generator:
    """A numpy generator seeded with 128 bits from the OS CSPRNG (fresh at every call)."""
    return np.random.default_rng(secrets.randbits(128))


@dataclass(frozen=True)
class MaskSpec:
    """Masks for values bounded by ``value_bound``, hiding them up to distance ``2^-hiding_bits``."""

    value_bound: float
    hiding_bits: int = DEFAULT_HIDING_BITS

    def __post_init__(self) -> None:
        if not (np.isfinite(self.value_bound) and self.value_bound > 0):
            raise CryptoError(f"MaskSpec.value_bound must be positive and finite, got {self.value_bound!r}")
        if not 1 <= self.hiding_bits <= 40:
            raise CryptoError(f"MaskSpec.hiding_bits must be in 1..40, got {self.hiding_bits}")

    @property
    def mask_range(self) -> float:
        """``R``: masks are uniform in ``[-R, R]``."""
        return float(self.value_bound * 2.0 ** self.hiding_bits)

    @property
    def masked_bound(self) -> float:
        """``R + V``: the largest magnitude a masked value can have (the release range check)."""
        return self.mask_range + self.value_bound

    def statistical_distance(self, n_values: int = 1) -> float:
        """Upper bound on the distance between masked vectors for any two true vectors."""
        return n_values * self.value_bound / self.mask_range / 2.0


def draw_mask(n: int, spec: MaskSpec) -> FloatArray:
    """``n`` fresh masks, uniform in ``[-R, R]`` from an OS-seeded generator."""
    if n <= 0:
        raise CryptoError(f"draw_mask: n must be positive, got {n}")
    r = spec.mask_range
    return secure_rng().uniform(-r, r, size=n)


def check_mask_fits(backend: CryptoBackend, spec: MaskSpec, level: int, precision: float) -> None:
    """Refuse a mask range that would overflow the ciphertext modulus or the float64 precision."""
    limit = backend.max_plain_magnitude(level)
    if spec.masked_bound >= limit:
        raise CryptoError(f"mask range {spec.mask_range:.3g} (+ value bound {spec.value_bound:g}) exceeds "
                          f"what a {backend.name} ciphertext at level {level} holds ({limit:.3g}); lower "
                          f"hiding_bits or value_bound, or use a preset with more modulus")
    if spec.masked_bound * 2.0 ** -_FLOAT_BITS > precision:
        raise CryptoError(f"mask range {spec.mask_range:.3g} leaves float64 resolution "
                          f"{spec.masked_bound * 2.0 ** -_FLOAT_BITS:.3g} coarser than the release precision "
                          f"{precision:.3g}; lower hiding_bits or value_bound")


def mask_ciphertext(backend: CryptoBackend, ct: EncryptedVector,
                    spec: MaskSpec) -> tuple[EncryptedVector, FloatArray]:
    """Add a fresh encrypted mask to ``ct`` (every SIMD slot, not only the ``ct.size`` used ones).

    Returns the masked ciphertext and the mask of the used values, which the caller subtracts from the
    released decryption: ``g = released - mask``.
    """
    mask = draw_mask(ct.size, spec)
    return backend.add_mask(ct, mask, spec.mask_range), mask
