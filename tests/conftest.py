"""Suite-wide ordering: a test that restarts libvirtd runs last, so no shared
libvirt connection or domain handle is used across the restart. And one Chromium for the
run, and one Playwright: its sync API allows one instance at a time (tests/e2e, tests/fleet)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from support import chromium as chromium_setup


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def browser(playwright: Any) -> Iterator[Any]:
    chromium = playwright.chromium.launch(executable_path=chromium_setup.EXECUTABLE, args=chromium_setup.ARGS)
    yield chromium
    chromium.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("restarts_libvirtd") is not None)
