"""Suite-wide ordering: a test that restarts libvirtd runs last, so no shared
libvirt connection or domain handle is used across the restart."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("restarts_libvirtd") is not None)
