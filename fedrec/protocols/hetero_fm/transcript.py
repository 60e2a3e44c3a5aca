"""What the host of the vertical FM learns in a run, recorded for leakage evaluation.

A :class:`HostTranscript` attached to a host (``HeteroFMHost(..., transcript=HostTranscript())`` or
``host.transcript = ...``) records, from inside the host and in the host's own terms, everything an
honest-but-curious host can compute from what it receives:

* per training batch with aligned users: the aligned positions of the batch's users
  (``PartialsRequest``), the host columns their features touch, ``N_s``, and the host's own
  unmasked aggregated gradient of those columns (``ReleasedGradients`` minus its masks, divided by
  ``N_s``: exactly what its optimizer steps on);
* the users of every validation/prediction request (``PartialsRequest("validate")`` /
  ``PredictRequest``);
* every ``EpochEnd``: the number of batches, whether training stops, and then which epoch's parameters
  are the result (no per-epoch improvement bit is sent).

Nothing here is sent anywhere: attacks (:mod:`fedrec.eval.leakage`) read the transcript together with
the host's own features, and score themselves against the guest's true labels, which only an
evaluation has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchRelease", "HostTranscript"]


@dataclass(frozen=True)
class BatchRelease:
    """One training batch as the host sees it: its aligned ``users`` (positions in the aligned list),
    the touched host ``cols``, ``n_samples`` and the aggregated gradient ``g_v[len(cols), k]``,
    ``g_w[len(cols)]`` of those columns."""

    epoch: int
    batch: int
    users: np.ndarray
    cols: np.ndarray
    n_samples: int
    g_v: np.ndarray
    g_w: np.ndarray


@dataclass
class HostTranscript:
    """Everything the host learned in one run (see the module docstring)."""

    aligned: list[str] = field(default_factory=list)
    releases: list[BatchRelease] = field(default_factory=list)
    requests: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    #: ``(epoch, stop, n_batches, best_epoch)`` per ``EpochEnd`` (best_epoch: 1-based, -1 unless stop)
    epoch_ends: list[tuple[int, bool, int, int]] = field(default_factory=list)

    def record_release(self, release: BatchRelease) -> None:
        self.releases.append(release)

    def record_request(self, purpose: str, epoch: int, users: np.ndarray) -> None:
        self.requests.append((purpose, epoch, np.asarray(users, dtype=np.int64).copy()))

    def record_epoch_end(self, epoch: int, stop: bool, n_batches: int, best_epoch: int) -> None:
        self.epoch_ends.append((epoch, stop, n_batches, best_epoch))
