"""One mini-batch training loop with hooks, shared by the torch models (FM, MF) and the federated parties.

Batching (a deterministic function of the seed, documented for the federated protocols that replay
it): in epoch ``e`` (0-based) the training rows are visited in the order
``numpy.random.default_rng([seed, e]).permutation(n_rows)`` cut into consecutive batches of
``batch_size`` rows; any per-epoch sampling (e.g. negatives of the ranking objective) draws from the
epoch's *sampler* ``numpy.random.default_rng([seed, e, 1])``. The models draw their initial parameters
from ``torch.Generator().manual_seed(seed)`` (never from torch's global RNG), so the same seed, data and
settings give bit-identical parameters on the same machine.

Update (``optimizer``), with ``g = ∇_θ L_B`` the gradient of the batch loss:

* ``"adam"`` (default): ``m ← β1 m + (1−β1) g``, ``s ← β2 s + (1−β2) g²``,
  ``θ ← θ − lr · m̂ / (√ŝ + ε)`` with bias-corrected ``m̂, ŝ`` (torch defaults ``β = (0.9, 0.999)``,
  ``ε = 1e-8``);
* ``"sgd"``: ``θ ← θ − lr · g``, linear in the gradient, so a party can apply it to encrypted
  parameters (federated MF over CKKS).

Early stopping: after each epoch the validation metric (lower is better) is computed; the epoch
*improves* if the metric beats the best so far by more than ``min_delta`` (its parameters are kept);
the loop *stops* after the last epoch or once ``patience`` epochs have passed since the best one; the
best parameters are loaded at the end. Without validation every epoch improves (the last parameters
are kept).

Hooks (:class:`Trainer`), in this order within an epoch: per batch ``step(ctx) -> loss`` (default:
``zero_grad``, ``loss_fn(idx, sampler)``, ``backward``, ``optimizer.step``; a federated party replaces
it with its exchange) then ``after_step(ctx)`` (e.g. a checkpoint every N batches); after the last
batch the validation metric and the decision, then ``on_epoch_end(ctx, improved, stop)`` (before the
loop breaks; a federated guest tells its peer).

Resume: :meth:`Trainer.checkpoint` returns a :class:`LoopState` (position, running loss, best metric and
parameters, history, the sampler's bit-generator state, current parameters and optimizer state);
:meth:`LoopState.to_arrays` / :meth:`LoopState.from_arrays` turn it into numpy arrays plus a JSON-safe
dict and back (no pickle), and ``Trainer(..., state=restored).run()`` finishes with parameters
bit-identical to an uninterrupted run, from any batch or epoch boundary.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fedrec.progress import progress_bar

logger = logging.getLogger(__name__)

LossFn = Callable[[np.ndarray, np.random.Generator], torch.Tensor]
OPTIMIZERS = ("adam", "sgd")
STATE_FORMAT = "fedrec.loop_state"
STATE_VERSION = 1


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


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam(params, lr)`` (``"adam"``) or plain ``torch.optim.SGD(params, lr)`` (``"sgd"``)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be one of {'|'.join(OPTIMIZERS)}, got {name!r}")


def _clone(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tensors.items()}


@dataclass
class LoopState:
    """Everything :class:`Trainer` needs to continue a run exactly (see :meth:`Trainer.checkpoint`).

    ``epoch``: the current epoch (0-based); ``batch``: batches of it already stepped; ``loss_sum``: the
    running ``Σ loss · batch rows`` of it; ``best`` / ``best_state``: the best validation metric and its
    parameters (``best_state`` is ``None`` without validation: the last parameters are the result);
    ``sampler``: the numpy bit-generator state of the epoch's sampler once the epoch has started
    (``None``: a fresh ``default_rng([seed, epoch, 1])``); ``done``: the loop has stopped (only the
    best parameters remain to be loaded); ``params`` / ``optimizer``: the module's and the optimizer's
    ``state_dict()``; ``settings``: the trainer settings the state belongs to (checked on resume).
    """

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    best: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    history: TrainHistory = field(default_factory=TrainHistory)
    sampler: dict[str, Any] | None = None
    done: bool = False
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: every float that must round-trip exactly and every tensor as a numpy array
        (``params.<name>``, ``best_state.<name>``, ``optimizer.<param index>.<key>``), the rest as
        JSON-safe data (names listed in ``meta``, never parsed out of array names)."""
        f64 = np.float64
        arrays: dict[str, np.ndarray] = {
            "loss_sum": np.array(self.loss_sum, dtype=f64), "best": np.array(self.best, dtype=f64),
            "history.train_loss": np.array(self.history.train_loss, dtype=f64),
            "history.val_metric": np.array(self.history.val_metric, dtype=f64)}
        for prefix, tensors in (("params", self.params), ("best_state", self.best_state or {})):
            for name, t in tensors.items():
                arrays[f"{prefix}.{name}"] = t.detach().cpu().numpy().copy()
        opt_state: dict[str, Any] = {}
        for pid, entries in self.optimizer.get("state", {}).items():
            tensors_of, values = [], {}
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    arrays[f"optimizer.{pid}.{key}"] = value.detach().cpu().numpy().copy()
                    tensors_of.append(key)
                elif value is None or isinstance(value, bool | int | float | str):
                    values[key] = value
                else:
                    raise TypeError(f"LoopState.to_arrays: optimizer state {pid}.{key} is a "
                                    f"{type(value).__name__}; only tensors and JSON scalars are saved")
            opt_state[str(int(pid))] = {"tensors": tensors_of, "values": values}
        meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": self.epoch, "batch": self.batch,
                "done": self.done, "best_epoch": self.history.best_epoch,
                "seconds": float(self.history.seconds),
                "sampler": None if self.sampler is None else _sampler_to_json(self.sampler),
                "params": list(self.params),
                "best_state": None if self.best_state is None else list(self.best_state),
                "optimizer": {"param_groups": _json_copy(self.optimizer.get("param_groups", [])),
                              "state": opt_state},
                "settings": _json_copy(self.settings)}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> LoopState:
        """The inverse of :meth:`to_arrays`; raises ``ValueError`` naming the missing or invalid field."""
        if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
            raise ValueError(f"LoopState: meta 'format'/'version' is {meta.get('format')!r}/"
                             f"{meta.get('version')!r}, expected {STATE_FORMAT!r}/{STATE_VERSION}")
        for key in ("epoch", "batch", "best_epoch"):
            if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 0:
                raise ValueError(f"LoopState: meta {key!r} must be an integer >= 0, got {meta.get(key)!r}")
        if not isinstance(meta.get("done"), bool) or not isinstance(meta.get("seconds"), int | float):
            raise ValueError("LoopState: meta 'done' must be a bool and 'seconds' a number")

        def array(name: str, ndim: int | None = None) -> np.ndarray:
            if name not in arrays:
                raise ValueError(f"LoopState: array {name!r} is missing")
            a = np.asarray(arrays[name])
            if not np.issubdtype(a.dtype, np.number) or (ndim is not None and a.ndim != ndim):
                raise ValueError(f"LoopState: array {name!r} is {a.dtype}{list(a.shape)}, expected a numeric "
                                 f"array{'' if ndim is None else f' of {ndim} dimension(s)'}")
            return a

        def tensors(prefix: str, names: object) -> dict[str, torch.Tensor]:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"LoopState: meta {prefix!r} must be a list of parameter names")
            return {n: torch.from_numpy(array(f"{prefix}.{n}").copy()) for n in names}

        history = TrainHistory([float(x) for x in array("history.train_loss", 1)],
                               [float(x) for x in array("history.val_metric", 1)],
                               meta["best_epoch"], float(meta["seconds"]))
        opt = meta.get("optimizer")
        if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list) or not isinstance(
                opt.get("state"), dict):
            raise ValueError("LoopState: meta 'optimizer' needs 'param_groups' (list), 'state' (object)")
        opt_state: dict[int, dict[str, Any]] = {}
        for pid, entry in opt["state"].items():
            if not str(pid).isdigit() or not isinstance(entry, dict) or not isinstance(
                    entry.get("tensors"), list) or not isinstance(entry.get("values"), dict):
                raise ValueError(f"LoopState: meta 'optimizer.state.{pid}' is invalid")
            restored = dict(entry["values"])
            for key in entry["tensors"]:
                restored[key] = torch.from_numpy(array(f"optimizer.{pid}.{key}").copy())
            opt_state[int(pid)] = restored
        settings = meta.get("settings")
        if not isinstance(settings, dict):
            raise ValueError("LoopState: meta 'settings' must be an object")
        best_names = meta.get("best_state")
        return cls(epoch=meta["epoch"], batch=meta["batch"], loss_sum=float(array("loss_sum", 0)),
                   best=float(array("best", 0)),
                   best_state=None if best_names is None else tensors("best_state", best_names),
                   history=history, sampler=_sampler_from_json(meta.get("sampler")), done=meta["done"],
                   params=tensors("params", meta.get("params")),
                   optimizer={"state": opt_state, "param_groups": opt["param_groups"]},
                   settings=dict(settings))


def _json_copy(value: object) -> Any:
    """``value`` as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value, allow_nan=False))


def _sampler_to_json(state: Mapping[str, Any]) -> dict[str, Any]:
    # PCG64's 128-bit integers as decimal strings: exact in any JSON reader
    return {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"])}


def _sampler_from_json(js: object) -> dict[str, Any] | None:
    if js is None:
        return None
    try:
        assert isinstance(js, dict) and js["bit_generator"] == "PCG64"
        return {"bit_generator": "PCG64", "state": {"state": int(js["state"]), "inc": int(js["inc"])},
                "has_uint32": int(js["has_uint32"]), "uinteger": int(js["uinteger"])}
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"LoopState: meta 'sampler' is not a PCG64 state: {js!r}") from exc


@dataclass(frozen=True)
class StepContext:
    """What the ``step`` / ``after_step`` hooks see: batch ``batch`` (0-based) of epoch ``epoch``, its
    training rows ``idx`` and the epoch's ``sampler``; ``trainer`` gives the module, optimizer and
    :meth:`Trainer.checkpoint` (in ``after_step`` it includes this batch)."""

    trainer: Trainer
    epoch: int
    batch: int
    idx: np.ndarray
    sampler: np.random.Generator


@dataclass(frozen=True)
class EpochContext:
    """What ``on_epoch_end`` sees: the finished ``epoch`` (0-based), its ``n_batches`` and validation
    ``metric`` (``None`` without validation); a checkpoint taken here resumes at the next epoch."""

    trainer: Trainer
    epoch: int
    n_batches: int
    metric: float | None


StepHook = Callable[[StepContext], float]
AfterStepHook = Callable[[StepContext], None]
EpochEndHook = Callable[[EpochContext, bool, bool], None]


class Trainer:
    """Mini-batch training of ``module`` in place with early stopping and hooks (module docstring).

    ``loss_fn(idx, sampler) -> loss`` is used by the default ``step``; ``val_fn(epoch) -> metric`` (lower
    is better) runs under ``torch.no_grad`` in eval mode after each epoch. ``state``: a
    :class:`LoopState` from :meth:`checkpoint` (possibly through ``to_arrays``/``from_arrays``) to resume
    from; its parameters and optimizer state are loaded into ``module`` and the new optimizer.
    """

    def __init__(self, module: torch.nn.Module, n_rows: int, *, epochs: int, batch_size: int, lr: float,
                 seed: int, patience: int, loss_fn: LossFn | None = None,
                 val_fn: Callable[[int], float] | None = None, optimizer: str = "adam",
                 min_delta: float = 1e-4, step: StepHook | None = None,
                 after_step: AfterStepHook | None = None, on_epoch_end: EpochEndHook | None = None,
                 state: LoopState | None = None,
                 show_progress: bool = False, desc: str = "train") -> None:
        if epochs < 1 or batch_size < 1 or lr <= 0 or patience < 1 or n_rows < 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0, patience >= 1, n_rows >= 0; got "
                             f"epochs={epochs}, batch_size={batch_size}, lr={lr}, patience={patience}, "
                             f"n_rows={n_rows}")
        if loss_fn is None and step is None:
            raise ValueError("Trainer needs a loss_fn (for the default step) or a step hook")
        self.module, self.loss_fn, self.val_fn = module, loss_fn, val_fn
        self.n_rows, self.epochs, self.batch_size, self.seed = n_rows, epochs, batch_size, seed
        self.patience, self.min_delta = patience, min_delta
        self.show_progress, self.desc = show_progress, desc
        self.optimizer = make_optimizer(optimizer, module.parameters(), lr)
        self._step_hook = step or self.default_step
        self._after_step, self._on_epoch_end = after_step, on_epoch_end
        self.settings: dict[str, Any] = {
            "n_rows": n_rows, "epochs": epochs, "batch_size": batch_size, "lr": float(lr), "seed": seed,
            "patience": patience, "min_delta": float(min_delta), "optimizer": optimizer,
            "validation": val_fn is not None}
        self._sampler: np.random.Generator | None = None
        self._started: float | None = None
        self._seconds0 = 0.0
        if state is None:
            self._s = LoopState(best_state=None if val_fn is None else _clone(module.state_dict()))
        else:
            self._s = self._restore(state)

    @property
    def n_batches(self) -> int:
        return -(-self.n_rows // self.batch_size)

    @property
    def history(self) -> TrainHistory:
        return self._s.history

    def default_step(self, ctx: StepContext) -> float:
        """``zero_grad``; ``loss = loss_fn(idx, sampler)``; ``backward``; ``optimizer.step``; the loss."""
        assert self.loss_fn is not None
        self.optimizer.zero_grad()
        loss = self.loss_fn(ctx.idx, ctx.sampler)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> LoopState:
        """A self-contained copy of the loop state now (tensors cloned). Take it between batches: in
        ``after_step``, ``on_epoch_end`` or outside :meth:`run` (inside ``step`` a batch is half done)."""
        s = self._s
        live = None if self._sampler is None else dict(self._sampler.bit_generator.state)
        sampler = copy.deepcopy(s.sampler if live is None else live)
        h = s.history
        return LoopState(epoch=s.epoch, batch=s.batch, loss_sum=s.loss_sum, best=s.best,
                         best_state=None if s.best_state is None else _clone(s.best_state),
                         history=TrainHistory(list(h.train_loss), list(h.val_metric), h.best_epoch,
                                              self._elapsed()),
                         sampler=sampler, done=s.done, params=_clone(self.module.state_dict()),
                         optimizer=copy.deepcopy(self.optimizer.state_dict()), settings=dict(self.settings))

    def _restore(self, state: LoopState) -> LoopState:
        bad = sorted(k for k in set(self.settings) | set(state.settings)
                     if state.settings.get(k, "<missing>") != self.settings.get(k))
        if bad:
            raise ValueError("Trainer: the state was saved with other settings: "
                             + ", ".join(f"{k}={state.settings.get(k, '<missing>')!r} (now "
                                         f"{self.settings.get(k, '<missing>')!r})" for k in bad))
        if not state.params:
            raise ValueError("Trainer: LoopState.params is empty (take the state with Trainer.checkpoint)")
        own = self.optimizer.state_dict()["param_groups"]
        if _json_copy(state.optimizer.get("param_groups")) != _json_copy(own):
            raise ValueError(f"Trainer: optimizer param_groups {state.optimizer.get('param_groups')!r} "
                             f"do not match this trainer's {own!r}")
        self.module.load_state_dict(state.params)
        opt_state = {int(k): {n: v.detach().clone() if isinstance(v, torch.Tensor) else v
                              for n, v in e.items()} for k, e in state.optimizer.get("state", {}).items()}
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": own})
        h = state.history
        self._seconds0 = h.seconds
        return LoopState(epoch=state.epoch, batch=state.batch, loss_sum=state.loss_sum, best=state.best,
                         best_state=None if state.best_state is None else _clone(state.best_state),
                         history=TrainHistory(list(h.train_loss), list(h.val_metric), h.best_epoch,
                                              h.seconds),
                         sampler=copy.deepcopy(state.sampler), done=state.done)

    def _elapsed(self) -> float:
        if self._started is None:
            return self._s.history.seconds
        return self._seconds0 + time.perf_counter() - self._started

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainHistory:
        """Train until the loop stops; load the best parameters (eval mode); return the history."""
        s = self._s
        self._seconds0, self._started = s.history.seconds, time.perf_counter()
        # one tick per batch (a slow backend's epoch is minutes: a per-epoch bar sat at 0/1); when early
        # stopping ends the run before `epochs`, the total shrinks to what ran, so a finished bar is full
        nb = max(self.n_batches, 1)
        bar = progress_bar(total=self.epochs * nb, initial=min(s.epoch * nb + s.batch, self.epochs * nb),
                   desc=self.desc, unit="batch", disable=not self.show_progress)
        try:
            while not s.done and s.epoch < self.epochs:
                self._run_epoch(bar)
            if bar.total != bar.n:
                bar.total = bar.n
                bar.refresh()
        finally:
            bar.close()
        s.done = True
        if s.best_state is not None:
            self.module.load_state_dict(s.best_state)
        self.module.eval()
        s.history.seconds = self._elapsed()
        self._started = None
        logger.info("%s: %d epochs, best epoch %d (val %.5f), %.1fs", self.desc, len(s.history.train_loss),
                    s.history.best_epoch, s.best if np.isfinite(s.best) else float("nan"), s.history.seconds)
        return s.history

    def _run_epoch(self, bar: tqdm) -> None:
        s, epoch, bs = self._s, self._s.epoch, self.batch_size
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
        sampler = np.random.default_rng([self.seed, epoch, 1])
        if s.sampler is not None:  # resuming mid-epoch
            sampler.bit_generator.state = s.sampler
            s.sampler = None
        self._sampler = sampler
        self.module.train()
        for b in range(s.batch, self.n_batches):
            ctx = StepContext(self, epoch, b, order[b * bs:(b + 1) * bs], sampler)
            loss = self._step_hook(ctx)
            s.loss_sum += loss * len(ctx.idx)
            s.batch = b + 1
            bar.update(1)
            if self._after_step is not None:
                self._after_step(ctx)
        self._end_epoch(epoch, bar)

    def _end_epoch(self, epoch: int, bar: tqdm) -> None:
        s, h = self._s, self._s.history
        h.train_loss.append(s.loss_sum / max(self.n_rows, 1))
        last = epoch + 1 >= self.epochs
        metric = None
        if self.val_fn is None:
            improved, stop = True, last
            h.best_epoch = epoch + 1
        else:
            self.module.eval()
            with torch.no_grad():
                metric = float(self.val_fn(epoch))
            h.val_metric.append(metric)
            bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", train=f"{h.train_loss[-1]:.4f}",
                            val=f"{metric:.4f}")
            logger.debug("%s epoch %d: train %.5f val %.5f", self.desc, epoch + 1, h.train_loss[-1], metric)
            improved = metric < s.best - self.min_delta
            if improved:
                s.best, h.best_epoch = metric, epoch + 1
                s.best_state = _clone(self.module.state_dict())
            stop = last or (not improved and epoch + 1 - h.best_epoch >= self.patience)
        s.epoch, s.batch, s.loss_sum, s.done = epoch + 1, 0, 0.0, stop
        self._sampler = None
        if metric is None:
            bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", train=f"{h.train_loss[-1]:.4f}")
        if self.n_batches == 0:
            bar.update(1)  # an empty epoch still counts one tick (nb above is at least 1)
        if self._on_epoch_end is not None:
            self._on_epoch_end(EpochContext(self, epoch, self.n_batches, metric), improved, stop)


def train_loop(module: torch.nn.Module, loss_fn: LossFn, n_rows: int, *, epochs: int, batch_size: int,
               lr: float, seed: int, patience: int, val_fn: Callable[[], float] | None,
               min_delta: float = 1e-4, show_progress: bool = False, desc: str = "train",
               optimizer: str = "adam") -> TrainHistory:
    """Train ``module`` in place with :class:`Trainer` (no hooks); returns the history and leaves the
    best-validation parameters loaded."""
    epoch_val = None if val_fn is None else (lambda _epoch: val_fn())
    return Trainer(module, n_rows, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, patience=patience,
                   loss_fn=loss_fn, val_fn=epoch_val, optimizer=optimizer, min_delta=min_delta,
                   show_progress=show_progress, desc=desc).run()


def random_holdout(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows: ``rng(seed).permutation``; the last ``fraction`` of the permutation is held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(len(df))
    n_val = max(1, int(round(len(df) * fraction)))
    if n_val >= len(df):
        raise ValueError(f"cannot hold out {n_val} of {len(df)} rows for validation")
    return df.iloc[np.sort(perm[:-n_val])], df.iloc[np.sort(perm[-n_val:])]
