"""Contract suite: every model honours the estimator API (fit/predict/recommend/save/load)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from models_support import Planted, planted

from fedrec.data.idmap import UnknownIdError
from fedrec.models import (
    BiasedMF,
    FactorizationMachine,
    ModelFormatError,
    Popularity,
    Recommender,
    load_model,
)

torch.set_num_threads(1)

FAST = {"epochs": 4, "batch_size": 128, "n_factors": 4}
FACTORIES: dict[str, Callable[[], Recommender]] = {
    "popularity": Popularity,
    "popularity_recent": lambda: Popularity(kind="recent", window_days=10.0, rating="global_mean"),
    "mf": lambda: BiasedMF(**FAST),
    "fm_ids": lambda: FactorizationMachine(**FAST, use_history=False, use_history_length=False,
                                           use_user_features=False, use_item_features=False,
                                           use_item_age=False),
    "fm_full": lambda: FactorizationMachine(**FAST),
    "fm_ranking": lambda: FactorizationMachine(**FAST, objective="ranking", loss="bpr"),
}


@pytest.fixture(scope="module")
def data() -> Planted:
    return planted(n_users=30, n_items=25, density=0.4)


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def fitted(request: pytest.FixtureRequest, data: Planted) -> tuple[str, Recommender]:
    model = FACTORIES[request.param]().fit(data.interactions, data.user_features, data.item_features)
    return request.param, model


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
    ids, scores = model.recommend(users, N=5)
    assert ids.shape == (3, 5) and scores.shape == (3, 5)
    assert set(ids.ravel().tolist()) <= set(data.interactions["item_id"].tolist())
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_recommend_filters_seen_items(fitted: tuple[str, Recommender], data: Planted) -> None:
    _, model = fitted
    ids, scores = model.recommend(["u1", "u2"], N=8)
    for row, user in zip(ids, ["u1", "u2"], strict=True):
        seen = set(data.interactions.loc[data.interactions["user_id"] == user, "item_id"])
        assert not seen & set(row.tolist())
    assert np.isfinite(scores).all()


def test_recommend_without_seen_filter_can_return_seen(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    n_items = len(model.item_map)  # type: ignore[arg-type]
    ids, _ = model.recommend(["u1"], N=n_items, filter_already_seen=False)
    assert sorted(ids[0].tolist()) == sorted(model.item_map.raw_ids.tolist())  # type: ignore[union-attr]


def test_recommend_filter_items_are_excluded(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    top, _ = model.recommend(["u4"], N=3)
    banned = top[0, :2].tolist()
    ids, _ = model.recommend(["u4"], N=3, filter_items=banned)
    assert not set(banned) & set(ids[0].tolist())


def test_single_user_recommend_equals_batch_row(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    users = [f"u{x}" for x in range(12)]
    ids, scores = model.recommend(users, N=6, chunk_size=5)
    for r in (0, 6, 11):
        one_ids, one_scores = model.recommend(users[r], N=6)
        assert one_ids[0].tolist() == ids[r].tolist()
        np.testing.assert_allclose(one_scores[0], scores[r], rtol=1e-9, atol=1e-9)


def test_save_load_round_trip_is_identical(fitted: tuple[str, Recommender], data: Planted,
                                           tmp_path: Path) -> None:
    name, model = fitted
    model.save(tmp_path / name)
    loaded = type(model).load(tmp_path / name)
    np.testing.assert_array_equal(loaded.predict(data.test), model.predict(data.test))
    a_ids, a_sc = model.recommend(["u0", "u5"], N=5)
    b_ids, b_sc = load_model(tmp_path / name).recommend(["u0", "u5"], N=5)
    assert a_ids.tolist() == b_ids.tolist()
    np.testing.assert_array_equal(a_sc, b_sc)


def test_unknown_ids_fall_back_and_are_counted(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    pairs = pd.DataFrame({"user_id": ["u0", "nobody"], "item_id": [100, 99999],
                          "timestamp": [2_000_000, 2_000_000]})
    pred = model.predict(pairs)
    assert np.isfinite(pred).all()
    assert model.last_fallbacks == {"users": 1, "items": 1}


def test_unknown_ids_raise_when_asked(fitted: tuple[str, Recommender]) -> None:
    _, model = fitted
    pairs = pd.DataFrame({"user_id": ["nobody"], "item_id": [100]})
    with pytest.raises(UnknownIdError, match="nobody"):
        model.predict(pairs, unknown="raise")
    with pytest.raises(UnknownIdError, match="nobody"):
        model.recommend(["nobody"], unknown="raise")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"N": 0}, "N must be"),
    ({"N": 10_000}, "exceeds"),
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
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="'p'.*shape"):
        BiasedMF.load(path)


def test_load_of_bad_hyperparameter_names_field(data: Planted, tmp_path: Path) -> None:
    path = _saved(data, tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    meta["hyperparameters"]["n_factors"] = -1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="hyperparameters"):
        BiasedMF.load(path)
