"""Serving bundle files (schema/version checks), host-partials files and the export from fitted models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest

from fedrec.data import generate
from fedrec.models import FactorizationMachine, Popularity
from serving.artifacts import (
    ArtifactError,
    HostPartials,
    load_bundle,
    random_bundle,
    read_host_partials,
    write_host_partials,
)
from serving.export import bundle_from_model, fm_host_partials, load_serving_bundle
from serving.scorer import FALLBACK_NO_HOST, Scorer


@pytest.fixture(scope="module")
def fm() -> FactorizationMachine:
    ds = generate(n_users=80, n_items=30, seed=2).dataset
    return FactorizationMachine(objective="ranking", n_factors=4, epochs=1, validation="none").fit(ds)


def test_bundle_round_trip(tmp_path: Path) -> None:
    b = random_bundle(30, 12, 4, seed=1)
    loaded = load_bundle(b.save(tmp_path / "b"))
    assert loaded.user_map == b.user_map and loaded.item_map == b.item_map
    for name, arr in b.arrays().items():
        assert np.array_equal(getattr(loaded, name), arr), name


def _edit_meta(path: Path, **fields: object) -> None:
    meta = json.loads((path / "serving.json").read_text())
    meta.update(fields)
    (path / "serving.json").write_text(json.dumps(meta))


def test_version_mismatch_names_file_and_field(tmp_path: Path) -> None:
    path = random_bundle(5, 4, 2).save(tmp_path / "b")
    _edit_meta(path, format_version=99)
    with pytest.raises(ArtifactError, match=r"serving\.json: field 'format_version' is 99"):
        load_bundle(path)


def test_foreign_format_is_refused(tmp_path: Path) -> None:
    path = random_bundle(5, 4, 2).save(tmp_path / "b")
    _edit_meta(path, format="fedrec.model")
    with pytest.raises(ArtifactError, match="field 'format' is 'fedrec.model'"):
        load_bundle(path)


def test_schema_mismatch_between_json_and_arrays_is_refused(tmp_path: Path) -> None:
    path = random_bundle(5, 4, 2).save(tmp_path / "b")
    meta = json.loads((path / "serving.json").read_text())
    meta["arrays"]["q_i"]["shape"] = [4, 3]
    (path / "serving.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"arrays\.npz: array 'q_i'.*arrays\.q_i"):
        load_bundle(path)


def test_missing_field_and_missing_dir_are_named(tmp_path: Path) -> None:
    path = random_bundle(5, 4, 2).save(tmp_path / "b")
    meta = json.loads((path / "serving.json").read_text())
    del meta["item_map"]
    (path / "serving.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="field 'item_map' is missing"):
        load_bundle(path)
    with pytest.raises(ArtifactError, match="not found"):
        load_serving_bundle(tmp_path / "nowhere")


def test_host_partials_file_round_trip(tmp_path: Path) -> None:
    df = pd.DataFrame({"user_id": [1, 2], "z_H": [0.5, -1.0], "e_H_0": [1.0, 2.0], "e_H_1": [3.0, 4.0]})
    for suffix in (".csv", ".parquet"):
        hp = read_host_partials(write_host_partials(df, tmp_path / f"hp{suffix}"), 2)
        assert hp.user_ids.tolist() == [1, 2]
        assert hp.e_h.tolist() == [[1.0, 3.0], [2.0, 4.0]]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.drop(columns="e_H_1"), r"lack column\(s\) \['e_H_1'\]"),
    (lambda d: d.assign(e_H_2=0.0), "beyond e_H_1"),
    (lambda d: d.assign(z_H=[0.0, np.inf]), "row 1, column 'z_H'"),
    (lambda d: d.assign(user_id=[7, 7]), "row 1, column 'user_id': duplicate id 7"),
])
def test_bad_host_partials_are_refused(edit: object, message: str) -> None:
    df = pd.DataFrame({"user_id": [1, 2], "z_H": [0.5, -1.0], "e_H_0": [1.0, 2.0], "e_H_1": [3.0, 4.0]})
    with pytest.raises(ArtifactError, match=message):
        HostPartials.from_frame(edit(df), 2, source="hp.csv")  # type: ignore[operator]


def test_fm_export_reproduces_model_recommend(fm: FactorizationMachine) -> None:
    users = list(fm.user_map.raw_ids[:20])  # type: ignore[union-attr]
    ids, scores = fm.recommend(users, N=5)
    rec = Scorer(bundle_from_model(fm)).recommend(users, 5)
    assert (rec.item_ids == ids).all()
    assert rec.scores == pytest.approx(scores, abs=1e-4)


def test_vertical_export_plus_host_partials_equals_the_full_fm(fm: FactorizationMachine) -> None:
    users = list(fm.user_map.raw_ids[:20])  # type: ignore[union-attr]
    full = Scorer(bundle_from_model(fm)).recommend(users, 5)
    hp = HostPartials.from_frame(fm_host_partials(fm, users[:15]), fm.config.n_factors)
    split = Scorer(bundle_from_model(fm, vertical=True), hp).recommend(users, 5)
    assert (split.item_ids[:15] == full.item_ids[:15]).all()
    assert split.scores[:15] == pytest.approx(full.scores[:15], abs=1e-4)
    assert (split.fallback[15:] == FALLBACK_NO_HOST).all()


def test_saved_model_directory_is_exported_on_the_fly(fm: FactorizationMachine, tmp_path: Path) -> None:
    fm.save(tmp_path / "m")
    bundle = load_serving_bundle(tmp_path / "m")
    assert bundle.kind == "factors" and bundle.source["model_class"] == "FactorizationMachine"


def test_popularity_fallback_can_come_from_a_recent_popularity_model(fm: FactorizationMachine) -> None:
    ds = generate(n_users=80, n_items=30, seed=2).dataset
    pop = Popularity(kind="recent", window_days=30).fit(ds)
    b = bundle_from_model(fm, fallback=pop)
    order = pop.item_map.to_inner(b.item_map.raw_ids)  # type: ignore[union-attr]
    assert np.array_equal(b.fallback_score, pop.item_score[order])


@pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
def test_hetero_fm_guest_half_plus_host_export_matches_guest_recommend(tmp_path: Path) -> None:
    from fedrec.data import vertical_split
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, run_parties

    ds = generate(n_users=60, n_items=25, seed=4).dataset
    gv, hv = vertical_split(ds, host_user_fraction=0.8, seed=0)
    cfg = HeteroFMConfig(objective="ranking", n_factors=3, epochs=1, batch_size=4096, backend="plain",
                         validation="none", timeout=60)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    users = list(pd.unique(gv.interactions["user_id"]))[:30]

    def guest_side() -> tuple[np.ndarray, np.ndarray]:
        guest.fit(gv.interactions, gv.item_features)
        ids, scores = guest.recommend(users, N=4)
        guest.save(tmp_path / "guest")
        guest.close()
        return ids, scores

    out = run_parties({"host": lambda: host.serve(hv.user_features), "guest": guest_side}, timeout=120)
    ids, scores = cast(tuple[np.ndarray, np.ndarray], out["guest"])
    bundle = load_serving_bundle(tmp_path / "guest")
    assert bundle.kind == "vertical"
    hp = HostPartials.from_frame(host.export_partials(users), 3, "export")
    rec = Scorer(bundle, hp).recommend(users, 4)
    covered = np.isin(np.asarray(users, dtype=object), hp.user_ids)
    assert (~covered).any() and covered.any()
    assert (rec.fallback[~covered] == FALLBACK_NO_HOST).all()
    assert (rec.item_ids[covered] == ids[covered]).all()
    assert rec.scores[covered] == pytest.approx(scores[covered], abs=1e-4)
