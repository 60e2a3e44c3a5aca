"""FM-specific behaviour: per-party and per-side decompositions, objectives, field selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from models_support import Planted, planted

from fedrec.eval.metrics import auc, ranking_metrics
from fedrec.models import FactorizationMachine, Popularity

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> Planted:
    return planted(n_users=50, n_items=30, density=0.5)


@pytest.fixture(scope="module")
def fm(data: Planted) -> FactorizationMachine:
    return FactorizationMachine(epochs=5, batch_size=128, n_factors=6).fit(
        data.interactions, data.user_features, data.item_features)


def test_fields_are_tagged_with_owner_and_host_params_are_separate(fm: FactorizationMachine) -> None:
    owners = {s.name: s.owner for s in fm.field_specs}
    assert owners == {"user_id": "guest", "history": "guest", "history_length": "guest",
                      "user_features": "host", "item_features": "guest", "item_id": "guest",
                      "item_age": "guest"}
    assert fm.params is not None
    host_w, host_v = fm.params.w["user_features"], fm.params.v["user_features"]
    guest = [p for name, p in fm.params.named_parameters() if "user_features" not in name]
    assert all(host_v.data_ptr() != p.data_ptr() and host_w.data_ptr() != p.data_ptr() for p in guest)


def test_party_decomposition_equals_full_output(fm: FactorizationMachine, data: Planted) -> None:
    parts = fm.party_terms(data.test)
    g, h = parts["guest"], parts["host"]
    recomposed = g.z + h.z + np.einsum("nk,nk->n", g.e, h.e)
    np.testing.assert_allclose(recomposed, fm.decision_function(data.test), rtol=0, atol=1e-4)
    assert np.abs(h.e).sum() > 0  # the host really contributes


def test_party_decomposition_of_unknown_user_has_zero_host_share(fm: FactorizationMachine) -> None:
    pairs = pd.DataFrame({"user_id": ["stranger"], "item_id": [101], "timestamp": [2_000_000]})
    host = fm.party_terms(pairs)["host"]
    assert host.z[0] == 0.0 and not host.e.any()


def test_scoring_factors_reproduce_predictions_at_reference_time(fm: FactorizationMachine,
                                                                 data: Planted) -> None:
    f = fm.scoring_factors()
    pairs = data.test.assign(timestamp=fm.reference_time)
    u = fm.user_map.to_inner(pairs["user_id"])  # type: ignore[union-attr]
    i = fm.item_map.to_inner(pairs["item_id"])  # type: ignore[union-attr]
    via_matmul = f.a_u[u] + f.b_i[i] + np.einsum("nk,nk->n", f.p_u[u], f.q_i[i])
    np.testing.assert_allclose(via_matmul, fm.decision_function(pairs), rtol=0, atol=1e-4)


def test_item_age_context_changes_scores_over_time(fm: FactorizationMachine) -> None:
    early, late = fm.scoring_factors(at=1_000_000), fm.scoring_factors(at=fm.reference_time)
    np.testing.assert_array_equal(early.p_u, late.p_u)
    assert not np.allclose(early.b_i, late.b_i)


def test_same_seed_gives_identical_parameters(data: Planted) -> None:
    def fit() -> FactorizationMachine:
        return FactorizationMachine(epochs=2, batch_size=64, n_factors=4, seed=7).fit(
            data.interactions, data.user_features, data.item_features)

    a, b = fit(), fit()
    assert a.params is not None and b.params is not None
    for (name, pa), (_, pb) in zip(a.params.named_parameters(), b.params.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_field_subset_selection(data: Planted) -> None:
    fm = FactorizationMachine(epochs=1, n_factors=2, use_history=False, use_item_age=False,
                              use_user_features=False, user_feature_columns=None,
                              item_feature_columns=["genre"]).fit(
        data.interactions, data.user_features, data.item_features)
    assert [s.name for s in fm.field_specs] == ["user_id", "history_length", "item_features", "item_id"]
    assert fm.encoders["item_features"].size == 4  # four genres, year not selected


def test_regression_predictions_are_clipped_to_rating_range(fm: FactorizationMachine,
                                                            data: Planted) -> None:
    pred = fm.predict(data.test)
    lo, hi = data.interactions["rating"].min(), data.interactions["rating"].max()
    assert pred.min() >= lo and pred.max() <= hi


def test_logistic_fm_recovers_planted_labels(data: Planted) -> None:
    def labels(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(rating=(df["rating"] > data.interactions["rating"].median()).astype(float))

    fm = FactorizationMachine(objective="logistic", epochs=40, batch_size=64, n_factors=4, lr=0.01,
                              l2_factors=0.001, patience=5).fit(labels(data.interactions))
    test = labels(data.test)
    p = fm.predict(test)
    assert ((p > 0) & (p < 1)).all()
    assert auc(test["rating"], p) > 0.85


def test_ranking_fm_beats_popularity_on_planted_preferences() -> None:
    # implicit feedback: each user interacts with their 8 highest-scoring of 40 items; leave 2 out
    d = planted(n_users=80, n_items=40, density=1.0, noise=0.0, seed=3)
    full = pd.concat([d.interactions, d.test])
    ranked = full.assign(s=full["rating"]).sort_values(["user_id", "s"], ascending=[True, False])
    top = ranked.groupby("user_id").head(8)
    rng = np.random.default_rng(0)
    held_mask = top.groupby("user_id").cumcount().isin(rng.permutation(8)[:2]).to_numpy()
    train, held = top[~held_mask], top[held_mask]
    users = sorted(held["user_id"].unique())
    relevant = [set(held.loc[held["user_id"] == u, "item_id"]) for u in users]
    fm = FactorizationMachine(objective="ranking", loss="bpr", epochs=30, batch_size=64, n_factors=8,
                              lr=0.01, l2_factors=1e-4, validation="none", use_history=False,
                              use_item_age=False).fit(train)
    pop = Popularity().fit(train)
    hr_fm = ranking_metrics(fm.recommend(users, k=5)[0], relevant, 5)["hr"].mean()
    hr_pop = ranking_metrics(pop.recommend(users, k=5)[0], relevant, 5)["hr"].mean()
    assert hr_fm > hr_pop + 0.2


def test_logistic_rejects_non_binary_labels(data: Planted) -> None:
    with pytest.raises(ValueError, match="0/1 labels"):
        FactorizationMachine(objective="logistic", epochs=1).fit(data.interactions)


def test_bad_objective_is_rejected() -> None:
    with pytest.raises(ValueError, match="objective"):
        FactorizationMachine(objective="poisson")


def test_cold_validation_holds_out_pseudo_new_users(data: Planted) -> None:
    fm = FactorizationMachine(epochs=3, n_factors=2, validation="cold", cold_user_fraction=0.2).fit(
        data.interactions, data.user_features, data.item_features)
    assert len(fm.history.val_metric) >= 1 and np.isfinite(fm.history.val_metric).all()
    assert fm.history.best_epoch >= 1


def test_fit_draws_from_its_own_generator_not_torch_global_rng(data: Planted) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    FactorizationMachine(epochs=1, n_factors=2, validation="none").fit(data.interactions)
    assert torch.equal(torch.rand(3), expected)


def test_explicit_generator_gives_the_seeded_global_stream(fm: FactorizationMachine) -> None:
    from fedrec.models.fm_core import FMParams

    def params(generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return FMParams(fm.field_specs, 3, 0.05, 0.0, {s.name: 0.1 for s in fm.field_specs}, 0.01,
                        generator=generator).state_dict()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        seeded_global = params(None)
    explicit = params(torch.Generator().manual_seed(5))
    assert all(torch.equal(seeded_global[k], explicit[k]) for k in seeded_global)


def test_init_params_default_generator_is_seeded_by_config(data: Planted) -> None:
    fm = FactorizationMachine(n_factors=3, seed=4)
    train, _ = fm.prepare_fit(data.interactions, data.user_features, None, "none")
    y = train["rating"].to_numpy(dtype=np.float64)
    fm.init_params(y)
    assert fm.params is not None
    default = {k: v.clone() for k, v in fm.params.state_dict().items()}
    fm.init_params(y, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(default[k], v) for k, v in fm.params.state_dict().items())
    fm.init_params(y, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(default["v.user_id"], fm.params.state_dict()["v.user_id"])


def test_validation_metric_from_scores_reproduces_the_best_epoch_metric(fm: FactorizationMachine,
                                                                        data: Planted) -> None:
    from fedrec.models.training import random_holdout

    _, val = random_holdout(data.interactions, fm.config.validation_fraction, fm.config.seed)
    rows = fm.validation_rows(val)
    metric = fm.validation_metric_from_scores(fm.decision_function(val), rows.y, None, len(rows.u))
    assert metric == fm.history.val_metric[fm.history.best_epoch - 1]  # the best parameters are loaded
    rmse = float(np.sqrt(np.mean((fm.predict(val) - val["rating"].to_numpy()) ** 2)))
    assert metric == pytest.approx(rmse, abs=1e-12)


def test_ranking_validation_metric_from_public_terms(data: Planted) -> None:
    from fedrec.models.fm_core import fm_output

    fm = FactorizationMachine(objective="ranking", epochs=2, batch_size=128, n_factors=3, n_negatives=3,
                              use_item_age=False).fit(data.interactions, validation=data.test)
    assert fm.params is not None
    rows = fm.validation_rows(data.test)
    assert rows.neg is not None and rows.neg.shape == (len(rows.u), 3)
    uu, ii, tt = fm.expand_negatives(rows.u, rows.i, rows.ts, None, rows.neg)
    with torch.no_grad():
        terms = fm.terms(uu, ii, tt)
        z = fm_output(terms, fm.params.bias, len(uu), 3)
        reg = torch.zeros(len(uu))
        for t in terms:
            reg = reg + t.reg
    metric = fm.validation_metric_from_scores(z, None, reg, len(rows.u))
    assert metric == fm.history.val_metric[fm.history.best_epoch - 1]


def test_expand_negatives_puts_each_positives_negatives_after_all_positives() -> None:
    fm = FactorizationMachine(objective="ranking", n_negatives=2)
    u, i, ts = np.array([0, 1]), np.array([2, 3]), np.array([10, 11])
    uu, ii, tt = fm.expand_negatives(u, i, ts, None, np.array([[5, 6], [7, 8]]))
    assert uu.tolist() == [0, 1, 0, 0, 1, 1] and ii.tolist() == [2, 3, 5, 6, 7, 8]
    assert tt.tolist() == [10, 11, 10, 10, 11, 11]
    z = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0, 0.0])
    bpr = FactorizationMachine(objective="ranking", loss="bpr", n_negatives=2).data_loss(z, None, 2)
    manual = -torch.nn.functional.logsigmoid(torch.tensor([1.5, 3.0, -2.0, 1.0])).mean()
    assert float(bpr) == pytest.approx(float(manual), abs=1e-7)
    regression = FactorizationMachine()
    assert regression.expand_negatives(u, i, ts, None) == (u, i, ts)
    with pytest.raises(ValueError, match="sampler or neg"):
        fm.expand_negatives(u, i, ts, None)


def test_sgd_optimizer_trains_the_fm(data: Planted) -> None:
    kw = {"epochs": 3, "batch_size": 64, "n_factors": 4, "validation": "none", "lr": 0.02}
    sgd = FactorizationMachine(optimizer="sgd", **kw).fit(data.interactions)
    adam = FactorizationMachine(**kw).fit(data.interactions)
    assert sgd.history.train_loss[-1] < sgd.history.train_loss[0]
    assert sgd.history.train_loss != adam.history.train_loss
    with pytest.raises(ValueError, match="optimizer"):
        FactorizationMachine(optimizer="adagrad")
