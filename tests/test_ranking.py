"""Ranking training and evaluation (issue #12): evaluate_ranking, select_ranking, the FM's opt-in ranking
options (negatives, HR/NDCG early stopping, refit, weights, canonical order, time-aware guest fields),
implicit input and the recommend spelling."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from models_support import planted

from fedrec.data.features_time import recency_history, recent_item_popularity
from fedrec.data.implicit import implicit_interactions
from fedrec.data.split import leave_last_out
from fedrec.eval.ranking import compare_ranking, evaluate_ranking
from fedrec.models import BiasedMF, FactorizationMachine, Popularity
from fedrec.models.fm import popularity_cdf
from fedrec.models.ranking import RankingTarget, carve_last, select_ranking

torch.set_num_threads(1)
DAY = 86400
FAST = {"epochs": 3, "batch_size": 128, "n_factors": 4}


def events(n_users: int = 40, n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    """Implicit events (no rating): item popularity skewed, timestamps over 100 days."""
    rng = np.random.default_rng(seed)
    rows = []
    p = 1.0 / np.arange(1, n_items + 1)
    for u in range(n_users):
        items = rng.choice(n_items, size=8, replace=False, p=p / p.sum())
        rows += [(f"u{u}", int(i) + 100, int(1_000_000 + rng.integers(0, 100) * DAY + j)) for j, i in
                 enumerate(items)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


# ------------------------------------------------------------------------------------ evaluate_ranking
def test_evaluate_ranking_known_answer() -> None:
    train = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": [1, 2, 1, 1],
                          "timestamp": [1, 2, 3, 4], "rating": 1.0})
    train = pd.concat([train, pd.DataFrame({"user_id": ["c"] * 2, "item_id": [2, 3], "timestamp": [5, 6],
                                            "rating": 1.0})])
    # popularity: item 1 (3 rows) > 2 (2) > 3 (1); unseen top-1: a -> 3, b -> 2, c -> none left but 1st
    pop = Popularity().fit(train)
    test = pd.DataFrame({"user_id": ["a", "b"], "item_id": [3, 3], "timestamp": [9, 9]})
    rep = evaluate_ranking(pop, (train, test), k=1, n_boot=50)
    assert rep.per_user["hr"].tolist() == [1.0, 0.0]  # users sorted by id: a, b
    assert rep.hr == pytest.approx(0.5)
    assert evaluate_ranking(pop, test, k=2, n_boot=50).hr == pytest.approx(1.0)  # b: [2, 3]


def test_evaluate_ranking_rejects_bad_input() -> None:
    pop = Popularity().fit(events().assign(rating=1.0))
    with pytest.raises(ValueError, match="k must be"):
        evaluate_ranking(pop, events(), k=0)
    with pytest.raises(TypeError, match="split must be"):
        evaluate_ranking(pop, [1, 2], k=5)
    with pytest.raises(ValueError, match="empty"):
        evaluate_ranking(pop, events().iloc[:0], k=5)


def test_compare_ranking_is_paired_and_checks_users() -> None:
    ev = events()
    train, test = leave_last_out(ev)
    a = evaluate_ranking(Popularity().fit(train), (train, test), 5, n_boot=100)
    diff = compare_ranking(a, a, "hr", n_boot=100)
    assert (diff.point, diff.low, diff.high) == (0.0, 0.0, 0.0)
    b = evaluate_ranking(Popularity().fit(train), (train, test), 5, n_boot=100, users=["u0", "u1"])
    with pytest.raises(ValueError, match="different users"):
        compare_ranking(a, b)


# ------------------------------------------------------------------------------------ FM ranking options
def test_fm_early_stops_on_ndcg_and_refits_on_all_rows() -> None:
    ev = events()
    fm = FactorizationMachine.for_ranking(**FAST, patience=1).fit(ev)
    assert fm.selection_history is not None
    assert all(-1.0 <= v <= 0.0 for v in fm.selection_history.val_metric)  # −NDCG, lower is better
    assert fm.history.val_metric == []  # the refit has no validation
    assert len(fm.history.train_loss) == max(fm.selection_history.best_epoch, 1)
    assert fm.seen is not None and len(fm.seen.indices) == len(ev)  # refit saw every row


def test_ranking_early_stopping_needs_the_ranking_objective() -> None:
    with pytest.raises(ValueError, match="early_stopping"):
        FactorizationMachine(early_stopping="hr")
    with pytest.raises(ValueError, match="negatives"):
        FactorizationMachine(negatives="popularity")
    fm = FactorizationMachine(objective="ranking", early_stopping="ndcg", validation="random", **FAST)
    fm.fit(events())
    with pytest.raises(ValueError, match="ranks every item"):  # the sampled-loss path refuses (vertical FM)
        fm.validation_metric_from_scores(torch.zeros(4), None, torch.zeros(4), 2)


def test_popularity_negatives_follow_counts_and_uniform_is_unchanged() -> None:
    cdf = popularity_cdf(np.array([99, 0, 0, 0]), 1.0)  # weights 100, 1, 1, 1
    draws = np.searchsorted(cdf, np.random.default_rng(0).random(20_000), side="right")
    assert np.mean(draws == 0) == pytest.approx(100 / 103, abs=0.01)
    fm = FactorizationMachine(objective="ranking", validation="none", **FAST).fit(events())
    u, i, t = np.array([0, 1]), np.array([2, 3]), np.array([5, 5])
    _, neg, _ = fm.expand_negatives(u, i, t, np.random.default_rng(7))
    expected = np.random.default_rng(7).integers(0, len(fm.item_map or []), (2, fm.config.n_negatives))
    assert neg[2:].tolist() == expected.ravel().tolist()  # the default draws exactly as before


@pytest.mark.parametrize("make", [
    lambda: FactorizationMachine(**FAST, objective="ranking", row_order="canonical", validation="random"),
    lambda: BiasedMF(**FAST, row_order="canonical"),
    lambda: Popularity(row_order="canonical"),
])
def test_canonical_order_makes_results_independent_of_row_order(make: object) -> None:
    ev = events().assign(rating=1.0)
    ev.loc[::3, "rating"] = 2.0
    shuffled = ev.sample(frac=1.0, random_state=3).reset_index(drop=True)
    users = ["u0", "u5", "u9"]
    a = make().fit(ev).recommend(users, k=5)  # type: ignore[operator]
    b = make().fit(shuffled).recommend(users, k=5)  # type: ignore[operator]
    assert a[0].tolist() == b[0].tolist()
    np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="row_order"):
        Popularity(row_order="sorted")


def test_weighted_loss_uses_the_weight_column_and_rejects_bad_weights() -> None:
    ev = implicit_interactions(pd.concat([events(), events().head(20)]), "count")
    kw = {**FAST, "objective": "ranking", "validation": "none"}
    plain = FactorizationMachine(**kw).fit(ev)
    weighted = FactorizationMachine(**kw, weight_column="weight").fit(ev)
    assert plain.history.train_loss != weighted.history.train_loss
    with pytest.raises(ValueError, match="weight_column"):
        FactorizationMachine(**kw, weight_column="nope").fit(ev)
    with pytest.raises(ValueError, match="finite weights"):
        FactorizationMachine(**kw, weight_column="weight").fit(ev.assign(weight=-1.0))


def test_ids_only_has_two_fields() -> None:
    fm = FactorizationMachine.ids_only(objective="ranking", validation="none", **FAST).fit(events())
    assert [s.name for s in fm.field_specs] == ["user_id", "item_id"]
    with pytest.raises(TypeError, match="cannot be set"):
        FactorizationMachine.ids_only(use_history=True)


# ------------------------------------------------------------------------------------ implicit input
def test_implicit_input_without_rating() -> None:
    ev = events()
    fm = FactorizationMachine(objective="ranking", validation="none", **FAST).fit(ev)
    ids, _ = fm.recommend(["u1"], k=3)
    assert ids.shape == (1, 3)
    assert Popularity().fit(ev).recommend(["u1"], k=3)[0].shape == (1, 3)
    with pytest.raises(ValueError, match="no 'rating' column"):
        BiasedMF(**FAST).fit(ev)


def test_implicit_interactions_weights() -> None:
    ev = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": [1, 1, 2, 1],
                       "timestamp": [0, 10 * DAY, 10 * DAY, 0]})
    out = implicit_interactions(ev, "count").set_index(["user_id", "item_id"])
    assert out.loc[("a", 1), "n_events"] == 2
    assert out.loc[("a", 1), "weight"] == pytest.approx(1 + np.log(2))
    assert out.loc[("a", 1), "timestamp"] == 10 * DAY
    rec = implicit_interactions(ev, "recency", half_life_days=10).set_index(["user_id", "item_id"])
    assert rec.loc[("a", 1), "weight"] == pytest.approx(1.5)  # 2^-1 + 2^0
    assert rec.loc[("b", 1), "weight"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="weighting"):
        implicit_interactions(ev, "bm25")
    with pytest.raises(ValueError, match="timestamp"):
        implicit_interactions(ev.drop(columns=["timestamp"]))


# ------------------------------------------------------------------------------------ time-aware fields
def test_recent_item_popularity_counts_windows() -> None:
    items, ts = np.array([0, 0, 1, 1, 1]), np.array([0, 9, 2, 8, 10]) * DAY
    pop = recent_item_popularity(items, ts, 3, 10 * DAY, [3.0, 100.0])
    assert np.expm1(pop).round().tolist() == [[1, 2], [2, 3], [0, 0]]
    with pytest.raises(ValueError, match="windows_days"):
        recent_item_popularity(items, ts, 3, 10 * DAY, [])


def test_recency_history_keeps_the_last_items_newest_heaviest() -> None:
    users, items = np.array([0, 0, 0, 0]), np.array([5, 6, 7, 5])
    ts = np.array([0, 10, 20, 1]) * DAY
    rows, cols, vals = recency_history(users, items, ts, 1, 20 * DAY, last_n=2, half_life_days=10)
    assert cols.tolist() == [7, 6]
    assert vals[0] / vals[1] == pytest.approx(2.0)
    assert float(np.sum(vals ** 2)) == pytest.approx(1.0)
    perm = np.array([3, 1, 0, 2])
    again = recency_history(users[perm], items[perm], ts[perm], 1, 20 * DAY, last_n=2, half_life_days=10)
    assert again[1].tolist() == cols.tolist()
    with pytest.raises(ValueError, match="inner ids"):
        recency_history(np.array([3]), np.array([0]), np.array([0]), 1, 0)


def test_time_fields_are_guest_fields_and_keep_the_decompositions() -> None:
    d = planted(n_users=30, n_items=25, density=0.4)
    fm = FactorizationMachine(objective="ranking", validation="none", use_recent_items=True,
                              use_recent_popularity=True, **FAST).fit(d.interactions, d.user_features)
    owners = {s.name: (s.owner, s.side) for s in fm.field_specs}
    assert owners["recent_items"] == ("guest", "user")
    assert owners["recent_popularity_7d"] == owners["recent_popularity_30d"] == ("guest", "context")
    pairs = d.interactions.head(40)[["user_id", "item_id"]]
    z = fm.decision_function(pairs)
    terms = fm.party_terms(pairs)
    joined = terms["guest"].z + terms["host"].z + np.sum(terms["guest"].e * terms["host"].e, axis=1)
    np.testing.assert_allclose(joined, z, atol=1e-4)
    f = fm.scoring_factors()
    assert fm.user_map is not None and fm.item_map is not None
    u, i = fm.user_map.to_inner(pairs["user_id"]), fm.item_map.to_inner(pairs["item_id"])
    np.testing.assert_allclose(f.a_u[u] + f.b_i[i] + np.sum(f.p_u[u] * f.q_i[i], axis=1), z, atol=1e-4)


def test_recent_popularity_is_counted_before_the_sample_time_and_saved(tmp_path: Path) -> None:
    from fedrec.data.features_time import ItemEvents

    ev = ItemEvents.build(np.array([0, 0, 0, 1]), np.array([1, 5, 9, 5]) * DAY, 2)
    counts = ev.window_counts(np.array([0, 0, 1, -1]), np.array([9, 10, 5, 9]) * DAY, 5)
    assert counts.tolist() == [1, 2, 0, 0]  # [4, 9) holds t=5; [5, 10) holds 5 and 9; own row never counted
    d = planted(n_users=30, n_items=25, density=0.4)
    fm = FactorizationMachine(objective="ranking", validation="none", use_recent_popularity=True,
                              use_item_age=False, **FAST).fit(d.interactions)
    back = FactorizationMachine.load(fm.save(tmp_path / "fm"))
    np.testing.assert_allclose(back.scoring_factors().b_i, fm.scoring_factors().b_i)
    early = fm.scoring_factors(at=int(d.interactions["timestamp"].min()))  # nothing popular yet
    assert not np.allclose(early.b_i, fm.scoring_factors().b_i)


# ------------------------------------------------------------------------------------ selection
def test_select_ranking_tunes_on_the_last_rows_and_refits() -> None:
    ev = events()
    grid = [{"lr": 1e-4}, {"lr": 3e-2}]
    sel = select_ranking(FactorizationMachine.for_ranking, grid, ev, k=5, metric="hr")
    assert len(sel.table) == 2 and sel.best_params in grid
    assert sel.refit_params["validation"] == "none" and sel.refit_params["refit"] is False
    assert sel.model.seen is not None and len(sel.model.seen.indices) == len(ev)
    with pytest.raises(ValueError, match="grid is empty"):
        select_ranking(FactorizationMachine.for_ranking, [], ev)
    with pytest.raises(ValueError, match="metric"):
        select_ranking(FactorizationMachine.for_ranking, grid, ev, metric="auc")


def test_carve_last_and_ranking_target() -> None:
    ev = events()
    fit_part, val = carve_last(ev)
    assert len(val) == ev["user_id"].nunique() and val["timestamp"].min() >= 0
    pop = Popularity().fit(fit_part)
    target = RankingTarget.build(pop, val, pop.seen)
    assert len(target.users) == len(val)
    with pytest.raises(ValueError, match="nothing to validate"):
        carve_last(ev.drop_duplicates("user_id"))


# ------------------------------------------------------------------------------------ recommend spelling
def test_recommend_k_filter_seen_and_deprecated_aliases() -> None:
    pop = Popularity().fit(events())
    ids, _ = pop.recommend(["u1"], k=4, filter_seen=False)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        old, _ = pop.recommend(["u1"], N=4, filter_already_seen=False)
    assert old.tolist() == ids.tolist()
    with warnings.catch_warnings(), pytest.raises(TypeError, match="give one"):
        warnings.simplefilter("ignore")
        pop.recommend(["u1"], k=3, N=4)


def test_data_loss_refuses_to_train_unweighted_when_weights_are_configured() -> None:
    fm = FactorizationMachine(objective="ranking", validation="none", weight_column="weight", **FAST)
    fm.fit(implicit_interactions(events(), "count"))
    z = torch.zeros(2 + 2 * fm.config.n_negatives, requires_grad=True)
    with pytest.raises(ValueError, match=r"needs the row weights in data_loss \(row_weights\)"):
        fm.data_loss(z, None, 2)
