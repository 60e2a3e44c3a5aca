"""A user's own files (issue #13 item 8): ``[data]`` column names for the rating and the time, a rating
scale of one's own, and implicit feedback (a bank's product events, no rating) through ``fedrec train``
and into a campaign file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.data import DataValidationError, SyntheticConfig, generate, vertical_split
from training.config import ConfigError, load_config
from training.demo import write_run
from training.hetero_fm_job import prepare_guest

REPO = Path(__file__).resolve().parents[1]
PLAIN = {"backend": "plain", "n_factors": 4, "batch_size": 256, "lr": 0.02, "epochs": 2, "timeout": 60.0}


def _views(n_users: int = 120) -> tuple[Any, Any]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=30, n_ratings=n_users * 8, seed=2)).dataset
    return vertical_split(ds, host_user_fraction=0.8, n_host_only_users=15, seed=0)


def _set_data(config: Path, **keys: Any) -> None:
    """Set ``keys`` in [data] (replacing the lines of those keys)."""
    text = config.read_text()
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())
    text = "\n".join(line for line in text.splitlines() if line.split(" =")[0] not in keys)
    config.write_text(text.replace("[data]\n", "[data]\n" + lines) + "\n")


def _events(gv: Any, folder: Path) -> tuple[Path, int]:
    """The guest's interactions as a bank's event log: other column names, ISO times, no rating, each
    (customer, product) pair seen one to three times."""
    inter = gv.interactions
    reps = np.random.default_rng(0).integers(1, 4, len(inter))
    rows = inter.loc[inter.index.repeat(reps)].reset_index(drop=True)
    rows["timestamp"] = rows["timestamp"] + rows.groupby(["user_id", "item_id"]).cumcount() * 3600
    events = pd.DataFrame({"customer": rows["user_id"], "product": rows["item_id"],
                           "event_time": pd.to_datetime(rows["timestamp"], unit="s", utc=True)
                           .dt.strftime("%Y-%m-%dT%H:%M:%SZ")})
    path = folder / "events.csv"
    events.to_csv(path, index=False)
    return path, len(inter.drop_duplicates(["user_id", "item_id"]))


def _bank_run(gv: Any, hv: Any, tmp_path: Path) -> tuple[Any, int]:
    """A ranking run (label DP off) whose guest reads a bank's event log (:func:`_events`) with its own
    column names, its item table by the product column, each pair weighed by its events
    (``event_weighting = "count"``); the run's files and the number of (customer, product) pairs."""
    files = write_run(gv, hv, tmp_path, {**PLAIN, "objective": "ranking", "label_dp": "off"})
    _, n_pairs = _events(gv, files.run_dir / "guest")
    items = files.run_dir / "guest" / "items.parquet"
    if items.is_file():  # the item table follows the configured item column
        pd.read_parquet(items).rename(columns={"item_id": "product"}).to_parquet(items)
    _set_data(files.guest_config, interactions="guest/events.csv", id_column="customer",
              item_id_column="product", timestamp_column="event_time", feedback="implicit",
              event_weighting="count")
    return files, n_pairs


def test_renamed_columns_and_a_rating_scale_are_read(tmp_path: Path) -> None:
    gv, hv = _views()
    files = write_run(gv, hv, tmp_path, PLAIN)
    inter = gv.interactions.rename(columns={"user_id": "customer", "rating": "stars", "timestamp": "at"})
    inter["stars"] = inter["stars"] * 2  # a 2..10 scale
    inter.to_csv(files.run_dir / "guest" / "ratings.csv", index=False)
    _set_data(files.guest_config, interactions="guest/ratings.csv", id_column="customer",
              rating_column="stars", timestamp_column="at", rating_scale=[2.0, 10.0])
    got, _, _, _ = prepare_guest(load_config(files.guest_config))
    assert len(got) == len(gv.interactions) and got["rating"].max() > 5
    _set_data(files.guest_config, rating_scale=[1.0, 5.0])  # the scale is checked, naming the column
    with pytest.raises(DataValidationError, match=r"ratings.csv.*column 'rating'.*in \[1, 5\]"):
        prepare_guest(load_config(files.guest_config))


def test_a_column_the_file_lacks_is_named_as_configured(tmp_path: Path) -> None:
    gv, hv = _views()
    files = write_run(gv, hv, tmp_path, PLAIN)
    events, _ = _events(gv, files.run_dir / "guest")
    _set_data(files.guest_config, interactions="guest/events.csv", id_column="customer",
              item_id_column="product", timestamp_column="event_time")
    with pytest.raises(DataValidationError, match=r"events.csv: missing column\(s\) \['rating'\] \(events "
                                                  r"without a rating are implicit feedback\); the file has "
                                                  r"\['customer', 'product', 'event_time'\]"):
        prepare_guest(load_config(files.guest_config))


@pytest.mark.parametrize(("keys", "message"), [
    ({"feedback": "clicks"}, "feedback must be one of 'explicit', 'implicit'"),
    ({"rating_scale": [5, 1]}, r"rating_scale must be \[min, max\] with min < max"),
    ({"feedback": "implicit", "rating_column": "stars"}, "rating_column is for rated interactions"),
    ({"rating_column": "user_id"}, "name the same column"),
    ({"feedback": "implicit", "event_weighting": "often"}, "event_weighting must be one of 'none', 'count'"),
    ({"event_weighting": "count"}, "event_weighting / event_half_life_days weigh the events of feedback"),
    ({"feedback": "implicit", "event_weighting": "recency", "event_half_life_days": 0},
     "event_half_life_days must be > 0"),
    ({"feedback": "implicit", "event_weighting": "count", "event_half_life_days": 7},
     'event_half_life_days is for event_weighting = "recency"'),
])
def test_bad_data_keys_are_refused_naming_the_key(tmp_path: Path, keys: dict[str, Any], message: str) -> None:
    gv, hv = _views(60)
    files = write_run(gv, hv, tmp_path, PLAIN)
    _set_data(files.guest_config, interactions="guest/interactions.parquet", **keys)
    with pytest.raises(ConfigError, match=message):
        load_config(files.guest_config)


def test_implicit_feedback_needs_the_ranking_objective(tmp_path: Path) -> None:
    gv, hv = _views(60)
    files = write_run(gv, hv, tmp_path, PLAIN)
    _events(gv, files.run_dir / "guest")
    _set_data(files.guest_config, interactions="guest/events.csv", id_column="customer",
              item_id_column="product", timestamp_column="event_time", feedback="implicit")
    with pytest.raises(ConfigError, match='feedback = "implicit" .* needs \\[model\\] objective = "ranking"'):
        prepare_guest(load_config(files.guest_config))


def test_event_weighting_weighs_the_pairs_and_makes_them_the_guests_weight_column(tmp_path: Path) -> None:
    from fedrec.data.implicit import WEIGHTINGS
    from training.config import WEIGHTINGS as CONFIG_WEIGHTINGS
    from training.hetero_fm_job import model_config

    assert CONFIG_WEIGHTINGS == WEIGHTINGS
    gv, hv = _views(60)
    files, n_pairs = _bank_run(gv, hv, tmp_path)
    cfg = load_config(files.guest_config)
    inter = prepare_guest(cfg)[0]
    assert len(inter) == n_pairs and model_config(cfg).weight_column == "weight"
    # a pair seen 1..3 times weighs 1 + log(n_events)
    assert set(np.round(inter["weight"], 6)) <= {round(1 + np.log(n), 6) for n in (1, 2, 3)}
    assert inter["weight"].nunique() == 3
    text = files.guest_config.read_text().replace("[model]\n", "[model]\nweight_column = \"w\"\n")
    files.guest_config.write_text(text)
    with pytest.raises(ConfigError, match="weight_column = 'w' and \\[data\\] event_weighting = 'count'"):
        model_config(load_config(files.guest_config))


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
def test_a_bank_event_log_trains_and_gives_a_campaign(tmp_path: Path) -> None:
    """Events without a rating, with the bank's own column names, through two `fedrec train` processes
    over CURVE, then `fedrec recommend` (ranking scores)."""
    gv, hv = _views()
    files, n_pairs = _bank_run(gv, hv, tmp_path)  # each pair weighs 1 + log(its events), hosts' too
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    configs = {"host": files.host_config, "guest": files.guest_config}
    procs = {role: subprocess.Popen([sys.executable, "-m", "training.cli", "train", "--config", str(conf),
                                     "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for role, conf in configs.items()}
    try:
        out = {role: p.communicate(timeout=150) for role, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    for role, p in procs.items():
        assert p.returncode == 0, out[role][1][-3000:]
    summary = json.loads((files.guest_out / "summary.json").read_text())
    assert summary["n_interactions"] == n_pairs  # one positive per (customer, product)
    users = tmp_path / "users.txt"
    users.write_text("\n".join(map(str, gv.interactions["user_id"].unique()[:5])) + "\n")
    campaign = tmp_path / "campaign.csv"
    rec = subprocess.run([sys.executable, "-m", "training.cli", "recommend", "--model",
                          str(files.guest_out / "model"), "--host-partials",
                          str(files.host_out / "partials.parquet"), "--users", str(users), "--k", "3",
                          "--out", str(campaign), "--no-progress"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert rec.returncode == 0, rec.stderr
    recs = pd.read_csv(campaign)
    assert len(recs) == 15 and set(recs["score_kind"]) == {"ranking_score"}
