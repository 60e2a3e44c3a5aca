"""What an output's score is and how its ids are typed (issue #13 item 16): predicted ratings clipped to
the rating scale, probabilities, ranking scores, a ``score_kind`` column, and ``item_id`` as text in files
and over HTTP alike."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data import generate
from fedrec.models import FactorizationMachine
from serving.artifacts import ArtifactError, load_bundle
from serving.export import bundle_from_model
from serving.http import make_server, serve_in_thread
from serving.scorer import Scorer
from training.cli import main


@pytest.fixture(scope="module")
def rating_fm() -> FactorizationMachine:
    ds = generate(n_users=60, n_items=30, seed=5).dataset  # integer user and item ids, ratings 1..5
    return FactorizationMachine(n_factors=3, epochs=2, validation="none").fit(ds)


def test_predicted_ratings_are_clipped_to_the_scale_but_ranked_by_the_raw_score(
        rating_fm: FactorizationMachine) -> None:
    bundle = bundle_from_model(rating_fm)
    assert bundle.score_kind == "predicted_rating" and bundle.rating_scale == rating_fm.rating_scale
    bundle.b_i = bundle.b_i + np.linspace(0.0, 6.0, len(bundle.b_i), dtype=np.float32)  # push above 5
    users = list(rating_fm.user_map.raw_ids[:10])  # type: ignore[union-attr]
    rec = Scorer(bundle).recommend(users, 5)
    assert rec.scores.max() > rating_fm.rating_scale[1]  # the raw scores go past the scale ...
    frame = rec.to_frame()
    lo, hi = rating_fm.rating_scale
    assert frame["score"].between(lo, hi).all()  # ... the reported ones do not
    assert set(frame["score_kind"]) == {"predicted_rating"}
    # the order is the raw one: ties at the clipped maximum are still ranked by the model's raw score
    assert (np.diff(rec.scores, axis=1) <= 0).all()
    assert (frame["score"] == hi).sum() > len(users)  # several items per user tie at the top ...
    assert (np.diff(rec.scores[:, :2], axis=1) < 0).all()  # ... but their raw scores differ


def test_a_logistic_model_reports_probabilities() -> None:
    ds = generate(n_users=50, n_items=20, seed=6).dataset
    ds.interactions["rating"] = (ds.interactions["rating"] >= 4).astype(float)
    fm = FactorizationMachine(objective="logistic", n_factors=2, epochs=1, validation="none").fit(ds)
    bundle = bundle_from_model(fm)
    assert (bundle.score_kind, bundle.rating_scale) == ("probability", None)
    frame = Scorer(bundle).recommend(list(fm.user_map.raw_ids[:5]), 3).to_frame()  # type: ignore[union-attr]
    assert frame["score"].between(0.0, 1.0).all() and set(frame["score_kind"]) == {"probability"}


def test_item_ids_are_text_in_files_and_over_http(rating_fm: FactorizationMachine, tmp_path: Path) -> None:
    bundle_from_model(rating_fm).save(tmp_path / "bundle")
    user = rating_fm.user_map.raw_ids[0]  # type: ignore[union-attr]
    (tmp_path / "users.txt").write_text(f"{user}\n")
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--model", str(tmp_path / "bundle"), "--users", str(tmp_path / "users.txt"),
                 "--k", "4", "--out", str(out), "--no-progress"]) == 0
    in_file = pd.read_parquet(out)
    assert in_file["item_id"].map(type).eq(str).all()
    server = make_server(Scorer(load_bundle(tmp_path / "bundle")))
    thread = serve_in_thread(server)
    try:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
        conn.request("GET", f"/recommend?user={user}&k=4")
        body = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        server.shutdown()
        thread.join(5)
    assert body["score_kind"] == "predicted_rating"
    assert [it["item_id"] for it in body["items"]] == in_file["item_id"].tolist()  # the same text
    assert [it["score"] for it in body["items"]] == pytest.approx(in_file["score"].tolist(), abs=1e-6)


def test_the_bundle_records_its_score_kind_and_refuses_a_bad_scale(rating_fm: FactorizationMachine,
                                                                   tmp_path: Path) -> None:
    path = bundle_from_model(rating_fm).save(tmp_path / "b")
    again = load_bundle(path)
    assert (again.score_kind, again.rating_scale) == ("predicted_rating", rating_fm.rating_scale)
    meta_path = path / "serving.json"
    meta = json.loads(meta_path.read_text())
    meta["rating_scale"] = ["one", 5]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"serving.json: field 'rating_scale' must be \[min, max\]"):
        load_bundle(path)


def test_a_bundle_written_before_score_kind_is_read_by_its_model_class(
        rating_fm: FactorizationMachine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = bundle_from_model(rating_fm).save(tmp_path / "old")
    meta_path = path / "serving.json"
    meta = json.loads(meta_path.read_text())
    del meta["score_kind"], meta["rating_scale"]
    meta_path.write_text(json.dumps(meta))
    old = load_bundle(path)
    assert (old.score_kind, old.rating_scale) == ("predicted_rating", None)
    assert "without 'rating_scale'" in caplog.text and "re-export" in caplog.text


def test_dormant_writes_user_ids_as_text(tmp_path: Path) -> None:
    t = 1_700_000_000
    rows = [(7, j, 4.0, t - (40 + j) * 86_400) for j in range(6)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    frame.to_parquet(tmp_path / "i.parquet")
    out = tmp_path / "d.parquet"
    assert main(["dormant", "--interactions", str(tmp_path / "i.parquet"), "--as-of", str(t), "--out",
                 str(out)]) == 0
    assert pd.read_parquet(out)["user_id"].tolist() == ["7"]
