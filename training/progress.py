"""Progress of a party process: a per-batch bar for a party that does not run the training loop itself
(the ``hetero_fm`` host answers the guest's requests), and the one-time warnings about a backend.

The guest's bar is the training loop's own (:class:`fedrec.models.training.Trainer`, one tick per
batch). The host learns the cursor from the guest's messages: :class:`BatchBar` is the callback
:attr:`fedrec.protocols.hetero_fm.HeteroFMHost.progress` calls, drawn with ``tqdm`` (log lines go
through :class:`training.logging_setup.TqdmSafeHandler`, so they never land on the bar's line). Bars
are on by default (``[output] progress``), off with ``--no-progress`` or ``-q``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: measured per sample against CKKS by benchmarks/hetero_fm.py (README, "Benchmarks")
PAILLIER_SLOWDOWN = "about 266x"


def bars_wanted(configured: bool, no_progress: bool = False) -> bool:
    """Whether to draw progress bars: ``[output] progress`` unless ``--no-progress`` or ``-q`` (the root
    logger at ERROR or above: errors only, and no bars either)."""
    return configured and not no_progress and logging.getLogger().getEffectiveLevel() < logging.ERROR


class BatchBar:
    """``bar(done, total, epoch)`` (epoch 1-based): a tqdm bar of training batches, created at the first
    call (the totals are known only once the guest's set-up arrived); :meth:`close` it in a ``finally``."""

    def __init__(self, desc: str, enabled: bool = True) -> None:
        self.desc, self.enabled = desc, enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int, epoch: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from fedrec.progress import progress_bar

            self.bar = progress_bar(total=total, initial=done, desc=self.desc, unit="batch")
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(epoch=epoch, refresh=False)
        if done == total:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def warn_about_backend(backend: str, role: str) -> None:
    """One warning per party and run for a backend a user should know about before waiting on it
    (``plain`` itself warns once, from :class:`fedrec.crypto.plain.PlainBackend`)."""
    if backend == "paillier":
        log.warning("%s: backend 'paillier' is %s slower than 'ckks' per sample (benchmarks/hetero_fm.py): "
                    "a batch can take minutes. It is there for comparison; use backend = \"ckks\" (the "
                    "default) unless you are measuring Paillier", role, PAILLIER_SLOWDOWN)
