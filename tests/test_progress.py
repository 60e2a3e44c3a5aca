"""Progress of a training run (issue #13 item 12): the host's per-batch bar, the backend warnings, and
Python warnings shown once as log lines. The guest's bar is the training loop's
(tests/test_models_training.py). Bars on a stream that is not a terminal (a log file) write a whole
line at most every 30 s (fedrec.progress), on every party: two real ``fedrec train`` processes."""

from __future__ import annotations

import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from test_train_process import _run  # two `fedrec train` processes, stderr into files

from fedrec import progress
from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.progress import progress_bar
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties
from training.demo import write_run
from training.logging_setup import configure
from training.progress import BatchBar, bars_wanted, warn_about_backend

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def test_the_host_reports_every_batch_and_ends_full() -> None:
    ds = generate(SyntheticConfig(n_users=60, n_items=30, n_ratings=600, seed=3)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(label_dp="off", n_factors=2, epochs=2, batch_size=200, backend="plain", timeout=30)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    calls: list[tuple[int, int, int]] = []
    host.progress = lambda done, total, epoch: calls.append((done, total, epoch))
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    run_parties({"host": lambda: host.serve(hv.user_features),
                 "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features,
                                            validation="none").close()}, timeout=60)
    n_batches = -(-len(gv.interactions) // cfg.batch_size)
    total = cfg.epochs * n_batches
    assert calls[0] == (0, total, 1)  # at set-up: the bar appears before the first batch (epoch 1)
    assert calls[n_batches - 1][2] == 1 and calls[n_batches][2] == 1  # epoch 1's last batch, its end
    assert calls[-1][2] == cfg.epochs
    dones = [c[0] for c in calls]
    assert dones == sorted(dones) and dones[-1] == total and calls[-1][1] == total
    assert len(set(dones)) == total + 1  # every batch moved it (no batch here lacks aligned users)


def test_the_bar_shrinks_to_an_early_stop_and_closes(capsys: pytest.CaptureFixture[str]) -> None:
    bar = BatchBar("host")
    bar(0, 12, 0)
    bar(3, 12, 0)
    bar(8, 12, 1)
    bar(8, 8, 1)  # the guest stopped after epoch 2 of 3
    assert (bar.bar.n, bar.bar.total) == (8, 8)
    bar.close()
    assert bar.bar is None
    assert "8/8" in capsys.readouterr().err.split("\r")[-1]
    off = BatchBar("host", enabled=False)
    off(1, 2, 0)
    assert off.bar is None


def test_paillier_warns_once_with_its_cost_and_ckks_does_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.progress"):
        warn_about_backend("ckks", "guest")
        assert caplog.records == []
        warn_about_backend("paillier", "guest")
    (rec,) = caplog.records
    assert "guest: backend 'paillier' is about 266x slower than 'ckks'" in rec.getMessage()


def test_the_plain_backend_warning_is_one_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    """It used to be a Python warning and a log record with the same text: two lines."""
    from fedrec.crypto import make_backend

    root = logging.getLogger()
    saved: Any = (list(root.handlers), root.level)
    try:
        with warnings.catch_warnings():  # restores warnings.showwarning, which configure() sets
            warnings.simplefilter("default")
            configure(logging.WARNING)
            make_backend("plain")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [x for x in capsys.readouterr().err.splitlines() if "NO encryption" in x]
    assert len(lines) == 1, lines
    assert " WARNING py.warnings: crypto backend 'plain' performs NO encryption" in lines[0]


def test_bars_follow_the_config_no_progress_and_q() -> None:
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.WARNING)  # the default
        assert bars_wanted(True) and not bars_wanted(False) and not bars_wanted(True, no_progress=True)
        root.setLevel(logging.ERROR)  # -q: errors only, and no bars
        assert not bars_wanted(True)
    finally:
        root.setLevel(level)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_bar_writes_whole_lines_first_and_last_only_within_the_interval() -> None:
    log = io.StringIO()  # not a terminal: a log file under a service manager
    bar = progress_bar(total=5000, desc="psi guest", unit="mult", file=log, leave=False)
    for _ in range(5000):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert len(lines) == 2, lines  # 5000 updates in well under 30 s: the first state and the final one
    assert lines[0].startswith("psi guest:   0%") and "5000/5000" in lines[1]  # kept despite leave=False


def test_off_a_terminal_a_bar_writes_a_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    log = io.StringIO()
    for _ in progress_bar(range(30), desc="recommend", file=log):
        time.sleep(0.01)
    lines = log.getvalue().splitlines()
    assert 4 <= len(lines) <= 12, lines  # ~0.3 s of updates at one line per 0.05 s, not one per item
    assert "30/30" in lines[-1]


def test_on_a_terminal_the_bar_redraws_in_place() -> None:
    tty = _Terminal()
    bar = progress_bar(total=3, desc="host", file=tty, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert tty.getvalue().count("\r") >= 4  # tqdm as it is: one redraw per update


def test_a_log_line_does_not_redraw_a_bar_that_is_not_on_a_terminal(capsys: pytest.CaptureFixture[str]
                                                                     ) -> None:
    root = logging.getLogger()
    saved: Any = (list(root.handlers), root.level)
    try:
        configure(logging.WARNING)
        bar = progress_bar(total=10, desc="fedmf rounds")  # stderr: captured, not a terminal
        bar.update(1)
        logging.getLogger("x").warning("host 'h1' is late")
        bar.close()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert sum("fedmf rounds" in x for x in lines) == 2, lines  # the first state and the last
    assert any(x.endswith("WARNING x: host 'h1' is late") for x in lines)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_both_training_parties_write_few_progress_lines_to_a_log_file(tmp_path: Path) -> None:
    """``fedrec train`` guest and host, bars on, stderr a file: ~100 batches and a PSI, yet each bar is
    a handful of whole lines (before: one ``\\r`` redraw per batch)."""
    ds = generate(SyntheticConfig(n_users=120, n_items=30, n_ratings=960, seed=2)).dataset
    gv, hv = vertical_split(ds, host_user_fraction=0.8, n_host_only_users=15, seed=0)
    files = write_run(gv, hv, tmp_path, {"backend": "plain", "n_factors": 2, "batch_size": 16, "epochs": 2,
                                         "timeout": 60.0})
    host_conf = files.host_config.read_text()
    files.host_config.write_text(host_conf.replace("progress = false", "progress = true"))
    codes = _run(files, tmp_path, timeout=120, progress=True)
    logs = {r: tmp_path / f"{r}.log" for r in ("host", "guest")}
    for role, log in logs.items():
        text = log.read_text()
        assert codes[role] == 0, text
        assert "\r" not in text, f"{role}: a bar redrew in place in a log file"
        bar = [x for x in text.splitlines() if "batch" in x and "%|" in x]
        assert 2 <= len(bar) <= 4, (role, bar)  # first and final (+ the final refresh), not ~100
        assert any(x.startswith(f"psi {role}:") for x in text.splitlines()), (role, text)
