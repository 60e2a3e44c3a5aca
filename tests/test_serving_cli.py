"""``fedrec dormant`` and ``fedrec recommend`` end to end on small files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.artifacts import HostPartials, random_bundle, write_host_partials
from serving.export import fm_host_partials
from training.cli import main

DAY = 86_400
T = 1_700_000_000  # the campaign date


@pytest.fixture
def interactions(tmp_path: Path) -> Path:
    """u1: 6 rows, last 40 days before T (dormant); u2: 6 rows, last 5 days before T (active);
    u3: 3 rows, 60 days before T (too little history); u4: 5 rows ending 31 days before T (dormant)."""
    rows = []
    for j in range(6):
        rows.append(("u1", f"i{j}", 4.0, T - (40 + j) * DAY))
        rows.append(("u2", f"i{j}", 3.0, T - (5 + j) * DAY))
    rows += [("u3", f"i{j}", 5.0, T - 60 * DAY - j) for j in range(3)]
    rows += [("u4", f"i{j}", 2.0, T - 31 * DAY - j) for j in range(5)]
    rows.append(("u1", "i9", 4.0, T + DAY))  # after T: does not count
    path = tmp_path / "inter.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(path, index=False)
    return path


def test_dormant_lists_the_right_users(interactions: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dormant.csv"
    date = pd.Timestamp(T, unit="s", tz="UTC").isoformat()
    assert main(["dormant", "--interactions", str(interactions), "--as-of", date, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["user_id"].tolist() == ["u1", "u4"]
    assert table["n_history"].tolist() == [6, 5]
    assert table["days_inactive"].tolist() == [40.0, 31.0]
    expected = pd.Timestamp(T - 40 * DAY, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert table["last_activity"].iloc[0] == expected
    assert "2 dormant users (of 4" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["01/10/2020", "10/01/2020", "2020/10/01", "20201001", "1 Oct 2020"])
def test_as_of_accepts_only_iso_dates_or_unix_seconds(text: str, interactions: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``01/10/2020`` is 1 October in one country and 10 January in another: refused, naming the form
    to use, and nothing is written (issue #13, item 15)."""
    out = tmp_path / "dormant.csv"
    with pytest.raises(SystemExit) as exc:
        main(["dormant", "--interactions", str(interactions), "--as-of", text, "--out", str(out)])
    assert exc.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert repr(text) in err and "2020-10-01" in err


def test_as_of_iso_forms_agree() -> None:
    from serving.campaign import parse_time

    assert parse_time("2020-10-01") == parse_time("2020-10-01T00:00:00Z") == parse_time("1601510400")
    assert parse_time("2020-10-01T02:00:00+02:00") == 1601510400


def test_dormant_parquet_and_options(interactions: Path, tmp_path: Path) -> None:
    out = tmp_path / "dormant.parquet"
    assert main(["dormant", "--interactions", str(interactions), "--as-of", str(T), "--inactive-days", "35",
                 "--min-history", "6", "--out", str(out)]) == 0
    assert pd.read_parquet(out)["user_id"].tolist() == ["u1"]


def test_dormant_bad_file_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,yesterday\n")
    assert main(["dormant", "--interactions", str(bad), "--as-of", str(T), "--out",
                 str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "timestamp" in err


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return random_bundle(30, 25, 4, seed=4).save(tmp_path / "bundle")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_recommend_writes_ranked_items(model_dir: Path, tmp_path: Path, suffix: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ["u1", "u2", "ghost"], "n_history": [6, 7, 8]}).to_csv(users, index=False)
    out = tmp_path / f"recs{suffix}"
    assert main(["recommend", "--model", str(model_dir), "--users", str(users), "--k", "4", "--out",
                 str(out), "--chunk-size", "2", "--no-progress"]) == 0
    recs = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score", "score_kind", "fallback"]
    assert set(recs["score_kind"]) == {"ranking_score"}  # random factors: a ranking score
    assert len(recs) == 12
    assert recs.groupby("user_id")["rank"].apply(list).to_dict() == {u: [1, 2, 3, 4] for u in
                                                                     ("u1", "u2", "ghost")}
    assert set(recs.loc[recs["user_id"] == "ghost", "fallback"]) == {"unknown_user"}
    assert set(recs.loc[recs["user_id"] == "u1", "fallback"]) == {"none"}
    assert (recs.groupby("user_id")["score"].apply(lambda s: bool(np.all(np.diff(s) <= 0)))).all()
    captured = capsys.readouterr()
    assert "unknown_user=1" in captured.out
    assert "1 user(s) unknown to the model" in captured.err and "ghost" in captured.err


def _vertical_files(tmp_path: Path, partials_run: str) -> list[str]:
    """A vertical bundle of run ``run-1``, host partials of run ``partials_run`` for its first two users
    and a users file of four: the ``recommend`` arguments."""
    from fedrec.data import generate
    from fedrec.models import FactorizationMachine
    from serving.export import bundle_from_model

    ds = generate(n_users=40, n_items=20, seed=3).dataset
    fm = FactorizationMachine(objective="ranking", n_factors=3, epochs=1, validation="none").fit(ds)
    users = [str(u) for u in fm.user_map.raw_ids[:4]]  # type: ignore[union-attr]
    bundle_from_model(fm, vertical=True, run_id="run-1").save(tmp_path / "guest")
    hp = fm_host_partials(fm, fm.user_map.raw_ids[:2])  # type: ignore[union-attr]
    HostPartials.from_frame(hp, 3)  # well-formed
    write_host_partials(tmp_path / "hp.parquet", hp, partials_run)
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n")
    return ["recommend", "--model", str(tmp_path / "guest"), "--host-partials", str(tmp_path / "hp.parquet"),
            "--users", str(tmp_path / "users.txt"), "--k", "3", "--out", str(tmp_path / "recs.csv"),
            "--no-progress"]


def test_recommend_joins_host_partials(tmp_path: Path) -> None:
    assert main(_vertical_files(tmp_path, "run-1")) == 0
    recs = pd.read_csv(tmp_path / "recs.csv", dtype={"user_id": str})
    flags = recs.groupby("user_id", sort=False)["fallback"].first()
    assert flags.tolist() == ["none", "none", "no_host_partial", "no_host_partial"]


def test_recommend_refuses_host_partials_of_another_run(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_vertical_files(tmp_path, "run-2")) == 2
    err = capsys.readouterr().err
    assert "hp.parquet" in err and "serving.json" in err and "'run-2'" in err and "'run-1'" in err


@pytest.mark.parametrize(("setup", "message"), [
    ("users_missing_column", "no column 'user_id'"),
    ("users_absent", "file not found"),
    ("bad_model", "serving.json: field 'format_version'"),
    ("bad_out", "use one of .csv, .tsv, .parquet"),
])
def test_recommend_bad_inputs_fail_clearly(model_dir: Path, tmp_path: Path, setup: str, message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.csv"
    users.write_text("id\nu1\n" if setup == "users_missing_column" else "user_id\nu1\n")
    if setup == "users_absent":
        users = tmp_path / "nope.csv"
    if setup == "bad_model":
        meta = model_dir / "serving.json"
        meta.write_text(meta.read_text().replace('"format_version": 3', '"format_version": 99'))
    out = tmp_path / ("recs.xlsx" if setup == "bad_out" else "recs.csv")
    assert main(["recommend", "--model", str(model_dir), "--users", str(users), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["dormant", "recommend", "serve"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"fedrec {command}" in out and "examples:" in out
