"""fedrec: federated recommendation with real encryption over real sockets."""

import sys

#: the oldest Python fedrec runs on (``tomllib``, ``typing.Self``); setup.cfg's python_requires says the same
MIN_PYTHON = (3, 11)

if sys.version_info < MIN_PYTHON:  # pragma: no cover - the same words as training.cli.python_problem
    raise ImportError(
        f"fedrec needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (it uses tomllib and typing.Self); "
        f"this is Python {sys.version.split()[0]} at {sys.executable}. Create the environment with a newer "
        "interpreter, e.g. `python3.11 -m venv .venv`.")

__version__ = "0.1.0"
