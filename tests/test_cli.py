"""The ``fedrec`` launcher: every sub-command explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_explains_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"fedrec {name}" in out
    assert "options:" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_an_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "training.cli", "bogus"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
