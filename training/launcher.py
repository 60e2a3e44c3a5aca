"""Start party processes, watch them, and make sure none outlives its launcher.

:class:`PartyProcess` runs ``python -m training.cli train --role R --config FILE`` (any argv, in fact)
with its stderr copied to a log file, kept as a tail for error reports and optionally echoed live (so
progress bars show). :class:`PartyGroup` starts several, and :meth:`PartyGroup.wait` returns when all
succeeded, or raises :class:`PartyFailed` naming the first party that exited non-zero (with its stderr
tail) after terminating the others. Children get ``PR_SET_PDEATHSIG`` (Linux) so they receive SIGTERM
even if the launcher is killed with SIGKILL; a normal exit or an exception terminates them explicitly.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 25


class PartyFailed(RuntimeError):
    """A party process exited with an error (or did not finish in time); names it and shows its stderr."""

    def __init__(self, party: str, returncode: int | None, tail: str, reason: str = "") -> None:
        what = reason or f"exited with status {returncode}"
        super().__init__(f"party {party!r} {what}; last stderr lines:\n{tail}")
        self.party, self.returncode, self.tail = party, returncode, tail


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PartyProcess:
    """One child process; stderr goes to ``log_path``, a tail is kept, and optionally echoed live."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, echo: IO[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._echo = echo
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH")) if p)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w", encoding="utf-8")
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self.proc = subprocess.Popen(list(argv), env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=preexec)  # noqa: PLW1509 - only sets the death signal
        self.stdout = ""
        self._out_thread = threading.Thread(target=self._read_stdout, daemon=True)
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._out_thread.start()
        self._err_thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read().decode("utf-8", "replace")

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        line = b""
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            text = chunk.decode("utf-8", "replace")
            self._log.write(text)
            self._log.flush()
            if self._echo is not None:
                self._echo.write(text)
                self._echo.flush()
            line += chunk
            *done, line = line.replace(b"\r", b"\n").split(b"\n")
            self._tail.extend(d.decode("utf-8", "replace") for d in done if d.strip())
        if line.strip():
            self._tail.append(line.decode("utf-8", "replace"))

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def tail(self) -> str:
        self._err_thread.join(timeout=2)
        return "\n".join(f"  [{self.name}] {x}" for x in self._tail) or f"  [{self.name}] (no output)"

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the child."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out_thread.join(timeout=2)
        self._err_thread.join(timeout=2)
        self._log.close()


class PartyGroup:
    """Several :class:`PartyProcess`; a context manager that stops every child on exit."""

    def __init__(self) -> None:
        self.parties: dict[str, PartyProcess] = {}

    def start(self, name: str, argv: Sequence[str], log_path: Path, **kwargs: Any) -> PartyProcess:
        p = PartyProcess(name, argv, log_path, **kwargs)
        self.parties[name] = p
        log.info("started %s (pid %d): %s", name, p.proc.pid, " ".join(argv))
        return p

    def first_failure(self) -> PartyProcess | None:
        return next((p for p in self.parties.values() if p.returncode not in (None, 0)), None)

    def wait(self, timeout: float, poll: float = 0.2) -> None:
        """Until every party exited 0; :class:`PartyFailed` for the first failure or at ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            bad = self.first_failure()
            if bad is not None:
                time.sleep(0.5)  # the peer's own error usually follows; give it a moment to be logged
                self.stop_all()
                raise PartyFailed(bad.name, bad.returncode, bad.tail())
            if all(p.returncode == 0 for p in self.parties.values()):
                return
            if time.monotonic() > deadline:
                running = [p for p in self.parties.values() if p.returncode is None]
                self.stop_all()
                raise PartyFailed(running[0].name, None, running[0].tail(),
                                  reason=f"did not finish within {timeout:.0f}s")
            time.sleep(poll)

    def stop_all(self) -> None:
        for p in self.parties.values():
            p.stop()

    def __enter__(self) -> PartyGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def train_command(role: str, config: Path, *, verbose: bool = False, progress: bool = True,
                  restart: bool = False) -> list[str]:
    """The argv of ``fedrec train`` for one party, run with this interpreter (``restart``: train again
    even if ``[output] dir`` holds a complete run)."""
    argv = [sys.executable, "-m", "training.cli"]
    if verbose:
        argv.append("-v")
    argv += ["train", "--role", role, "--config", str(config)]
    if not progress:
        argv.append("--no-progress")
    if restart:
        argv.append("--restart")
    return argv
