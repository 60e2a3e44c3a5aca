"""The training loop: hooks and their order, early-stopping decisions, Adam/SGD, exact resume."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.models.training import EpochContext, LoopState, StepContext, Trainer, train_loop

torch.set_num_threads(1)

N_USERS, N_ITEMS, N_ROWS, BATCH, EPOCHS = 9, 7, 37, 8, 4  # 5 batches per epoch, the last one partial
RNG = np.random.default_rng(0)
USERS, ITEMS = RNG.integers(0, N_USERS, N_ROWS), RNG.integers(0, N_ITEMS, N_ROWS)
Y = torch.from_numpy(RNG.normal(0, 1, N_ROWS).astype(np.float32))
# validation metric: a scripted per-epoch value dominates (improves at epochs 0 and 1, then not: with
# patience 2 the loop stops after epoch 3 and must restore epoch 1's parameters) plus a tiny
# parameter-dependent term, so a wrongly restored best state shows up in the metric too
SCRIPT = [1.0, 0.5, 0.8, 0.9, 0.1]


class Tiny(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.p = torch.nn.Parameter(torch.randn(N_USERS, 3, generator=g) * 0.3)
        self.q = torch.nn.Parameter(torch.randn(N_ITEMS, 3, generator=g) * 0.3)
        self.b = torch.nn.Parameter(torch.zeros(N_ITEMS))


def loss_fn_of(m: Tiny) -> Callable[[np.ndarray, np.random.Generator], torch.Tensor]:
    def loss_fn(idx: np.ndarray, sampler: np.random.Generator) -> torch.Tensor:
        neg = sampler.integers(0, N_ITEMS, len(idx))  # uses the epoch's sampler, so its state matters
        pos = (m.p[USERS[idx]] * m.q[ITEMS[idx]]).sum(dim=1) + m.b[ITEMS[idx]]
        negs = (m.p[USERS[idx]] * m.q[neg]).sum(dim=1) + m.b[neg]
        return ((pos - Y[idx]) ** 2).mean() + 0.1 * torch.sigmoid(negs).mean()
    return loss_fn


def val_fn_of(m: Tiny) -> Callable[[int], float]:
    def val_fn(epoch: int) -> float:
        return SCRIPT[epoch] + 1e-6 * float((m.p ** 2).sum())
    return val_fn


def make(module: Tiny, optimizer: str, validation: bool, **hooks: Any) -> Trainer:
    return Trainer(module, N_ROWS, epochs=EPOCHS, batch_size=BATCH, lr=0.05, seed=11, patience=2,
                   loss_fn=loss_fn_of(module), val_fn=val_fn_of(module) if validation else None,
                   optimizer=optimizer, **hooks)


class Interrupt(Exception):
    pass


def through_disk(state: LoopState) -> LoopState:
    """Serialize as a checkpoint file would: npz without pickle + strict JSON."""
    arrays, meta = state.to_arrays()
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}
    return LoopState.from_arrays(loaded, json.loads(json.dumps(meta, allow_nan=False)))


def interrupted_at(optimizer: str, validation: bool, epoch: int, batch: int | None) -> LoopState:
    """Run until after batch ``batch`` of ``epoch`` (``None``: the end of ``epoch``), checkpoint, stop."""
    saved: list[LoopState] = []

    def after_step(ctx: StepContext) -> None:
        if batch is not None and (ctx.epoch, ctx.batch) == (epoch, batch):
            saved.append(ctx.trainer.checkpoint())
            raise Interrupt

    def on_epoch_end(ctx: EpochContext, improved: bool, stop: bool) -> None:
        if batch is None and ctx.epoch == epoch:
            saved.append(ctx.trainer.checkpoint())
            raise Interrupt

    with pytest.raises(Interrupt):
        make(Tiny(seed=1), optimizer, validation, after_step=after_step, on_epoch_end=on_epoch_end).run()
    return saved[0]


@pytest.mark.parametrize("validation", [True, False], ids=["val", "noval"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_from_any_boundary_is_bit_identical(optimizer: str, validation: bool) -> None:
    ref = Tiny(seed=1)
    hist = make(ref, optimizer, validation).run()
    last_epoch = len(hist.train_loss) - 1
    if validation:
        assert hist.best_epoch == 2 and last_epoch == 3  # early stop + best-state restore are exercised
    points: list[tuple[int, int | None]] = [(e, b) for e in range(last_epoch + 1) for b in range(5)]
    points += [(e, None) for e in range(last_epoch)]
    for epoch, batch in points:
        state = through_disk(interrupted_at(optimizer, validation, epoch, batch))
        fresh = Tiny(seed=99)  # different init: the state must bring the parameters
        again = make(fresh, optimizer, validation, state=state).run()
        where = f"interrupted after epoch {epoch} batch {batch}"
        for (name, a), (_, b) in zip(ref.state_dict().items(), fresh.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{name} differs, {where}"
        assert (again.train_loss, again.val_metric, again.best_epoch) == (
            hist.train_loss, hist.val_metric, hist.best_epoch), where


def test_checkpoint_mid_epoch_records_position_sampler_and_optimizer() -> None:
    state = interrupted_at("adam", True, 1, 2)
    assert (state.epoch, state.batch, state.done) == (1, 3, False)
    assert state.sampler is not None and state.sampler["bit_generator"] == "PCG64"
    assert state.optimizer["state"] and state.best_state is not None and set(state.params) == {"p", "q", "b"}
    at_end = interrupted_at("adam", True, 1, None)
    assert (at_end.epoch, at_end.batch, at_end.sampler, at_end.loss_sum) == (2, 0, None, 0.0)


def test_loop_state_arrays_roundtrip_exactly() -> None:
    state = interrupted_at("adam", True, 2, 4)
    back = through_disk(state)
    for name in ("epoch", "batch", "loss_sum", "best", "done", "sampler", "settings"):
        assert getattr(back, name) == getattr(state, name), name
    assert back.history == state.history
    assert state.best_state is not None and back.best_state is not None
    for a, b in ((state.params, back.params), (state.best_state, back.best_state)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for pid, entry in state.optimizer["state"].items():
        assert all(torch.equal(v, back.optimizer["state"][pid][k]) for k, v in entry.items())


def test_loop_state_from_arrays_names_the_missing_array() -> None:
    arrays, meta = interrupted_at("sgd", False, 0, 1).to_arrays()
    del arrays["params.q"]
    with pytest.raises(ValueError, match="'params.q' is missing"):
        LoopState.from_arrays(arrays, meta)
    with pytest.raises(ValueError, match="format"):
        LoopState.from_arrays(arrays, {**meta, "format": "other"})


def test_resume_with_other_settings_is_rejected() -> None:
    state = interrupted_at("adam", True, 0, 1)
    with pytest.raises(ValueError, match="optimizer='adam'"):
        make(Tiny(seed=1), "sgd", True, state=state)
    with pytest.raises(ValueError, match="validation=True"):
        make(Tiny(seed=1), "adam", False, state=state)


def test_hooks_run_in_order_and_step_can_be_replaced() -> None:
    events: list[tuple[Any, ...]] = []
    m = Tiny(seed=1)

    def step(ctx: StepContext) -> float:
        events.append(("step", ctx.epoch, ctx.batch, len(ctx.idx)))
        return ctx.trainer.default_step(ctx)

    def val_fn(epoch: int) -> float:
        events.append(("val", epoch))
        return SCRIPT[epoch]

    trainer = Trainer(m, 20, epochs=2, batch_size=8, lr=0.01, seed=0, patience=3, loss_fn=loss_fn_of(m),
                      val_fn=val_fn, step=step,
                      after_step=lambda ctx: events.append(("after", ctx.epoch, ctx.batch)),
                      on_epoch_end=lambda ctx, imp, stop: events.append(("end", ctx.epoch, ctx.n_batches,
                                                                         ctx.metric, imp, stop)))
    trainer.run()
    expected: list[tuple[Any, ...]] = []
    for e in range(2):
        for b, n in enumerate((8, 8, 4)):
            expected += [("step", e, b, n), ("after", e, b)]
        expected += [("val", e), ("end", e, 3, SCRIPT[e], True, e == 1)]
    assert events == expected


def test_on_epoch_end_sees_the_decisions_the_loop_takes() -> None:
    decisions: list[tuple[int, bool, bool]] = []
    m = Tiny(seed=1)
    hist = Trainer(m, N_ROWS, epochs=5, batch_size=BATCH, lr=0.01, seed=0, patience=2, loss_fn=loss_fn_of(m),
                   val_fn=lambda e: SCRIPT[e],
                   on_epoch_end=lambda ctx, imp, stop: decisions.append((ctx.epoch, imp, stop))).run()
    # 1.0 improves, 0.5 improves, 0.8 and 0.9 do not: patience 2 is exhausted after epoch 3
    assert decisions == [(0, True, False), (1, True, False), (2, False, False), (3, False, True)]
    assert len(hist.train_loss) == 4 and hist.best_epoch == 2 and hist.val_metric == SCRIPT[:4]


def test_without_validation_every_epoch_improves_and_the_last_one_stops() -> None:
    decisions: list[tuple[int, bool, bool]] = []
    make(Tiny(seed=1), "adam", False,
         on_epoch_end=lambda ctx, imp, stop: decisions.append((ctx.epoch, imp, stop))).run()
    assert decisions == [(e, True, e == EPOCHS - 1) for e in range(EPOCHS)]


def test_sgd_is_a_plain_gradient_step() -> None:
    m = Tiny(seed=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loss_fn = loss_fn_of(m)
    trainer = Trainer(m, N_ROWS, epochs=1, batch_size=N_ROWS, lr=0.05, seed=3, patience=1, loss_fn=loss_fn,
                      val_fn=None, optimizer="sgd")
    trainer.run()
    twin = Tiny(seed=1)
    order = np.random.default_rng([3, 0]).permutation(N_ROWS)
    loss_fn_of(twin)(order, np.random.default_rng([3, 0, 1])).backward()
    for name, p in twin.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(m.state_dict()[name], before[name] - 0.05 * p.grad, rtol=0, atol=1e-7)


def test_train_loop_is_the_trainer_without_hooks() -> None:
    a, b = Tiny(seed=1), Tiny(seed=1)
    ha = train_loop(a, loss_fn_of(a), N_ROWS, epochs=EPOCHS, batch_size=BATCH, lr=0.05, seed=11, patience=2,
                    val_fn=lambda: float((a.p ** 2).sum()))
    hb = Trainer(b, N_ROWS, epochs=EPOCHS, batch_size=BATCH, lr=0.05, seed=11, patience=2,
                 loss_fn=loss_fn_of(b), val_fn=lambda _e: float((b.p ** 2).sum())).run()
    assert ha.train_loss == hb.train_loss and ha.val_metric == hb.val_metric
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(("kwargs", "match"), [({"optimizer": "rmsprop"}, "optimizer"),
                                               ({"lr": 0.0}, "lr > 0"), ({"loss_fn": None}, "loss_fn")])
def test_bad_trainer_arguments_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    m = Tiny(seed=1)
    args: dict[str, Any] = {"epochs": 1, "batch_size": 4, "lr": 0.1, "seed": 0, "patience": 1,
                            "loss_fn": loss_fn_of(m), **kwargs}
    with pytest.raises(ValueError, match=match):
        Trainer(m, N_ROWS, **args)


def test_biased_mf_trains_with_sgd_and_rejects_unknown_optimizers() -> None:
    from models_support import planted

    from fedrec.models import BiasedMF

    d = planted(n_users=20, n_items=15, density=0.5)
    mf = BiasedMF(optimizer="sgd", lr=0.05, epochs=3, batch_size=32, n_factors=2, validation="none")
    mf.fit(d.interactions)
    assert mf.history.train_loss[-1] < mf.history.train_loss[0]
    with pytest.raises(ValueError, match="optimizer"):
        BiasedMF(optimizer="lbfgs")


def test_the_progress_bar_ticks_per_batch_and_ends_full_after_early_stopping(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #13 item 12: the bar moved once per epoch (a Paillier epoch sat at 0/1 for minutes) and an
    early-stopped run ended one step short (5/6), which reads as a failure."""
    from fedrec import progress

    seen: list[tuple[int, int]] = []  # (bar position, total) after every batch

    class Recording(progress.tqdm):  # type: ignore[misc,name-defined]
        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            seen.append((self.n, self.total))
            return out

    monkeypatch.setattr(progress, "tqdm", Recording)
    m = Tiny(seed=1)
    Trainer(m, N_ROWS, epochs=5, batch_size=BATCH, lr=0.01, seed=0, patience=2, loss_fn=loss_fn_of(m),
            val_fn=lambda e: SCRIPT[e], show_progress=True, desc="tiny").run()
    n_batches = -(-N_ROWS // BATCH)
    assert seen[:2] == [(1, 5 * n_batches), (2, 5 * n_batches)]  # per batch, not per epoch
    assert len(seen) == 4 * n_batches  # stopped after epoch 3 (patience 2)
    final = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert f"{4 * n_batches}/{4 * n_batches}" in final, final  # full, not 20/25
    assert "epoch=4/5" in final


def test_a_resumed_run_starts_its_bar_where_it_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrec import progress

    starts: list[int] = []

    class Recording(progress.tqdm):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            starts.append(self.n)

    state = interrupted_at("adam", False, 1, 2)  # after batch 2 of epoch 1
    monkeypatch.setattr(progress, "tqdm", Recording)
    m = Tiny(seed=1)
    make(m, "adam", False, state=state).run()
    assert starts == [1 * 5 + 3]
