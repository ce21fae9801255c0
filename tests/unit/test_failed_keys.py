"""Failed API-key attempts: one log line each, and a rate limit per client address."""

from __future__ import annotations

import logging
import warnings

from broker.access.limits import AUTH_FAILURE_BURST, AUTH_FAILURE_RATE, RateLimiter
from broker.web.proxy import ForwardedHeaders, TrustedProxies
from unit_support import API_KEY, AUTH

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

# Shares its first 31 characters with the right key: none of it may reach the log.
NEAR_MISS = {"Authorization": f"Bearer {API_KEY[:-1]}x"}


def other_client(api, host: str) -> TestClient:
    return TestClient(api.client.app, client=(host, 40000))


def fail(client, times: int) -> None:
    for _ in range(times):
        assert client.get("/api/v1/domains", headers=NEAR_MISS).status_code == 401


def test_each_failed_attempt_is_logged_with_client_and_path_but_no_key(api, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="broker.app"):
        api.client.get("/api/v1/domains", headers=NEAR_MISS)
        api.client.post("/api/v1/domains/vm%201/console")  # no key at all; shown quoted, as uvicorn does
        api.client.get("/api/v1/domains", headers=AUTH)
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.app"]
    assert lines == [
        "refused API request from testclient to /api/v1/domains: no valid API key",
        "refused API request from testclient to /api/v1/domains/vm%201/console: no valid API key",
    ]
    assert API_KEY[:8] not in caplog.text and "Bearer" not in caplog.text


def test_too_many_failures_from_one_address_get_429_but_the_right_key_still_works(api, caplog) -> None:
    """A mistyped key somewhere must not lock out whoever shares its address (NAT, a UNIX
    socket, the CLI): only wrong keys get the 429."""
    with caplog.at_level(logging.WARNING, logger="broker.app"):
        fail(api.client, AUTH_FAILURE_BURST)
    assert "get 429 for 6 s" in caplog.records[-1].getMessage()
    response = api.client.get("/api/v1/domains", headers=NEAR_MISS)
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60 / AUTH_FAILURE_RATE
    assert api.client.get("/api/v1/domains", headers=AUTH).status_code == 200
    with other_client(api, "192.0.2.7") as elsewhere:
        assert elsewhere.get("/api/v1/domains", headers=NEAR_MISS).status_code == 401


def test_a_locked_out_address_gets_one_try_back_per_refill(api) -> None:
    api.broker.failed_keys.clock = api.clock
    fail(api.client, AUTH_FAILURE_BURST)
    api.clock.advance(60 / AUTH_FAILURE_RATE)
    fail(api.client, 1)
    assert api.client.get("/api/v1/domains", headers=NEAR_MISS).status_code == 429


def test_right_keys_are_never_counted(api) -> None:
    for _ in range(AUTH_FAILURE_BURST + 5):
        assert api.client.get("/api/v1/domains", headers=AUTH).status_code == 200


def test_behind_a_trusted_proxy_the_address_is_the_forwarded_one(api) -> None:
    """request.client as the app sees it: ForwardedHeaders has made it the X-Forwarded-For
    address, so one browser behind nginx does not lock out the panel behind the same nginx."""
    behind_nginx = ForwardedHeaders(api.client.app, TrustedProxies(["127.0.0.1"]))
    with TestClient(behind_nginx, client=("127.0.0.1", 40000)) as nginx:
        attacker = {"X-Forwarded-For": "198.51.100.1"}
        for _ in range(AUTH_FAILURE_BURST):
            assert nginx.get("/api/v1/domains", headers={**NEAR_MISS, **attacker}).status_code == 401
        assert nginx.get("/api/v1/domains", headers={**NEAR_MISS, **attacker}).status_code == 429
        other = {"X-Forwarded-For": "198.51.100.2"}
        assert nginx.get("/api/v1/domains", headers={**NEAR_MISS, **other}).status_code == 401


def test_full_buckets_are_swept_so_addresses_cannot_grow_the_table_for_ever(clock) -> None:
    limiter = RateLimiter(AUTH_FAILURE_RATE, AUTH_FAILURE_BURST, clock=clock)
    for i in range(5000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
        clock.advance(1.0)  # each address long refilled by the time the table is swept
    assert len(limiter._buckets) < 2100
    assert limiter.wait("10.0.0.1") == 0.0


def test_peers_of_a_unix_socket_count_per_socket() -> None:
    """They have no address: each listening socket (nginx's, the CLI's) is one client."""
    from starlette.requests import HTTPConnection

    from broker.web.app import _key_client

    def peer(server: tuple[str, None] | None) -> HTTPConnection:
        return HTTPConnection({"type": "http", "client": None, "server": server, "headers": []})

    assert _key_client(peer(("/run/vm-console-broker/broker.sock", None))) == "unix:/run/vm-console-broker/broker.sock"
    assert (
        _key_client(peer(("/var/lib/vm-console-broker/cli.sock", None))) == "unix:/var/lib/vm-console-broker/cli.sock"
    )
