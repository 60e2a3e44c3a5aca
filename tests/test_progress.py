"""Progress of a training run (issue #13 item 12): the host's per-batch bar, the backend warnings, and
Python warnings shown once as log lines. The guest's bar is the training loop's
(tests/test_models_training.py)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest

from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties
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
