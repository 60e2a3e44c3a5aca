"""The job layer of ``fedrec train`` without processes: the registry, the alignment reuse check over the
in-memory twin, the run-directory lifecycle (--restart, complete runs) and the pairs file of
``[data] predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.data import DataValidationError
from fedrec.transport import MemoryNetwork, run_parties
from training.alignment import align
from training.cli import main
from training.config import PartyConfig, parse_config
from training.hetero_fm_job import read_pairs
from training.jobs import PROTOCOLS, PartyRun
from training.party import clear_run

CONFIG = """
[job]
protocol = "hetero_fm"
[party]
role = "{role}"
[network]
insecure = true
{listen}
[peers.{peer}]
{endpoint}
[data]
{data}
{psi}
[output]
dir = "{role}_out"
"""


def _config(tmp_path: Path, role: str, psi: str = "") -> PartyConfig:
    guest = role == "guest"
    text = CONFIG.format(role=role, peer="host" if guest else "guest",
                         listen='listen = "tcp://127.0.0.1:1"' if guest else "",
                         endpoint="" if guest else 'endpoint = "tcp://127.0.0.1:1"',
                         data='interactions = "i.csv"' if guest else 'user_features = "u.csv"', psi=psi)
    return parse_config(text, f"{role}.toml", base_dir=tmp_path)


def _align(tmp_path: Path, ids: dict[str, list[Any]], psi: dict[str, str] | None = None) -> dict[str, Any]:
    net = MemoryNetwork()
    runs = {r: PartyRun(_config(tmp_path, r, (psi or {}).get(r, "")), net.channel(r, [p]), None)
            for r, p in (("guest", "host"), ("host", "guest"))}
    return run_parties({r: (lambda r=r: align(runs[r], ids[r], r)) for r in runs}, timeout=60)


def test_hetero_fm_declares_the_messages_it_speaks() -> None:
    types = {cls.TYPE for cls in PROTOCOLS["hetero_fm"].message_types()}
    assert {"psi.Hello", "psi.AlignmentQuery", "psi.AlignmentAnswer", "hetero_fm.Setup",
            "hetero_fm.EncryptedResiduals"} <= types


def test_second_alignment_reuses_the_first_when_both_hold_it(tmp_path: Path) -> None:
    ids = {"guest": [f"u{i}" for i in range(40)], "host": [f"u{i}" for i in range(20, 70)]}
    first = _align(tmp_path, ids)
    assert first["guest"].how == first["host"].how == "psi"
    assert first["guest"].ids == first["host"].ids and sorted(first["guest"].ids) == sorted(
        f"u{i}" for i in range(20, 40))
    assert [ids["host"][r] for r in first["host"].rows] == first["host"].ids
    second = _align(tmp_path, ids)
    assert second["guest"].how == second["host"].how == "reused"
    for role in ("guest", "host"):
        assert second[role].ids == first[role].ids
        assert np.array_equal(second[role].rows, first[role].rows)


def test_psi_buckets_give_the_one_session_alignment_and_must_agree(tmp_path: Path) -> None:
    """``[psi] buckets = N`` (issue #14): fedrec train aligns through bucketed PSI with the same result as
    one session; a different N on the two sides stops both, naming the mismatch."""
    from fedrec.psi.messages import MAX_BUCKETS
    from training.config import MAX_PSI_BUCKETS, ConfigError

    assert MAX_PSI_BUCKETS == MAX_BUCKETS
    ids = {"guest": [f"u{i}" for i in range(300)], "host": [f"u{i}" for i in range(100, 500)]}
    one = _align(tmp_path / "one", ids)
    four = {"guest": "[psi]\nbuckets = 4", "host": "[psi]\nbuckets = 4"}
    bucketed = _align(tmp_path / "four", ids, four)
    for role in ("guest", "host"):
        assert bucketed[role].how == "psi"
        assert sorted(bucketed[role].ids) == sorted(one[role].ids) and len(one[role].ids) == 200
        assert [ids[role][r] for r in bucketed[role].rows] == bucketed[role].ids
    from fedrec.psi.protocol import PsiPeerError

    with pytest.raises(PsiPeerError, match=r"asks for 4 buckets, the host for 8: .*\[psi\] buckets"):
        _align(tmp_path / "mismatch", ids, {"guest": "[psi]\nbuckets = 4", "host": "[psi]\nbuckets = 8"})
    with pytest.raises(ConfigError, match=r"\[psi\] buckets must be 0 \(one session\) or 1\.\."):
        _config(tmp_path, "guest", "[psi]\nbuckets = -1")


def test_changed_input_on_one_side_runs_psi_on_both(tmp_path: Path) -> None:
    ids = {"guest": [f"u{i}" for i in range(40)], "host": [f"u{i}" for i in range(20, 70)]}
    _align(tmp_path, ids)
    changed = {**ids, "host": [*ids["host"], "u5"]}
    again = _align(tmp_path, changed)
    assert again["guest"].how == again["host"].how == "psi"
    assert "u5" in again["guest"].ids


def test_a_modified_aligned_file_is_not_reused(tmp_path: Path) -> None:
    ids = {"guest": [f"u{i}" for i in range(10)], "host": [f"u{i}" for i in range(5, 15)]}
    _align(tmp_path, ids)
    path = tmp_path / "host_out" / ".work" / "aligned.csv"  # the alignment in use (training/alignment.py)
    path.write_text(path.read_text().replace("u5", "u6", 1))
    assert {r: a.how for r, a in _align(tmp_path, ids).items()} == {"guest": "psi", "host": "psi"}


def _fill_run_dir(cfg: PartyConfig) -> None:
    out = cfg.output_dir
    for name in ("summary.json", "aligned.csv", "alignment.json", "predictions.csv", "keep-me.txt",
                 ".predictions.tmp-1a2b3c4d.csv", ".work/aligned.csv"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    (out / "model").mkdir()
    (out / "model" / "meta.json").write_text("{}")
    (out / ".model.old-1a2b3c4d").mkdir()
    cfg.checkpoint.dir.mkdir()
    (cfg.checkpoint.dir / "run.json").write_text("{}")


def test_restart_deletes_only_what_the_job_writes(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "guest")
    _fill_run_dir(cfg)
    # the commit record and a stage (fedrec.protocols.commit)
    (cfg.output_dir / ".commit.json").write_text("{}")
    (cfg.output_dir / ".stage.tmp-00ff").mkdir()
    gone = clear_run(cfg)
    out = cfg.output_dir
    assert sorted(p.name for p in out.iterdir()) == ["keep-me.txt"]
    assert not cfg.checkpoint.dir.exists()
    assert gone[0] == out / "summary.json"  # the completion marker goes first


def test_train_on_a_complete_run_does_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "guest")
    _fill_run_dir(cfg)
    path = tmp_path / "guest.toml"
    path.write_text(CONFIG.format(role="guest", peer="host", listen='listen = "tcp://127.0.0.1:1"',
                                  endpoint="", data='interactions = "i.csv"', psi=""))
    assert main(["train", "--role", "guest", "--config", str(path)]) == 0
    assert "is complete (summary.json is there); nothing to do (--restart trains again)" in (
        capsys.readouterr().out)
    assert (cfg.output_dir / "model" / "meta.json").is_file()


def test_pairs_file_keeps_its_columns_and_types_the_ids(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("user,movie,note\n7,3,a\n8,4,b\n7,3,c\n")
    raw, pairs = read_pairs(path, "user", "movie")
    assert list(raw.columns) == ["user", "movie", "note"]
    assert pairs["user_id"].tolist() == [7, 8, 7] and "timestamp" not in pairs and "rating" not in pairs


@pytest.mark.parametrize(("text", "wanted"), [
    ("user_id,item_id\n1,2\n,3\n", r"pairs.csv, line 3, column 'user_id': value ''; expected a non-empty id"),
    ("user_id,item_id,timestamp\n1,2,yesterday\n",
     r"pairs.csv, line 2, column 'timestamp': value 'yesterday'; expected Unix seconds"),
    ("user_id,item_id\n1,2\n1,2,3\n", r"pairs.csv, line 3: value '1,2,3'; expected 2 fields"),
    ("user_id,movie\n1,2\n", r"pairs.csv, column 'item_id': missing \(\[data\] item_id_column\); the pairs "
                             r"file has \['user_id', 'movie'\]"),
])
def test_malformed_pairs_file_names_file_line_and_column(tmp_path: Path, text: str, wanted: str) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(DataValidationError, match=wanted):
        read_pairs(path)


def test_restart_of_a_host_deletes_the_partials_and_their_fingerprint(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "host")
    cfg.output_dir.mkdir()
    for name in ("summary.json", "partials.parquet", "partials.parquet.meta.json"):
        (cfg.output_dir / name).write_text("{}")
    clear_run(cfg)
    assert not any(cfg.output_dir.iterdir())
