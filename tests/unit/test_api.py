"""The REST API on libvirt's test:///default driver, through Starlette's TestClient."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from broker.access.tokens import MemoryTokenStore, Tokens
from broker.model import ConsoleRef
from broker.web.app import Broker
from unit_support import AUTH, BUILTIN_DOMAIN, START_TIME, vnc_graphics

VNC = vnc_graphics(5905)
MINTED_KEYS = {"token", "console_url", "websocket_url", "expires_at", "domain", "kind", "console", "mode"}


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


# -- health and authentication --------------------------------------------------------


def test_healthz_needs_no_api_key(api) -> None:
    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "libvirt": response.json()["libvirt"]}
    assert "test:///default" in response.json()["libvirt"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-wrong-key-wrong-key"},
        {"Authorization": f"Basic {'k' * 32}"},
        {"Authorization": f"Bearer {'k' * 31}"},
        {"Authorization": f"Bearer {'k' * 33}"},
        {"Authorization": "Bearer"},
        {"Authorization": "k" * 32},
    ],
)
def test_domains_need_the_api_key(api, headers: dict[str, str]) -> None:
    response = api.client.get("/api/v1/domains", headers=headers)
    error = assert_error(response, 401, "unauthorized")
    assert "API key" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_console_needs_the_api_key_before_anything_else(api) -> None:
    response = api.client.post("/api/v1/domains/no-such-domain/console", content=b"not json")
    assert_error(response, 401, "unauthorized")


def test_bearer_scheme_is_case_insensitive(api) -> None:
    response = api.client.get("/api/v1/domains", headers={"Authorization": f"bearer {'k' * 32}"})
    assert response.status_code == 200


# -- listing --------------------------------------------------------------------------


def test_list_shows_the_builtin_running_domain(api) -> None:
    response = api.client.get("/api/v1/domains", headers=AUTH)
    assert response.status_code == 200
    domains = {d["name"]: d for d in response.json()["domains"]}
    builtin = domains[BUILTIN_DOMAIN]
    assert builtin["state"] == "running"
    assert builtin["consoles"] == []
    assert "no VNC" in builtin["console_unavailable"]


def test_list_shows_defined_domains_with_their_consoles(api, define_domain) -> None:
    on = define_domain(VNC)
    off = define_domain(VNC, start=False)
    domains = {d["name"]: d for d in api.client.get("/api/v1/domains", headers=AUTH).json()["domains"]}
    assert domains[on.name()] == {
        "name": on.name(),
        "uuid": on.UUIDString(),
        "state": "running",
        "consoles": [{"index": 0, "endpoint": "vnc://127.0.0.1:5905"}],
        "serial_consoles": [],
        "sessions": 0,  # console sessions open now
    }
    assert domains[off.name()]["state"] == "shutoff"
    assert "not running" in domains[off.name()]["console_unavailable"]


def test_list_is_sorted_by_name(api, define_domain) -> None:
    define_domain()
    define_domain()
    names = [d["name"] for d in api.client.get("/api/v1/domains", headers=AUTH).json()["domains"]]
    assert names == sorted(names)


# -- minting console links ------------------------------------------------------------


def test_console_for_unknown_domain_is_not_found(api) -> None:
    error = assert_error(api.post_console("no-such-domain"), 404, "domain_not_found")
    assert "no-such-domain" in error["message"]


def test_console_for_unknown_uuid_is_not_found(api) -> None:
    assert_error(api.post_console("00000000-0000-0000-0000-000000000000"), 404, "domain_not_found")


def test_console_for_shut_off_domain_is_not_running(api, define_domain) -> None:
    domain = define_domain(VNC, start=False)
    assert_error(api.post_console(domain.name()), 409, "domain_not_running")


def test_console_for_running_domain_without_vnc_is_no_console(api) -> None:
    assert_error(api.post_console(BUILTIN_DOMAIN), 409, "no_console")


def test_console_for_running_vnc_domain(api, define_domain) -> None:
    domain = define_domain(VNC)
    response = api.post_console(domain.name())
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == MINTED_KEYS
    assert body["domain"] == {"name": domain.name(), "uuid": domain.UUIDString()}
    token = body["token"]
    assert len(token) == 43
    assert body["console_url"] == f"http://testserver/console?token={token}"
    assert body["websocket_url"] == f"ws://testserver/websockify?token={token}"
    assert body["expires_at"] == iso(START_TIME + 60)


def test_minted_token_is_bound_to_the_domain_uuid_and_console(api, define_domain) -> None:
    domain = define_domain("<graphics type='spice' port='5930' autoport='no'/>" + VNC)
    token = api.token_for(domain)
    grant = api.broker.tokens.redeem(token)
    assert grant.console == ConsoleRef(domain.UUIDString(), 1, domain.ID())
    assert grant.name == domain.name()


def test_console_by_uuid(api, define_domain) -> None:
    domain = define_domain(VNC)
    response = api.post_console(domain.UUIDString())
    assert response.status_code == 201, response.text
    assert response.json()["domain"] == {"name": domain.name(), "uuid": domain.UUIDString()}


def test_console_with_custom_ttl(api, define_domain) -> None:
    domain = define_domain(VNC)
    response = api.post_console(domain.name(), {"ttl": 30})
    assert response.status_code == 201
    assert response.json()["expires_at"] == iso(START_TIME + 30)


def test_console_with_null_ttl_gets_the_default(api, define_domain) -> None:
    domain = define_domain(VNC)
    assert api.post_console(domain.name(), {"ttl": None}).json()["expires_at"] == iso(START_TIME + 60)


def test_console_by_graphics_index(api, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905) + vnc_graphics(5906))
    token = api.token_for(domain, graphics=1)
    assert api.broker.tokens.redeem(token).console == ConsoleRef(domain.UUIDString(), 1, domain.ID())


def test_console_for_a_missing_graphics_index_is_no_console(api, define_domain) -> None:
    domain = define_domain(VNC)
    error = assert_error(api.post_console(domain.name(), {"graphics": 3}), 409, "no_console")
    assert "index 3" in error["message"]


def test_console_for_a_vnc_device_without_port_is_no_console(api, define_domain) -> None:
    # The test driver never assigns autoports: exactly the "not known yet" case.
    domain = define_domain("<graphics type='vnc' port='-1' autoport='yes'/>")
    error = assert_error(api.post_console(domain.name()), 409, "no_console")
    assert "port" in error["message"]


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"{",
        b"\xff\xfe",
        b"[]",
        b'"ttl"',
        b"42",
        b"null",
        b'{"ttl": 601}',
        b'{"ttl": 1e400}',
        b'{"ttl": NaN}',
        b'{"ttl": 0}',
        b'{"ttl": 0.001}',
        b'{"ttl": -5}',
        b'{"ttl": "30"}',
        b'{"ttl": true}',
        b'{"ttl": 30, "domain": "other"}',
        b'{"graphics": -1}',
        b'{"graphics": "0"}',
        b'{"graphics": 0.5}',
        b'{"graphics": true}',
    ],
)
def test_invalid_body_is_invalid_input(api, define_domain, content: bytes) -> None:
    domain = define_domain(VNC)
    response = api.client.post(
        f"/api/v1/domains/{domain.name()}/console",
        headers={**AUTH, "Content-Type": "application/json"},
        content=content,
    )
    assert_error(response, 422, "invalid_input")
    assert len(api.broker.tokens.store) == 0


def test_unknown_field_is_named(api, define_domain) -> None:
    domain = define_domain(VNC)
    error = assert_error(api.post_console(domain.name(), {"tll": 30}), 422, "invalid_input")
    assert "tll" in error["message"]


def test_empty_body_is_an_empty_request(api, define_domain) -> None:
    domain = define_domain(VNC)
    response = api.client.post(f"/api/v1/domains/{domain.name()}/console", headers=AUTH, content=b"  ")
    assert response.status_code == 201


# -- public_url -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_url", "ws_base"),
    [
        ("https://vm.example.com/consoles", "wss://vm.example.com/consoles"),
        ("http://10.0.0.5:8080", "ws://10.0.0.5:8080"),
    ],
)
def test_public_url_is_the_base_of_every_link(make_api, define_domain, public_url: str, ws_base: str) -> None:
    api = make_api(public_url=public_url)
    domain = define_domain(VNC)
    body = api.post_console(domain.name()).json()
    assert body["console_url"] == f"{public_url}/console?token={body['token']}"
    assert body["websocket_url"] == f"{ws_base}/websockify?token={body['token']}"


# -- anything else --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/api/v1/domains/", "/api/v1/domains/test", "/api/v2/domains"])
def test_unknown_route_is_a_json_404(api, path: str) -> None:
    assert_error(api.client.get(path, headers=AUTH), 404, "not_found")


def test_wrong_method_is_a_json_405(api) -> None:
    assert_error(api.client.get("/api/v1/domains/test/console", headers=AUTH), 405, "method_not_allowed")
    assert_error(api.client.delete("/api/v1/domains", headers=AUTH), 405, "method_not_allowed")


def test_broker_refuses_to_start_without_api_keys() -> None:
    class Source:
        def on_domain_ended(self, callback) -> None:
            pass

    with pytest.raises(ValueError, match="API key"):
        Broker(Source(), Tokens(MemoryTokenStore()), ())  # type: ignore[arg-type]


def test_a_spice_only_domain_is_listed_with_the_reason_and_the_conversion(api, define_domain) -> None:
    spice = define_domain("<graphics type='spice' port='5930'/>")
    listed = {d["name"]: d for d in api.client.get("/api/v1/domains", headers=AUTH).json()["domains"]}
    reason = listed[spice.name()]["console_unavailable"]
    assert "only SPICE graphics" in reason and f"virt-xml {spice.name()} --convert-to-vnc" in reason
    refused = api.post_console(spice.name())
    assert refused.status_code == 409 and "--convert-to-vnc" in refused.json()["error"]["message"]


def test_a_serial_request_is_checked_before_libvirt(api, define_domain) -> None:
    domain = define_domain(VNC)
    for body, word in [
        ({"kind": "rdp"}, "kind"),
        ({"kind": "serial", "graphics": 0}, "graphics"),
        ({"console": "serial0"}, "console"),
        ({"kind": "serial", "console": ""}, "console"),
        ({"kind": "serial", "take_over": "yes"}, "take_over"),
        ({"take_over": False}, "take_over"),
    ]:
        response = api.post_console(domain.name(), body)
        assert response.status_code == 422, body
        assert word in response.json()["error"]["message"], body
    no_serial = api.post_console(domain.name(), {"kind": "serial"})
    assert no_serial.status_code == 409 and "<serial type='pty'>" in no_serial.json()["error"]["message"]


def test_mode_user_and_session_length_are_checked(api, define_domain) -> None:
    domain = define_domain(VNC)
    for body, word in [
        ({"mode": "admin"}, "mode"),
        ({"user": "a\x1b[31mb"}, "user"),
        ({"user": "x" * 129}, "user"),
        ({"user": 7}, "user"),
        ({"max_session_length": -1}, "max_session_length"),
        ({"max_session_length": True}, "max_session_length"),
    ]:
        response = api.post_console(domain.name(), body)
        assert response.status_code == 422, body
        assert word in response.json()["error"]["message"], body
    minted = api.post_console(domain.name(), {"mode": "view-only", "user": "alice", "max_session_length": 30})
    assert minted.status_code == 201 and minted.json()["mode"] == "view-only"
    grant = api.broker.tokens.redeem(minted.json()["token"])
    assert (grant.mode.value, grant.user, grant.max_session_length) == ("view-only", "alice", 30.0)


def test_the_link_serves_the_page_without_spending_it(make_api, define_domain) -> None:
    """Behind a front that is not a trusted proxy (no X-Forwarded-Prefix), public_url says
    where the broker lives; the page's own URLs stay relative, so they need no prefix."""
    api = make_api(public_url="https://front.example/h/hv1")
    domain = define_domain(VNC)
    token = api.token_for(domain)
    for _ in range(2):  # a link previewer, then the person: the same page each time
        response = api.client.get(f"/console?token={token}", follow_redirects=False)
        assert response.status_code == 200
        assert "set-cookie" not in response.headers
        assert f'data-console="{domain.UUIDString()}"' in response.text
        assert f'data-console-dir="console/{domain.UUIDString()}/"' in response.text
        assert re.search(r'src="static/console-[A-Z0-9]+\.js"', response.text)  # relative to /console
        assert response.headers["cache-control"] == "no-store"
    assert not api.broker.tokens.peek(token).used
