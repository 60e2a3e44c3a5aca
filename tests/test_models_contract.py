"""Contract suite: every model honours the estimator API (fit/predict/recommend/save/load), the federated
guest of the vertical FM included (its host serving it over the in-memory twin)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from models_support import Planted, planted

from fedrec.artifacts import ArtifactError, file_sha256
from fedrec.data.idmap import UnknownIdError
from fedrec.models import (
    BiasedMF,
    FactorizationMachine,
    ModelFormatError,
    Popularity,
    Recommender,
    load_model,
)
from fedrec.models.base import UNKNOWN_ITEM, UNKNOWN_USER, top_k
from fedrec.models.vertical import VerticalFM, write_host_partials
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

FAST = {"epochs": 4, "batch_size": 128, "n_factors": 4}
#: the host of each federated guest made by the factory, with its serving thread
HOSTS: dict[int, tuple[HeteroFMHost, threading.Thread]] = {}


def _federated_guest() -> HeteroFMGuest:
    cfg = HeteroFMConfig(label_dp="off", **FAST, backend="plain", timeout=120.0)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    features = planted(n_users=30, n_items=25, density=0.4).user_features  # the `data` fixture's
    thread = threading.Thread(target=host.serve, args=(features,), name="contract-host", daemon=True)
    thread.start()
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    HOSTS[id(guest)] = (host, thread)
    return guest


FACTORIES: dict[str, Callable[[], Recommender]] = {
    "popularity": Popularity,
    "popularity_recent": lambda: Popularity(kind="recent", window_days=10.0, rating="global_mean"),
    "mf": lambda: BiasedMF(**FAST),
    "fm_ids": lambda: FactorizationMachine(**FAST, use_history=False, use_history_length=False,
                                           use_user_features=False, use_item_features=False,
                                           use_item_age=False),
    "fm_full": lambda: FactorizationMachine(**FAST),
    "fm_ranking": lambda: FactorizationMachine(**FAST, objective="ranking", loss="bpr"),
    # the federated guest, its host (holding the user features) serving it over the in-memory twin
    "hetero_fm_guest": _federated_guest,
}
def fit(model: Recommender, data: Planted) -> Recommender:
    """``fit`` as every model takes it; the federated guest's user features are its host's."""
    if isinstance(model, HeteroFMGuest):
        return model.fit(data.interactions, item_features=data.item_features)
    return model.fit(data.interactions, data.user_features, data.item_features)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


@pytest.fixture(scope="module")
def data() -> Planted:
    return planted(n_users=30, n_items=25, density=0.4)


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def fitted(request: pytest.FixtureRequest, data: Planted) -> Iterator[tuple[str, Recommender]]:
    model = fit(FACTORIES[request.param](), data)
    yield request.param, model
    if isinstance(model, HeteroFMGuest):
        model.close()
        _, thread = HOSTS.pop(id(model))
        thread.join(30)
        assert not thread.is_alive()


def test_fit_returns_self_and_predict_shape(data: Planted) -> None:
    model = BiasedMF(**FAST)
    assert model.fit(data.interactions) is model
    pred = model.predict(data.test)
    assert pred.shape == (len(data.test),) and np.isfinite(pred).all()


def test_predict_is_finite_for_every_model(fitted: tuple[str, Recommender], data: Planted) -> None:
    _, model = fitted
    pred = model.predict(data.test)
    assert pred.shape == (len(data.test),) and np.isfinite(pred).all()


def test_recommend_returns_raw_ids_and_sorted_scores(fitted: tuple[str, Recommender], data: Planted) -> None:
    _, model = fitted
    users = ["u0", "u3", "u7"]
    ids, scores = model.recommend(users, k=5)
    assert ids.shape == (3, 5) and scores.shape == (3, 5)
    assert set(ids.ravel().tolist()) <= set(data.interactions["item_id"].tolist())
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_recommend_filters_seen_items(fitted: tuple[str, Recommender], data: Planted) -> None:
    _, model = fitted
    ids, scores = model.recommend(["u1", "u2"], k=8)
    for row, user in zip(ids, ["u1", "u2"], strict=True):
        seen = set(data.interactions.loc[data.interactions["user_id"] == user, "item_id"])
        assert not seen & set(row.tolist())
    assert np.isfinite(scores).all()


def test_recommend_without_seen_filter_can_return_seen(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    n_items = len(model.item_map)  # type: ignore[arg-type]
    ids, _ = model.recommend(["u1"], k=n_items, filter_seen=False)
    assert sorted(ids[0].tolist()) == sorted(model.item_map.raw_ids.tolist())  # type: ignore[union-attr]


def test_recommend_filter_items_are_excluded(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    top, _ = model.recommend(["u4"], k=3)
    banned = top[0, :2].tolist()
    ids, _ = model.recommend(["u4"], k=3, filter_items=banned)
    assert not set(banned) & set(ids[0].tolist())


def test_single_user_recommend_equals_batch_row(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    users = [f"u{x}" for x in range(12)]
    ids, scores = model.recommend(users, k=6, chunk_size=5)
    for r in (0, 6, 11):
        one_ids, one_scores = model.recommend(users[r], k=6)
        assert one_ids[0].tolist() == ids[r].tolist()
        np.testing.assert_allclose(one_scores[0], scores[r], rtol=1e-9, atol=1e-9)


def test_save_load_round_trip_is_identical(fitted: tuple[str, Recommender], data: Planted,
                                           tmp_path: Path) -> None:
    name, model = fitted
    if isinstance(model, HeteroFMGuest):  # its half + the host's exported partials of the same run
        host, _ = HOSTS[id(model)]
        model.save(tmp_path / name)
        users = data.user_features.index.tolist()
        partials = tmp_path / "partials.parquet"
        write_host_partials(partials, host.export_partials(users), run_id=host.run_id or "")
        joined = VerticalFM.load(tmp_path / name, partials)
        np.testing.assert_allclose(joined.predict(data.test), model.predict(data.test), rtol=1e-12,
                                   atol=1e-12)
        ids = model.recommend(["u0", "u5"], k=5)[0]
        assert joined.recommend(["u0", "u5"], k=5)[0].tolist() == ids.tolist()
        return
    model.save(tmp_path / name)
    loaded = type(model).load(tmp_path / name)
    np.testing.assert_array_equal(loaded.predict(data.test), model.predict(data.test))
    a_ids, a_sc = model.recommend(["u0", "u5"], k=5)
    b_ids, b_sc = load_model(tmp_path / name).recommend(["u0", "u5"], k=5)
    assert a_ids.tolist() == b_ids.tolist()
    np.testing.assert_array_equal(a_sc, b_sc)


def test_unknown_ids_fall_back_and_are_counted(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    pairs = pd.DataFrame({"user_id": ["u0", "nobody"], "item_id": [100, 99999],
                          "timestamp": [2_000_000, 2_000_000]})
    pred = model.predict(pairs)
    assert np.isfinite(pred).all()
    assert nonzero(model.last_fallbacks) == {UNKNOWN_USER: 1, UNKNOWN_ITEM: 1}


def test_unknown_user_is_ranked_by_the_empty_user_scores(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    n_items = len(model.item_map)  # type: ignore[arg-type]
    ids, scores = model.recommend(["nobody", "u0", "nobody either"], k=n_items)
    assert nonzero(model.last_fallbacks) == {UNKNOWN_USER: 2}
    empty = model._score_users(np.array([-1]))[0]  # the model with every user field empty: b_i
    order = np.argsort(-empty, kind="stable")
    assert ids[0].tolist() == model.item_map.to_raw(order).tolist()  # type: ignore[union-attr]
    np.testing.assert_array_equal(scores[0], empty[order])  # nothing filtered as seen
    assert ids[2].tolist() == ids[0].tolist()


@pytest.mark.parametrize("seed", range(20))
def test_top_k_equals_a_stable_argsort_with_ties_and_filtered_items(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (6, 30)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.4] = -np.inf  # filtered items, some rows with fewer than k left
    k = int(rng.integers(1, 31))
    idx, val = top_k(torch.from_numpy(scores), k)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert idx.numpy().tolist() == order.tolist()
    np.testing.assert_array_equal(val.numpy(), np.take_along_axis(scores, order, axis=1))


def test_top_k_breaks_ties_by_lower_item_id() -> None:
    idx, val = top_k(torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]]), 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert val.tolist() == [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]


def test_unknown_ids_raise_when_asked(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    pairs = pd.DataFrame({"user_id": ["nobody"], "item_id": [100]})
    with pytest.raises(UnknownIdError, match="nobody"):
        model.predict(pairs, unknown="raise")
    with pytest.raises(UnknownIdError, match="nobody"):
        model.recommend(["nobody"], unknown="raise")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"k": 0}, "k must be"),
    ({"k": 10_000}, "exceeds"),
    ({"filter_items": [123456]}, "filter_items"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_recommend_rejects_bad_arguments(data: Planted, kwargs: dict[str, object], match: str) -> None:
    model = Popularity().fit(data.interactions)
    with pytest.raises(ValueError, match=match):
        model.recommend(["u0"], **kwargs)  # type: ignore[arg-type]


def test_predict_rejects_missing_column(data: Planted) -> None:
    model = Popularity().fit(data.interactions)
    with pytest.raises(ValueError, match="item_id"):
        model.predict(data.test[["user_id"]])


def test_fit_rejects_non_finite_ratings(data: Planted) -> None:
    bad = data.interactions.copy()
    bad.loc[3, "rating"] = np.nan
    with pytest.raises(ValueError, match="rating.*row 3"):
        BiasedMF(**FAST).fit(bad)


def test_unknown_hyperparameter_is_rejected() -> None:
    with pytest.raises(TypeError, match="n_factor"):
        FactorizationMachine(n_factor=3)


def test_use_before_fit_raises() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        BiasedMF().recommend(["u0"])


@pytest.mark.parametrize("name", ["mf", "fm_full", "fm_ranking"])
def test_same_seed_gives_identical_predictions(name: str, data: Planted) -> None:
    a = FACTORIES[name]().fit(data.interactions, data.user_features, data.item_features)
    b = FACTORIES[name]().fit(data.interactions, data.user_features, data.item_features)
    np.testing.assert_array_equal(a.predict(data.test), b.predict(data.test))


def _saved(data: Planted, tmp_path: Path) -> Path:
    return BiasedMF(**FAST).fit(data.interactions).save(tmp_path / "m")


def test_load_of_missing_directory_names_meta_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="meta.json"):
        BiasedMF.load(tmp_path / "absent")


def test_load_of_wrong_model_class_names_field(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    with pytest.raises(ModelFormatError, match="model_class"):
        FactorizationMachine.load(path)


def test_load_of_corrupt_json_names_file(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="meta.json.*not valid JSON"):
        BiasedMF.load(path)


def test_load_of_truncated_arrays_names_file(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    raw = (path / "arrays.npz").read_bytes()
    (path / "arrays.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFormatError, match="arrays.npz"):
        BiasedMF.load(path)


def test_load_of_mismatched_array_shape_names_array(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["p"] = arrays["p"][:, :2]
    np.savez(path / "arrays.npz", **arrays)  # type: ignore[arg-type]
    meta = json.loads((path / "meta.json").read_text())
    meta["arrays"]["p"]["shape"] = list(arrays["p"].shape)
    meta["content_sha256"] = file_sha256(path / "arrays.npz")  # consistent, but not what BiasedMF expects
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="'p'.*shape"):
        BiasedMF.load(path)


def test_modified_arrays_are_refused_by_their_digest(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["bu"] = arrays["bu"] + 1.0  # same names, shapes and dtypes: only the digest can tell
    np.savez(path / "arrays.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(ModelFormatError, match=r"arrays\.npz.*does not match field 'content_sha256'"):
        BiasedMF.load(path)


def test_a_model_saved_before_digests_still_loads(data: Planted, tmp_path: Path) -> None:
    model = BiasedMF(**FAST).fit(data.interactions)
    path = model.save(tmp_path / "m")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["content_sha256"] == file_sha256(path / "arrays.npz")
    del meta["content_sha256"]  # what fedrec <= 0.1 wrote; every other check still applies
    (path / "meta.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(BiasedMF.load(path).predict(data.test), model.predict(data.test))


def test_save_replaces_a_model_but_refuses_a_directory_of_other_files(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    BiasedMF(**FAST).fit(data.interactions).save(path)  # a previous save is replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="notes: exists and is not a saved artifact"):
        BiasedMF(**FAST).fit(data.interactions).save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_load_of_bad_hyperparameter_names_field(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    meta["hyperparameters"]["n_factors"] = -1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="hyperparameters"):
        BiasedMF.load(path)
