"""The sessions API and /metrics on test:///default, a fake VNC server and Starlette's
TestClient: listing, filtering, killing (4305), auth, and the audit trail of it all."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from starlette.websockets import WebSocketDisconnect

import broker.web.app
from broker.observe.audit import AuditLog
from broker.web.ops import MetricsListener, metrics_app
from unit_support import API_KEY, AUTH, FakeVncServer, page_socket, run_async, session_of, vnc_graphics

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

GREETING = FakeVncServer.GREETING


@pytest.fixture(autouse=True)
def _quick_stop_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.web.app, "STOP_CONFIRM_SECONDS", 0.2)


@pytest.fixture
def vnc_domain(define_domain, vnc_server: FakeVncServer):
    return define_domain(vnc_graphics(vnc_server.port))


def sessions(api, query: str = "") -> list[dict]:
    response = api.client.get(f"/api/v1/sessions{query}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()["sessions"]


def test_a_session_is_listed_shown_and_killed(api, vnc_domain, tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.jsonl"
    api.broker.observe.audit = AuditLog(str(audit_path))
    minted = api.post_console(vnc_domain.name()).json()
    token = minted["token"]
    headers = {"User-Agent": "unit-test/1.0"}
    with api.client.websocket_connect(f"/websockify?token={token}", headers=headers) as ws:
        assert ws.receive_bytes() == GREETING
        ws.send_bytes(b"hello")
        assert ws.receive_bytes() == b"hello"

        (listed,) = sessions(api)
        assert listed["domain"] == {"name": vnc_domain.name(), "uuid": vnc_domain.UUIDString()}
        assert (listed["kind"], listed["console"], listed["mode"], listed["state"]) == (
            "vnc",
            0,
            "interactive",
            "relaying",
        )
        assert (listed["client"], listed["user_agent"], listed["key"], listed["via"]) == (
            "testclient:50000",
            "unit-test/1.0",
            "key1",
            "link",
        )
        assert listed["bytes_from_browser"] == 5
        assert listed["bytes_to_browser"] == len(GREETING) + 5
        assert listed["last_input_at"] is not None
        shown = api.client.get(f"/api/v1/sessions/{listed['id']}", headers=AUTH).json()["session"]
        assert shown["id"] == listed["id"]
        assert [s["id"] for s in sessions(api, f"?domain={vnc_domain.name()}")] == [listed["id"]]
        assert [s["id"] for s in sessions(api, f"?domain={vnc_domain.UUIDString()}")] == [listed["id"]]
        assert sessions(api, "?domain=some-other-vm") == []
        domains = {d["name"]: d for d in api.client.get("/api/v1/domains", headers=AUTH).json()["domains"]}
        assert domains[vnc_domain.name()]["sessions"] == 1

        killed = api.client.delete(f"/api/v1/sessions/{listed['id']}", headers=AUTH)
        assert killed.status_code == 200, killed.text
        assert killed.json()["session"]["id"] == listed["id"]
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_bytes()
    assert caught.value.code == 4305
    assert caught.value.reason == "An administrator ended this console session."

    gone = api.client.get(f"/api/v1/sessions/{listed['id']}", headers=AUTH)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    assert api.client.delete(f"/api/v1/sessions/{listed['id']}", headers=AUTH).status_code == 404
    assert sessions(api) == []

    api.broker.observe.audit.close()
    text = audit_path.read_text()
    story = [json.loads(line) for line in text.splitlines()]
    assert [e["event"] for e in story] == ["link_minted", "session_opened", "session_killed", "session_ended"]
    assert story[2]["by"] == "key1"
    assert story[3]["reason"] == "session_killed"
    assert token not in text and API_KEY not in text and "token=" not in text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/sessions/0123456789abcdef"),
        ("DELETE", "/api/v1/sessions/0123456789abcdef"),
        ("GET", "/metrics"),
    ],
)
def test_the_operator_endpoints_need_the_api_key(api, method: str, path: str) -> None:
    response = api.client.request(method, path, headers={"Authorization": "Bearer wrong-key-wrong-key"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_domain_filter_no_domain_can_match_is_invalid_input(api) -> None:
    response = api.client.get("/api/v1/sessions", params={"domain": "uuid:not-a-uuid"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


def test_metrics_behind_the_key(api) -> None:
    response = api.client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'broker_sessions_open{kind="vnc"} 0.0' in response.text
    assert API_KEY not in response.text


def test_the_metrics_listener_serves_metrics_alone_without_a_key(api) -> None:
    with TestClient(metrics_app(api.broker)) as scraper:
        response = scraper.get("/metrics")
        assert response.status_code == 200
        assert "broker_relayed_bytes_total" in response.text
        for path in ("/api/v1/domains", "/api/v1/sessions", "/healthz", "/console"):
            assert scraper.get(path, headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("bound", "server", "ours"),
    [
        (("127.0.0.1", 9150), ("127.0.0.1", 9150), True),
        (("127.0.0.1", 9150), ("127.0.0.1", 6080), False),
        (("0.0.0.0", 9150), ("10.1.2.3", 9150), True),
        (("::", 9150), ("fe80::1", 9150), True),
        (("10.0.0.1", 9150), ("10.0.0.2", 9150), False),
        (("127.0.0.1", 9150), None, False),
        (("127.0.0.1", 9150), ("/state/cli.sock", None), False),
    ],
)
def test_the_metrics_listener_is_told_apart_by_its_address(bound, server, ours: bool) -> None:
    seen: list[str] = []

    def app(name: str):
        async def call(scope, receive, send) -> None:
            seen.append(name)

        return call

    listener = MetricsListener(app("main"), bound, app("metrics"))
    scope = {"type": "http", "server": server}
    run_async(listener(scope, None, None))
    assert seen == ["metrics" if ours else "main"]


def test_killing_a_console_page_session_ends_its_pass_too(api, vnc_domain) -> None:
    token = api.token_for(vnc_domain)
    uuid = vnc_domain.UUIDString()
    with page_socket(api.client, uuid, token=token) as ws:
        pass_id = session_of(ws)["pass"]
        assert ws.receive_bytes() == GREETING
        (listed,) = sessions(api)
        assert listed["via"] == "page" and listed["key"] == "key1"
        assert "page" not in listed
        assert token not in json.dumps(listed) and pass_id not in json.dumps(listed)
        assert api.client.delete(f"/api/v1/sessions/{listed['id']}", headers=AUTH).status_code == 200
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_bytes()
    assert caught.value.code == 4305
    # Reconnect, as the page's button would: the pass is over, and the page says why.
    with page_socket(api.client, uuid, **{"pass": pass_id}) as ws:
        with pytest.raises(WebSocketDisconnect) as caught:
            ws.receive_text()
    assert (caught.value.code, caught.value.reason) == (4305, "An administrator ended this console session.")
