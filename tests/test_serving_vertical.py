"""Scoring a vertical FM from its exported halves (:class:`fedrec.models.vertical.VerticalFM`):
z = z_G + z_H + <e_G, e_H>, explicit fallbacks, run fingerprints, and the same answers as serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.artifacts import ArtifactError
from fedrec.models import FactorizationMachine
from fedrec.models.base import NO_HOST_PARTIAL, UNKNOWN_ITEM, UNKNOWN_USER
from fedrec.models.vertical import HostPartials, VerticalFM, join_user_factors, write_host_partials
from serving.export import bundle_from_model
from serving.scorer import Scorer


@pytest.fixture(scope="module")
def guest() -> FactorizationMachine:
    rng = np.random.default_rng(0)
    inter = pd.DataFrame({"user_id": rng.integers(0, 30, 400), "item_id": rng.integers(0, 20, 400),
                          "rating": rng.integers(1, 6, 400).astype(float), "timestamp": np.arange(400)})
    inter = inter.drop_duplicates(["user_id", "item_id"])
    return FactorizationMachine(use_user_features=False, n_factors=3, epochs=2, validation="none",
                                clip=False).fit(inter)


def _partials(users: list[object], k: int = 3) -> pd.DataFrame:
    out = pd.DataFrame({"user_id": [str(u) for u in users], "z_H": np.linspace(0.5, 1.0, len(users))})
    for f in range(k):
        out[f"e_H_{f}"] = 0.1 * (f + 1)
    return out


def test_score_adds_host_partials_to_guest_terms(guest: FactorizationMachine) -> None:
    pairs = pd.DataFrame({"user_id": [1, 2, 3, 99], "item_id": [3, 4, 5, 777]})
    joined = VerticalFM(guest, HostPartials.from_frame(_partials([1, 2, 99]), 3))
    g = guest.party_terms(pairs)["guest"]
    e_h = np.array([0.1, 0.2, 0.3])
    # user 3 has no partials (guest terms only); 99 is unknown to the guest: its partials are not joined
    want = g.z + np.array([0.5 + g.e[0] @ e_h, 0.75 + g.e[1] @ e_h, 0.0, 0.0])
    assert joined.decision_function(pairs) == pytest.approx(want, abs=1e-9)
    assert joined.last_fallbacks == {UNKNOWN_USER: 1, UNKNOWN_ITEM: 1, NO_HOST_PARTIAL: 1}


def test_join_user_factors_equals_the_pair_identity() -> None:
    """``a_u + z_H + <p_u, e_H> + b_i + <p_u + e_H, q_i>`` is ``z_G + z_H + <e_G, e_H>`` with the guest's
    ``z_G = a_u + b_i + <p_u, q_i>`` and ``e_G = p_u + q_i``, for every user-item pair."""
    rng = np.random.default_rng(1)
    a, p, b, q = rng.standard_normal(4), rng.standard_normal((4, 3)), rng.standard_normal(5), \
        rng.standard_normal((5, 3))
    hp = HostPartials(np.arange(4), rng.standard_normal(4), rng.standard_normal((4, 3)),
                      np.array([True, False, True, True]))
    a2, p2 = join_user_factors(a, p, hp)
    joined = a2[:, None] + b[None, :] + p2 @ q.T
    z_g = a[:, None] + b[None, :] + p @ q.T
    e_g = p[:, None, :] + q[None, :, :]
    pairs = z_g + hp.found[:, None] * (hp.z_h[:, None] + np.einsum("uik,uk->ui", e_g, hp.e_h))
    assert joined == pytest.approx(pairs, abs=1e-12)


def test_partials_with_missing_factor_columns_are_refused(guest: FactorizationMachine) -> None:
    with pytest.raises(ArtifactError, match=r"p.parquet: host partials lack column\(s\) \['e_H_2'\]"):
        HostPartials.from_frame(_partials([1]).drop(columns="e_H_2"), 3, source="p.parquet")


def test_duplicate_users_in_partials_are_refused(guest: FactorizationMachine) -> None:
    with pytest.raises(ArtifactError, match=r"row 1, column 'user_id': duplicate id 1"):
        HostPartials.from_frame(_partials([1, "1"]), 3)


def _guest_dir(guest: FactorizationMachine, tmp_path: Path, run_id: str | None) -> Path:
    path = guest.save(tmp_path / "guest")
    meta = {"format": "fedrec.hetero_fm.guest", "format_version": 1, "n_factors": 3}
    (path / "hetero.json").write_text(json.dumps({**meta, **({"run_id": run_id} if run_id else {})}))
    return path


def test_load_joins_files_of_the_same_run(guest: FactorizationMachine, tmp_path: Path) -> None:
    partials = write_host_partials(tmp_path / "partials.parquet", _partials([1, 2]), "run-1")
    joined = VerticalFM.load(_guest_dir(guest, tmp_path, "run-1"), partials)
    pairs = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [3, 4, 5]})
    assert np.isfinite(joined.predict(pairs)).all()
    assert joined.last_fallbacks[NO_HOST_PARTIAL] == 1


def test_load_refuses_partials_of_another_run(guest: FactorizationMachine, tmp_path: Path) -> None:
    partials = write_host_partials(tmp_path / "partials.parquet", _partials([1, 2]), "run-2")
    with pytest.raises(ArtifactError, match=r"partials.parquet are run_id 'run-2' but the guest model "
                                            r".*guest/hetero.json is run_id 'run-1'"):
        VerticalFM.load(_guest_dir(guest, tmp_path, "run-1"), partials)


def test_load_refuses_partials_without_run_id_for_a_fingerprinted_model(guest: FactorizationMachine,
                                                                         tmp_path: Path) -> None:
    _partials([1, 2]).to_parquet(tmp_path / "partials.parquet", index=False)  # no sidecar: old export
    with pytest.raises(ArtifactError, match=r"carry no run_id .*re-export them from the host of run 'run-1'"):
        VerticalFM.load(_guest_dir(guest, tmp_path, "run-1"), tmp_path / "partials.parquet")


def test_library_and_serving_rank_the_same(guest: FactorizationMachine) -> None:
    """The joined model's recommend and the scorer over its serving export answer alike: known users
    with and without partials, and an unknown user (ranked by b_i, partials not joined)."""
    users: list[object] = [1, 2, 3, 4, "nobody"]
    table = HostPartials.from_frame(fm_host_like(guest, [1, 2, "nobody"]), 3)
    ids, scores = VerticalFM(guest, table).recommend(users, k=6)
    rec = Scorer(bundle_from_model(guest, vertical=True), table).recommend(users, 6)
    assert rec.fallback.tolist() == ["none", "none", NO_HOST_PARTIAL, NO_HOST_PARTIAL, UNKNOWN_USER]
    assert (rec.item_ids == ids).all()
    assert rec.scores == pytest.approx(scores, abs=1e-4)


def fm_host_like(guest: FactorizationMachine, users: list[object]) -> pd.DataFrame:
    """Partials of the given users (random, seeded), as a host would export them."""
    rng = np.random.default_rng(5)
    out = pd.DataFrame({"user_id": users, "z_H": rng.standard_normal(len(users))})
    for f in range(guest.config.n_factors):
        out[f"e_H_{f}"] = 0.3 * rng.standard_normal(len(users))
    return out
