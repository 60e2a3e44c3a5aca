"""Serving bundle files (schema/version checks), host-partials files and the export from fitted models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest

from fedrec.artifacts import file_sha256
from fedrec.data import generate
from fedrec.models import BiasedMF, FactorizationMachine, Popularity, Recommender
from fedrec.models.base import NO_HOST_PARTIAL, UNKNOWN_USER
from fedrec.models.vertical import sidecar_path
from serving.artifacts import (
    ArtifactError,
    HostPartials,
    load_bundle,
    random_bundle,
    read_host_partials,
    write_host_partials,
)
from serving.export import bundle_from_model, fm_host_partials, load_serving_bundle
from serving.scorer import Scorer


@pytest.fixture(scope="module")
def fm() -> FactorizationMachine:
    ds = generate(n_users=80, n_items=30, seed=2).dataset
    return FactorizationMachine(objective="ranking", n_factors=4, epochs=1, validation="none").fit(ds)


def test_bundle_round_trip(tmp_path: Path) -> None:
    b = random_bundle(30, 12, 4, seed=1)
    b.run_id = "run-7"
    loaded = load_bundle(b.save(tmp_path / "b"))
    assert loaded.user_map == b.user_map and loaded.item_map == b.item_map and loaded.run_id == "run-7"
    for name, arr in b.arrays().items():
        assert np.array_equal(getattr(loaded, name), arr), name
    meta = json.loads((tmp_path / "b" / "serving.json").read_text())
    assert meta["format_version"] == 3
    assert meta["content_sha256"] == file_sha256(tmp_path / "b" / "arrays.npz")


def test_modified_bundle_arrays_are_refused(tmp_path: Path) -> None:
    path = random_bundle(5, 4, 2).save(tmp_path / "b")
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(path / "arrays.npz", **{**arrays, "b_i": arrays["b_i"] + 1})  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match=r"arrays\.npz: content sha256 .* field 'content_sha256'"):
        load_bundle(path)


def test_version_1_bundle_loads_and_its_popularity_array_is_ignored(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    b = random_bundle(6, 5, 2, seed=3)
    path = b.save(tmp_path / "b")
    arrays = {**b.arrays(), "fallback_score": np.arange(5, dtype=np.float64)}  # what fedrec <= 0.1 wrote
    np.savez(path / "arrays.npz", **arrays)  # type: ignore[arg-type]
    meta = json.loads((path / "serving.json").read_text())
    del meta["content_sha256"], meta["run_id"]
    meta["format_version"] = 1
    meta["arrays"]["fallback_score"] = {"shape": [5], "dtype": "float64"}
    (path / "serving.json").write_text(json.dumps(meta))
    loaded = load_bundle(path)
    assert np.array_equal(loaded.b_i, b.b_i) and loaded.run_id is None
    assert "'fallback_score' (popularity) is ignored" in caplog.text


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


def _partials_frame() -> pd.DataFrame:
    return pd.DataFrame({"user_id": [1, 2], "z_H": [0.5, -1.0], "e_H_0": [1.0, 2.0], "e_H_1": [3.0, 4.0]})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_host_partials_file_round_trip_with_its_run_id(tmp_path: Path, suffix: str) -> None:
    path = write_host_partials(tmp_path / f"hp{suffix}", _partials_frame(), "run-1")
    hp = read_host_partials(path, 2)
    assert hp.run_id == "run-1" and hp.source == str(path)
    assert hp.keys.tolist() == ["1", "2"]  # CSV ids come back as text, Parquet as ints: the same keys
    assert hp.e_h.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    side = json.loads(sidecar_path(path).read_text())
    assert side["run_id"] == "run-1" and side["content_sha256"] == file_sha256(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar_path(path).name])


def test_partials_file_changed_after_its_fingerprint_is_refused(tmp_path: Path) -> None:
    path = write_host_partials(tmp_path / "hp.csv", _partials_frame(), "run-1")
    _partials_frame().assign(z_H=[0.0, 0.0]).to_csv(path, index=False)  # replaced, sidecar kept
    with pytest.raises(ArtifactError, match=r"hp.csv: content does not match .*'content_sha256'.*re-export"):
        read_host_partials(path, 2)


def test_partials_file_without_fingerprint_has_no_run_id(tmp_path: Path) -> None:
    _partials_frame().to_parquet(tmp_path / "old.parquet", index=False)  # written before fingerprints
    assert read_host_partials(tmp_path / "old.parquet", 2).run_id is None


def test_partials_writer_validates_and_needs_a_run_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run_id must be a non-empty string"):
        write_host_partials(tmp_path / "hp.csv", _partials_frame(), "")
    with pytest.raises(ArtifactError, match="row 1, column 'z_H'"):
        write_host_partials(tmp_path / "hp.csv", _partials_frame().assign(z_H=[0.0, np.nan]), "run-1")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.drop(columns="e_H_1"), r"lack column\(s\) \['e_H_1'\]"),
    (lambda d: d.assign(e_H_2=0.0), "beyond e_H_1"),
    (lambda d: d.assign(z_H=[0.0, np.inf]), "row 1, column 'z_H'"),
    (lambda d: d.assign(user_id=[7, 7]), "row 1, column 'user_id': duplicate id 7"),
    (lambda d: d.assign(user_id=[7, "7"]), "row 1, column 'user_id': duplicate id 7 .the same id as row 0"),
    (lambda d: d.assign(user_id=[7.0, 8.0]), "column 'user_id': row 0: id 7.0 of type float"),
])
def test_bad_host_partials_are_refused(edit: object, message: str) -> None:
    df = pd.DataFrame({"user_id": [1, 2], "z_H": [0.5, -1.0], "e_H_0": [1.0, 2.0], "e_H_1": [3.0, 4.0]})
    with pytest.raises(ArtifactError, match=message):
        HostPartials.from_frame(edit(df), 2, source="hp.csv")  # type: ignore[operator]


def test_fm_export_reproduces_model_recommend(fm: FactorizationMachine) -> None:
    users = list(fm.user_map.raw_ids[:20])  # type: ignore[union-attr]
    ids, scores = fm.recommend(users, k=5)
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
    assert (split.fallback[15:] == NO_HOST_PARTIAL).all()


def test_saved_model_directory_is_exported_on_the_fly(fm: FactorizationMachine, tmp_path: Path) -> None:
    fm.save(tmp_path / "m")
    bundle = load_serving_bundle(tmp_path / "m")
    assert bundle.kind == "factors" and bundle.source["model_class"] == "FactorizationMachine"


@pytest.mark.parametrize("name", ["fm", "mf", "popularity"])
def test_library_and_serving_answer_an_unknown_user_the_same(fm: FactorizationMachine, name: str) -> None:
    ds = generate(n_users=80, n_items=30, seed=2).dataset
    model: Recommender = {"fm": lambda: fm, "mf": lambda: BiasedMF(n_factors=3, epochs=2).fit(ds),
                          "popularity": lambda: Popularity().fit(ds)}[name]()  # popularity: many ties
    users = ["nobody", model.user_map.raw_ids[0], "nobody else"]  # type: ignore[union-attr]
    ids, scores = model.recommend(users, k=10)
    rec = Scorer(bundle_from_model(model)).recommend(users, 10)
    assert rec.fallback.tolist() == [UNKNOWN_USER, "none", UNKNOWN_USER]
    assert model.last_fallbacks == {UNKNOWN_USER: 2}
    assert (rec.item_ids == ids).all()
    assert rec.scores == pytest.approx(scores, abs=1e-4)  # float32 serving vs float64 library


@pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
def test_hetero_fm_guest_half_plus_host_export_matches_guest_recommend(tmp_path: Path) -> None:
    from fedrec.data import vertical_split
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, run_parties

    ds = generate(n_users=60, n_items=25, seed=4).dataset
    gv, hv = vertical_split(ds, host_user_fraction=0.8, seed=0)
    cfg = HeteroFMConfig(label_dp="off", objective="ranking", n_factors=3, epochs=1, batch_size=4096,
                         backend="plain",
                         validation="none", timeout=60)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    users = list(pd.unique(gv.interactions["user_id"]))[:30]

    def guest_side() -> tuple[np.ndarray, np.ndarray]:
        guest.fit(gv.interactions, item_features=gv.item_features)
        ids, scores = guest.recommend(users, k=4)
        guest.save(tmp_path / "guest")
        guest.close()
        return ids, scores

    out = run_parties({"host": lambda: host.serve(hv.user_features), "guest": guest_side}, timeout=120)
    ids, scores = cast(tuple[np.ndarray, np.ndarray], out["guest"])
    bundle = load_serving_bundle(tmp_path / "guest")
    assert bundle.kind == "vertical"
    hp = HostPartials.from_frame(host.export_partials(users), 3, "export", run_id=bundle.run_id)
    rec = Scorer(bundle, hp).recommend(users, 4)
    covered = np.isin(np.asarray(users, dtype=object), hp.user_ids)
    assert (~covered).any() and covered.any()
    assert (rec.fallback[~covered] == NO_HOST_PARTIAL).all()
    assert (rec.item_ids[covered] == ids[covered]).all()
    assert rec.scores[covered] == pytest.approx(scores[covered], abs=1e-4)
