"""Suite-wide: the console pages are built from the current sources before any test runs
(web/build.mjs, under a second when little changed), so an edited page is never tested
stale. A test that restarts libvirtd runs last, so no shared libvirt connection or domain
handle is used across the restart. And one Chromium for the run, and one Playwright: its
sync API allows one instance at a time (tests/e2e, tests/fleet)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import chromium as chromium_setup

WEB = Path(__file__).resolve().parents[1] / "web"


def pytest_sessionstart(session: pytest.Session) -> None:
    node = shutil.which("node")
    if node is None or not (WEB / "node_modules" / "esbuild").is_dir():
        raise pytest.UsageError("the console pages cannot be built: run contrib/setup.sh (node, npm ci in web/)")
    built = subprocess.run([node, "build.mjs", "--quiet"], cwd=WEB, capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        raise pytest.UsageError(f"web/build.mjs failed:\n{built.stdout}{built.stderr}")


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
