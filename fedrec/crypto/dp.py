"""Differential privacy: Gaussian, Laplace and randomized-response mechanisms, and an accountant.

Mechanisms (``sensitivity`` = the L2 (Gaussian) or L1 (Laplace) sensitivity of the released value)::

    Gaussian     x + N(0, σ²),  σ = noise_multiplier · sensitivity
    Laplace      x + Lap(b),    b = sensitivity / ε                      (ε-DP)
    k-ary RR     keep the label w.p. e^ε / (e^ε + k - 1), else one of the k-1 others uniformly  (ε-DP)

:class:`GaussianMechanism` is the one the protocols use: it clips every row ``x_r`` of a release to
L2 norm ``C`` (``x_r · min(1, C / ‖x_r‖)``, so one record — one row — moves the release by at most
``C``), adds ``N(0, (z·C)²)`` to every value and records one Gaussian event of noise multiplier ``z``
in its :class:`PrivacyAccountant`. A caller that bounds the sensitivity itself (label DP) uses only
:meth:`GaussianMechanism.noise` with ``C`` = that sensitivity.

:func:`gaussian_sigma` calibrates σ for one release with the exact analytic Gaussian mechanism
(Balle & Wang, ICML 2018): ``δ(ε) = Φ(Δ/2σ - εσ/Δ) - e^ε Φ(-Δ/2σ - εσ/Δ)``.

Accounting for repeated releases (DP-SGD style training, label DP over epochs) uses Google's
maintained ``dp-accounting`` library (RDP accountant; Poisson subsampling supported). For the
non-subsampled Gaussian we also give the closed form ``RDP_α = α / (2 · noise_multiplier²)`` per
release (Mironov 2017), which the tests compare with the library.

``dp-accounting`` and scipy are imported on first use (an accountant, a calibration): together they
take 1-2.5 s to import, which every ``fedrec train`` process paid before it opened its channel, also
when no DP was configured (the host without partial DP never builds an accountant).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedrec.crypto.backend import CryptoError, FloatArray
from fedrec.crypto.masks import secure_rng

if TYPE_CHECKING:
    import dp_accounting

logger = logging.getLogger(__name__)


def _accounting() -> ModuleType:
    """``dp_accounting`` (with its ``rdp`` subpackage), imported on first use (module docstring)."""
    import dp_accounting
    import dp_accounting.rdp

    return dp_accounting


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
    from scipy.stats import norm

    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return float(norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b))


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest σ making one Gaussian release (ε, δ)-DP (exact, by root finding)."""
    from scipy.optimize import brentq

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
    #: ``(kind, parameter, sampling_rate or k, count)`` per call, in order; :meth:`to_json` /
    #: :meth:`from_json` replay them (not a constructor argument: events are only ever composed)
    events: list[tuple[str, float, float, int]] = field(default_factory=list, init=False)
    #: called with each event before it is composed (a write-ahead journal: a release is on record
    #: before its noise is drawn, so a crash can never forget it); not part of :meth:`to_json`
    journal: Callable[[tuple[str, float, float, int]], None] | None = field(default=None, compare=False,
                                                                          repr=False)

    def __post_init__(self) -> None:
        dpa = _accounting()
        rels = {"add_remove": dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
                "replace": dpa.NeighboringRelation.REPLACE_ONE}
        if self.relation not in rels:
            raise CryptoError(f"PrivacyAccountant.relation must be one of {sorted(rels)}, "
                              f"got {self.relation!r}")
        self._acc = dpa.rdp.RdpAccountant(neighboring_relation=rels[self.relation])

    def _compose(self, event: dp_accounting.DpEvent, count: int,
                 record: tuple[str, float, float, int]) -> None:
        if count <= 0:
            raise CryptoError(f"PrivacyAccountant: count must be positive, got {count}")
        if self.journal is not None:
            self.journal(record)
        try:
            self._acc.compose(event, count)
        except _accounting().UnsupportedEventError as exc:
            raise CryptoError(f"PrivacyAccountant({self.relation}) cannot account {record[0]}: "
                              f"{exc}") from exc
        self.events.append(record)

    def gaussian(self, noise_multiplier: float, count: int = 1, sampling_rate: float = 1.0) -> None:
        """``count`` Gaussian releases, each on a Poisson sample of rate ``sampling_rate``."""
        z = _positive("noise_multiplier", noise_multiplier)
        if not 0 < sampling_rate <= 1:
            raise CryptoError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
        event: dp_accounting.DpEvent = _accounting().GaussianDpEvent(z)
        if sampling_rate < 1.0:
            event = _accounting().PoissonSampledDpEvent(float(sampling_rate), event)
        self._compose(event, count, ("gaussian", noise_multiplier, sampling_rate, count))

    def laplace(self, epsilon: float, count: int = 1) -> None:
        """``count`` Laplace releases calibrated to ``epsilon`` (noise parameter ``1/ε`` per unit L1)."""
        self._compose(_accounting().LaplaceDpEvent(1.0 / _positive("epsilon", epsilon)), count,
                      ("laplace", epsilon, 1.0, count))

    def randomized_response(self, epsilon: float, k: int = 2, count: int = 1) -> None:
        """``count`` k-ary randomized-response releases at ``epsilon`` (needs ``relation="replace"``)."""
        noise = k / (math.exp(_positive("epsilon", epsilon)) + k - 1)  # P(uniform re-draw over k labels)
        self._compose(_accounting().RandomizedResponseDpEvent(noise, k), count, ("rr", epsilon, k, count))

    def epsilon(self, delta: float) -> float:
        if not 0 < delta < 1:
            raise CryptoError(f"delta must be in (0, 1), got {delta!r}")
        return float(self._acc.get_epsilon(delta))

    def to_json(self) -> dict[str, Any]:
        """``{"relation": ..., "events": [[kind, parameter, rate_or_k, count], ...]}`` (JSON-able)."""
        return {"relation": self.relation, "events": [list(e) for e in self.events]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant from :meth:`to_json` by replaying its events (each validated as on
        first use), so its ε equals the saved one's."""
        if not isinstance(data, Mapping) or not isinstance(data.get("events"), list):
            raise CryptoError("PrivacyAccountant.from_json: expected a mapping with 'relation' and an "
                              "'events' list")
        acc = cls(relation=data.get("relation", ""))
        for i, event in enumerate(data["events"]):
            if (not isinstance(event, list | tuple) or len(event) != 4
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in event[1:])
                    or not isinstance(event[3], int) or isinstance(event[3], bool)):
                raise CryptoError(f"PrivacyAccountant.from_json: event {i} is {event!r}; expected "
                                  f"[kind, parameter, rate_or_k, count] with an integer count")
            kind, param, extra, count = event
            if kind == "gaussian":
                acc.gaussian(param, count=count, sampling_rate=extra)
            elif kind == "laplace":
                acc.laplace(param, count=count)
            elif kind == "rr" and float(extra).is_integer():
                acc.randomized_response(param, k=int(extra), count=count)
            else:
                raise CryptoError(f"PrivacyAccountant.from_json: event {i} has kind {kind!r} / "
                                  f"{extra!r}; expected 'gaussian', 'laplace' or 'rr' (integer k)")
        return acc


class GaussianMechanism:
    """Per-row L2 clipping to ``clip`` and Gaussian noise ``N(0, σ²)``, ``σ = noise_multiplier · clip``,
    every call accounted as one Gaussian release (see the module docstring).

    ``rng``: a generator for reproducible tests; by default every call draws from a fresh
    :func:`fedrec.crypto.masks.secure_rng`. ``accountant``: where releases are composed (a fresh
    ``add_remove`` one by default; pass ``PrivacyAccountant("replace")`` for label DP).
    """

    def __init__(self, noise_multiplier: float, clip: float, rng: np.random.Generator | None = None,
                 accountant: PrivacyAccountant | None = None) -> None:
        self.noise_multiplier = _positive("noise_multiplier", noise_multiplier)
        self.clip = _positive("clip", clip)
        self.sigma = self.noise_multiplier * self.clip
        self.accountant = PrivacyAccountant() if accountant is None else accountant
        #: releases noised so far (each one event of ``accountant``)
        self.releases = 0
        self._rng = rng

    def clip_rows(self, rows: npt.ArrayLike) -> tuple[FloatArray, int]:
        """``rows`` (``n × m``, finite) with every row scaled down to L2 norm ``<= clip``, and how many
        rows were scaled."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or not np.all(np.isfinite(x)):
            raise CryptoError(f"GaussianMechanism.clip_rows: expected a finite 2-D array of rows, got "
                              f"shape {x.shape}" + ("" if x.ndim != 2 else " with NaN or inf"))
        scale = np.maximum(np.linalg.norm(x, axis=1, keepdims=True) / self.clip, 1.0)
        return x / scale, int(np.count_nonzero(scale > 1.0))

    def noise(self, values: npt.ArrayLike) -> FloatArray:
        """``values + N(0, σ²)`` per value, accounted as one release; the caller guarantees that one
        record changes ``values`` by at most ``clip`` in L2 (:meth:`clip_and_noise` does it per row)."""
        x = np.asarray(values, dtype=np.float64)
        self.accountant.gaussian(self.noise_multiplier, count=1)
        self.releases += 1
        return x + (self._rng or secure_rng()).normal(0.0, self.sigma, size=x.shape)

    def clip_and_noise(self, rows: npt.ArrayLike) -> tuple[FloatArray, int]:
        """:meth:`clip_rows` then :meth:`noise`: ``(noised rows, rows clipped)``, one release."""
        clipped, n_clipped = self.clip_rows(rows)
        return self.noise(clipped), n_clipped


def noise_multiplier_for(epsilon: float, delta: float, count: int, relation: str = "add_remove") -> float:
    """The smallest Gaussian noise multiplier ``z`` (to 0.1%) whose ``count`` releases compose to at most
    ``epsilon`` at ``delta`` under the RDP accountant of :class:`PrivacyAccountant` (no sampling
    amplification). Raises ``CryptoError`` for a target no finite noise reaches below ``z = 1e4``."""
    _positive("epsilon", epsilon)
    if not 0 < delta < 1:
        raise CryptoError(f"delta must be in (0, 1), got {delta!r}")
    if not isinstance(count, int) or count < 1:
        raise CryptoError(f"count must be a positive integer, got {count!r}")

    def eps(z: float) -> float:
        acc = PrivacyAccountant(relation=relation)
        acc.gaussian(z, count=count)
        return acc.epsilon(delta)

    lo, hi = 1e-2, 1.0
    while eps(hi) > epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e4:
            raise CryptoError(f"no noise multiplier up to 1e4 gives epsilon {epsilon} at delta {delta} for "
                              f"{count} releases")
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > epsilon else (lo, mid)
    return hi
