"""Rolling cut dates, pooled dormant-customer cases and the customer bootstrap (known answers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.eval import retention as rt

DAY = 86_400
T = 1_000 * DAY


def timeline() -> pd.DataFrame:
    """a: dormant at T (last row 40 d before) and at T + 10 d, returns at T + 20 d with new item n1.
    b: active (a row 5 d before T), returns with n2: never a case at T. c: dormant, never returns."""
    rows = [("a", f"h{j}", T - (40 + j) * DAY) for j in range(5)] + [("a", "n1", T + 20 * DAY)]
    rows += [("b", f"h{j}", T - (5 + j) * DAY) for j in range(5)] + [("b", "n2", T + 21 * DAY)]
    rows += [("c", f"h{j}", T - (60 + j) * DAY) for j in range(5)] + [("z", "x", T + 400 * DAY)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_pooled_cases_count_a_customer_once_per_cut() -> None:
    pooled = rt.pooled_setups(timeline(), [T, T + 10 * DAY], horizon_days=30)
    assert pooled.users.tolist() == ["a", "a"]  # a is a case at both cuts; b is active at T, c never returns
    assert pooled.cuts.tolist() == [T, T + 10 * DAY]
    assert pooled.relevant == [{"n1"}, {"n1"}]
    assert pooled.n_customers == 1
    assert pooled.summary()["cases_per_cut"] == [1, 1]


def test_pooled_setups_reject_bad_cuts() -> None:
    with pytest.raises(ValueError, match="increasing"):
        rt.pooled_setups(timeline(), [T + DAY, T])
    with pytest.raises(ValueError, match="at least one"):
        rt.pooled_setups(timeline(), [])
    with pytest.raises(ValueError, match="no dormant customer"):
        rt.pooled_setups(timeline(), [T], horizon_days=1)


def test_rolling_cuts() -> None:
    cuts = rt.rolling_cuts(timeline(), T, T + 28 * DAY, 14)
    assert cuts == [T, T + 14 * DAY, T + 28 * DAY]
    with pytest.raises(ValueError, match="time range"):
        rt.rolling_cuts(timeline(), T, T + 10_000 * DAY, 14)
    with pytest.raises(ValueError, match="step_days"):
        rt.rolling_cuts(timeline(), T, T + DAY, 0)


def test_customer_bootstrap_resamples_customers_not_cases() -> None:
    # customer x has 3 cases all hits, y one miss: any resample of customers gives means 0, 0.75 or 1
    values = np.array([1.0, 1.0, 1.0, 0.0])
    who = np.array(["x", "x", "x", "y"], dtype=object)
    ci = rt.customer_bootstrap(values, who, n_boot=500)
    assert ci.point == pytest.approx(0.75)
    assert ci.low == pytest.approx(0.0) and ci.high == pytest.approx(1.0)
    paired = rt.customer_bootstrap(values, who, values, n_boot=50)
    assert (paired.point, paired.low, paired.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        rt.customer_bootstrap(values, who[:2])
