"""A real console through the real broker: mint (CLI and REST), connect, RFB handshake, a real screen."""

from __future__ import annotations

import json

import libvirt
import pytest
from websockets.sync.client import connect

from support.processes import BrokerProcess
from support.rfb_client import handshake, request_update

pytestmark = pytest.mark.integration

VGA_SIZES = {(640, 480), (720, 400)}  # SeaBIOS graphics, then text mode


def mint_rest(broker: BrokerProcess, domain: str) -> dict:
    return broker.mint(domain)


def mint_cli(broker: BrokerProcess, domain: str) -> dict:
    result = broker.cli("token", domain, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_real_screen(websocket_url: str, domain: libvirt.virDomain) -> None:
    with connect(websocket_url, subprotocols=["binary"], open_timeout=10) as ws:
        assert ws.subprotocol == "binary"
        init = handshake(ws)
        assert (init.width, init.height) in VGA_SIZES
        assert init.name == f"QEMU ({domain.name()})"
        rectangles, pixels = request_update(ws, init)
        assert rectangles >= 1
        assert len(set(pixels[i : i + 4] for i in range(0, len(pixels), 4))) > 1, "the screen is blank"


@pytest.mark.parametrize("mint", [mint_rest, mint_cli], ids=["rest", "cli"])
def test_tcp_console(broker: BrokerProcess, tcp_vm: libvirt.virDomain, mint) -> None:
    minted = mint(broker, tcp_vm.name())
    assert minted["domain"] == {"name": tcp_vm.name(), "uuid": tcp_vm.UUIDString()}
    assert_real_screen(minted["websocket_url"], tcp_vm)


@pytest.mark.parametrize("mint", [mint_rest, mint_cli], ids=["rest", "cli"])
def test_unix_socket_console(broker: BrokerProcess, unix_vm: libvirt.virDomain, mint) -> None:
    minted = mint(broker, unix_vm.name())
    assert_real_screen(minted["websocket_url"], unix_vm)


def test_console_without_listener_goes_through_libvirt_fd(broker: BrokerProcess, fd_vm: libvirt.virDomain) -> None:
    minted = broker.mint(fd_vm.UUIDString())
    assert_real_screen(minted["websocket_url"], fd_vm)


def test_works_without_binary_subprotocol(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    minted = broker.mint(tcp_vm.name())
    with connect(minted["websocket_url"], open_timeout=10) as ws:
        assert ws.subprotocol is None
        init = handshake(ws)
        assert (init.width, init.height) in VGA_SIZES


def test_cli_prints_console_url(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    result = broker.cli("token", tcp_vm.name(), "--ttl", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(broker.url + "/console?token=")


def test_domains_lists_every_kind(broker: BrokerProcess, tcp_vm, unix_vm, fd_vm, off_vm) -> None:
    listing = {d["name"]: d for d in broker.api("GET", "/api/v1/domains").json()["domains"]}
    assert listing[tcp_vm.name()]["consoles"][0]["endpoint"].startswith("vnc://127.0.0.1:59")
    assert listing[unix_vm.name()]["consoles"][0]["endpoint"].startswith("vnc+unix:///")
    assert listing[fd_vm.name()]["consoles"][0]["endpoint"] == "vnc+fd://graphics/0"
    assert listing[off_vm.name()]["state"] == "shutoff"
    assert "not running" in listing[off_vm.name()]["console_unavailable"]
    text = broker.cli("domains")
    assert text.returncode == 0, text.stderr
    assert any(line.startswith(off_vm.name()) and "shutoff" in line for line in text.stdout.splitlines())


def test_healthz_reports_libvirt(broker: BrokerProcess) -> None:
    import httpx

    response = httpx.get(broker.url + "/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
