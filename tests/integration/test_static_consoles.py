"""Consoles declared in the config (no libvirt domain behind the name) work like domains."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from websockets.sync.client import connect

from support import vms
from support.processes import BrokerProcess, start_broker
from support.rfb_client import handshake, request_update
from support.ws import close_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def static_broker(
    tmp_path_factory, tcp_vm: libvirt.virDomain, unix_vm: libvirt.virDomain, socket_dir: Path
) -> Iterator[BrokerProcess]:
    targets = ",".join(
        (
            f"desk-tcp=tcp:127.0.0.1:{vms.vnc_port(tcp_vm)}",
            f"desk-unix=unix:{socket_dir / 'unix.sock'}",
            "desk-dead=tcp:127.0.0.1:1",
        )
    )
    process = start_broker(tmp_path_factory.mktemp("static-state"), extra_env={"BROKER_STATIC_CONSOLES": targets})
    yield process
    process.stop()


@pytest.mark.parametrize("name", ["desk-tcp", "desk-unix"])
def test_static_console_relays_a_real_vnc_server(static_broker: BrokerProcess, name: str) -> None:
    response = static_broker.api("POST", f"/api/v1/domains/{name}/console")
    assert response.status_code == 201, response.text
    minted = response.json()
    assert minted["domain"]["name"] == name
    with connect(minted["websocket_url"], open_timeout=10) as ws:
        init = handshake(ws)
        rectangles, _pixels = request_update(ws, init)
        assert rectangles >= 1


def test_static_consoles_are_listed_with_libvirt_domains(
    static_broker: BrokerProcess, tcp_vm: libvirt.virDomain
) -> None:
    listing = {d["name"]: d for d in static_broker.api("GET", "/api/v1/domains").json()["domains"]}
    assert listing["desk-unix"]["state"] == "static"
    assert listing["desk-unix"]["consoles"][0]["endpoint"].startswith("vnc+unix:///")
    assert tcp_vm.name() in listing
    result = static_broker.cli("token", "desk-tcp", "--json")
    assert result.returncode == 0, result.stderr


def test_unreachable_static_console_closes_with_its_code(static_broker: BrokerProcess) -> None:
    closed = close_of(static_broker.mint("desk-dead")["websocket_url"])
    assert closed.code == 4203
    assert "desk-dead" in closed.reason
