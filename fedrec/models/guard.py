"""The guest-side guard: a federated model never worse, on the guest's validation rows, than the bank alone.

Label-DP noise can make the host's columns worth less than nothing on some data (measured: ``make demo``
at ε = 2, federated RMSE 0.656 against 0.629 for the guest-only FM). The guest therefore also fits the
*bank alone* ``B`` (the same FM on the same training rows, the guest's fields only: plaintext, local,
nothing sent) and serves the blend of it with the federated model ``F``::

    s_α(u, i) = (1 − α) · z_B(u, i) + α · z_F(u, i),      α ∈ [0, 1]

(raw FM outputs; a prediction is ``finish(s_α)``: clipped rating or ``σ``). ``α`` is chosen on the
guest's validation rows (the early-stopping rows of the protocol, whose host partials the guest received
for that epoch anyway): ``mode = "blend"`` minimises the validation metric (RMSE of the clipped
prediction, or log loss) over the grid ``α = 0, 0.01, .., 1`` plus, for squared error, the closed form
``α* = clip(Σ (y − z_B)(z_F − z_B) / Σ (z_F − z_B)², 0, 1)``; ``"choose"`` takes the better of ``α = 0``
and ``α = 1``; ``"off"`` keeps ``α = 1`` and fits nothing. Ties go to the larger ``α``. It is
post-processing by the label holder of what it already holds: no message, the host receives nothing,
the label-DP ε is unchanged (docs/SECURITY.md).

The blend of two ``a_u + b_i + <p_u, q_i>`` models is one such model (:func:`blend_factors`)::

    a = (1 − α) a_B + α a_F     b = (1 − α) b_B + α b_F
    p = [√α p_F, √(1 − α) p_B]  q = [√α q_F, √(1 − α) q_B]

and the vertical join stays one join: a host partial ``(z_H, e_H)`` of the federated half enters the
blended model as ``(α z_H, √α e_H)`` on the first block (``k_F`` columns), which adds exactly
``α (z_H + <p_G, e_H> + <e_H, q_F>)`` (:func:`scale_partials`; serving bundles record it as
``host_scale = α`` and ``host_factors = k_F``).

Files, beside the guest half ``model/`` of ``fedrec train``: ``model/bank_alone/`` (the bank-alone FM
artifact) and ``model/guard.json`` (written last)::

    {"format": "fedrec.guard", "format_version": 1, "run_id", "mode", "alpha", "status", "source",
     "metric", "n_rows", "bank_alone", "federated", "blended", "bank_alone_dir": "bank_alone"}

Where it applies: ``fedrec train``'s ``[data] predict``, :class:`~fedrec.models.vertical.VerticalFM`
``.load``, serving bundles (``fedrec recommend`` / ``serve``, sharded scoring), ``fedrec evaluate``
(``--no-guard``: the federated model) and ``fedrec ads predict`` without a refit. Not: ``fedrec ads card``
(a card carries the FM as trained and says so; the advertiser's ``[ads] refit``, on by default, weighs the
platform's terms itself, so the guard is off in those runs), and the ranking objective (no per-row
validation output; with label DP it has no validation rows at all).

``status``: ``"chosen"``; ``"no_validation"`` (no validation rows: ``α = 1``, the federated model as
trained, logged as a warning every run); ``"off"``; ``"unsupported"`` (the ranking objective has no
per-row validation metric here: ``α = 1``, warned).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.artifacts import ArtifactError, read_json, write_json_atomic

__all__ = ["GUARD_FILE", "BANK_DIR", "MODES", "GuardChoice", "blend_factors", "check_same_rows",
           "choose_alpha", "load_guard", "read_guard", "save_guard", "scale_partials", "validation_metric"]

logger = logging.getLogger(__name__)

MODES = ("blend", "choose", "off")
STATUSES = ("chosen", "no_validation", "off", "unsupported")
GUARD_FILE = "guard.json"
BANK_DIR = "bank_alone"
GUARD_FORMAT = "fedrec.guard"
GUARD_VERSION = 1
GRID = 101


@dataclass(frozen=True)
class GuardChoice:
    """What the guard chose: ``alpha`` (weight of the federated model), ``status`` (:data:`STATUSES`),
    ``source`` (which validation rows), ``metric`` (``rmse`` or ``log_loss``) and its value on those rows
    for the bank alone, the federated model and the blend (``None`` when not measured)."""

    mode: str
    alpha: float
    status: str
    source: str
    metric: str | None = None
    n_rows: int = 0
    bank_alone: float | None = None
    federated: float | None = None
    blended: float | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        check_alpha(self.alpha, "GuardChoice", "alpha")
        if self.mode not in MODES:
            raise ValueError(f"GuardChoice: mode must be one of {MODES}, got {self.mode!r}")
        if self.status not in STATUSES:
            raise ValueError(f"GuardChoice: status must be one of {STATUSES}, got {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        return {"format": GUARD_FORMAT, "format_version": GUARD_VERSION, **asdict(self),
                "bank_alone_dir": BANK_DIR}

    def summary_line(self) -> str:
        """The one INFO line of a run."""
        if self.status != "chosen":
            return f"guard ({self.mode}): alpha {self.alpha:g}, {self.status} ({self.source})"
        return (f"guard ({self.mode}): alpha {self.alpha:.2f} on {self.n_rows} validation rows "
                f"({self.source}): {self.metric} bank alone {self.bank_alone:.4f}, federated "
                f"{self.federated:.4f}, guarded {self.blended:.4f}")


def check_alpha(alpha: Any, where: str, field: str = "alpha") -> float:
    """``alpha`` as a float in [0, 1]; ``ValueError`` naming ``where`` and ``field`` otherwise."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not (
            math.isfinite(float(alpha)) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"{where}: field {field!r} must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


# ---------------------------------------------------------------------------------- choosing alpha
def validation_metric(objective: str, y: np.ndarray, z: np.ndarray, finish: Callable[[np.ndarray], np.ndarray]
                      ) -> float:
    """RMSE of ``finish(z)`` (regression) or the log loss of ``clip(σ(z), 1e-7, 1 − 1e-7)`` (logistic),
    as the FM's early stopping measures them."""
    if objective == "regression":
        return float(np.sqrt(np.mean((finish(z) - y) ** 2)))
    if objective == "logistic":
        p = np.clip(1.0 / (1.0 + np.exp(-z)), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    raise ValueError(f"guard: no per-row validation metric for objective {objective!r}")


def choose_alpha(y: np.ndarray, z_bank: np.ndarray, z_fed: np.ndarray, *, objective: str,
                 finish: Callable[[np.ndarray], np.ndarray], mode: str = "blend", source: str = "validation",
                 run_id: str | None = None) -> GuardChoice:
    """Choose ``alpha`` on validation rows (labels ``y``; raw outputs of both models), see the module
    docstring. ``ValueError`` on an unknown mode, mismatched lengths, no rows or non-finite values."""
    if mode not in MODES:
        raise ValueError(f"guard: mode must be one of {MODES}, got {mode!r}")
    y, zb, zf = (np.asarray(a, dtype=np.float64) for a in (y, z_bank, z_fed))
    if not (y.shape == zb.shape == zf.shape) or y.ndim != 1:
        raise ValueError(f"guard: labels {y.shape}, bank-alone {zb.shape} and federated {zf.shape} outputs "
                         "must be of one length")
    if not len(y):
        raise ValueError("guard: no validation rows to choose alpha on")
    if not (np.isfinite(y).all() and np.isfinite(zb).all() and np.isfinite(zf).all()):
        raise ValueError("guard: non-finite labels or outputs on the validation rows")
    metric_name = "rmse" if objective == "regression" else "log_loss"

    def loss(a: float) -> float:
        return validation_metric(objective, y, (1 - a) * zb + a * zf, finish)

    if mode == "off":
        return GuardChoice("off", 1.0, "off", source, metric_name, len(y), loss(0.0), loss(1.0), loss(1.0),
                           run_id)
    grid = [1.0, 0.0] if mode == "choose" else list(np.linspace(1.0, 0.0, GRID))
    if mode == "blend" and objective == "regression":
        d = zf - zb
        den = float(d @ d)
        if den > 0:
            grid.append(float(np.clip((y - zb) @ d / den, 0.0, 1.0)))
    losses = [loss(a) for a in grid]
    best = int(np.argmin(losses))  # the first minimum: ties keep the larger alpha (grid from 1 down)
    alpha = float(grid[best])
    return GuardChoice(mode, alpha, "chosen", source, metric_name, len(y), loss(0.0), loss(1.0), losses[best],
                       run_id)


# ---------------------------------------------------------------------------------- the blended model
def blend_factors(alpha: float, federated: tuple[np.ndarray, ...], bank: tuple[np.ndarray, ...]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(a, p, b, q)`` of ``(1 − α) B + α F`` from ``(a, p, b, q)`` of each (same users and items, in the
    same order). ``α = 1``: ``F`` unchanged (no bank block)."""
    alpha = check_alpha(alpha, "blend_factors")
    a_f, p_f, b_f, q_f = federated
    a_b, p_b, b_b, q_b = bank
    if a_f.shape != a_b.shape or b_f.shape != b_b.shape:
        raise ValueError(f"blend_factors: the models cover {a_f.shape[0]}/{a_b.shape[0]} users and "
                         f"{b_f.shape[0]}/{b_b.shape[0]} items: they must be of the same users and items")
    if alpha == 1.0:
        return a_f, p_f, b_f, q_f
    dt = p_f.dtype
    wf, wb = np.sqrt(alpha), np.sqrt(1.0 - alpha)
    a = ((1 - alpha) * a_b.astype(np.float64) + alpha * a_f.astype(np.float64)).astype(a_f.dtype)
    b = ((1 - alpha) * b_b.astype(np.float64) + alpha * b_f.astype(np.float64)).astype(b_f.dtype)
    p = np.concatenate([wf * p_f.astype(np.float64), wb * p_b.astype(np.float64)], axis=1).astype(dt)
    q = np.concatenate([wf * q_f.astype(np.float64), wb * q_b.astype(np.float64)], axis=1).astype(q_f.dtype)
    return a, p, b, q


def scale_partials(z_h: np.ndarray, e_h: np.ndarray, host_scale: float, width: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A host partial of the federated half as it enters a blended model of ``width`` factors:
    ``(α z_H, [√α e_H, 0])`` (see the module docstring)."""
    s = check_alpha(host_scale, "scale_partials", "host_scale")
    n, k = e_h.shape
    if k > width:
        raise ValueError(f"scale_partials: host partials of k={k} do not fit a model of {width} factors")
    e = np.zeros((n, width), dtype=e_h.dtype)
    e[:, :k] = e_h if s == 1.0 else np.sqrt(s) * e_h
    return (z_h if s == 1.0 else s * z_h), e


def check_same_rows(user_map: Any, item_map: Any, bank: Any, origin: str) -> None:
    """The bank-alone model must index the federated model's users and items in the same order (the
    guard fits both on the same rows); :class:`ArtifactError` naming ``origin`` otherwise."""
    if not (getattr(bank, "is_fitted", False) and bank.user_map is not None and bank.item_map is not None):
        raise ArtifactError(f"{origin}: the bank-alone model is not fitted")
    for what, ours, theirs in (("users", user_map, bank.user_map), ("items", item_map, bank.item_map)):
        if len(ours) != len(theirs) or not ours.keys.equals(theirs.keys):
            raise ArtifactError(f"{origin}: the bank-alone model's {what} ({len(theirs)}) are not the "
                                f"federated model's ({len(ours)}) in the same order: they come from "
                                "different training rows")


# ---------------------------------------------------------------------------------- files
def save_guard(model_dir: str | Path, choice: GuardChoice, bank: Any | None) -> Path:
    """``bank_alone/`` (the bank-alone FM, when fitted) then ``guard.json`` in ``model_dir``."""
    d = Path(model_dir)
    if bank is not None:
        bank.save(d / BANK_DIR)
    return write_json_atomic(d / GUARD_FILE, choice.to_json())


def read_guard(model_dir: str | Path) -> GuardChoice | None:
    """The guard record of a guest model directory (``None``: none, a model trained before the guard);
    errors name the file and the field."""
    path = Path(model_dir) / GUARD_FILE
    if not path.is_file():
        return None
    doc = read_json(path, "guard record")
    if doc.get("format") != GUARD_FORMAT or doc.get("format_version") != GUARD_VERSION:
        raise ArtifactError(f"{path}: fields 'format'/'format_version' are {doc.get('format')!r}/"
                            f"{doc.get('format_version')!r}, expected {GUARD_FORMAT!r}/{GUARD_VERSION}")
    try:
        check_alpha(doc.get("alpha"), str(path))
        return GuardChoice(**{k: doc[k] for k in GuardChoice.__dataclass_fields__ if k in doc})
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


def load_guard(model_dir: str | Path, run_id: str | None) -> tuple[GuardChoice, Any | None] | None:
    """The guard of a guest model directory and its bank-alone FM (``None`` when ``alpha = 1``: not
    needed); ``None`` without a guard record. The record must be of the model's training run."""
    from fedrec.models.fm import FactorizationMachine

    choice = read_guard(model_dir)
    if choice is None:
        return None
    path = Path(model_dir) / GUARD_FILE
    if choice.run_id != run_id:
        raise ArtifactError(f"{path}: field 'run_id' is {choice.run_id!r}, the guest model's is {run_id!r}: "
                            "the guard was written by another training run")
    if choice.alpha == 1.0:
        return choice, None
    bank_dir = Path(model_dir) / BANK_DIR
    if not (bank_dir / "meta.json").is_file():
        raise ArtifactError(f"{path}: field 'alpha' is {choice.alpha:g} but the bank-alone model {bank_dir} "
                            "is missing")
    bank = FactorizationMachine.load(bank_dir)
    guest = FactorizationMachine.load(model_dir)
    check_same_rows(guest.user_map, guest.item_map, bank, str(bank_dir))
    return choice, bank
