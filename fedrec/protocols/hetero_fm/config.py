"""The configuration both parties of the vertical FM agree on (checked field by field at setup).

:class:`HeteroFMConfig` extends :class:`fedrec.models.fm.FMConfig` (the FM hyperparameters, their
defaults and validation are defined once, there), so ``FactorizationMachine(**config.fm_params())`` is
the centralized model the federated one replicates. The protocol-only fields are:

* ``backend`` (``ckks`` default, ``paillier``, ``plain`` — debugging only, no encryption),
  ``ckks_preset`` (``n8192``), ``paillier_key_bits``;
* ``value_bound``: the largest ``|value|`` the guest puts in a slot of the encrypted per-user vector
  (scaled residual sums, see :mod:`fedrec.protocols.hetero_fm.packing`); larger values are clipped and
  counted (a warning), like gradient clipping;
* ``plain_bound``: the largest ``|multiplier|`` the host may apply (``|x|``, ``x²|v|``,
  ``2λ_w|w|x²``); the host refuses to go beyond it rather than produce an unflooded decryption error;
* ``mask_hiding_bits``: masks are uniform in ``±n_chunks·value_bound·plain_bound·2^h`` (default
  ``h = 20``; ``1`` with ``plain``, which encrypts nothing);
* ``context_sha256``: the host's pin of the guest's public key material (``None``: trust on first
  use, logged);
* ``timeout``: seconds either party waits for the other at any step before failing with an error
  naming the peer and the step;
* label differential privacy (ON by default): ``label_dp`` (``"on"``, default, or ``"off"``: an
  explicit choice the guest logs as a warning at every run) protects the guest's labels in the
  gradient it releases to the host (per-sample clipping of the label-dependent part to
  ``dp_guest_clip``, Gaussian noise ``σ = z · 2 · clip · √d``, ε from the accountant:
  :meth:`HeteroFMGuest.privacy_spent`; see :mod:`.label_dp`). The noise is given either as the whole
  training's target ``dp_guest_epsilon`` at ``dp_delta`` (default :data:`DEFAULT_LABEL_EPSILON`,
  calibrated for ``epochs × batches`` releases by :func:`fedrec.crypto.dp.noise_multiplier_for`) or
  as a fixed ``dp_guest_noise_multiplier`` (ε then grows with the steps). ``dp_guest_clip_part``:
  ``residual`` (default) clips each sample's residual, sensitivity ``2·clip``; ``label`` (logistic only)
  scales each sample by a factor that holds no label, sensitivity ``clip``: half the noise for the
  same ε (:mod:`.label_dp`).
  The guest-DP fields are the
  guest's own choice and not part of the agreed fields. Host-side DP on the partials (off by
  default): ``dp_host_noise_multiplier`` / ``dp_host_clip`` (the host clips each user's partial
  ``(z_H, e_H)`` to L2 norm ``clip`` and adds ``N(0, (mult·clip)²)``; ε at ``dp_delta``:
  :meth:`HeteroFMHost.privacy_spent`);
* ``layout``: ``compact`` (default; ``k+3`` values per user; the host learns ``Σ_u x_j(u)² c_u`` per
  batch and column, the batch's samples per category, which with one sample per user it knows
  anyway) or ``hiding`` (``2k+2`` values, about twice the CKKS work; the host never learns per-column
  sample counts, but label DP must then bound the host's factor terms by ``plain_bound``: about
  ``√k·plain_bound/√2`` times the noise for the same ε, see :mod:`.label_dp` and SECURITY.md) or
  ``static`` (``k+3`` values per user, as ``compact``, for batches that cover most aligned users, e.g.
  ratings: the chunks hold EVERY aligned user in every batch and the host's multipliers hold no
  parameter, so the host encodes its product plaintexts once per run instead of once per batch
  (:mod:`.host_batch`); the host learns ``Σ_u x_j(u)² c_u`` per column as its own released value,
  label-DP noised like the others (``compact`` folds it with the ``w`` gradient, from which it follows
  for one-hot columns); the batch's users it learns from the partials requests anyway. Costs more
  chunks than ``compact`` when batches touch few of the aligned users (one click per user));
* ``host_optimizer`` (agreed): the update of the host's field, ``adam`` or ``sgd`` (default: ``optimizer``,
  as the centralized FM). Under label DP each release carries zero-mean noise that plain SGD steps
  average out, while Adam divides by ``√ŝ``, a running mean of the noise's square: on a column whose
  signal is below the noise every Adam step moves the parameter by about ``lr`` in a random direction.
  Measured at ε = 2 (benchmarks/results/label_dp_optimizer.md): on ``fedrec demo``'s ratings a host on
  SGD halved what label DP costs (RMSE −0.019 against Adam, 5 of 6 seeds; cold users −0.020, 6 of 6),
  but on TalkingData's conversions SGD at the guest's ``lr`` learned too little (AUC 0.886 against
  Adam's 0.936 on 5 folds, results/ads_host_{adam,sgd}.md): a per-task choice, not a new default;
* ``host_failure`` (several hosts, guest only): ``stop`` (default; the run stops naming the host and
  resumes from the newest checkpoint every party holds) or ``continue`` (the failed host is dropped and
  its users get zero partials from then on; :mod:`.hosts`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fedrec.models.fm import FMConfig
from fedrec.models.training import OPTIMIZERS

BACKENDS = ("ckks", "paillier", "plain")
#: per-user packing of the encrypted residuals (:mod:`fedrec.protocols.hetero_fm.packing`)
LAYOUTS = ("hiding", "compact", "static")
#: the name and version both parties announce and check in the party layer's ``Hello``
PROTOCOL = "hetero_fm"
PROTOCOL_VERSION = 4  # 4: Setup declares the batches per epoch (issue #9: every cursor bounded)
#: the whole training's label-DP budget when none is given (``label_dp="on"``); chosen from
#: benchmarks/results/leakage.md (README: "Label privacy")
DEFAULT_LABEL_EPSILON = 2.0
#: the largest target ε accepted: beyond it the bound e^ε on what the host learns about one label says
#: nothing (a run that wants no protection says label_dp="off" instead)
MAX_LABEL_EPSILON = 50.0
#: values of ``label_dp``
LABEL_DP = ("on", "off")
#: host field name (its parameters are ``w``/``v`` of this field in the centralized model)
HOST_FIELD = "user_features"

#: fields both parties must hold identical values for (the setup check compares exactly these)
AGREED_FIELDS = (
    "objective", "loss", "n_factors", "user_feature_columns", "l2_factors", "l2_per_field", "l2_linear",
    "lr", "optimizer", "batch_size", "epochs", "patience", "init_std", "n_negatives", "seed", "backend",
    "ckks_preset", "value_bound", "plain_bound", "mask_hiding_bits", "layout", "dp_host_noise_multiplier",
    "dp_host_clip", "host_optimizer",
)



@dataclass
class HeteroFMConfig(FMConfig):
    """:class:`FMConfig` (every model/training field, its defaults and its validation, defined once
    there) plus the protocol and DP fields. ``use_user_features`` must stay ``True``: the host's field
    is what the protocol adds."""

    # -- protocol ------------------------------------------------------------------------------------------
    backend: str = "ckks"
    ckks_preset: str = "n8192"
    paillier_key_bits: int = 2048
    value_bound: float = 256.0
    plain_bound: float = 64.0
    mask_hiding_bits: int | None = None
    layout: str = "compact"
    context_sha256: str | None = None
    timeout: float = 300.0
    # -- differential privacy: label DP on unless label_dp="off"; host DP off when its multiplier is 0 -----
    label_dp: str = "on"
    #: the host's update: adam or sgd; None: ``optimizer`` (module docstring)
    host_optimizer: str | None = None
    dp_host_noise_multiplier: float = 0.0
    dp_host_clip: float = 1.0
    dp_guest_noise_multiplier: float = 0.0
    dp_guest_epsilon: float | None = None
    dp_guest_clip: float = 1.0
    dp_guest_clip_part: str = "residual"
    dp_delta: float = 1e-5
    # -- several hosts (the guest's own choice, not agreed): what a host failure does ---------------------
    host_failure: str = "stop"

    def __post_init__(self) -> None:
        super().__post_init__()  # the model fields, validated exactly as the centralized FM does
        checks = [
            (self.use_user_features, "use_user_features", "True (the host's field)"),
            (self.backend in BACKENDS, "backend", "|".join(BACKENDS)),
            (self.layout in LAYOUTS, "layout", "|".join(LAYOUTS)),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.patience >= 1, "patience", ">= 1"),
            (self.lr > 0, "lr", "> 0"),
            (0 < self.value_bound < 2.0 ** 20, "value_bound", "in (0, 2^20)"),
            (0 < self.plain_bound < 2.0 ** 12, "plain_bound", "in (0, 2^12)"),
            (self.mask_hiding_bits is None or 1 <= self.mask_hiding_bits <= 40, "mask_hiding_bits",
             "None or in 1..40"),
            (self.timeout > 0, "timeout", "> 0"),
            (self.dp_host_noise_multiplier >= 0, "dp_host_noise_multiplier", ">= 0"),
            (self.dp_host_clip > 0, "dp_host_clip", "> 0"),
            (self.dp_guest_noise_multiplier >= 0, "dp_guest_noise_multiplier", ">= 0"),
            (self.dp_guest_epsilon is None or 0 < self.dp_guest_epsilon <= MAX_LABEL_EPSILON,
             "dp_guest_epsilon",
             f"None or in (0, {MAX_LABEL_EPSILON:g}] (a larger epsilon bounds nothing: use label_dp='off' "
             f"to train unprotected, explicitly)"),
            (self.dp_guest_epsilon is None or self.dp_guest_noise_multiplier == 0, "dp_guest_epsilon",
             "None when dp_guest_noise_multiplier is set (give the noise or the target epsilon, not both)"),
            (self.label_dp in LABEL_DP, "label_dp", "|".join(LABEL_DP)),
            (self.host_optimizer in (None, *OPTIMIZERS), "host_optimizer", f"None|{'|'.join(OPTIMIZERS)}"),
            (self.label_dp == "on" or (self.dp_guest_epsilon is None and self.dp_guest_noise_multiplier == 0),
             "label_dp", "'on' when dp_guest_epsilon or dp_guest_noise_multiplier is set"),
            (self.dp_guest_clip > 0, "dp_guest_clip", "> 0"),
            (self.dp_guest_clip_part in ("residual", "label"), "dp_guest_clip_part", "residual|label"),
            (self.dp_guest_clip_part == "residual" or self.objective == "logistic", "dp_guest_clip_part",
             "'residual' unless objective='logistic' (the label-free factor bounds 0/1 labels only)"),
            (0 < self.dp_delta < 1, "dp_delta", "in (0, 1)"),
            (self.host_failure in ("stop", "continue"), "host_failure", "stop|continue"),
            (self.context_sha256 is None or len(self.context_sha256) == 64, "context_sha256",
             "None or 64 hex digits"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                got = getattr(self, name, "?")
                raise ValueError(f"HeteroFMConfig: {name} must be {allowed}, got {got!r}")
        if self.label_dp_on and not self.label_dp_bounds_validation and self.validation != "none":
            raise ValueError(f"HeteroFMConfig: label DP with validation={self.validation!r} needs the "
                             f"logistic or clipped regression objective (its early-stopping metric must have "
                             f"a bounded label sensitivity); objective {self.objective!r}: use "
                             f"validation='none' (or label_dp='off', which leaves the labels unprotected)")

    @property
    def label_dp_on(self) -> bool:
        """Whether the guest protects labels with DP (``label_dp="on"``, the default)."""
        return self.label_dp == "on"

    @property
    def host_update(self) -> str:
        """The host field's optimizer: ``host_optimizer``, else ``optimizer``."""
        return self.host_optimizer or self.optimizer

    @property
    def label_epsilon(self) -> float | None:
        """The whole training's target ε: ``dp_guest_epsilon``, the default with neither noise field set,
        ``None`` with a fixed ``dp_guest_noise_multiplier`` or with label DP off."""
        if not self.label_dp_on or self.dp_guest_noise_multiplier > 0:
            return None
        return DEFAULT_LABEL_EPSILON if self.dp_guest_epsilon is None else self.dp_guest_epsilon

    @property
    def label_dp_bounds_validation(self) -> bool:
        """Whether label DP can cover the early-stopping metric of this objective."""
        return self.objective == "logistic" or (self.objective == "regression" and self.clip)

    def fm_params(self) -> dict[str, Any]:
        """The :class:`FMConfig` arguments of the equivalent centralized model (host features included)."""
        names = {f.name for f in fields(FMConfig)}
        out = {k: v for k, v in asdict(self).items() if k in names}
        out["use_user_features"] = True
        return out

    def agreed(self) -> dict[str, Any]:
        """The values :data:`AGREED_FIELDS` as JSON-safe data (sent in the setup message)."""
        d = asdict(self)
        return {k: d[k] for k in AGREED_FIELDS}

    @property
    def hiding_bits(self) -> int:
        """``mask_hiding_bits``, default 20; 1 with ``plain`` (no encryption: a mask hides nothing there,
        and small masks keep the plain run bit-for-bit comparable with the centralized FM)."""
        if self.mask_hiding_bits is not None:
            return self.mask_hiding_bits
        return 1 if self.backend == "plain" else 20

    @property
    def l2_host_factors(self) -> float:
        """``λ_v`` of the host field (``l2_per_field['user_features']`` or ``l2_factors``)."""
        return float(self.l2_per_field.get(HOST_FIELD, self.l2_factors))
