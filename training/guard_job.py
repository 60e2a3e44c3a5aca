"""The guest-side guard in ``fedrec train`` (hetero_fm guest; the math in :mod:`fedrec.models.guard`).

While the federated training runs, a thread of the guest fits the bank alone: the same FM settings on the
same interactions with the same validation split, the guest's fields only (plaintext, local, nothing
sent). After training the guest chooses ``alpha`` on the validation rows with the outputs it computed for
early stopping (the hosts' partials of the best epoch, which it received then), blends the ``[data]
predict`` scores, and writes ``model/bank_alone/`` and ``model/guard.json`` beside the guest half, which
:class:`~fedrec.models.vertical.VerticalFM` and the serving bundle apply. The host's transcript is the
same with the guard on or off (``tests/test_guard.py``).

Which validation rows (``source`` in the run's ``summary.json`` and ``guard.json``): the ``[data]
validation`` file, else the protocol's own split (``[model] validation``, by default a random 5% of the
training rows held out of both models). With neither (``validation = "none"``) there is nothing to
judge on: the federated model is kept as trained (``alpha = 1``, status ``no_validation``) and a warning
says how to turn the guard on. A guest-side holdout of the training rows is not made: it would change
the rows the host's gradients are computed on (its transcript), and scoring it would need the hosts'
partials of the holdout users, i.e. a new request.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.models.guard import GuardChoice, choose_alpha

log = logging.getLogger(__name__)


@dataclass
class GuardRun:
    """A guard under way: ``status`` is ``None`` while alpha is still to be chosen, else the fixed
    outcome; ``bank``: the bank-alone fit (a future) when one is needed."""

    mode: str
    source: str
    status: str | None
    bank: Future[Any] | None = None
    seconds: float = 0.0


def _fit_bank(params: dict[str, Any], inter: Any, items: Any, val: Any) -> tuple[Any, float]:
    from fedrec.models import FactorizationMachine

    t0 = time.perf_counter()
    fm = FactorizationMachine(**params)
    fm.fit(inter, item_features=items, validation=val)
    return fm, time.perf_counter() - t0


def start(cfg: Any, mcfg: Any, inter: Any, items: Any, val: Any) -> GuardRun:
    """Decide what the guard can do and start the bank-alone fit in a thread when it is needed."""
    mode = cfg.guard.mode
    if val is not None:
        source = f"[data] validation {cfg.data.validation}"
    elif mcfg.validation != "none":
        random = mcfg.validation == "random"
        share = f" ({mcfg.validation_fraction:.0%} of the training rows)" if random else ""
        source = f"[model] validation = {mcfg.validation!r}{share}"
    else:
        source = "none"
    if mode == "off":
        return GuardRun(mode, source, "off")
    if cfg.ads.refit != "off":
        log.info("guard: off for [ads] refit = %r (the refit weighs the platform's terms itself)",
                 cfg.ads.refit)
        return GuardRun(mode, "[ads] refit", "off")
    if mcfg.objective == "ranking":
        log.warning("guard: the ranking objective has no per-row validation output here; the federated model "
                    "is kept as trained (alpha = 1), not checked against the bank alone")
        return GuardRun(mode, source, "unsupported")
    if source == "none":
        log.warning("guard: no validation rows ([model] validation = \"none\" and no [data] validation): the "
                    "federated model is kept as trained (alpha = 1), NOT checked against the bank alone; set "
                    "[model] validation = \"random\" or give [data] validation to guard it")
        return GuardRun(mode, source, "no_validation")
    params = {**mcfg.fm_params(), "use_user_features": False, "show_progress": False}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bank-alone")
    future = pool.submit(_fit_bank, params, inter, items, val)
    pool.shutdown(wait=False)
    log.info("guard: fitting the bank alone (guest fields only, local) beside the federated training")
    return GuardRun(mode, source, None, future)


def finish(g: GuardRun, guest: Any) -> tuple[GuardChoice, Any | None]:
    """``alpha`` from the validation rows (see the module docstring) and the bank-alone model (or
    ``None``); logs the one line of :meth:`GuardChoice.summary_line`."""
    run_id = guest.run_id
    bank = None
    if g.status is None:
        assert g.bank is not None
        bank, g.seconds = g.bank.result()
        held = guest.validation_outputs()
        if held is None:
            log.warning("guard: the validation outputs of the best epoch are not held (a run resumed after "
                        "it): the federated model is kept as trained (alpha = 1)")
            choice = GuardChoice(g.mode, 1.0, "no_validation", g.source + " (resumed after the best epoch)",
                                 run_id=run_id)
        else:
            val, z_fed = held
            choice = choose_alpha(val["rating"].to_numpy(np.float64), bank.decision_function(val), z_fed,
                                  objective=guest.local.config.objective, finish=guest.local.finish,
                                  mode=g.mode, source=g.source, run_id=run_id)
    else:
        choice = GuardChoice(g.mode, 1.0, g.status, g.source, run_id=run_id)
    log.info("guest: %s", choice.summary_line())
    return choice, bank


def blend(choice: GuardChoice, bank: Any | None, z_fed: np.ndarray, pairs: Any) -> np.ndarray:
    """Raw outputs of the guarded model on ``pairs`` from the federated ones."""
    if bank is None or choice.alpha == 1.0:
        return z_fed
    return (1.0 - choice.alpha) * bank.decision_function(pairs) + choice.alpha * z_fed


def summary(choice: GuardChoice, g: GuardRun) -> dict[str, Any]:
    """The run report's ``guard`` entry."""
    doc = {k: v for k, v in choice.to_json().items() if k not in ("format", "format_version", "run_id",
                                                                   "bank_alone_dir")}
    return {**doc, "bank_alone_fit_seconds": round(g.seconds, 3)}
