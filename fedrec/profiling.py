"""Per-stage wall-clock accounting of a party's protocol work (issue #17's epoch profile).

A :class:`StageClock` adds up seconds and call counts by stage name. A party owns one (``guest.stages``,
``host.stages``, a FedMF client's or server's) and wraps each piece of its work::

    with self.stages("encrypt"):
        chunks = packing.encrypt_chunks(backend, rows, plan)

The clock costs two ``perf_counter`` calls per stage, so it is always on; :meth:`StageClock.snapshot`
and :meth:`StageClock.since` give what one epoch (or any span) spent. Stages nest: an inner stage's time
is also inside its outer one, so a report sums only stages of one level (the protocols name an outer
stage ``handle:<request>`` and keep their other stages disjoint). Counters (:meth:`StageClock.count`)
record sizes beside the times (ciphertexts, products, bytes).

Time waiting for the peer is a stage too (``wait:<step>``): with both parties in one process (the
in-memory twin) the peer's handler runs meanwhile, so ``transport = wait − peer's handler time``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

__all__ = ["StageClock", "StageTotals"]

#: ``{stage: (seconds, calls)}``
StageTotals = dict[str, tuple[float, int]]


class StageClock:
    """Seconds and calls per stage name, plus integer counters; thread-safe (a party's helper threads,
    e.g. a host's precomputation, record into the same clock under their own stage names)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = defaultdict(float)
        self._calls: dict[str, int] = defaultdict(int)
        self._counts: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float, calls: int = 1) -> None:
        with self._lock:
            self._seconds[stage] += seconds
            self._calls[stage] += calls

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += int(n)

    def snapshot(self) -> tuple[StageTotals, dict[str, int]]:
        """``({stage: (seconds, calls)}, {counter: n})`` so far."""
        with self._lock:
            return ({k: (self._seconds[k], self._calls[k]) for k in self._seconds}, dict(self._counts))

    def since(self, before: tuple[StageTotals, dict[str, int]]) -> tuple[StageTotals, dict[str, int]]:
        """What was added after ``before`` (a :meth:`snapshot`); stages without new time are left out."""
        now, counts = self.snapshot()
        old, old_counts = before
        times = {k: (s - old.get(k, (0.0, 0))[0], c - old.get(k, (0.0, 0))[1]) for k, (s, c) in now.items()}
        return ({k: v for k, v in times.items() if v[1] > 0},
                {k: n - old_counts.get(k, 0) for k, n in counts.items() if n != old_counts.get(k, 0)})

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()
            self._calls.clear()
            self._counts.clear()


def scaled(totals: Mapping[str, tuple[float, int]], divisor: float) -> dict[str, float]:
    """``{stage: seconds / divisor}`` (e.g. per epoch)."""
    return {k: s / divisor for k, (s, _) in totals.items()}
