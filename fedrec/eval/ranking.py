"""One-line ranking evaluation: ``evaluate_ranking(model, split, k)``.

``split`` is ``(train, test)`` (e.g. :func:`fedrec.data.split.leave_last_out`), an object with
``.test`` (and optionally ``.train``), or the test table alone; the model must be fitted on the train
part. Every test user gets ``model.recommend(users, k=k, filter_seen=filter_seen)`` — the public API,
so every item the user was not trained on competes (*full ranking*) — and is scored against the set of
their test items (ids compared by :func:`fedrec.data.idmap.id_key`, so ``7`` matches ``"7"``)::

    HR@K(u) = 1[T_u ∩ top_K(u) ≠ ∅],   NDCG@K(u), recall@K(u)   (fedrec.eval.metrics)

Means come with percentile-bootstrap CIs over users; :func:`compare_ranking` gives the paired
difference of two models on the same users. Users unknown to the model are kept (they get its
documented fallback, counted in ``n_unknown_users``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedrec.data.idmap import id_keys
from fedrec.eval.metrics import CI, bootstrap_ci, paired_bootstrap_diff, ranking_metrics


@dataclass
class RankingReport:
    """Mean HR/NDCG/recall@k with bootstrap CIs over ``n_users``; ``per_user`` aligned to ``users``."""

    k: int
    users: np.ndarray
    per_user: dict[str, np.ndarray]
    cis: dict[str, CI]
    n_unknown_users: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hr(self) -> float:
        return float(self.per_user["hr"].mean())

    @property
    def ndcg(self) -> float:
        return float(self.per_user["ndcg"].mean())

    @property
    def n_users(self) -> int:
        return len(self.users)

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "n_users": self.n_users, "n_unknown_users": self.n_unknown_users,
                **{f"{m}@{self.k}": ci.to_dict() for m, ci in self.cis.items()}}

    def __str__(self) -> str:
        return (f"HR@{self.k} {self.cis['hr']}  NDCG@{self.k} {self.cis['ndcg']}  "
                f"({self.n_users} users)")


def _test_table(split: object) -> pd.DataFrame:
    if isinstance(split, pd.DataFrame):
        return split
    if isinstance(split, tuple) and len(split) == 2 and all(isinstance(p, pd.DataFrame) for p in split):
        return split[1]
    test = getattr(split, "test", None)
    if isinstance(test, pd.DataFrame):
        return test
    raise TypeError(f"evaluate_ranking: split must be (train, test) DataFrames, an object with a .test "
                    f"DataFrame, or the test DataFrame; got {type(split).__name__}")


def relevant_sets(test: pd.DataFrame) -> tuple[np.ndarray, list[set[str]]]:
    """Test users (sorted by id key) and each one's set of test item keys."""
    for col in ("user_id", "item_id"):
        if col not in test.columns:
            raise ValueError(f"evaluate_ranking: the test table has no {col!r} column (it has "
                             f"{list(test.columns)})")
    if len(test) == 0:
        raise ValueError("evaluate_ranking: the test table is empty")
    keys = pd.DataFrame({"u": id_keys(test["user_id"], "test user_id"),
                         "i": id_keys(test["item_id"], "test item_id"), "raw": test["user_id"].to_numpy()})
    groups = keys.groupby("u", sort=True)
    users = groups["raw"].first().to_numpy()
    return users, [set(s) for s in groups["i"].agg(list)]


def evaluate_ranking(model: Any, split: object, k: int = 10, *, filter_seen: bool = True,
                     n_boot: int = 1000, seed: int = 0, users: Sequence[Any] | None = None) -> RankingReport:
    """HR/NDCG/recall@k of a fitted model on the test part of ``split`` (module docstring).

    ``users``: evaluate only these test users (default: all of them)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"evaluate_ranking: k must be an integer >= 1, got {k!r}")
    if not hasattr(model, "recommend"):
        raise TypeError(f"evaluate_ranking: model must have recommend(user_ids, k=, filter_seen=); got "
                        f"{type(model).__name__}")
    test_users, rel = relevant_sets(_test_table(split))
    if users is not None:
        wanted = set(id_keys(list(users), "users"))
        keep = np.array([key in wanted for key in id_keys(test_users, "test user_id")], dtype=bool)
        test_users, rel = test_users[keep], [r for r, kk in zip(rel, keep, strict=True) if kk]
        if not len(test_users):
            raise ValueError("evaluate_ranking: none of the given users has a test interaction")
    ids, _ = model.recommend(list(test_users), k=int(k), filter_seen=filter_seen)
    rec = np.array(id_keys(np.asarray(ids).ravel(), "recommended item ids"), dtype=object).reshape(ids.shape)
    per = ranking_metrics(rec, rel, int(k))
    cis = {m: bootstrap_ci(v, n_boot=n_boot, seed=seed) for m, v in per.items()}
    unknown = int(getattr(model, "last_fallbacks", {}).get("unknown_user", 0))
    return RankingReport(int(k), test_users, per, cis, unknown)


def compare_ranking(a: RankingReport, b: RankingReport, metric: str = "hr", n_boot: int = 1000,
                    seed: int = 0) -> CI:
    """Paired bootstrap CI of ``mean_a − mean_b`` of ``metric`` over the users both reports share."""
    if metric not in a.per_user or metric not in b.per_user:
        raise ValueError(f"compare_ranking: metric must be one of {sorted(a.per_user)}, got {metric!r}")
    ka, kb = id_keys(a.users, "report a users"), id_keys(b.users, "report b users")
    if ka != kb:
        raise ValueError("compare_ranking: the two reports cover different users; evaluate both on the "
                         "same split")
    return paired_bootstrap_diff(a.per_user[metric], b.per_user[metric], n_boot=n_boot, seed=seed)
