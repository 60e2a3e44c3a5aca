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

#: validation sets of ``fit``: a random share of rows, pseudo-new users, each user's last row by time
#: (the leave-last-out slice of the training data), or none
VALIDATIONS = ("random", "cold", "last", "none")
#: negative sampling of the ranking objective: uniform over items, or ∝ count(i)^negative_alpha
NEGATIVES = ("uniform", "popularity")
#: the early-stopping metric: the validation loss, or full-ranking HR/NDCG@ranking_k (ranking only)
EARLY_STOPPING = ("loss", "hr", "ndcg")
#: ``input``: train in the given row order; ``canonical``: rows sorted by (user, item, time) first, so
#: id maps, initial parameters and batches depend on the seed and the rows, never on their order
ROW_ORDERS = ("input", "canonical")


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
    # -- ranking training (issue #12); every default keeps the behaviour before these fields existed ----
    negatives: str = "uniform"
    negative_alpha: float = 0.75
    early_stopping: str = "loss"
    ranking_k: int = 10
    refit: bool = False
    row_order: str = "input"
    weight_column: str | None = None
    # -- time-aware guest fields (fedrec.data.features_time); off by default ------------------------------
    use_recent_popularity: bool = False
    recent_windows_days: list[float] = field(default_factory=lambda: [7.0, 30.0])
    use_recent_items: bool = False
    recent_items_n: int = 10
    recency_half_life_days: float = 30.0

    def __post_init__(self) -> None:
        checks = [
            (self.objective in ("regression", "logistic", "ranking"), "objective",
             "regression|logistic|ranking"),
            (self.loss in ("bce", "bpr"), "loss", "bce|bpr"),
            (self.n_factors >= 1, "n_factors", ">= 1"),
            (self.validation in VALIDATIONS, "validation", "|".join(VALIDATIONS)),
            (self.l2_factors >= 0 and self.l2_linear >= 0, "l2_factors/l2_linear", ">= 0"),
            (all(v >= 0 for v in self.l2_per_field.values()), "l2_per_field", "values >= 0"),
            (self.n_negatives >= 1, "n_negatives", ">= 1"),
            (self.init_std > 0, "init_std", "> 0"),
            (self.optimizer in OPTIMIZERS, "optimizer", "|".join(OPTIMIZERS)),
            (self.negatives in NEGATIVES, "negatives", "|".join(NEGATIVES)),
            (0.0 <= self.negative_alpha <= 1.0, "negative_alpha", "in [0, 1]"),
            (self.early_stopping in EARLY_STOPPING, "early_stopping", "|".join(EARLY_STOPPING)),
            (self.early_stopping == "loss" or self.objective == "ranking", "early_stopping",
             "'loss' unless objective='ranking' (HR/NDCG rank items for implicit feedback)"),
            (self.negatives == "uniform" or self.objective == "ranking", "negatives",
             "'uniform' unless objective='ranking' (only the ranking objective samples negatives)"),
            (self.ranking_k >= 1, "ranking_k", ">= 1"),
            (self.row_order in ROW_ORDERS, "row_order", "|".join(ROW_ORDERS)),
            (self.weight_column is None or isinstance(self.weight_column, str), "weight_column",
             "None or a column name"),
            (len(self.recent_windows_days) >= 1 and all(d > 0 for d in self.recent_windows_days),
             "recent_windows_days", "a non-empty list of day counts > 0"),
            (self.recent_items_n >= 1, "recent_items_n", ">= 1"),
            (self.recency_half_life_days > 0, "recency_half_life_days", "> 0"),
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
