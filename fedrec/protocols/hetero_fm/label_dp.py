"""Guest-side label differential privacy on the gradient released to the host (DESIGN §4.2 step 4).

Neighbouring datasets differ in ONE label (``replace`` relation: the sample, its user and its item stay;
counts ``c_u`` do not depend on labels). A label enters the host's released gradient only through its
residual ``δ_s``; per sample the label-dependent part of the encrypted row ``R_u`` is::

    r_s = N_s δ_s · [ e_G(s) + e_H(u) (k) | −1 (κ_D slots: k in 'hiding', 1 in 'compact') | 1 ]

Clipping. The guest replaces ``δ_s`` by ``δ̃_s = δ_s · min(1, C / ‖r_s‖)`` in what it encrypts (its own
parameters still step with the exact ``δ_s``), so ``‖r_s‖ ≤ C`` and a changed label moves ``R_u`` by
at most ``2C`` in L2 (value clipping to ``value_bound`` afterwards is 1-Lipschitz per coordinate).

Sensitivity. Column ``j``'s released vector is ``Σ_u`` of the multipliers ``M_j(u)`` (``|M| ≤ P =
plain_bound``, enforced by the host) times ``R_u``, folded (each released value sums at most two
slots). Hence ``‖Δ released_j‖² ≤ 2 P² ‖Δ R_u‖²``. ``M_j(u)`` is proportional to ``x_j(u)``, so a
user's label moves only the columns of its non-zero features, at most ``d = max_u nnz(x(u))`` of them
(the host reports ``d`` at setup; one per field for one-hot features)::

    Δ₂ = 2 · C · P · √(2d)

Mechanism and accounting. Before flooding and rounding (post-processing) the guest adds
``N(0, σ²)``, ``σ = z · Δ₂`` (``z = dp_guest_noise_multiplier``) to every released value
(:meth:`fedrec.crypto.dp.GaussianMechanism.noise` with ``clip = Δ₂``); the host sees
``N_s · gradient + noise`` and divides by ``N_s``. Each batch is one Gaussian release with noise
multiplier ``z``; :class:`fedrec.crypto.dp.PrivacyAccountant` (``replace``) composes all of them
(no amplification claimed: batches are a shuffle, not Poisson samples), so ε at ``dp_delta`` grows
with the number of steps. Early stopping: with label DP the guest's validation metric is itself one
accounted Gaussian release per epoch (:meth:`LabelDP.noise_scalar`, the same multiplier, scaled to one
label's effect on the metric). That covers a validation label's direct effect; the metric also
depends on the guest's own parameters, trained on the exact training labels, an indirect path this
does not bound: the formal whole-training guarantee is with ``validation="none"``. Not covered either:
predictions the guest itself publishes.
"""

from __future__ import annotations

import math

import numpy as np

from fedrec.crypto.backend import FloatArray
from fedrec.crypto.dp import GaussianMechanism, PrivacyAccountant
from fedrec.crypto.masks import secure_rng


def clip_residuals(delta: FloatArray, e_total: FloatArray, n_samples: int, clip: float,
                   kappa: int) -> FloatArray:
    """``δ̃_s`` with ``‖N_s δ̃_s [e_total(s), 1_κ]‖ ≤ clip`` (``kappa`` = slots carrying ``±N_s δ_s``)."""
    norm = n_samples * np.abs(delta) * np.sqrt(np.sum(e_total ** 2, axis=1) + kappa)
    return delta * np.minimum(1.0, clip / np.maximum(norm, 1e-300))


def sensitivity(clip: float, plain_bound: float, n_columns: int) -> float:
    """``Δ₂ = 2 C P √(2d)``: L2 change of the whole release when one label changes."""
    return 2.0 * clip * plain_bound * math.sqrt(2.0 * max(n_columns, 1))


class LabelDP:
    """Noise and ε for the guest's releases (see the module docstring): a
    :class:`~fedrec.crypto.dp.GaussianMechanism` of sensitivity ``Δ₂`` and a ``replace`` accountant."""

    def __init__(self, noise_multiplier: float, clip: float, plain_bound: float, n_columns: int,
                 delta: float) -> None:
        self.noise_multiplier = noise_multiplier
        self.clip = clip  # C, the per-sample clip of clip_residuals (the mechanism's clip is Δ₂)
        self.delta = delta
        self.mechanism = GaussianMechanism(noise_multiplier, sensitivity(clip, plain_bound, n_columns),
                                           accountant=PrivacyAccountant(relation="replace"))

    @property
    def sigma(self) -> float:
        return self.mechanism.sigma

    @property
    def accountant(self) -> PrivacyAccountant:
        return self.mechanism.accountant

    @property
    def releases(self) -> int:
        return self.mechanism.releases

    def restore(self, accountant: PrivacyAccountant) -> None:
        """Continue from a checkpoint's accountant (its events are the releases made so far)."""
        if accountant.relation != self.accountant.relation:
            raise ValueError(f"LabelDP.restore: accountant relation {accountant.relation!r}, expected "
                             f"{self.accountant.relation!r}")
        self.mechanism.accountant = accountant
        self.mechanism.releases = len(accountant.events)

    def noise_scalar(self, value: float, sensitivity: float) -> float:
        """``value + N(0, (z · sensitivity)²)`` for a statistic one label moves by at most
        ``sensitivity`` (the validation metric); accounted as one release of the same multiplier."""
        self.accountant.gaussian(self.noise_multiplier, count=1)
        self.mechanism.releases += 1
        rng = self.mechanism._rng or secure_rng()
        return float(value + rng.normal(0.0, self.noise_multiplier * sensitivity))

    def noise(self, values: FloatArray) -> FloatArray:
        """``values + N(0, σ²)`` (fresh OS-seeded randomness); accounts one release."""
        return self.mechanism.noise(values)

    def epsilon(self) -> float:
        """ε at ``delta`` of every release the accountant holds (0 before the first one)."""
        return self.accountant.epsilon(self.delta) if self.accountant.events else 0.0
