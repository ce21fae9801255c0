"""The /websockify route: every refusal is a close code with a reason, and bytes flow when allowed."""

from __future__ import annotations

import dataclasses

import pytest
from starlette.websockets import WebSocketDisconnect

import broker.web.app
from broker.access.tokens import digest_of
from support.wait import wait_until
from unit_support import FakeVncServer, free_port, vnc_graphics

FORGED = "A" * 43


def close_of(api, url: str, **kwargs) -> WebSocketDisconnect:
    """Connect, and return how the broker closed the socket before sending anything."""
    with api.client.websocket_connect(url, **kwargs) as ws:
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_bytes()
    closed = caught.value
    assert closed.reason, "every close carries a reason a person can read"
    assert len(closed.reason.encode()) <= 123
    return closed


@pytest.fixture
def unreachable(define_domain):
    """A running domain whose VNC port has nobody listening."""
    return define_domain(vnc_graphics(free_port()))


# -- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/websockify", "/websockify?token=", "/websockify?other=1"])
def test_missing_token_closes_4100(api, url: str) -> None:
    assert close_of(api, url).code == 4100


@pytest.mark.parametrize("token", [FORGED, "short", "x" * 44, "%00" * 10])
def test_forged_token_closes_4101(api, token: str) -> None:
    assert close_of(api, f"/websockify?token={token}").code == 4101


def test_used_token_closes_4103(api, unreachable) -> None:
    token = api.token_for(unreachable)
    api.broker.tokens.redeem(token)
    closed = close_of(api, f"/websockify?token={token}")
    assert closed.code == 4103
    assert "already used" in closed.reason


def test_token_is_spent_even_when_the_console_is_unreachable(api, unreachable) -> None:
    token = api.token_for(unreachable)
    assert close_of(api, f"/websockify?token={token}").code == 4203
    assert close_of(api, f"/websockify?token={token}").code == 4103


def test_expired_token_closes_4102(api, unreachable) -> None:
    token = api.token_for(unreachable, ttl=5)
    api.clock.advance(5)
    closed = close_of(api, f"/websockify?token={token}")
    assert closed.code == 4102
    assert "expired" in closed.reason


def test_unreachable_console_closes_4203(api, unreachable) -> None:
    token = api.token_for(unreachable)
    closed = close_of(api, f"/websockify?token={token}")
    assert closed.code == 4203
    assert unreachable.name() in closed.reason


def test_fd_console_the_driver_cannot_open_closes_4203(api, define_domain) -> None:
    domain = define_domain("<graphics type='vnc'><listen type='none'/></graphics>")
    token = api.token_for(domain)
    assert close_of(api, f"/websockify?token={token}").code == 4203


def test_domain_stopped_after_minting_closes_4104(api, unreachable) -> None:
    token = api.token_for(unreachable)
    unreachable.destroy()
    api.broker.domain_ended(unreachable.UUIDString())  # what libvirt's lifecycle event triggers
    assert close_of(api, f"/websockify?token={token}").code == 4104


def test_domain_stopped_before_the_event_arrives_closes_4201(api, unreachable) -> None:
    token = api.token_for(unreachable)
    api.broker.consoles._on_ended.clear()  # no lifecycle event: the live lookup must catch it
    unreachable.destroy()
    assert close_of(api, f"/websockify?token={token}").code == 4201


def test_domain_undefined_after_minting_closes_4200(api, unreachable) -> None:
    token = api.token_for(unreachable)
    api.broker.consoles._on_ended.clear()
    unreachable.destroy()
    unreachable.undefine()
    assert close_of(api, f"/websockify?token={token}").code == 4200


def test_foreign_origin_closes_4106_without_spending_the_token(api, unreachable) -> None:
    token = api.token_for(unreachable)
    closed = close_of(api, f"/websockify?token={token}", headers={"Origin": "https://evil.example"})
    assert closed.code == 4106
    assert "evil.example" in closed.reason
    assert close_of(api, f"/websockify?token={token}").code == 4203


def test_configured_origin_is_allowed(make_api, unreachable) -> None:
    api = make_api(allowed_origins=("https://panel.example.com/",))
    token = api.token_for(unreachable)
    closed = close_of(api, f"/websockify?token={token}", headers={"Origin": "https://Panel.example.com"})
    assert closed.code == 4203


def test_own_origin_is_allowed(api, unreachable) -> None:
    token = api.token_for(unreachable)
    assert close_of(api, f"/websockify?token={token}", headers={"Origin": "http://testserver"}).code == 4203


# -- relaying -------------------------------------------------------------------------
#
# Each session below is ended by the broker, never by leaving the `with` block while
# the relay runs: Starlette's TestClient then cancels the app mid-cleanup, and
# anyio intermittently reports that as a CancelledError out of __exit__ (seen with
# a ten-line app using the same create_task/wait/gather pattern, so not the broker's).


@pytest.fixture(autouse=True)
def _quick_stop_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.web.app, "STOP_CONFIRM_SECONDS", 0.2)


@pytest.fixture
def vnc_domain(define_domain, vnc_server: FakeVncServer):
    return define_domain(vnc_graphics(vnc_server.port))


def test_bytes_are_relayed_both_ways(api, vnc_domain, vnc_server) -> None:
    token = api.token_for(vnc_domain)
    with api.client.websocket_connect(f"/websockify?token={token}", subprotocols=["binary"]) as ws:
        assert ws.accepted_subprotocol == "binary"
        assert ws.receive_bytes() == FakeVncServer.GREETING
        ws.send_bytes(b"\x01\x02hello")
        assert ws.receive_bytes() == b"\x01\x02hello"
        big = bytes(range(256)) * 1024
        ws.send_bytes(big)
        received = b""
        while len(received) < len(big):
            received += ws.receive_bytes()
        assert received == big
        vnc_server.drop_clients()
        with pytest.raises(WebSocketDisconnect):
            ws.receive_bytes()


def test_no_subprotocol_unless_offered(api, vnc_domain, vnc_server) -> None:
    token = api.token_for(vnc_domain)
    with api.client.websocket_connect(f"/websockify?token={token}") as ws:
        assert ws.accepted_subprotocol is None
        assert ws.receive_bytes() == FakeVncServer.GREETING
        vnc_server.drop_clients()
        with pytest.raises(WebSocketDisconnect):
            ws.receive_bytes()


def test_text_message_closes_4302(api, vnc_domain) -> None:
    token = api.token_for(vnc_domain)
    with api.client.websocket_connect(f"/websockify?token={token}") as ws:
        assert ws.receive_bytes() == FakeVncServer.GREETING
        ws.send_text("hello")
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_bytes()
    assert caught.value.code == 4302
    assert caught.value.reason


def test_vnc_server_hanging_up_closes_4301(api, vnc_domain, vnc_server) -> None:
    token = api.token_for(vnc_domain)
    with api.client.websocket_connect(f"/websockify?token={token}") as ws:
        assert ws.receive_bytes() == FakeVncServer.GREETING
        vnc_server.drop_clients()
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_bytes()
    assert caught.value.code == 4301
    assert vnc_domain.name() in caught.value.reason


def test_domain_stopping_mid_session_closes_4300(api, vnc_domain) -> None:
    token = api.token_for(vnc_domain)
    with api.client.websocket_connect(f"/websockify?token={token}") as ws:
        assert ws.receive_bytes() == FakeVncServer.GREETING
        vnc_domain.destroy()  # libvirt's lifecycle event ends the session
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_bytes()
    assert caught.value.code == 4300
    assert vnc_domain.name() in caught.value.reason


def test_domain_stopping_revokes_its_unused_links(api, vnc_domain) -> None:
    token = api.token_for(vnc_domain)
    grant_digest = digest_of(token)
    vnc_domain.destroy()
    # The event arrives on libvirt's thread and is handed to the app's loop.
    wait_until(lambda: api.broker.tokens.store.get(grant_digest).revoked, 5, "the lifecycle event to revoke the link")
    assert close_of(api, f"/websockify?token={token}").code == 4104


def test_idle_session_closes_4403_on_the_generic_relay(api, vnc_domain) -> None:
    """The ASGI relay (relay.py, used outside the broker's own server) watches idleness too."""
    api.broker.limits = dataclasses.replace(api.broker.limits, idle_timeout=0.3)
    token = api.token_for(vnc_domain)
    with api.client.websocket_connect(f"/websockify?token={token}") as ws:
        assert ws.receive_bytes() == FakeVncServer.GREETING
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_bytes()  # no input from here on
    assert caught.value.code == 4403
