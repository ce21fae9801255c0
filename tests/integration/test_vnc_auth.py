"""VNC authentication on the user's behalf, against QEMU's real VNC password check."""

from __future__ import annotations

import json
import re
import subprocess

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import vms
from support.processes import BrokerProcess
from support.raw_ws import RawWebSocket
from support.rfb_client import WsBytes, handshake, request_update
from support.wait import wait_until

pytestmark = pytest.mark.integration

PASSWORD = "s3cret"
NEW_PASSWORD = "n3wpass"


@pytest.fixture(scope="module")
def locked_vm(conn: libvirt.virConnect):
    graphics = f"<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='{PASSWORD}'/>"
    dom = vms.define(conn, "broker-test-passwd", graphics)
    yield dom
    vms.remove(conn, dom.name())


def offered_security_types(url: str) -> list[int]:
    with connect(url) as ws:
        stream = WsBytes(ws)
        assert stream.read_exact(12) == b"RFB 003.008\n"
        ws.send(b"RFB 003.008\n")
        count = stream.read_exact(1)[0]
        return list(stream.read_exact(count))


def test_password_protected_console_opens_with_none_offered(broker: BrokerProcess, locked_vm) -> None:
    assert offered_security_types(broker.mint(locked_vm.name())["websocket_url"]) == [1]
    with connect(broker.mint(locked_vm.name())["websocket_url"]) as ws:
        init = handshake(ws)
        assert init.name == f"QEMU ({locked_vm.name()})"
        rectangles, _ = request_update(ws, init)
        assert rectangles >= 1


def test_password_appears_nowhere(broker: BrokerProcess, locked_vm) -> None:
    minted = broker.mint(locked_vm.name())
    with connect(minted["websocket_url"]) as ws:
        handshake(ws)
    listing = broker.api("GET", "/api/v1/domains").text
    cli = broker.cli("domains", "--json").stdout
    for text in (json.dumps(minted), listing, cli, broker.log()):
        assert PASSWORD not in text


def test_password_changed_live_is_read_at_connect_time(broker: BrokerProcess, locked_vm) -> None:
    update = (
        f"<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='{NEW_PASSWORD}' connected='keep'/>"
    )
    locked_vm.updateDeviceFlags(update, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    try:
        with connect(broker.mint(locked_vm.name())["websocket_url"]) as ws:
            assert handshake(ws).width > 0
        assert NEW_PASSWORD not in broker.log()
    finally:
        restore = update.replace(NEW_PASSWORD, PASSWORD)
        locked_vm.updateDeviceFlags(restore, libvirt.VIR_DOMAIN_AFFECT_LIVE)


def test_password_changed_behind_libvirts_back_is_a_clear_close(broker: BrokerProcess, locked_vm) -> None:
    """QEMU's password set through its monitor: libvirt (and so the broker) has the old one."""
    subprocess.run(
        ["virsh", "-c", vms.URI, "qemu-monitor-command", locked_vm.name(), "--hmp", "set_password vnc other1"],
        check=True,
        capture_output=True,
    )
    try:
        with connect(broker.mint(locked_vm.name())["websocket_url"]) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4206
        assert "Authentication failed" in closed.value.rcvd.reason
    finally:
        subprocess.run(
            ["virsh", "-c", vms.URI, "qemu-monitor-command", locked_vm.name(), "--hmp", f"set_password vnc {PASSWORD}"],
            check=True,
            capture_output=True,
        )
    assert "other1" not in broker.log()


def vnc_clients(dom: libvirt.virDomain) -> int:
    """How many VNC clients QEMU itself has connected (its per-VM limit counts these)."""
    info = subprocess.run(
        ["virsh", "-c", vms.URI, "qemu-monitor-command", dom.name(), "--hmp", "info vnc"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return len(re.findall(r"^\s*Client:", info, re.MULTILINE))


# The browser's side of the handshake the broker offers, one step at a time.
HANDSHAKE_STEPS = [
    lambda ws: None,  # gone before the broker says anything
    lambda ws: ws.read_payload(12),  # ProtocolVersion read
    lambda ws: ws.send_binary(b"RFB 003.008\n"),  # ProtocolVersion answered
    lambda ws: ws.read_payload(2),  # security types read
    lambda ws: ws.send_binary(b"\x01"),  # None chosen
    lambda ws: ws.read_payload(4),  # SecurityResult read, ClientInit never sent
]


def test_client_reset_at_every_handshake_step_closes_the_vnc_connection(broker: BrokerProcess, locked_vm) -> None:
    """The broker has logged in to QEMU for the browser; a browser that vanishes at any
    point must not leave that connection open (QEMU limits them) nor a traceback."""
    for steps in range(len(HANDSHAKE_STEPS)):
        ws = RawWebSocket(broker.mint(locked_vm.name())["websocket_url"])
        for step in HANDSHAKE_STEPS[: steps + 1]:
            step(ws)
        ws.reset()
    wait_until(lambda: vnc_clients(locked_vm) == 0, 10, "the broker to close the VNC connections of clients that left")
    log = broker.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
