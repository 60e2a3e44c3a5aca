"""What a fresh clone must get right before any code runs: runnable benchmark scripts, ignored secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_is_an_executable_python_script(script: Path) -> None:
    assert script.read_text(encoding="utf-8").startswith("#!/usr/bin/env python3\n"), \
        f"{script.name}: first line must be '#!/usr/bin/env python3' (the README runs benchmarks/X.py)"
    assert os.access(script, os.X_OK), f"{script.name}: not executable (chmod +x)"


@pytest.mark.parametrize("path", ["keys/guest.key_secret", "deploy/keys/host.key_secret", "keys/guest.key",
                                  "dormant.csv", "recs.parquet"])
def test_secrets_and_example_outputs_are_ignored(path: str) -> None:
    proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, check=False)
    if proc.returncode == 128:
        pytest.skip("not a git checkout")
    assert proc.returncode == 0, f"{path} is not git-ignored"
