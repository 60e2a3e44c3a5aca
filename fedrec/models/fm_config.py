"""Configuration and result types of :class:`~fedrec.models.fm.FactorizationMachine`.

:class:`FMConfig` holds the hyperparameters (documented, with how the defaults were chosen, in
:mod:`fedrec.models.fm`); :class:`PartyTerms` and :class:`ScoringFactors` are the two decompositions of
the FM output; :class:`ValidationRows` the validation samples of early stopping.
:mod:`fedrec.models.fm` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.models.training import OPTIMIZERS


@dataclass
class FMConfig:
    objective: str = "regression"
    loss: str = "bce"
    n_factors: int = 32
    use_user_id: bool = True
    use_item_id: bool = True
    use_history: bool = True
    use_history_length: bool = True
    use_user_features: bool = True
    use_item_features: bool = True
    use_item_age: bool = True
    user_feature_columns: list[str] | None = None
    item_feature_columns: list[str] | None = None
    l2_factors: float = 0.1
    l2_per_field: dict[str, float] = field(default_factory=dict)
    l2_linear: float = 0.01
    lr: float = 1e-3
    optimizer: str = "adam"
    batch_size: int = 512
    epochs: int = 60
    patience: int = 4
    init_std: float = 0.05
    n_negatives: int = 4
    validation: str = "random"
    validation_fraction: float = 0.05
    cold_user_fraction: float = 0.1
    cold_keep_first: int = 5
    clip: bool = True
    seed: int = 0
    show_progress: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.objective in ("regression", "logistic", "ranking"), "objective",
             "regression|logistic|ranking"),
            (self.loss in ("bce", "bpr"), "loss", "bce|bpr"),
            (self.n_factors >= 1, "n_factors", ">= 1"),
            (self.validation in ("random", "cold", "none"), "validation", "random|cold|none"),
            (self.l2_factors >= 0 and self.l2_linear >= 0, "l2_factors/l2_linear", ">= 0"),
            (all(v >= 0 for v in self.l2_per_field.values()), "l2_per_field", "values >= 0"),
            (self.n_negatives >= 1, "n_negatives", ">= 1"),
            (self.init_std > 0, "init_std", "> 0"),
            (self.optimizer in OPTIMIZERS, "optimizer", "|".join(OPTIMIZERS)),
        ]
        for ok, name, allowed in checks:
            if not ok:
                got = getattr(self, name, "?")
                raise ValueError(f"FactorizationMachine: {name} must be {allowed}, got {got!r}")


@dataclass
class PartyTerms:
    """Party ``P``'s share of the FM output for each sample: ``z_P[n]`` and ``e_P[n, k]``."""

    z: np.ndarray
    e: np.ndarray


@dataclass
class ScoringFactors:
    """``score(u, i) = a_u[u] + b_i[i] + p_u[u] · q_i[i]`` (inner ids) at time ``at``."""

    a_u: np.ndarray
    p_u: np.ndarray
    b_i: np.ndarray
    q_i: np.ndarray
    at: int


@dataclass
class ValidationRows:
    """Validation samples in inner ids (``-1``: unknown at fit) with labels ``y``; for the ranking
    objective only pairs with a known user and item, and ``neg[n, n_negatives]`` the fixed negative
    items drawn once from ``default_rng([seed, 2**31])`` (``None`` otherwise)."""

    u: np.ndarray
    i: np.ndarray
    ts: np.ndarray
    y: np.ndarray
    neg: np.ndarray | None
