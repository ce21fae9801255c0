"""The deployment as a person meets it: Chromium → nginx (sub-path /novnc/) → broker on a UNIX socket → QEMU.

Everything is a real process, started once per session and stopped at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from support import vms
from support.chromium import page_in_new_context
from support.nginx import Nginx, broker_behind_nginx
from support.processes import BrokerProcess

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def conn() -> Iterator[libvirt.virConnect]:
    connection = vms.connect()
    yield connection
    cleanup = vms.connect()  # fresh: a later test may have restarted libvirtd
    for name in ("broker-test-e2e", "broker-test-tiny"):
        vms.remove(cleanup, name)
    cleanup.close()


@pytest.fixture(scope="session")
def console_vm(conn: libvirt.virConnect) -> libvirt.virDomain:
    return vms.define(conn, "broker-test-e2e", vms.TCP)


@pytest.fixture(scope="session")
def tiny_vm(conn: libvirt.virConnect, tmp_path_factory: pytest.TempPathFactory) -> tuple[libvirt.virDomain, Path]:
    """The tiny Linux guest: a shell on its serial PTY, every line typed on its VGA console
    echoed there; returns the domain and its serial log."""
    serial = tmp_path_factory.mktemp("tiny") / "serial.log"
    return vms.define_tiny(conn, "broker-test-tiny", str(serial)), serial


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, conn: libvirt.virConnect) -> Iterator[tuple[BrokerProcess, Nginx]]:
    with broker_behind_nginx(tmp_path_factory.mktemp("stack")) as both:
        yield both


# `browser` (one Chromium for the whole run) is in tests/conftest.py, shared with tests/fleet.


@pytest.fixture
def page(browser) -> Iterator[object]:
    with page_in_new_context(browser, viewport={"width": 1024, "height": 768}) as page:
        yield page


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
