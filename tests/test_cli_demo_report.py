"""The demo's result table explains itself (issue #13, item 17)."""

from __future__ import annotations

import numpy as np

from training.demo_report import CENTRALIZED, FEDERATED, GUEST_ONLY, evaluate, format_table


def test_table_says_how_to_read_it() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 5, 200)
    preds = {FEDERATED: y + rng.normal(0, 0.5, 200), GUEST_ONLY: y + rng.normal(0, 0.9, 200),
             CENTRALIZED: y + rng.normal(0, 0.45, 200)}
    res = evaluate(preds, y, np.arange(200) < 40, n_boot=50, seed=0)
    text = format_table(res, {FEDERATED: 10.0, GUEST_ONLY: 1.0, CENTRALIZED: 1.0})
    assert "lower is better" in text
    assert "cold user: a test user with at most 5 training ratings" in text
    assert "positive means X is better" in text
    assert "fit s" in text and "Not comparable" in text
    assert "README's benchmark" in text


def test_the_guide_names_the_run_s_own_settings() -> None:
    y = np.linspace(1, 5, 50)
    res = evaluate({FEDERATED: y, GUEST_ONLY: y + 0.1}, y, np.zeros(50, bool), n_boot=20, seed=0)
    res["model"] = {"epochs": 2, "n_factors": 4}
    text = format_table(res, {})
    assert "this demo's split and settings (2 epochs, 4 factors)" in text and "6 epochs" not in text
