"""The console page's link model against a real broker and real VMs: a GET never spends a
link, the page spends it on its socket's first frame and gets a pass, and the pass lasts
through a broker restart and a VM's stop and start within its window, but not past the
domain's undefine."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import libvirt
import pytest
from websockets.exceptions import ConnectionClosed

from support import vms
from support.processes import BrokerProcess, start_broker
from support.wait import wait_until
from support.ws import open_page, page_close_of, page_socket, session_of

pytestmark = pytest.mark.integration

SESSION_KEYS = {"type", "pass", "domain", "kind", "console", "mode", "may_take_over", "expires_at", "expires_in"}


def test_a_get_does_not_spend_the_link(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """A link previewer (GET, HEAD) leaves the link usable; the page then spends it once."""
    link = broker.mint(tcp_vm.name())
    uuid = tcp_vm.UUIDString()
    for _ in range(2):
        page = httpx.get(link["console_url"], timeout=10)
        assert page.status_code == 200
        assert f'data-console="{uuid}"' in page.text and "set-cookie" not in page.headers
        assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert httpx.head(link["console_url"], timeout=10).status_code == 200
    with open_page(broker.ws_url, link) as (ws, session):
        assert set(session) == SESSION_KEYS
        assert session["domain"] == {"name": tcp_vm.name(), "uuid": uuid}
        assert (session["kind"], session["mode"]) == ("vnc", "interactive")
        assert ws.recv(timeout=10).startswith(b"RFB ")
    # Opened twice by a person: the second time says why it cannot work.
    used = page_close_of(broker.ws_url, uuid, token=link["token"])
    assert used.code == 4103 and "already used" in used.reason
    again = httpx.get(link["console_url"], timeout=10)
    assert again.status_code == 401 and "already used" in again.text


def test_the_link_is_spent_on_the_socket_only_by_its_own_console_and_origin(
    broker: BrokerProcess, tcp_vm: libvirt.virDomain, off_vm: libvirt.virDomain
) -> None:
    link = broker.mint(tcp_vm.name())
    uuid = tcp_vm.UUIDString()
    # Another console's page, a foreign page, a first frame that is no credential: all refused
    # before the link is spent.
    other = page_close_of(broker.ws_url, off_vm.UUIDString(), token=link["token"])
    assert (other.code, other.reason) == (4101, "This console link is for another console.")
    with page_socket(broker.ws_url, uuid, origin="https://evil.example", token=link["token"]) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4106
    wrong = page_close_of(broker.ws_url, uuid, cookie=link["token"])
    assert wrong.code == 4100 and '{"token": …}' in wrong.reason
    with open_page(broker.ws_url, link) as (ws, _session):
        assert ws.recv(timeout=10).startswith(b"RFB ")


def test_the_pass_survives_a_broker_restart(tmp_path: Path, tcp_vm: libvirt.virDomain) -> None:
    state = tmp_path / "state"
    first = start_broker(state)
    try:
        link = first.mint(tcp_vm.name())
        with open_page(first.ws_url, link) as (ws, session):
            assert ws.recv(timeout=10).startswith(b"RFB ")
            first.process.terminate()  # SIGTERM, as systemd's restart sends
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert "restarting; this page reconnects by itself" in closed.value.rcvd.reason
        first.process.wait(10)
    finally:
        first.stop()
    passes = state / "page-passes.json"
    assert stat.S_IMODE(passes.stat().st_mode) == 0o600
    assert session["pass"] not in passes.read_text() and link["token"] not in passes.read_text()
    second = start_broker(state)
    try:
        with page_socket(second.ws_url, tcp_vm.UUIDString(), **{"pass": session["pass"]}) as ws:
            again = session_of(ws)
            assert again["pass"] == session["pass"] and again["expires_at"] == session["expires_at"]
            assert ws.recv(timeout=10).startswith(b"RFB ")
        assert "kept 1 console page session(s) from before the restart" in second.log()
    finally:
        second.stop()


def test_the_pass_waits_through_a_vm_restart_and_ends_with_its_undefine(
    broker: BrokerProcess, conn: libvirt.virConnect
) -> None:
    """A pass names the UUID, not the run: the page reconnects once the VM runs again.
    The domain's undefine ends it (docs/security.md: the trade-off)."""
    dom = vms.define(conn, "broker-test-page-rerun", vms.TCP)
    uuid = dom.UUIDString()
    try:
        link = broker.mint(dom.name())
        with open_page(broker.ws_url, link) as (ws, session):
            assert ws.recv(timeout=10).startswith(b"RFB ")
            dom.destroy()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4300
        pass_id = {"pass": session["pass"]}
        stopped = page_close_of(broker.ws_url, uuid, **pass_id)
        assert stopped.code == 4201 and stopped.received == b""
        # The link itself was bound to the run: spent or revoked, it opens nothing now.
        dom.create()
        with page_socket(broker.ws_url, uuid, **pass_id) as ws:
            session_of(ws)
            assert ws.recv(timeout=10).startswith(b"RFB ")
        dom.destroy()
        dom.undefine()
        wait_until(lambda: f"domain {uuid} ended" in broker.log(), 5, "the broker to see the VM go")
        gone = page_close_of(broker.ws_url, uuid, **pass_id)
        assert gone.code == 4105 and "removed" in gone.reason
    finally:
        vms.remove(conn, "broker-test-page-rerun")


def test_a_page_that_never_says_who_it_is_is_told_why(tmp_path: Path) -> None:
    """The first frame has a deadline (pageauth.FIRST_FRAME_SECONDS), answered with 4100 and a reason."""
    broker = start_broker(tmp_path / "state")
    try:
        uuid = "00000000-0000-4000-8000-000000000000"
        from websockets.sync.client import connect

        with connect(f"{broker.ws_url}/console/{uuid}/websockify", open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4100
        assert "within 10 s" in closed.value.rcvd.reason
    finally:
        broker.stop()


def test_the_pass_file_is_never_followed_through_a_link(tmp_path: Path, tcp_vm: libvirt.virDomain) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    os.symlink(target, state / "page-passes.json.tmp")
    broker = start_broker(state)
    try:
        with open_page(broker.ws_url, broker.mint(tcp_vm.name())) as (ws, _session):
            assert ws.recv(timeout=10).startswith(b"RFB ")
    finally:
        broker.stop()
    assert target.read_text() == "untouched"
    assert not (state / "page-passes.json").is_symlink()
    assert json.loads((state / "page-passes.json").read_text())["format"] == 1
