"""``fedrec ads ...``: every sub-command documented, malformed logs named by file/line/column, the budget
ledger refusing a release, and the conversion model trained by two processes over CURVE."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.ads.refit import read_refit
from training.ads_cmd import SUBCOMMANDS
from training.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
CLICKS = ("click_id,user_id,time,campaign,converted,conversion_time,channel\n"
          "1,u1,2024-03-01T10:00:00Z,c1,0,,ch1\n2,u2,2024-03-01T11:00:00Z,c1,1,2024-03-01T12:00:00Z,ch2\n"
          "3,u3,2024-03-02T10:00:00Z,c2,0,,ch1\n4,u4,2024-03-02T10:30:00Z,c2,1,2024-03-02T11:00:00Z,ch1\n")


def _ads_parsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser("ads")
    ads = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["ads"]
    return dict(next(a for a in ads._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_every_ads_subcommand_documents_its_options_with_examples() -> None:
    parsers = _ads_parsers()
    assert set(parsers) == set(SUBCOMMANDS)
    for name, sp in parsers.items():
        bare = [a.dest for a in sp._actions
                if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
        assert bare == [], f"fedrec ads {name}: options without help {bare}"
        assert f"ads {name}" in sp.format_help()  # an example of it in the epilog


def test_a_malformed_click_log_is_named_by_file_line_and_column(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "clicks.csv"
    bad.write_text(CLICKS.replace("2024-03-02T10:00:00Z", "yesterday"))
    assert main(["ads", "prepare", "--clicks", str(bad), "--out", str(tmp_path / "ads")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}, line 4, column 'time'" in err and "Traceback" not in err
    assert not (tmp_path / "ads" / "prepare.json").exists()


def test_prepare_writes_each_partys_files_and_configs(tmp_path: Path) -> None:
    (tmp_path / "clicks.csv").write_text(CLICKS)
    assert main(["ads", "prepare", "--clicks", str(tmp_path / "clicks.csv"), "--out", str(tmp_path / "ads"),
                 "--cutoff", "2024-03-02T11:15:00Z", "--window", "1h", "--recent", "holdout"]) == 0
    out = tmp_path / "ads"
    assert pd.read_parquet(out / "advertiser" / "clicks.parquet")["user_id"].tolist() == [1, 2, 3]
    assert pd.read_csv(out / "advertiser" / "holdout.csv")["user_id"].tolist() == [4]
    assert pd.read_parquet(out / "platform" / "clicks.parquet").columns.tolist() == ["user_id", "channel"]
    doc = json.loads((out / "prepare.json").read_text())
    assert doc["delay"]["recent_excluded"] == 1
    cfg = (out / "advertiser.toml").read_text()
    assert 'objective = "logistic"' in cfg and 'role = "guest"' in cfg and "dp_guest_epsilon = 2.0" in cfg


def test_returns_are_charged_to_the_ledger_and_a_release_beyond_it_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clicks.csv").write_text(CLICKS)
    ledger = str(tmp_path / "ledger.json")
    assert main(["ads", "budget", "--budget", ledger, "--create", "--epsilon", "1.5"]) == 0
    base = ["ads", "return", "--clicks", str(tmp_path / "clicks.csv"), "--budget", ledger]
    assert main([*base, "--mechanism", "laplace", "--dims", "channel", "--epsilon", "1",
                 "--out", str(tmp_path / "report.csv")]) == 0
    report = pd.read_csv(tmp_path / "report.csv")
    assert set(report["cell"].astype(str)) == {"ch1", "ch2"} and (report["report"] == "laplace:channel").all()
    assert main([*base, "--mechanism", "rr", "--epsilon", "1", "--out", str(tmp_path / "rr.csv")]) == 1
    assert "budget" in capsys.readouterr().err
    assert not (tmp_path / "rr.csv").exists()
    assert main(["ads", "budget", "--budget", ledger]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["spent"]["total"] == pytest.approx(1.0) and len(shown["releases"]) == 1


def _ads(*argv: str) -> list[str]:
    return [sys.executable, "-m", "training.cli", "ads", *argv]


def test_two_processes_train_over_curve_then_the_platform_ranks_non_customers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ads"
    assert main(["ads", "prepare", "--synthetic", "--users", "250", "--impressions-per-user", "20",
                 "--out", str(out), "--backend", "plain", "--make-keys", "--listen",
                 "tcp://127.0.0.1:0"]) == 0
    # a fixed port: the advertiser listens, the platform connects (both read the same endpoint)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("advertiser", "platform"):
        p = out / f"{name}.toml"
        p.write_text(p.read_text().replace("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}"))
    host = subprocess.Popen(_ads("train", "--role", "platform", "--config", str(out / "platform.toml"),
                                 "--no-progress"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    guest = subprocess.run(_ads("train", "--role", "advertiser", "--config", str(out / "advertiser.toml"),
                                "--no-progress"), cwd=REPO, capture_output=True, text=True, timeout=240,
                           check=False)
    h_out, h_err = host.communicate(timeout=120)
    assert guest.returncode == 0, guest.stderr[-2000:]
    assert host.returncode == 0, h_err.decode()[-2000:]
    summary = json.loads((out / "out" / "advertiser" / "summary.json").read_text())
    assert summary["label_dp"]["on"] and summary["label_dp"]["epsilon"] == pytest.approx(2.0, abs=0.01)
    # the refit (`ads prepare`'s default [ads] refit = "campaign"): fitted on the training clicks only
    n_train = len(pd.read_parquet(out / "advertiser" / "clicks.parquet"))
    refit = read_refit(out / "out" / "advertiser" / "refit.json")
    assert summary["refit"]["clicks"] == refit.training["clicks"] == n_train
    assert refit.run_id == summary["run_id"] and refit.l2_choice is not None
    _predict_with_the_refit(tmp_path, out, refit, capsys)
    card = tmp_path / "card.json"
    clicks = pd.read_parquet(out / "advertiser" / "clicks.parquet")["item_id"].value_counts()
    card_args = ["ads", "card", "--model", str(out / "out" / "advertiser" / "model"),
                 "--clicks", str(out / "advertiser" / "clicks.parquet")]
    # a campaign below the minimum of training clicks is refused by name; nothing is written
    assert main([*card_args, "--campaigns", str(clicks.index[-1]), "--min-clicks", str(clicks.iloc[-1] + 1),
                 "--out", str(card)]) == 1
    assert f"fewer than {clicks.iloc[-1] + 1} training clicks" in capsys.readouterr().err
    assert not card.exists()
    floor = int(clicks.iloc[0])  # only the largest campaign(s) reach it
    assert main([*card_args, "--min-clicks", str(floor), "--out", str(card)]) == 0
    carded = json.loads(card.read_text())["campaigns"]
    assert set(carded) == {str(c) for c, n in clicks.items() if n >= floor}
    campaign = next(iter(carded))
    feats = pd.read_parquet(out / "platform" / "clicks.parquet").head(30)
    feats.to_parquet(tmp_path / "cand.parquet", index=False)
    pd.DataFrame({"user_id": feats["user_id"].head(4)}).to_csv(tmp_path / "customers.csv", index=False)
    assert main(["ads", "acquire", "--card", str(card), "--model", str(out / "out" / "platform" / "model"),
                 "--campaign", campaign, "--candidates", str(tmp_path / "cand.parquet"),
                 "--exclude", str(tmp_path / "customers.csv"), "--n", "10",
                 "--out", str(tmp_path / "audience.csv")]) == 0
    aud = pd.read_csv(tmp_path / "audience.csv")
    assert len(aud) == 10 and not set(aud["user_id"]) & set(feats["user_id"].head(4))
    assert aud["score"].is_monotonic_decreasing
    # the card carries the refit (the default): the platform's scores are the refit's probabilities
    assert json.loads(card.read_text())["host_scale"] == pytest.approx(refit.gamma)
    from fedrec.ads.refit import platform_terms
    from fedrec.models import FactorizationMachine
    from fedrec.models.vertical import HostPartials
    from fedrec.protocols.hetero_fm import HeteroFMHost

    guest = FactorizationMachine.load(out / "out" / "advertiser" / "model")
    ids = aud["user_id"].tolist()
    parts = HeteroFMHost.load(out / "out" / "platform" / "model").export_partials(
        ids, feats.set_index("user_id").loc[ids])
    pairs = pd.DataFrame({"user_id": ids, "item_id": [clicks.index[0]] * len(ids), "timestamp": 0})
    h = platform_terms(guest, pairs, HostPartials.from_frame(parts, guest.config.n_factors))
    np.testing.assert_allclose(aud["score"], refit.predict_proba(pairs["item_id"].to_numpy(), h), rtol=1e-6)


def _predict_with_the_refit(tmp_path: Path, out: Path, refit: Any,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """`ads partials` + `ads predict`: the refit's probability by default, the FM's beside it; `--refit none`
    scores with the FM; a refit of another training run is refused by name."""
    model = out / "out" / "advertiser" / "model"
    feats = pd.read_parquet(out / "platform" / "clicks.parquet").head(40)
    feats.to_parquet(tmp_path / "new.parquet", index=False)
    assert main(["ads", "partials", "--model", str(out / "out" / "platform" / "model"),
                 "--features", str(tmp_path / "new.parquet"), "--out", str(tmp_path / "p.parquet")]) == 0
    inter = pd.read_parquet(out / "advertiser" / "clicks.parquet").set_index("user_id")
    pairs = pd.DataFrame({"user_id": feats["user_id"], "item_id": inter["item_id"].reindex(feats["user_id"])
                          .fillna(inter["item_id"].iloc[0]).to_numpy()})
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    base = ["ads", "predict", "--model", str(model), "--partials", str(tmp_path / "p.parquet"),
            "--pairs", str(tmp_path / "pairs.csv")]
    assert main([*base, "--out", str(tmp_path / "s.csv")]) == 0
    assert '"scorer": "refit"' in capsys.readouterr().out
    scored = pd.read_csv(tmp_path / "s.csv")
    assert not np.allclose(scored["probability"], scored["probability_fm"])
    assert main([*base, "--refit", "none", "--out", str(tmp_path / "fm.csv")]) == 0
    fm = pd.read_csv(tmp_path / "fm.csv")
    np.testing.assert_allclose(fm["probability"], scored["probability_fm"])
    other = tmp_path / "other_refit.json"
    doc = json.loads((out / "out" / "advertiser" / "refit.json").read_text())
    other.write_text(json.dumps({**doc, "run_id": "another-run"}))
    assert main([*base, "--refit", str(other), "--out", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "a refit of training run another-run" in err and "not the same training" in err
    assert not (tmp_path / "x.csv").exists()
    assert main([*base, "--refit", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.csv")]) == 1
    assert "missing.json: no such file" in capsys.readouterr().err
