"""Reports a reader opens (issue #13 item 18): the retention report's checks in points with their
interval (they printed Python dicts), its plots redrawn from stored results, results files without
this machine's absolute paths, and the demo's results.json keyed without spaces."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from training.demo_report import CENTRALIZED, GUEST_ONLY, federated_label, model_key, results_for_json

REPO = Path(__file__).resolve().parents[1]
STORED = REPO / "benchmarks" / "results" / "retention.json"


@pytest.fixture(scope="module")
def retention() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_retention", REPO / "benchmarks" / "retention.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_check_value_reads_as_points_with_its_interval(retention: ModuleType) -> None:
    value = {"point": -0.041666, "low": -0.0977, "high": 0.01403}
    assert retention.check_value(value) == "-4.2 [-9.8, +1.4] points (95% CI)"
    assert retention.check_value("relative gap 0.00e+00") == "relative gap 0.00e+00"


def test_paths_in_results_are_relative(retention: ModuleType, tmp_path: Path) -> None:
    assert retention._shown_path(REPO / "benchmarks" / "results") == "benchmarks/results"
    assert retention._shown_path(REPO.parent / "shared" / "data") == "../shared/data"
    assert retention._shown_path(tmp_path / "x" / "retention.json") == "x/retention.json"


def test_the_stored_report_redraws_with_a_bottom_line_and_readable_checks(retention: ModuleType,
                                                                          tmp_path: Path) -> None:
    """``--merge`` redraws the report and plots from stored results (nothing trained)."""
    assert retention.main(["--merge", str(STORED), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "retention.md").read_text()
    assert "**Bottom line (ml-100k" in md and "30-day popularity is the better bet" in md
    checks = md.split("## Checks")[1].split("##")[0]
    assert "{'point'" not in checks and "points (95% CI)" in checks
    stored = (tmp_path / "retention.json").read_text()
    assert str(REPO) not in stored and str(tmp_path) not in stored
    assert (tmp_path / "retention_lift.png").stat().st_size > 10_000


def test_demo_results_json_keys_and_paths(tmp_path: Path) -> None:
    res = {"models": {federated_label(2): {"rmse": 1.0}, GUEST_ONLY: {"rmse": 1.1},
                      CENTRALIZED: {"rmse": 0.9}},
           "parties": {"guest": {"model_dir": str(tmp_path / "guest" / "model"), "peer": "host"},
                       "host": {"partials": str(tmp_path.resolve() / "host" / "partials.parquet")}},
           "elsewhere": "/etc/hosts"}
    out = results_for_json(res, tmp_path)
    assert out["models"] == {"federated": {"label": "federated FM (2 processes)", "rmse": 1.0},
                             "guest_only": {"label": GUEST_ONLY, "rmse": 1.1},
                             "centralized": {"label": CENTRALIZED, "rmse": 0.9}}
    assert out["parties"]["guest"] == {"model_dir": "guest/model", "peer": "host"}
    assert out["parties"]["host"]["partials"] == "host/partials.parquet"
    assert out["elsewhere"] == "/etc/hosts"  # outside the demo folder: left as it is
    assert not any(" " in k for k in out["models"]) and model_key(federated_label(3)) == "federated"
    json.dumps(out)
