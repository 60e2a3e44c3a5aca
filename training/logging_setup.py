"""How ``fedrec`` logs: quiet by default, one handler, progress bars left intact.

Levels (the same for every sub-command, before or after its name)::

    (default)  WARNING   warnings and errors only; results are printed, not logged
    -q         ERROR     errors only
    -v         INFO      what each step does (connections, PSI sizes, epochs, files written)
    -vv        DEBUG     everything, including the transport's per-message lines

The chosen level is exported as ``FEDREC_LOG_LEVEL`` so the party processes a command starts
(``fedrec demo``) log at the same level; a child given no flag inherits it.

Records go to stderr through :class:`TqdmSafeHandler`, which writes with ``tqdm.write`` so a log line
never lands on the same line as a progress bar (the bar is cleared, the line printed, the bar redrawn).
:func:`configure` replaces the root logger's handlers, so calling it twice never duplicates lines.
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "FEDREC_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


def level_for(verbose: int, quiet: int) -> int:
    """The logging level of ``-v`` × ``verbose`` and ``-q`` × ``quiet`` (module docstring); with neither,
    the level inherited from :data:`ENV`, else WARNING."""
    if verbose and quiet:
        raise ValueError("-q and -v contradict each other; give one of them")
    if quiet:
        return logging.ERROR
    if verbose:
        return logging.INFO if verbose == 1 else logging.DEBUG
    inherited = os.environ.get(ENV, "")
    return logging.getLevelName(inherited) if inherited in ("DEBUG", "INFO", "WARNING", "ERROR") else \
        logging.WARNING


class TqdmSafeHandler(logging.StreamHandler):
    """A stderr handler that prints through ``tqdm.write`` (bars are redrawn below the line)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency
                super().emit(record)
                return
            tqdm.write(msg, file=sys.stderr)
        except Exception:  # logging must never raise into the program
            self.handleError(record)


def _warning_as_log_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                         file: object = None, line: str | None = None) -> None:
    """Python warnings (``warnings.warn``) as one WARNING line of the logger ``py.warnings``, through
    the same handler as every other line (not Python's two-line form on raw stderr, under a bar)."""
    text = str(message) if category is UserWarning else f"{category.__name__}: {message}"
    logging.getLogger("py.warnings").warning("%s", text)


def configure(level: int) -> None:
    """One handler on the root logger at ``level``, replacing any (the caller exports :data:`ENV`);
    Python warnings are logged through it (:func:`_warning_as_log_line`), once per place as Python's
    default filter has it."""
    import warnings

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = TqdmSafeHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root.addHandler(handler)
    root.setLevel(level)
    warnings.showwarning = _warning_as_log_line
