"""Guest-side label differential privacy on the gradient released to the host (DESIGN §4.2 step 4).

Neighbouring datasets differ in ONE label (``replace`` relation: the sample, its user and its item stay;
counts ``c_u`` do not depend on labels). A label enters the host's released gradient only through its
residual ``δ_s`` (:mod:`.packing` gives the per-user rows ``R_u`` and the host's multipliers).

Per-sample effect. One changed label moves ``δ_s`` by ``Δ`` and, through the three label-dependent
slots (``Q̂_u += N_s Δ e(s)``, ``Δ̂_u += N_s Δ``, ``D̂_u −= N_s Δ``, with ``e(s) = e_G(s) + e_H(u)``),
column ``j``'s released vector by exactly that sample's host gradient (the ``λ`` terms hold no label)::

    compact:  N_s Δ x_j · [ e(s) (k) | −x_j | 1 ]            ‖·‖ = |N_s Δ| |x_j| √(‖e(s)‖² + x_j² + 1)
    hiding:   N_s Δ · [ x_j e(s) − x_j² v_j (k) | x_j ]      ‖·‖ ≤ |N_s Δ| √((|x_j| ‖e(s)‖ + √k P)² + x_j²)

(``hiding``: the host enforces ``|x_j² v_jf| ≤ P = plain_bound``). Summed over the user's non-zero
features, with the host's bounds over its aligned rows (reported at setup,
:class:`~.messages.SetupAck`): ``S₂ = max_u Σ_j x_j(u)²``, ``S₄ = max_u Σ_j x_j(u)⁴``, ``X = max |x_j|``
and ``d = max_u nnz(x(u))``, the whole release moves by at most ``N_s |Δ| · a(s)``::

    compact:  a(s) = √(‖e(s)‖² S₂ + S₄ + S₂)
    hiding:   a(s) = √d · √((X ‖e(s)‖ + √k P)² + X²)

Clipping. The guest replaces ``δ_s`` by ``δ̃_s = δ_s · min(1, C / (N_s |δ_s| a(s)))`` in what it
encrypts (its own parameters still step with the exact ``δ_s``), so one changed label moves the
release by at most (value clipping to ``value_bound`` afterwards is 1-Lipschitz per coordinate)::

    Δ₂ = 2 · C

The ``compact`` layout needs no bound on the host's factors: with ``f`` one-hot fields
(``S₂ = S₄ = f``) a positive click's residual (``|N_s δ| ≈ 1``) has ``a ≈ √(f (‖e‖² + 2))``. Large
numeric host features inflate ``S₂`` and ``S₄`` (scale them to ``|x| ≤ 1``). ``hiding``'s ``√k P``
term makes the same ε cost ``≈ √k P / √2`` times the noise of ``compact`` for one-hot features
(``k = 8, P = 64``: ~128×), which is why label DP and ``hiding`` together are warned about.

Clipping by a label-free factor (``dp_guest_clip_part="label"``, logistic objective: 0/1 labels). The
residual clipping's factor ``min(1, C / (N_s |δ_s| a(s)))`` depends on the label through ``|δ_s|``, which
is why two labels can end up ``2C`` apart. The guest may instead scale every sample by a factor that
holds no label, ``δ̃_s = δ_s · min(1, C / a(s))`` (``a(s)`` depends on the parameters and the host's row
bounds only). The logistic residual is ``N_s δ_s = p_s − y_s``, and under the relation above (one label
replaced, the sample and the parameters that give ``p_s`` unchanged: the assumption the residual
clipping makes too) only ``y_s`` moves, by at most 1, so one changed label moves the release by at
most::

    Δ₂ = min(1, C / a(s)) · a(s) ≤ C

half the ``2C`` of residual clipping: the same ε needs half the noise σ. The release is the exact
gradient with each sample weighted by ``min(1, C / a(s))``; ``a(s)`` varies only through ``‖e(s)‖``, so
the weights are nearly equal and the host's gradient keeps its direction (residual clipping shrinks a
positive's residual ``1 − p`` to ``C / a`` and leaves a small negative residual ``p`` whole: with sparse
conversions, a push towards ``a`` times too low a rate that the guest's exact steps then fight). Same
(ε, δ) statement for the same neighbouring relation, so the bound on any attack on one label is the
same; the platform's gradients are less noisy and less biased.

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
from dataclasses import dataclass

import numpy as np

from fedrec.crypto.backend import FloatArray
from fedrec.crypto.dp import GaussianMechanism, PrivacyAccountant
from fedrec.crypto.masks import secure_rng


@dataclass(frozen=True)
class RowBounds:
    """The host's bounds over its aligned rows (:class:`~.messages.SetupAck`): ``d``, ``X``, ``S₂``,
    ``S₄`` of the module docstring."""

    nnz: int
    max_abs: float
    sq: float
    quad: float


def sample_factor(e_total: FloatArray, layout: str, rows: RowBounds, plain_bound: float) -> FloatArray:
    """``a(s)``: how far one unit of ``N_s δ_s`` moves the whole release (module docstring)."""
    norm2 = np.sum(e_total ** 2, axis=1)
    if layout != "hiding":  # compact and static release the same label-dependent sums
        return np.sqrt(norm2 * rows.sq + rows.quad + rows.sq)
    k = e_total.shape[1]
    per_column = (rows.max_abs * np.sqrt(norm2) + math.sqrt(k) * plain_bound) ** 2 + rows.max_abs ** 2
    return np.sqrt(max(rows.nnz, 1) * per_column)


def clip_residuals(delta: FloatArray, e_total: FloatArray, n_samples: int, clip: float, *, layout: str,
                   rows: RowBounds, plain_bound: float) -> FloatArray:
    """``δ̃_s`` with ``N_s |δ̃_s| a(s) ≤ clip`` (rows already within the clip are untouched)."""
    norm = n_samples * np.abs(delta) * sample_factor(e_total, layout, rows, plain_bound)
    return delta * np.minimum(1.0, clip / np.maximum(norm, 1e-300))


def clip_scaled(delta: FloatArray, e_total: FloatArray, n_samples: int, clip: float, *, layout: str,
                rows: RowBounds, plain_bound: float) -> FloatArray:
    """``δ̃_s = δ_s · min(1, C / a(s))``: every sample scaled by a factor that holds no label (module
    docstring, "Clipping by a label-free factor"; for 0/1 labels, where ``|Δδ_s| ≤ 1 / N_s``)."""
    a = sample_factor(e_total, layout, rows, plain_bound)
    return np.asarray(delta, dtype=np.float64) * np.minimum(1.0, clip / np.maximum(a, 1e-300))


#: how the guest clips each sample (``dp_guest_clip_part``): by its residual (``2C``) or by a label-free
#: factor (``C``; 0/1 labels only)
CLIP_PARTS = ("residual", "label")


def sensitivity(clip: float, part: str = "residual") -> float:
    """``Δ₂``: L2 change of the whole release when one label changes: ``2 C`` clipping the residual,
    ``C`` scaling by a label-free factor (0/1 labels)."""
    if part not in CLIP_PARTS:
        raise ValueError(f"clip part must be one of {CLIP_PARTS}, got {part!r}")
    return 2.0 * clip if part == "residual" else clip


class LabelDP:
    """Noise and ε for the guest's releases (see the module docstring): a
    :class:`~fedrec.crypto.dp.GaussianMechanism` of sensitivity ``Δ₂`` and a ``replace`` accountant."""

    def __init__(self, noise_multiplier: float, clip: float, delta: float, part: str = "residual") -> None:
        self.noise_multiplier = noise_multiplier
        self.clip = clip  # C, the per-sample clip of clip_residuals / clip_scaled (the mechanism's is Δ₂)
        self.delta = delta
        self.part = part
        self.mechanism = GaussianMechanism(noise_multiplier, sensitivity(clip, part),
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
