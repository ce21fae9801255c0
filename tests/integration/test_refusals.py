"""Every refusal closes with its own code and a reason a person can read."""

from __future__ import annotations

import time

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import vms
from support.processes import BrokerProcess
from support.ws import close_of

pytestmark = pytest.mark.integration


def test_used_token_is_refused(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    url = broker.mint(tcp_vm.name())["websocket_url"]
    with connect(url) as first:
        assert first.recv(timeout=10).startswith(b"RFB ")
        closed = close_of(url)
    assert (closed.code, closed.received) == (4103, b"")
    assert "already used" in closed.reason


def test_expired_token_is_refused(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    url = broker.mint(tcp_vm.name(), ttl=1)["websocket_url"]
    time.sleep(1.2)  # the link's lifetime must run out (1 s is the floor); nothing to poll without spending it
    closed = close_of(url)
    assert (closed.code, closed.received) == (4102, b"")
    assert "expired" in closed.reason


def test_forged_token_is_refused(broker: BrokerProcess) -> None:
    closed = close_of(f"{broker.ws_url}/websockify?token={'A' * 43}")
    assert closed.code == 4101 and "not valid" in closed.reason


def test_missing_token_is_refused(broker: BrokerProcess) -> None:
    closed = close_of(f"{broker.ws_url}/websockify")
    assert closed.code == 4100 and closed.reason


def test_shut_off_domain_is_a_clear_error(broker: BrokerProcess, off_vm: libvirt.virDomain) -> None:
    response = broker.api("POST", f"/api/v1/domains/{off_vm.name()}/console")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "domain_not_running"
    result = broker.cli("token", off_vm.name())
    assert result.returncode == 1
    assert result.stderr.startswith("broker: ") and "not running" in result.stderr


def test_unknown_domain_is_a_clear_error(broker: BrokerProcess) -> None:
    response = broker.api("POST", "/api/v1/domains/no-such-vm/console")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "domain_not_found"
    result = broker.cli("token", "no-such-vm")
    assert result.returncode == 1
    assert "no-such-vm" in result.stderr and "domain_not_found" in result.stderr
    assert "Traceback" not in result.stderr


def test_vm_destroyed_mid_session_closes_with_vm_stopped(broker: BrokerProcess, conn: libvirt.virConnect) -> None:
    dom = vms.define(conn, "broker-test-victim", vms.TCP)
    try:
        url = broker.mint(dom.name())["websocket_url"]
        with connect(url) as ws:
            assert ws.recv(timeout=10).startswith(b"RFB ")
            started = time.monotonic()
            dom.destroy()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
            elapsed = time.monotonic() - started
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4300, closed.value.rcvd
        assert "stopped" in closed.value.rcvd.reason
        assert elapsed < 1.0, f"close took {elapsed:.2f}s"  # issue 2 asks 2 s, issue 4 asks 1 s
    finally:
        vms.remove(conn, dom.name())


def test_token_for_a_stopped_vm_never_reaches_the_vm_on_its_port(
    broker: BrokerProcess, conn: libvirt.virConnect
) -> None:
    """CVE-2013-0335: A's token must not open B, which took A's freed VNC port."""
    vm_a = vms.define(conn, "broker-test-cve-a", vms.TCP)
    try:
        port = vms.vnc_port(vm_a)
        assert port > 0
        url = broker.mint(vm_a.name(), ttl=120)["websocket_url"]
        vm_a.destroy()
        vm_b = vms.define(conn, "broker-test-cve-b", vms.tcp_on(port))
        assert vms.vnc_port(vm_b) == port
        closed = close_of(url)
        # Revoked by A's STOPPED event (4104); without the event, A is found not running (4201).
        assert closed.code in (4104, 4201), closed
        assert closed.received == b"", "bytes from B's VNC server reached A's token holder"
    finally:
        vms.remove(conn, "broker-test-cve-a")
        vms.remove(conn, "broker-test-cve-b")
