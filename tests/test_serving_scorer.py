"""The scorer against a naive numpy reference: top-K, seen filtering, allow/deny, chunking, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.models.base import FALLBACK_NONE, NO_HOST_PARTIAL, UNKNOWN_USER
from serving.artifacts import ArtifactError, HostPartials, ServingBundle, random_bundle
from serving.scorer import Scorer

K = 5


def naive_topk(bundle: ServingBundle, users: list[str], k: int, filter_seen: bool = True,
               banned: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 score matrix, -inf on seen/banned items, argsort."""
    inner = bundle.user_map.to_inner(users)
    s = (bundle.a_u[inner, None].astype(np.float64) + bundle.b_i[None, :]
         + bundle.p_u[inner].astype(np.float64) @ bundle.q_i.T.astype(np.float64))
    for r, u in enumerate(inner):
        if filter_seen:
            s[r, bundle.seen_indices[bundle.seen_indptr[u]:bundle.seen_indptr[u + 1]]] = -np.inf
        if banned:
            s[r, sorted(banned)] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return bundle.item_map.to_raw(order.ravel()).reshape(order.shape), np.take_along_axis(s, order, 1)


@pytest.fixture(scope="module")
def bundle() -> ServingBundle:
    return random_bundle(200, 60, 8, seen_per_user=6, seed=3)


def test_matches_naive_reference(bundle: ServingBundle) -> None:
    users = [f"u{j}" for j in range(200)]
    rec = Scorer(bundle).recommend(users, K)
    ids, scores = naive_topk(bundle, users, K)
    assert (rec.item_ids == ids).all()
    assert rec.scores == pytest.approx(scores, abs=1e-5)  # float32 scoring vs float64 reference


def test_seen_items_are_filtered(bundle: ServingBundle) -> None:
    rec = Scorer(bundle).recommend(["u7"], 20)
    seen = set(bundle.item_map.to_raw(bundle.seen_indices[bundle.seen_indptr[7]:bundle.seen_indptr[8]]))
    assert len(seen) == 6
    assert not seen & set(rec.item_ids[0].tolist())


def test_keep_seen_returns_the_unfiltered_ranking(bundle: ServingBundle) -> None:
    rec = Scorer(bundle).recommend(["u7", "u8"], K, filter_seen=False)
    ids, _ = naive_topk(bundle, ["u7", "u8"], K, filter_seen=False)
    assert (rec.item_ids == ids).all()


def test_allow_list_restricts_the_catalogue(bundle: ServingBundle) -> None:
    allow = ["i1", "i2", "i3", "i50"]
    rec = Scorer(bundle).recommend(["u0", "u1", "nobody"], 4, allow=allow, filter_seen=False)
    assert all(set(row) == set(allow) for row in rec.item_ids.tolist())


def test_deny_list_matches_reference(bundle: ServingBundle) -> None:
    deny = [f"i{j}" for j in range(0, 60, 3)]
    rec = Scorer(bundle).recommend(["u3", "u4"], K, deny=deny)
    ids, _ = naive_topk(bundle, ["u3", "u4"], K, banned=set(range(0, 60, 3)))
    assert (rec.item_ids == ids).all()


def test_too_few_items_leave_empty_slots_that_to_frame_drops(bundle: ServingBundle) -> None:
    rec = Scorer(bundle).recommend(["u0"], 4, allow=["i1", "i2"], filter_seen=False)
    assert np.isinf(rec.scores[0, 2:]).all()
    assert len(rec.to_frame()) == 2


def test_unknown_allow_item_is_an_error(bundle: ServingBundle) -> None:
    with pytest.raises(ValueError, match="allow list.*'zzz'"):
        Scorer(bundle).recommend(["u0"], K, allow=["i1", "zzz"])


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunking_does_not_change_results(bundle: ServingBundle, chunk: int) -> None:
    users = [f"u{j}" for j in range(0, 200, 3)] + ["ghost"]
    ref = Scorer(bundle, chunk_size=200).recommend(users, K)
    rec = Scorer(bundle, chunk_size=chunk).recommend(users, K)
    assert (rec.item_ids == ref.item_ids).all()
    assert rec.scores == pytest.approx(ref.scores, abs=1e-5)


def test_unknown_user_is_flagged_and_ranked_by_the_item_scores(bundle: ServingBundle) -> None:
    rec = Scorer(bundle).recommend(["u1", "ghost"], K)
    assert rec.fallback.tolist() == [FALLBACK_NONE, UNKNOWN_USER]
    order = np.argsort(-bundle.b_i, kind="stable")[:K]  # a = 0, p = 0: score = b_i, nothing seen
    assert rec.item_ids[1].tolist() == bundle.item_map.to_raw(order).tolist()
    assert rec.scores[1].tolist() == bundle.b_i[order].astype(np.float64).tolist()
    assert rec.counts == {FALLBACK_NONE: 1, NO_HOST_PARTIAL: 0, UNKNOWN_USER: 1}


def test_equal_scores_are_ranked_by_inner_item_id() -> None:
    b = random_bundle(3, 12, 2, seen_per_user=1, seed=2)
    b.b_i = np.repeat(np.float32([3.0, 1.0, 2.0]), 4)  # items 0-3 tie, then 8-11, then 4-7
    b.p_u[:] = 0.0
    rec = Scorer(b).recommend(["u0", "ghost"], 6, filter_seen=False)
    want = [f"i{j}" for j in (0, 1, 2, 3, 8, 9)]
    assert rec.item_ids.tolist() == [want, want]


def test_ids_match_by_their_key() -> None:
    b = random_bundle(10, 20, 4, seed=1)
    b.user_map = type(b.user_map)(list(range(100, 110)), kind="user")
    rec = Scorer(b).recommend(["100", 101, np.int64(102), "0100"], K)
    assert rec.fallback.tolist() == [FALLBACK_NONE, FALLBACK_NONE, FALLBACK_NONE, UNKNOWN_USER]


def test_float_user_ids_are_refused_with_the_row(bundle: ServingBundle) -> None:
    with pytest.raises(ValueError, match=r"user_ids: row 1: id 1.0 of type float"):
        Scorer(bundle).recommend(["u0", 1.0], K)


def test_bad_k_is_rejected(bundle: ServingBundle) -> None:
    with pytest.raises(ValueError, match="k must be"):
        Scorer(bundle).recommend(["u0"], 0)
    with pytest.raises(ValueError, match="exceeds the catalogue"):
        Scorer(bundle).recommend(["u0"], 61)


# ------------------------------------------------------------------ vertical bundles
def _vertical() -> tuple[ServingBundle, HostPartials]:
    b = random_bundle(40, 30, 6, kind="vertical", seed=5)
    rng = np.random.default_rng(9)
    users = np.array([f"u{j}" for j in range(0, 40, 2)] + ["host-only"], dtype=object)  # even users only
    hp = HostPartials(users, rng.standard_normal(len(users)).astype(np.float32),
                      (0.3 * rng.standard_normal((len(users), 6))).astype(np.float32))
    return b, hp


def test_host_partials_join_equals_the_full_model() -> None:
    b, hp = _vertical()
    rec = Scorer(b, hp).recommend(["u4"], K)
    full = ServingBundle(**{**b.__dict__, "kind": "factors"})
    j = 2  # row of u4 in hp
    full.a_u = b.a_u.copy()
    full.p_u = b.p_u.copy()
    full.a_u[4] += hp.z_h[j] + float(b.p_u[4] @ hp.e_h[j])
    full.p_u[4] += hp.e_h[j]
    ids, scores = naive_topk(full, ["u4"], K)
    assert (rec.item_ids == ids).all()
    assert rec.scores == pytest.approx(scores, abs=1e-5)
    assert rec.fallback.tolist() == [FALLBACK_NONE]


def test_missing_host_partial_is_guest_only_and_flagged() -> None:
    b, hp = _vertical()
    rec = Scorer(b, hp).recommend(["u4", "u5", "ghost"], K)
    assert rec.fallback.tolist() == [FALLBACK_NONE, NO_HOST_PARTIAL, UNKNOWN_USER]
    ids, scores = naive_topk(b, ["u5"], K)  # guest half alone: z_H = 0, e_H = 0
    assert (rec.item_ids[1] == ids[0]).all()
    assert rec.scores[1] == pytest.approx(scores[0], abs=1e-5)
    assert rec.counts[NO_HOST_PARTIAL] == 1


def test_host_partials_for_unknown_users_are_reported() -> None:
    b, hp = _vertical()
    s = Scorer(b, hp)
    assert s.host_report == {"host_partials": 21, "joined": 20, "unknown_to_guest": 1}


def test_host_partials_need_a_vertical_bundle_with_the_same_k() -> None:
    b, hp = _vertical()
    with pytest.raises(ArtifactError, match="not 'vertical'"):
        Scorer(random_bundle(40, 30, 6, seed=5), hp)
    short = HostPartials(hp.user_ids, hp.z_h, hp.e_h[:, :4])
    with pytest.raises(ArtifactError, match="k=4"):
        Scorer(b, short)


# ------------------------------------------------------------------ run fingerprints
@pytest.mark.parametrize(("bundle_run", "partials_run", "message"), [
    ("run-a", "run-b", r"run_id 'run-b' but the guest model .* is run_id 'run-a'"),
    ("run-a", None, r"carry no run_id .* guest model .* is run_id 'run-a': re-export them"),
    (None, "run-b", r"run_id 'run-b', but the guest model .* carries no run_id"),
])
def test_partials_of_another_run_are_refused(bundle_run: str | None, partials_run: str | None,
                                             message: str) -> None:
    b, hp = _vertical()
    b.run_id, b.origin = bundle_run, "guest/hetero.json"
    hp.run_id, hp.source = partials_run, "host/partials.parquet"
    with pytest.raises(ArtifactError, match=message) as exc:
        Scorer(b, hp)
    assert "guest/hetero.json" in str(exc.value) and "host/partials.parquet" in str(exc.value)


def test_partials_of_the_same_run_or_both_in_memory_without_run_id_are_joined(
        caplog: pytest.LogCaptureFixture) -> None:
    b, hp = _vertical()
    b.run_id = hp.run_id = "run-a"
    assert Scorer(b, hp).host_report["joined"] == 20
    b.run_id = hp.run_id = None  # both built in memory, no run: accepted, with a warning
    assert Scorer(b, hp).host_report["joined"] == 20
    assert "carry no run_id" in caplog.text


def test_a_partials_file_without_run_id_is_refused_even_beside_a_model_without_one() -> None:
    b, hp = _vertical()
    b.run_id, b.origin = None, "guest/hetero.json"
    hp.run_id, hp.source = None, "host/partials.parquet"  # read from a file without its fingerprint
    with pytest.raises(ArtifactError, match=r"host/partials.parquet carry no run_id .* guest model "
                                            r"guest/hetero.json: partials that cannot be tied"):
        Scorer(b, hp)
