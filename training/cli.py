"""The ``fedrec`` command: one launcher, one sub-command per job.

Every sub-command lives in its own module that exposes ``add_arguments(parser)`` and
``run(args) -> int``; the module is imported only when its sub-command runs, so ``fedrec --help``
stays fast and a broken optional piece cannot take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("training.demo", "run the end-to-end demo on the built-in synthetic data (no download)"),
    "keys": ("training.keys_cmd", "write a party's CURVE key pair into files with safe permissions"),
    "psi": ("training.psi_cmd", "private set intersection of id files between two parties"),
    "train": ("training.party", "run one party of a federated training job"),
    "dormant": ("serving.campaign", "list dormant users (history length, last activity) for a campaign"),
    "recommend": ("serving.batch", "write top-K recommendations for a users file (CSV/Parquet)"),
    "serve": ("serving.http", "serve recommendations over HTTP/JSON (/recommend, /health)"),
    "ads": ("training.ads_cmd", "federated advertising: prepare, train, DP conversion returns, acquisition"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (all sub-commands are listed)."""
    parser = argparse.ArgumentParser(
        prog="fedrec",
        description="Federated recommendation: vertical FM over CKKS, federated MF, PSI, ads, serving.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
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
        sp.set_defaults(_module=module)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    # The only top-level options are flags, so the first positional word is the sub-command.
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
