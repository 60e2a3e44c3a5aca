"""Progress bars that suit where they are drawn: every fedrec bar is made by :func:`progress_bar`.

On a terminal it is a plain ``tqdm`` bar (redrawn in place, up to ten times a second). When the stream
is not a terminal (a party under a service manager, ``fedrec train ... 2>party.log``), redrawing in
place is meaningless: each redraw is appended to the log (``\\r``-separated, one endless line, a few
per second for a whole training run: issue #13 item 12). There the bar is written as **one line at
most every** :data:`LOG_INTERVAL` **seconds** (tqdm's ``mininterval`` and ``maxinterval``; the first
state and the final state are always written), each a complete line, and kept at the end::

    psi guest:  48%|####8     | 960000/2000000 [00:31<00:33, 30.9kmult/s]

Log lines (:class:`training.logging_setup.TqdmSafeHandler`, ``tqdm.write``) then neither clear nor
redraw such a bar (it is not the terminal's), so a log line is just a line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL", "is_terminal", "progress_bar"]

#: seconds between two progress lines when the stream is not a terminal
LOG_INTERVAL = 30.0


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or file-less stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Lines:
    """A stream adapter that turns tqdm's in-place redraws into whole lines: ``"\\r" + bar`` becomes
    ``bar + "\\n"``; blank writes (clearing the line) are dropped, and so is a line whose count is the
    previous line's (only the timing in ``[...]`` differs: a forced refresh, then the close)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.split(" [", 1)[0]
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable[Any] | None = None, *, file: IO[str] | None = None,
                 **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on ``file`` (default: ``sys.stderr`` at the time of the call); when
    ``file`` is not a terminal: one whole line at most every :data:`LOG_INTERVAL` seconds, kept at the
    end (``leave=True``), whatever ``mininterval``/``maxinterval``/``leave`` the caller gave."""
    stream = sys.stderr if file is None else file
    if kwargs.get("disable") or is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.update(mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, leave=True, dynamic_ncols=False)
    return tqdm(iterable, file=_Lines(stream), **kwargs)
