"""The objectives of :class:`~fedrec.models.fm.FactorizationMachine`: the samples a loss scores (the
ranking objective's negatives), the data term of the loss, the early-stopping metric, the row weights
and the predictions made from raw outputs (the losses' formulas are the :mod:`fedrec.models.fm`
docstring). The vertical FM's guest calls the same methods on its local half, so the two losses are one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fedrec.data.idmap import IdMap
from fedrec.models.fm_config import FMConfig, ValidationRows


def popularity_cdf(counts: np.ndarray, alpha: float) -> np.ndarray:
    """The cumulative distribution of negatives ``P(i) ∝ (count_i + 1)^alpha`` (``alpha = 0``: uniform)."""
    p = (np.asarray(counts, dtype=np.float64) + 1.0) ** alpha
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    return cdf



class FMObjective:
    """Losses, validation metric, row weights and output transform (module docstring)."""

    # set by FactorizationMachine.__init__ / prepare_fit
    config: FMConfig
    user_map: IdMap | None
    item_map: IdMap | None
    rating_scale: tuple[float, float]
    _negative_cdf: np.ndarray | None

    def expand_negatives(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray,
                         sampler: np.random.Generator | None, neg: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The samples the loss scores: ``(u, i, ts)`` unchanged, or for the ranking objective the
        positives followed by ``n_negatives`` negatives per positive (row-major: positive ``r``'s
        negatives at ``n + r·m .. n + (r+1)·m``), the items ``neg[n, m]`` or else drawn uniformly as
        ``sampler.integers(0, n_items, (n, n_negatives))``."""
        c = self.config
        if c.objective != "ranking":
            return u, i, ts
        if neg is None:
            if sampler is None:
                raise ValueError("FactorizationMachine.expand_negatives: the ranking objective needs a "
                                 "sampler or neg")
            assert self.item_map is not None
            if self._negative_cdf is None:
                neg = sampler.integers(0, len(self.item_map), size=(len(u), c.n_negatives))
            else:
                draws = sampler.random((len(u), c.n_negatives))
                neg = np.searchsorted(self._negative_cdf, draws, side="right")
        m = neg.shape[1]
        return (np.concatenate([u, np.repeat(u, m)]), np.concatenate([i, neg.ravel()]),
                np.concatenate([ts, np.repeat(ts, m)]))

    def data_loss(self, z: torch.Tensor, y: torch.Tensor | None, n_pos: int,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
        """The data term of the loss (module docstring) for FM outputs ``z``: ``mean (z − y)²``
        (regression), ``mean BCE(σ(z), y)`` (logistic); ranking (``y`` unused): ``z`` laid out by
        :meth:`expand_negatives` with ``n_pos`` positives, ``bce`` or ``bpr``. ``weights[n_pos]``
        (``weight_column``; ``None``: all 1) weight each positive's terms: ``Σ_r w_r ℓ_r / Σ_r w_r``."""
        c = self.config
        if weights is None and c.weight_column is not None and torch.is_grad_enabled():
            # every training path (this model's, the vertical FM guest's) passes the weights; a caller
            # that did not would silently train unweighted
            raise ValueError(f"FactorizationMachine: weight_column={c.weight_column!r} needs the row "
                             "weights in data_loss (row_weights)")
        if c.objective != "ranking":
            if y is None:
                raise ValueError(f"FactorizationMachine.data_loss: objective {c.objective!r} needs labels y")
            if weights is not None:
                per = (z - y) ** 2 if c.objective == "regression" else F.binary_cross_entropy_with_logits(
                    z, y, reduction="none")
                return (per * weights).sum() / weights.sum()
            if c.objective == "regression":
                return ((z - y) ** 2).mean()
            return F.binary_cross_entropy_with_logits(z, y)
        zp, zn = z[:n_pos], z[n_pos:].view(n_pos, c.n_negatives)
        if weights is not None:
            if c.loss == "bpr":
                per = -F.logsigmoid(zp[:, None] - zn).mean(dim=1)
            else:
                per = (F.binary_cross_entropy_with_logits(zp, torch.ones_like(zp), reduction="none")
                       + F.binary_cross_entropy_with_logits(zn, torch.zeros_like(zn),
                                                            reduction="none").mean(dim=1))
            return (per * weights).sum() / weights.sum()
        if c.loss == "bpr":
            return -F.logsigmoid(zp[:, None] - zn).mean()
        return (F.binary_cross_entropy_with_logits(zp, torch.ones_like(zp))
                + F.binary_cross_entropy_with_logits(zn, torch.zeros_like(zn)))

    def validation_rows(self, val: pd.DataFrame) -> ValidationRows:
        """The early-stopping samples of ``val`` (:class:`ValidationRows`; after :meth:`prepare_fit`)."""
        assert self.user_map is not None and self.item_map is not None
        c = self.config
        vu = self.user_map.to_inner(val["user_id"], unknown="mask")
        vi = self.item_map.to_inner(val["item_id"], unknown="mask")
        vt = val["timestamp"].to_numpy(dtype=np.int64)
        vy = val["rating"].to_numpy(dtype=np.float64)
        if c.objective != "ranking":
            return ValidationRows(vu, vi, vt, vy, None)
        keep = (vu >= 0) & (vi >= 0)
        neg = np.random.default_rng([c.seed, 2**31]).integers(0, len(self.item_map),
                                                              (int(keep.sum()), c.n_negatives))
        return ValidationRows(vu[keep], vi[keep], vt[keep], vy[keep], neg)

    def validation_metric_from_scores(self, z: torch.Tensor | np.ndarray, y: np.ndarray | None,
                                      reg: torch.Tensor | None, n_pos: int) -> float:
        """The early-stopping metric (lower is better) from FM outputs ``z`` of validation rows: RMSE of
        ``finish(z)`` (regression, clipped), log loss of ``clip(σ(z), 1e-7, 1 − 1e-7)`` (logistic), or
        for ranking ``data_loss(z, None, n_pos) + mean(reg)`` (``z``, ``reg`` of
        :meth:`expand_negatives` samples)."""
        if self.config.early_stopping != "loss":
            raise ValueError(f"FactorizationMachine: early_stopping={self.config.early_stopping!r} ranks "
                             "every item (FactorizationMachine.fit); a sampled validation loss is not it. "
                             "For the vertical FM, select the epochs centrally and train the protocol with "
                             "validation='none'")
        if self.config.objective == "ranking":
            if reg is None:
                raise ValueError("FactorizationMachine.validation_metric_from_scores: ranking needs reg")
            return float(self.data_loss(torch.as_tensor(z), None, n_pos) + reg.mean())
        if y is None:
            raise ValueError("FactorizationMachine.validation_metric_from_scores: needs labels y")
        zz = z.detach().numpy() if isinstance(z, torch.Tensor) else z
        zz = np.asarray(zz).astype(np.float64)
        if self.config.objective == "regression":
            return float(np.sqrt(np.mean((self.finish(zz) - y) ** 2)))
        p = np.clip(1 / (1 + np.exp(-zz)), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def row_weights(self, train: pd.DataFrame) -> torch.Tensor | None:
        """The ``weight_column`` of ``train`` as float32 weights (``None`` without one); a missing column,
        a negative or non-finite weight, or a zero sum is refused naming the row."""
        col = self.config.weight_column
        if col is None:
            return None
        if col not in train.columns:
            raise ValueError(f"FactorizationMachine: weight_column={col!r} is not a column of interactions "
                             f"(it has {list(train.columns)})")
        w = pd.to_numeric(train[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any() or w.sum() <= 0:
            row = int(np.flatnonzero(bad)[0]) if bad.any() else 0
            value = train[col].iloc[row]
            value = value.item() if isinstance(value, np.generic) else value
            raise ValueError(f"FactorizationMachine: column {col!r} must hold finite weights >= 0 with a "
                             f"positive sum; row {row} is {value!r}")
        return torch.from_numpy(w.astype(np.float32))

    def finish(self, z: np.ndarray) -> np.ndarray:
        """Predictions from raw outputs ``z``: clipped to the rating scale (regression, if ``clip``),
        ``σ(z)`` (logistic) or ``z`` (ranking)."""
        if self.config.objective == "regression":
            return np.clip(z, *self.rating_scale) if self.config.clip else z
        if self.config.objective == "logistic":
            return 1.0 / (1.0 + np.exp(-z))
        return z
