"""Mini-batch Adam with early stopping, shared by the torch models (FM, MF).

Batching order (a deterministic function of the seed, documented for the federated protocols that
replay it): in epoch ``e`` the training rows are visited in the order
``numpy.random.default_rng([seed, e]).permutation(n_rows)`` cut into consecutive batches of
``batch_size`` rows; any per-epoch sampling (e.g. negatives of the ranking objective) draws from
``numpy.random.default_rng([seed, e, 1])``. Parameters are initialised after ``torch.manual_seed(seed)``,
so the same seed, data and settings give bit-identical parameters on the same machine.

Early stopping: after each epoch the validation metric (lower is better) is computed; the parameters
of the best epoch are kept; training stops after ``patience`` epochs without an improvement larger
than ``min_delta``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

LossFn = Callable[[np.ndarray, np.random.Generator], torch.Tensor]


@dataclass
class TrainHistory:
    """Per-epoch training loss and validation metric; ``best_epoch`` is 1-based (0 = no epoch run)."""

    train_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"train_loss": self.train_loss, "val_metric": self.val_metric,
                "best_epoch": self.best_epoch, "seconds": self.seconds}


def train_loop(module: torch.nn.Module, loss_fn: LossFn, n_rows: int, *, epochs: int, batch_size: int,
               lr: float, seed: int, patience: int, val_fn: Callable[[], float] | None,
               min_delta: float = 1e-4, show_progress: bool = False, desc: str = "train") -> TrainHistory:
    """Train ``module`` in place; returns the history and leaves the best-validation parameters loaded."""
    if epochs < 1 or batch_size < 1 or lr <= 0 or patience < 1:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0, patience >= 1; got epochs={epochs}, "
                         f"batch_size={batch_size}, lr={lr}, patience={patience}")
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    hist = TrainHistory()
    best_state = copy.deepcopy(module.state_dict())
    best = np.inf
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, disable=not show_progress)
    for epoch in bar:
        order = np.random.default_rng([seed, epoch]).permutation(n_rows)
        sampler = np.random.default_rng([seed, epoch, 1])
        module.train()
        total = 0.0
        for start in range(0, n_rows, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(idx, sampler)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        hist.train_loss.append(total / max(n_rows, 1))
        if val_fn is None:
            hist.best_epoch = epoch + 1
            best_state = module.state_dict()
            continue
        module.eval()
        with torch.no_grad():
            metric = float(val_fn())
        hist.val_metric.append(metric)
        bar.set_postfix(train=f"{hist.train_loss[-1]:.4f}", val=f"{metric:.4f}")
        logger.debug("%s epoch %d: train %.5f val %.5f", desc, epoch + 1, hist.train_loss[-1], metric)
        if metric < best - min_delta:
            best = metric
            hist.best_epoch = epoch + 1
            best_state = copy.deepcopy(module.state_dict())
        elif epoch + 1 - hist.best_epoch >= patience:
            break
    module.load_state_dict(best_state)
    module.eval()
    hist.seconds = time.perf_counter() - t0
    logger.info("%s: %d epochs, best epoch %d (val %.5f), %.1fs", desc, len(hist.train_loss),
                hist.best_epoch, best if np.isfinite(best) else float("nan"), hist.seconds)
    return hist


def random_holdout(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows: ``rng(seed).permutation``; the last ``fraction`` of the permutation is held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(len(df))
    n_val = max(1, int(round(len(df) * fraction)))
    if n_val >= len(df):
        raise ValueError(f"cannot hold out {n_val} of {len(df)} rows for validation")
    return df.iloc[np.sort(perm[:-n_val])], df.iloc[np.sort(perm[-n_val:])]
