"""Shared test helpers: the location of the reference data (``../shared/data``) and the ``data`` marker.

``shared_data_path()`` returns the folder (``$FEDREC_DATA_DIR`` if set, else ``<repo>/../shared/data``)
or ``None`` when it does not exist; the ``shared_data_dir`` fixture returns it or skips the test.
Tests marked ``@pytest.mark.data`` are skipped automatically when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_data_path() -> Path | None:
    env = os.environ.get("FEDREC_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def shared_data_dir() -> Path:
    path = shared_data_path()
    if path is None:
        pytest.skip("reference data folder absent (set FEDREC_DATA_DIR or provide ../shared/data)")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shared_data_path() is not None:
        return
    skip = pytest.mark.skip(reason="reference data folder absent (set FEDREC_DATA_DIR or ../shared/data)")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)
