"""Link modes enforced by the broker, on real QEMU: view-only input never reaches the guest,
exclusive links end the others, and no browser can ask QEMU to drop the other viewers."""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import httpx
import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support.processes import BrokerProcess
from support.rfb_client import handshake, request_update
from support.ws import close_of

RETURN = 0xFF0D


def type_keys(ws, text: str) -> None:
    """KeyEvents (down, up) for `text` and Return, as noVNC sends them."""
    for keysym in [ord(c) for c in text] + [RETURN]:
        ws.send(struct.pack(">BBxxI", 4, 1, keysym) + struct.pack(">BBxxI", 4, 0, keysym))


def wait_for_log(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text.encode() in path.read_bytes():
            return True
        time.sleep(0.2)
    return False


def test_view_only_input_never_reaches_the_guest(broker: BrokerProcess, tiny_vm) -> None:
    dom, log_path = tiny_vm
    watched = broker.mint(dom.name(), mode="view-only", user="support-7")
    assert watched["mode"] == "view-only"
    with connect(watched["websocket_url"], open_timeout=10) as ws:
        init = handshake(ws)
        rectangles, pixels = request_update(ws, init)  # pictures still come
        assert rectangles >= 1 and pixels
        type_keys(ws, "viewonly-typed")
        ws.send(struct.pack(">BBHH", 5, 1, 10, 10))  # a pointer click
        # The interactive control: the same keys through a normal link arrive.
        with connect(broker.mint(dom.name())["websocket_url"], open_timeout=10) as typing:
            handshake(typing)
            type_keys(typing, "interactive-typed")
            assert wait_for_log(log_path, "GOT: interactive-typed", 20)
        assert request_update(ws, init)[0] >= 1  # the view-only session lives on
    assert not wait_for_log(log_path, "viewonly-typed", 1)
    assert "(user 'support-7')" in broker.log()


def test_view_only_refuses_a_message_it_cannot_judge(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    link = broker.mint(tcp_vm.name(), mode="view-only")
    with connect(link["websocket_url"], open_timeout=10) as ws:
        handshake(ws)
        ws.send(bytes([7, 0, 0, 0]))  # no RFB client message has type 7
        with pytest.raises(ConnectionClosed) as ended:
            while True:
                ws.recv(timeout=10)
    assert ended.value.rcvd is not None and ended.value.rcvd.code == 4302
    assert "view-only" in ended.value.rcvd.reason and "type 7" in ended.value.rcvd.reason


def test_a_client_asking_for_exclusive_access_does_not_drop_the_others(
    broker: BrokerProcess, tcp_vm: libvirt.virDomain
) -> None:
    with connect(broker.mint(tcp_vm.name())["websocket_url"], open_timeout=10) as first:
        init = handshake(first)
        with connect(broker.mint(tcp_vm.name())["websocket_url"], open_timeout=10) as greedy:
            handshake(greedy, shared=False)  # QEMU would drop `first` if this reached it
            time.sleep(0.5)  # QEMU acts on ClientInit at once; give it the chance
            assert request_update(first, init)[0] >= 1


def test_an_exclusive_link_ends_the_others_and_keeps_interactive_ones_out(
    broker: BrokerProcess, tcp_vm: libvirt.virDomain
) -> None:
    early = broker.mint(tcp_vm.name())  # minted before, opened while exclusive holds
    with connect(broker.mint(tcp_vm.name())["websocket_url"], open_timeout=10) as other:
        handshake(other)
        with connect(broker.mint(tcp_vm.name(), mode="exclusive")["websocket_url"], open_timeout=10) as owner:
            with pytest.raises(ConnectionClosed) as ended:
                while True:
                    other.recv(timeout=10)
            assert ended.value.rcvd is not None and ended.value.rcvd.code == 4304
            assert "exclusive control" in ended.value.rcvd.reason
            init = handshake(owner)
            refused = broker.api("POST", f"/api/v1/domains/{tcp_vm.name()}/console", json={})
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "console_exclusive"
            assert close_of(early["websocket_url"]).code == 4209
            with connect(broker.mint(tcp_vm.name(), mode="view-only")["websocket_url"], open_timeout=10) as viewer:
                handshake(viewer)  # watching is allowed
            assert request_update(owner, init)[0] >= 1
    # Once the exclusive session is over, interactive links work again.
    assert broker.api("POST", f"/api/v1/domains/{tcp_vm.name()}/console", json={}).status_code == 201


def test_a_links_own_session_length(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    link = broker.mint(tcp_vm.name(), max_session_length=1)
    closed = close_of(link["websocket_url"], timeout=10)
    assert closed.code == 4404 and 0.9 < closed.seconds < 5


def test_a_scoped_key_stays_in_its_scope(tmp_path: Path, tcp_vm: libvirt.virDomain, conn) -> None:
    """A real broker with scoped keys from its TOML config: a support key that may only
    watch one domain (by UUID), and a full key given as its SHA-256."""
    from support import vms
    from support.processes import start_broker

    other = vms.define(conn, "broker-test-scope-other", vms.TCP)
    full, support = "full-key-" + "f" * 20, "support-key-" + "s" * 20
    config = tmp_path / "broker.toml"
    config.write_text(
        "[[api_keys]]\n"
        f'label = "full"\nsha256 = "{hashlib.sha256(full.encode()).hexdigest()}"\n'
        "[[api_keys]]\n"
        f'label = "support"\nkey = "{support}"\n'
        f'domains = ["{tcp_vm.UUIDString()}"]\nrights = ["mint-view-only", "list", "sessions"]\n'
    )
    broker = start_broker(tmp_path / "state", "--config", str(config))
    try:

        def call(key: str, method: str, path: str, **kwargs: object) -> httpx.Response:
            return httpx.request(method, broker.url + path, headers={"Authorization": f"Bearer {key}"}, **kwargs)

        listed = [d["name"] for d in call(support, "GET", "/api/v1/domains").json()["domains"]]
        assert listed == [tcp_vm.name()]
        assert call(full, "GET", "/api/v1/domains").status_code == 200
        watch = call(support, "POST", f"/api/v1/domains/{tcp_vm.name()}/console", json={"mode": "view-only"})
        assert watch.status_code == 201 and watch.json()["mode"] == "view-only"
        for body, ident, words in [
            ({}, tcp_vm.name(), "'mint'"),
            ({"mode": "exclusive"}, tcp_vm.name(), "'mint-exclusive'"),
            ({"mode": "view-only"}, other.name(), "outside the scope"),
        ]:
            refused = call(support, "POST", f"/api/v1/domains/{ident}/console", json=body)
            assert refused.status_code == 403, (body, ident)
            assert refused.json()["error"]["code"] == "forbidden" and words in refused.json()["error"]["message"]
        with connect(watch.json()["websocket_url"], open_timeout=10) as ws:
            handshake(ws)
            with connect(call(full, "POST", f"/api/v1/domains/{other.name()}/console").json()["websocket_url"]) as ws2:
                handshake(ws2)
                sessions = call(support, "GET", "/api/v1/sessions").json()["sessions"]
                assert [s["domain"]["name"] for s in sessions] == [tcp_vm.name()]  # not the other domain's
                assert sessions[0]["key"] == "support" and sessions[0]["mode"] == "view-only"
                assert call(support, "DELETE", f"/api/v1/sessions/{sessions[0]['id']}").status_code == 403
        assert "support-key-" not in broker.log() and full not in broker.log()
    finally:
        broker.stop()
        vms.remove(conn, other.name())
