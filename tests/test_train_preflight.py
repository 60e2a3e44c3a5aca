"""``fedrec train`` checks its output locations and reads its files BEFORE the network opens (issue #9,
defect 6): a read-only ``[output] dir`` fails at once, naming the path, with no peer anywhere (the
configured connect timeout is never waited)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from fedrec.data import SyntheticConfig, generate, vertical_split
from training.cli import main
from training.demo import write_run

PLAIN = {"backend": "plain", "n_factors": 4, "batch_size": 256, "epochs": 1, "timeout": 60.0}


@pytest.mark.parametrize("role", ["host", "guest"])
def test_read_only_output_dir_fails_before_any_network(tmp_path: Path, role: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ds = generate(SyntheticConfig(n_users=40, n_items=20, n_ratings=300, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    files = write_run(gv, hv, tmp_path, PLAIN, timeouts={"connect_timeout": 120.0})
    config = files.guest_config if role == "guest" else files.host_config
    text = re.sub(r'(?m)^dir = .*$', 'dir = "/proc/fedrec-no-such-dir"', config.read_text())
    config.write_text(text)
    t0 = time.monotonic()
    rc = main(["train", "--role", role, "--config", str(config), "--no-progress"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "/proc/fedrec-no-such-dir" in err and "cannot write" in err, err
    assert elapsed < 30, elapsed  # not the 120 s connect timeout: no peer was waited for
