"""The campaign commands guard an honest user (issue #13 item 5): a campaign date far outside the data
is warned about, naming the data's span, and an earlier output is never replaced silently."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from serving.artifacts import random_bundle
from training.cli import main

DAY = 86_400
T = 1_700_000_000  # 2023-11-14


@pytest.fixture
def interactions(tmp_path: Path) -> Path:
    rows = [(f"u{u}", f"i{j}", 4.0, T - (u * 20 + j) * DAY) for u in range(4) for j in range(6)]
    path = tmp_path / "inter.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(path, index=False)
    return path


def _dormant(interactions: Path, out: Path, as_of: str) -> int:
    return main(["dormant", "--interactions", str(interactions), "--as-of", as_of, "--out", str(out)])


def test_a_date_long_after_the_data_is_warned_about(interactions: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The README's --as-of 2020-10-01 ran on 1997-98 MovieLens data: 898 of 943 dormant, silently."""
    assert _dormant(interactions, tmp_path / "d.csv", "2025-01-01") == 0
    err = capsys.readouterr().err
    assert "warning: --as-of 2025-01-01 is 413 days after the last interaction" in err
    assert "inter.csv spans 2023-09-10 to 2023-11-14" in err and "every user with enough history" in err
    assert len(pd.read_csv(tmp_path / "d.csv")) == 4  # still written: the user decides


def test_a_date_before_the_data_is_warned_about(interactions: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _dormant(interactions, tmp_path / "d.csv", "2020-10-01") == 0
    err = capsys.readouterr().err
    assert "--as-of 2020-10-01 is before the first interaction" in err and "nobody has a history" in err


def test_a_date_inside_the_data_is_not_warned_about(interactions: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _dormant(interactions, tmp_path / "d.csv", "2023-12-01") == 0  # 17 days after the last row
    assert "warning" not in capsys.readouterr().err


def test_an_earlier_output_is_replaced_with_a_note(interactions: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.csv"
    assert _dormant(interactions, out, "2023-12-01") == 0
    assert "note:" not in capsys.readouterr().err
    assert _dormant(interactions, out, "2023-12-01") == 0
    err = capsys.readouterr().err
    assert f"note: {out} exists (written " in err and "replaced when this run completes" in err


def test_recommend_says_when_it_replaces_a_campaign_file(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = random_bundle(10, 8, 2, seed=1).save(tmp_path / "bundle")
    (tmp_path / "users.txt").write_text("u1\nu2\n")
    out = tmp_path / "recs.csv"
    out.write_text("an earlier campaign\n")
    assert main(["recommend", "--model", str(model), "--users", str(tmp_path / "users.txt"), "--out",
                 str(out), "--k", "2", "--no-progress"]) == 0
    assert f"note: {out} exists" in capsys.readouterr().err
    assert len(pd.read_csv(out)) == 4


def test_dormant_reads_an_event_log_with_its_own_column_names(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #13 item 8: a bank's events have other column names and no rating."""
    rows = [("c1", "card", T - (40 + j) * DAY) for j in range(6)]
    rows += [("c2", "loan", T - j * DAY) for j in range(6)]
    events = pd.DataFrame(rows, columns=["customer", "product", "event_time"])
    when = pd.to_datetime(events["event_time"], unit="s", utc=True)
    events["event_time"] = when.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    out = tmp_path / "d.csv"
    argv = ["dormant", "--interactions", str(path), "--as-of", str(T), "--out", str(out)]
    assert main([*argv, "--user-column", "customer", "--item-column", "product", "--time-column",
                 "event_time"]) == 0
    assert pd.read_csv(out)["user_id"].tolist() == ["c1"]
    assert main(argv) == 2  # without the mapping: the file's own column names in the error
    assert "missing column(s) ['user_id', 'item_id', 'timestamp']; the file has ['customer', 'product', " \
           "'event_time']" in capsys.readouterr().err
