"""Shared test setup: tests under tests/integration/ are marked ``integration`` (real broker);
every log the session's processes wrote is scanned for CPR numbers at its end (tests/log_scan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.log_scan import (  # noqa: F401 - the CPR log scan's hooks and fixture
    _cpr_log_scan_roots,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
)

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
    # tests that restart the session's broker run last, so nothing else sees the disruption
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)
