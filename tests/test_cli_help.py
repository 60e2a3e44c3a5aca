"""Every option of every command-line tool says what it is in ``--help`` (project standard)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from training.cli import COMMANDS, build_parser

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARK_SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Options and positionals (except -h) whose help is missing or blank; SUPPRESS (hidden) counts as set."""
    return [a.option_strings[0] if a.option_strings else a.dest
            for a in parser._actions
            if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _load_benchmark(stem: str) -> ModuleType:
    # Benchmarks are scripts, not a package: import by path; their top level only defines things.
    spec = importlib.util.spec_from_file_location(f"_bench_{stem}", BENCHMARKS / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_top_level_options_have_help() -> None:
    assert _undocumented(build_parser()) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_options_have_help(name: str) -> None:
    sp = _subparser(build_parser(name), name)
    assert len(sp._actions) > 1, f"fedrec {name} defines no options"
    assert _undocumented(sp) == [], f"fedrec {name}: options without help"
    assert sp.format_help()  # every help string formats (no stray '%')


@pytest.mark.parametrize("stem", BENCHMARK_SCRIPTS)
def test_benchmark_options_have_help(stem: str) -> None:
    module = _load_benchmark(stem)
    assert callable(getattr(module, "build_parser", None)), f"benchmarks/{stem}.py has no build_parser()"
    parser = module.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert _undocumented(parser) == [], f"benchmarks/{stem}.py: options without help"
    assert parser.format_help()
