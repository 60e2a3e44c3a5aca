"""Retention-lift logic on a tiny hand-made timeline (known answers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.eval import retention as rt

DAY = 86_400
T = 1_000 * DAY


def timeline() -> pd.DataFrame:
    """a: 5 rows, last 40 d before T, returns with new item n1 and seen item h0 -> dormant, evaluated.
    b: 5 rows, last 10 d before T -> active, not dormant.
    c: 4 rows, 50 d before T -> too little history.
    d: 6 rows, last 31 d before T, returns only to seen item h1 -> dormant, returned, not evaluated.
    e: 5 rows, last 60 d before T, never returns -> dormant, not returned."""
    rows = []
    rows += [("a", f"h{j}", T - (40 + j) * DAY) for j in range(5)] + [("a", "n1", T), ("a", "h0", T + DAY)]
    rows += [("b", f"h{j}", T - (10 + j) * DAY) for j in range(5)] + [("b", "n2", T + DAY)]
    rows += [("c", f"h{j}", T - 50 * DAY - j) for j in range(4)] + [("c", "n3", T + DAY)]
    rows += [("d", f"h{j}", T - (31 + j) * DAY) for j in range(6)] + [("d", "h1", T + 2 * DAY)]
    rows += [("e", f"h{j}", T - (60 + j) * DAY) for j in range(5)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return df.assign(rating=1.0)


def test_dormant_selection() -> None:
    d = rt.dormant_users(timeline(), T, inactive_days=30, min_history=5)
    assert d["user_id"].tolist() == ["a", "d", "e"]
    assert d["n_history"].tolist() == [5, 6, 5]
    assert d["days_inactive"].tolist() == [40.0, 31.0, 60.0]


def test_a_row_exactly_inactive_days_before_t_counts_as_activity() -> None:
    # the window is [T - D, T): d's last row at exactly T - 31 days falls inside it for D = 31
    d = rt.dormant_users(timeline(), T, inactive_days=31, min_history=5)
    assert d["user_id"].tolist() == ["a", "e"]


def test_setup_relevant_sets_exclude_seen_items() -> None:
    s = rt.retention_setup(timeline(), T, inactive_days=30, min_history=5)
    assert s.eval_users.tolist() == ["a"]
    assert s.relevant == [{"n1"}]
    assert s.dormant.set_index("user_id")["returned"].to_dict() == {"a": True, "d": True, "e": False}
    assert s.summary()["n_returned_repeat_only"] == 1
    assert s.eval_history.tolist() == [5]


def test_horizon_limits_the_after_window() -> None:
    s = rt.retention_setup(timeline(), T, horizon_days=1.5)
    assert s.dormant.set_index("user_id")["returned"].to_dict() == {"a": True, "d": False, "e": False}


def test_hits_count_recommended_items_in_the_relevant_set() -> None:
    rec = np.array([["x", "n1", "y"], ["x", "y", "z"]], dtype=object)
    m = rt.per_user_metrics(rec, [{"n1"}, {"n1", "q"}], k=3)
    assert m["hr"].tolist() == [1.0, 0.0]
    assert m["ndcg"][0] == pytest.approx(1 / np.log2(3))
    assert m["recall"].tolist() == [1.0, 0.0]


def test_ids_compare_by_string_form() -> None:
    m = rt.per_user_metrics(np.array([[7, 8]]), [{"8"}], k=2)
    assert m["hr"].tolist() == [1.0]


def test_lift_ratio_and_diff() -> None:
    a = np.array([1.0, 1.0, 0.0, 1.0])
    b = np.array([1.0, 0.0, 0.0, 1.0])
    out = rt.lift(a, b, n_boot=200)
    assert out["ratio"].point == pytest.approx(1.5)
    assert out["diff"].point == pytest.approx(0.25)
    assert out["ratio"].low <= 1.5 <= out["ratio"].high


def test_history_bins() -> None:
    assert rt.history_bins(np.array([3, 5, 9, 10, 49, 50])).tolist() == [
        "<5", "5-9", "5-9", "10-19", "20-49", ">=50"]


def test_top_decile() -> None:
    p = np.arange(20, dtype=float)  # the two highest are users 18, 19
    y = np.zeros(20, bool)
    y[[19, 3]] = True
    out = rt.top_decile(p, y)
    assert out["n_top"] == 2 and out["top_rate"] == 0.5 and out["base_rate"] == 0.1
    assert out["lift"] == pytest.approx(5.0)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="inactive_days"):
        rt.dormant_users(timeline(), T, inactive_days=0)
    with pytest.raises(ValueError, match="missing column"):
        rt.retention_setup(timeline().drop(columns="timestamp"), T)
