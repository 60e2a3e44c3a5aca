"""The launcher's global behaviour: --version, the Python check, logging levels and where the flags go,
`fedrec train` without --role, `fedrec info` / `fedrec evaluate` on bad input."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fedrec import __version__
from training.cli import main, python_problem
from training.logging_setup import ENV, configure, level_for

REPO = Path(__file__).resolve().parents[1]


def _fedrec(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in __import__("os").environ.items() if k != ENV}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "training.cli", *argv], capture_output=True, text=True,
                          check=False, cwd=cwd, env=env, timeout=120)


def test_version_prints_the_package_version() -> None:
    proc = _fedrec("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"fedrec {__version__} (Python 3.")
    assert proc.stderr == ""


def test_old_python_is_refused_with_the_reason() -> None:
    msg = python_problem((3, 10, 12), "/usr/bin/python3.10")
    assert msg is not None
    assert "Python 3.11 or newer" in msg and "3.10.12" in msg and "tomllib" in msg
    assert python_problem((3, 11, 0)) is None
    assert python_problem((3, 13, 1)) is None


def test_setup_cfg_requires_the_same_python() -> None:
    text = (REPO / "setup.cfg").read_text()
    assert "python_requires = >=3.11" in text
    assert "version = attr: fedrec.__version__" in text


@pytest.mark.parametrize(("verbose", "quiet", "level"), [
    (0, 0, logging.WARNING), (1, 0, logging.INFO), (2, 0, logging.DEBUG), (3, 0, logging.DEBUG),
    (0, 1, logging.ERROR)])
def test_levels(verbose: int, quiet: int, level: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert level_for(verbose, quiet) == level


def test_a_child_inherits_the_parent_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "INFO")
    assert level_for(0, 0) == logging.INFO
    assert level_for(0, 1) == logging.ERROR  # its own flag wins
    monkeypatch.setenv(ENV, "nonsense")
    assert level_for(0, 0) == logging.WARNING


def test_q_and_v_together_are_refused() -> None:
    proc = _fedrec("-q", "keys", "--name", "x", "-v")
    assert proc.returncode == 2
    assert "-q and -v" in proc.stderr


def test_configure_twice_keeps_one_handler() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        configure(logging.INFO)
        configure(logging.INFO)
        assert len(root.handlers) == 1
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbosity_flags_are_accepted_after_the_subcommand(where: str, tmp_path: Path) -> None:
    argv = ["keys", "--out", str(tmp_path), "--name", "g"]
    argv = ["-vv", *argv] if where == "before" else [*argv, "-vv"]
    proc = _fedrec(*argv)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "g.key").is_file()


def test_quiet_by_default_and_v_shows_info(tmp_path: Path) -> None:
    (tmp_path / "done").mkdir()
    cfg = _complete_run_config(tmp_path)
    quiet = _fedrec("train", "--config", str(cfg))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # nothing logged at the default level
    loud = _fedrec("train", "--config", str(cfg), "--restart", "-v", "--no-progress")
    assert " INFO " in loud.stderr  # the --restart line, now logged
    lines = [x for x in loud.stderr.splitlines() if " INFO " in x]
    assert len(lines) == len(set(lines)), "a log line printed twice"


def _complete_run_config(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    cfg = tmp_path / "host.toml"
    cfg.write_text('[job]\nprotocol = "hetero_fm"\n[party]\nrole = "host"\n[network]\ninsecure = true\n'
                   'connect_timeout = 3.0\n[peers.guest]\nendpoint = "tcp://127.0.0.1:9"\n'
                   '[data]\nuser_features = "users.csv"\n[output]\ndir = "out"\n')
    return cfg


def test_train_reads_the_role_from_the_config(tmp_path: Path) -> None:
    cfg = _complete_run_config(tmp_path)
    proc = _fedrec("train", "--config", str(cfg))  # no --role: the config's [party] role
    assert proc.returncode == 0, proc.stderr
    assert "complete" in proc.stdout
    wrong = _fedrec("train", "--role", "guest", "--config", str(cfg))
    assert wrong.returncode == 2
    assert "[party] role is 'host' but --role is 'guest'" in wrong.stderr


def test_info_names_what_it_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path)]) == 1
    assert "not a fedrec run (summary.json) or model (meta.json) directory" in capsys.readouterr().err
    secret = tmp_path / "g.key_secret"
    secret.write_text("x")
    assert main(["info", str(secret)]) == 1
    assert "SECRET key" in capsys.readouterr().err


def test_info_shows_a_key_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "--out", str(tmp_path), "--name", "g"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "g.key")]) == 0
    out = capsys.readouterr().out
    assert "fingerprint:" in out


def test_evaluate_refuses_partials_for_a_plain_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    import pandas as pd

    from fedrec.models import BiasedMF

    ratings = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [1, 2, 1, 3, 2],
                            "rating": [5.0, 3.0, 4.0, 2.0, 1.0], "timestamp": [1, 2, 3, 4, 5]})
    test = tmp_path / "test.csv"
    ratings.to_csv(test, index=False)
    BiasedMF(n_factors=2, epochs=2).fit(ratings).save(tmp_path / "mf")
    assert main(["evaluate", "--model", str(tmp_path / "mf"), "--test", str(test), "--host-partials",
                 str(test)]) == 1
    assert "--host-partials does not apply" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "mf"), "--test", str(test), "--n-boot", "50",
                 "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "RMSE " in out and "lower is better" in out
    assert (tmp_path / "e.json").is_file()
