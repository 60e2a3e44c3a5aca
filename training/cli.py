"""The ``fedrec`` command: one launcher, one sub-command per job.

Every sub-command lives in its own module that exposes ``add_arguments(parser)`` and
``run(args) -> int``; the module is imported only when its sub-command runs, so ``fedrec --help``
stays fast and a broken optional piece cannot take the others down.

Logging is quiet by default (warnings and errors); ``-v`` adds what each step does, ``-vv`` debug
lines, ``-q`` keeps errors only. The flags are accepted before or after the sub-command
(``fedrec -v train ...`` = ``fedrec train ... -v``) and reach the party processes a command starts
(:mod:`training.logging_setup`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: the oldest Python that runs fedrec (fedrec.MIN_PYTHON and setup.cfg's python_requires say the same);
#: repeated here so the check runs before anything that needs it is imported
MIN_PYTHON = (3, 11)

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("training.init_cmd", "set up one party on its machine: CURVE keys, a config, what to send"),
    "demo": ("training.demo", "run the end-to-end demo on the built-in synthetic data (no download)"),
    "keys": ("training.keys_cmd", "write a party's CURVE key pair into files with safe permissions"),
    "psi": ("training.psi_cmd", "private set intersection of id files between two parties"),
    "train": ("training.party", "run one party of a federated training job"),
    "info": ("training.info_cmd", "describe a run or model directory: what, when, data, metrics, digests"),
    "evaluate": ("training.evaluate_cmd", "RMSE/MAE of a trained model (+ host partials) on a ratings file"),
    "dormant": ("serving.campaign", "list dormant users (history length, last activity) for a campaign"),
    "recommend": ("serving.batch", "write top-K recommendations for a users file (CSV/Parquet)"),
    "serve": ("serving.http", "serve recommendations over HTTP/JSON (/recommend, /health)"),
    "ads": ("training.ads_cmd", "federated advertising: prepare, train, DP conversion returns, acquisition"),
}

EPILOG = """logging: quiet by default (warnings and errors); -v what each step does, -vv debug, -q errors
only; the flags work before or after the sub-command.

examples:
  fedrec --version
  fedrec init --role guest --dir ~/fedrec-guest       # then follow what it prints (docs/DEPLOY.md)
  fedrec demo --out ~/fedrec-runs/demo -v
  fedrec train --config guest.toml                     # the role is read from the config
"""


def python_problem(version: Sequence[int] | None = None, executable: str | None = None) -> str | None:
    """Why this interpreter cannot run fedrec, or ``None`` when it can."""
    version = tuple(sys.version_info[:3] if version is None else version)
    if tuple(version[:2]) >= MIN_PYTHON:
        return None
    have = ".".join(map(str, version))
    return (f"fedrec needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (it uses tomllib and "
            f"typing.Self); this is Python {have} ({executable or sys.executable}). Create the environment "
            f"with a newer interpreter, e.g. `python3.11 -m venv .venv`, then `pip install -e .`.")


def _version() -> str:
    from fedrec import __version__

    return (f"fedrec {__version__} (Python {sys.version.split()[0]}, "
            f"{os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})")


def _logging_options(parser: argparse.ArgumentParser, dest_suffix: str = "", top: bool = True) -> None:
    default = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", dest="verbose" + dest_suffix, action="count", default=default,
                        help="more logging: -v what each step does (INFO), -vv debug")
    parser.add_argument("-q", "--quiet", dest="quiet" + dest_suffix, action="count", default=default,
                        help="errors only (default: warnings and errors)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (all sub-commands are listed)."""
    parser = argparse.ArgumentParser(
        prog="fedrec",
        description="Federated recommendation: vertical FM over CKKS, federated MF, PSI, ads, serving.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true",
                        help="print the fedrec version (and the Python running it) and exit")
    _logging_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="the job to run; `fedrec COMMAND --help` lists its options")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        module = importlib.import_module(module_name)
        sp = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip().splitlines()[0],
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sp)
        _logging_options(sp, "_sub", top=False)
        sp.set_defaults(_module=module)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    # The only top-level options are flags, so the first positional word is the sub-command.
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    problem = python_problem()
    if problem is not None:
        print(f"fedrec: {problem}", file=sys.stderr)
        return 1
    from training.logging_setup import ENV, configure, level_for

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    verbose = args.verbose + getattr(args, "verbose_sub", 0)
    quiet = args.quiet + getattr(args, "quiet_sub", 0)
    try:
        level = level_for(verbose, quiet)
    except ValueError as err:
        parser.error(str(err))
    configure(level)
    if args.version:
        print(_version())
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    import logging

    before = os.environ.get(ENV)
    os.environ[ENV] = logging.getLevelName(level)  # the party processes this command starts log alike
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


if __name__ == "__main__":
    sys.exit(main())
