"""Fault injection at protocol events, for the crash and resume tests of real processes.

``FEDREC_FAULT="kill:<step glob>[:<n>]"`` in a party's environment makes that process kill itself with
``SIGKILL`` (no cleanup, no flush: what ``kill -9`` does) the ``n``-th time (default 1) it reaches a
step matching the glob (:func:`fnmatch.fnmatchcase`). Steps are the protocol step names every message
carries (``psi/...``, ``fm/setup``, ``fm/e0/b3/partials``, ``fm/e1/end``, ...), reached when this party
*sends* a message of that step (:func:`install` hooks a channel), and the phase names the job runner
passes to :func:`reached` itself (``job/checkpoint/<cursor>``, ``job/export/...``).

Without the variable every call is a no-op. The variable is read when :func:`install` or
:func:`reached` first runs; tests set it per subprocess, never in their own process.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)

ENV = "FEDREC_FAULT"


class _Plan:
    def __init__(self, spec: str) -> None:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[0] != "kill" or not parts[1]:
            raise ValueError(f"{ENV}={spec!r}: expected 'kill:<step glob>[:<n>]'")
        self.glob = parts[1]
        self.n = int(parts[2]) if len(parts) == 3 else 1
        if self.n < 1:
            raise ValueError(f"{ENV}={spec!r}: n must be >= 1")
        self.seen = 0
        self.lock = threading.Lock()

    def hit(self, step: str) -> bool:
        if not fnmatch.fnmatchcase(step, self.glob):
            return False
        with self.lock:
            self.seen += 1
            return self.seen == self.n


_plan: _Plan | None = None
_loaded = False


def _current() -> _Plan | None:
    global _plan, _loaded
    if not _loaded:
        spec = os.environ.get(ENV, "")
        _plan = _Plan(spec) if spec else None
        _loaded = True
        if _plan is not None:
            log.warning("fault injection armed: SIGKILL at the %d-th step matching %r", _plan.n, _plan.glob)
    return _plan


def reached(step: str) -> None:
    """Mark that this process reached ``step``; dies here if the armed fault says so."""
    plan = _current()
    if plan is not None and plan.hit(step):
        log.warning("fault injection: SIGKILL at step %r", step)
        os.kill(os.getpid(), signal.SIGKILL)


def install(channel: Any) -> None:
    """Make every message ``channel`` sends a point :func:`reached` sees: the process dies right after
    the message was handed to the transport, which is what a crash between two steps looks like to the
    peer. No-op when no fault is armed."""
    if _current() is None:
        return
    channel.add_send_listener(lambda peer, step, *rest: reached(step))
