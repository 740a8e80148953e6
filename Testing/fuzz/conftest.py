"""The long fuzzing runs (marked ``nightly``) stay out of the default suite: they run only when ``-m`` names them,
as in ``pytest -m nightly Testing/fuzz``."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "nightly" in (config.getoption("markexpr", "") or ""):
        return
    kept, deselected = [], []
    for item in items:
        inside = HERE in Path(str(item.path)).resolve().parents
        (deselected if inside and item.get_closest_marker("nightly") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
