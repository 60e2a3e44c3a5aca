"""Shared test helpers: the location of the reference data (``../shared/data``) and the ``data`` marker;
the ``ckks`` (a fresh n8192 CKKS key pair) and ``pool`` (a 2-worker process executor) fixtures, one per
test module.

``shared_data_path()`` returns the folder (``$FEDREC_DATA_DIR`` if set, else ``<repo>/../shared/data``)
or ``None`` when it does not exist; the ``shared_data_dir`` fixture returns it or skips the test.
Tests marked ``@pytest.mark.data`` are skipped automatically when the folder is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def ckks() -> Any:
    """A fresh CKKS backend with its secret key (default preset), shared by the module's tests."""
    from fedrec.crypto.ckks import CKKSBackend

    return CKKSBackend.keygen()


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    """A process executor of 2 workers, shared by the module's tests."""
    from fedrec.compute import ProcessExecutor

    with ProcessExecutor(2) as ex:
        yield ex
