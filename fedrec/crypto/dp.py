"""Differential privacy: Gaussian, Laplace and randomized-response mechanisms, and an accountant.

Mechanisms (``sensitivity`` = the L2 (Gaussian) or L1 (Laplace) sensitivity of the released value)::

    Gaussian     x + N(0, σ²),  σ = noise_multiplier · sensitivity
    Laplace      x + Lap(b),    b = sensitivity / ε                      (ε-DP)
    k-ary RR     keep the label w.p. e^ε / (e^ε + k - 1), else one of the k-1 others uniformly  (ε-DP)

:func:`gaussian_sigma` calibrates σ for one release with the exact analytic Gaussian mechanism
(Balle & Wang, ICML 2018): ``δ(ε) = Φ(Δ/2σ - εσ/Δ) - e^ε Φ(-Δ/2σ - εσ/Δ)``.

Accounting for repeated releases (DP-SGD style training, label DP over epochs) uses Google's
maintained ``dp-accounting`` library (RDP accountant; Poisson subsampling supported). For the
non-subsampled Gaussian we also give the closed form ``RDP_α = α / (2 · noise_multiplier²)`` per
release (Mironov 2017), which the tests compare with the library.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import dp_accounting
import numpy as np
import numpy.typing as npt
from dp_accounting import rdp
from scipy.optimize import brentq
from scipy.stats import norm

from fedrec.crypto.backend import CryptoError, FloatArray
from fedrec.crypto.masks import secure_rng

logger = logging.getLogger(__name__)


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise CryptoError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def gaussian_mechanism(values: npt.ArrayLike, noise_multiplier: float, sensitivity: float,
                       rng: np.random.Generator | None = None) -> FloatArray:
    """``values + N(0, (noise_multiplier · sensitivity)²)`` per coordinate."""
    sigma = _positive("noise_multiplier", noise_multiplier) * _positive("sensitivity", sensitivity)
    x = np.asarray(values, dtype=np.float64)
    return x + (rng or secure_rng()).normal(0.0, sigma, size=x.shape)


def laplace_mechanism(values: npt.ArrayLike, epsilon: float, sensitivity: float,
                      rng: np.random.Generator | None = None) -> FloatArray:
    """``values + Lap(sensitivity / epsilon)`` per coordinate (ε-DP for L1 sensitivity)."""
    b = _positive("sensitivity", sensitivity) / _positive("epsilon", epsilon)
    x = np.asarray(values, dtype=np.float64)
    return x + (rng or secure_rng()).laplace(0.0, b, size=x.shape)


def rr_keep_probability(epsilon: float, k: int = 2) -> float:
    """Probability that k-ary randomized response reports the true label."""
    if k < 2:
        raise CryptoError(f"randomized response needs k >= 2 labels, got {k}")
    e = math.exp(_positive("epsilon", epsilon))
    return e / (e + k - 1)


def randomized_response(labels: npt.ArrayLike, epsilon: float, k: int = 2,
                        rng: np.random.Generator | None = None) -> npt.NDArray[np.int64]:
    """ε-DP k-ary randomized response of integer labels in ``0..k-1``."""
    y = np.asarray(labels)
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise CryptoError(f"randomized_response: labels must be integers in 0..{k - 1}")
    g = rng or secure_rng()
    keep = g.random(y.shape) < rr_keep_probability(epsilon, k)
    other = (y + g.integers(1, k, size=y.shape)) % k
    return np.where(keep, y, other).astype(np.int64)


def rr_unbiased_mean(reported: npt.ArrayLike, epsilon: float) -> float:
    """Unbiased estimate of the true positive rate from binary randomized-response reports."""
    p = rr_keep_probability(epsilon, 2)
    return (float(np.mean(np.asarray(reported, dtype=np.float64))) - (1 - p)) / (2 * p - 1)


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float = 1.0) -> float:
    """Exact δ(ε) of one Gaussian release (analytic Gaussian mechanism)."""
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return float(norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b))


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest σ making one Gaussian release (ε, δ)-DP (exact, by root finding)."""
    _positive("epsilon", epsilon)
    if not 0 < delta < 1:
        raise CryptoError(f"delta must be in (0, 1), got {delta!r}")
    f = lambda s: gaussian_delta(epsilon, s, sensitivity) - delta  # noqa: E731
    return float(brentq(f, 1e-6 * sensitivity, 1e6 * sensitivity, xtol=1e-12))


def gaussian_rdp(noise_multiplier: float, orders: npt.ArrayLike) -> FloatArray:
    """Closed-form RDP of one non-subsampled Gaussian release: ``α / (2 z²)``."""
    return np.asarray(orders, dtype=np.float64) / (2 * _positive("noise_multiplier", noise_multiplier) ** 2)


@dataclass
class PrivacyAccountant:
    """Composes releases and reports (ε, δ) via the RDP accountant of ``dp-accounting``.

    ``relation``: ``"add_remove"`` (a record is added/removed, DP-SGD) or ``"replace"`` (a record's
    value is replaced — label DP with randomized response needs this one).
    """

    relation: str = "add_remove"
    events: list[tuple[str, float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rels = {"add_remove": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                "replace": dp_accounting.NeighboringRelation.REPLACE_ONE}
        if self.relation not in rels:
            raise CryptoError(f"PrivacyAccountant.relation must be one of {sorted(rels)}, "
                              f"got {self.relation!r}")
        self._acc = rdp.RdpAccountant(neighboring_relation=rels[self.relation])

    def _compose(self, event: dp_accounting.DpEvent, count: int,
                 record: tuple[str, float, float, int]) -> None:
        if count <= 0:
            raise CryptoError(f"PrivacyAccountant: count must be positive, got {count}")
        try:
            self._acc.compose(event, count)
        except dp_accounting.UnsupportedEventError as exc:
            raise CryptoError(f"PrivacyAccountant({self.relation}) cannot account {record[0]}: "
                              f"{exc}") from exc
        self.events.append(record)

    def gaussian(self, noise_multiplier: float, count: int = 1, sampling_rate: float = 1.0) -> None:
        """``count`` Gaussian releases, each on a Poisson sample of rate ``sampling_rate``."""
        z = _positive("noise_multiplier", noise_multiplier)
        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
        if sampling_rate < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(_positive("sampling_rate", sampling_rate), event)
        self._compose(event, count, ("gaussian", noise_multiplier, sampling_rate, count))

    def laplace(self, epsilon: float, count: int = 1) -> None:
        """``count`` Laplace releases calibrated to ``epsilon`` (noise parameter ``1/ε`` per unit L1)."""
        self._compose(dp_accounting.LaplaceDpEvent(1.0 / _positive("epsilon", epsilon)), count,
                      ("laplace", epsilon, 1.0, count))

    def randomized_response(self, epsilon: float, k: int = 2, count: int = 1) -> None:
        """``count`` k-ary randomized-response releases at ``epsilon`` (needs ``relation="replace"``)."""
        noise = k / (math.exp(_positive("epsilon", epsilon)) + k - 1)  # P(uniform re-draw over k labels)
        self._compose(dp_accounting.RandomizedResponseDpEvent(noise, k), count, ("rr", epsilon, k, count))

    def epsilon(self, delta: float) -> float:
        if not 0 < delta < 1:
            raise CryptoError(f"delta must be in (0, 1), got {delta!r}")
        return float(self._acc.get_epsilon(delta))
