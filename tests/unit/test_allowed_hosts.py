"""allowed_hosts pins the names the broker answers to (DNS rebinding), and a broker that
listens beyond loopback with neither it nor public_url says so at start."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from broker.config import ConfigError, load_settings
from support.processes import BrokerProcess, free_port, start_broker


def broker_on_all_addresses(state: Path, **env: str) -> BrokerProcess:
    return start_broker(state, "--connect", "test:///default", "--listen", f"0.0.0.0:{free_port()}", extra_env=env)


def test_only_allowed_hosts_are_answered(tmp_path: Path) -> None:
    broker = broker_on_all_addresses(tmp_path / "state", BROKER_ALLOWED_HOSTS="console.example.com,*.panel.example")
    try:
        port = broker.url.rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}/healthz"
        assert httpx.get(url, headers={"Host": f"console.example.com:{port}"}).status_code == 200
        assert httpx.get(url, headers={"Host": "eu.panel.example"}).status_code == 200
        refused = httpx.get(url, headers={"Host": "rebound.attacker.example"})
        assert refused.status_code == 400 and "host" in refused.text.lower()
        # The listen address is no allowed name (the CLI socket is exempt, not widened).
        assert httpx.get(url, headers={"Host": f"0.0.0.0:{port}"}).status_code == 400
        # The CLI socket's requests carry the broker's own address: still served.
        assert broker.cli("domains", "--json").returncode == 0
        assert "neither public_url nor allowed_hosts" not in broker.log()
    finally:
        broker.stop()


def test_listening_beyond_loopback_without_allowed_hosts_or_public_url_warns(tmp_path: Path) -> None:
    broker = broker_on_all_addresses(tmp_path / "state")
    try:
        assert "neither public_url nor allowed_hosts" in broker.log()
    finally:
        broker.stop()


@pytest.mark.parametrize("hosts", ["http://console.example.com", "a.example:443", "*evil.example", "a/b"])
def test_allowed_hosts_must_be_host_names(hosts: str) -> None:
    with pytest.raises(ConfigError, match="allowed_hosts"):
        load_settings(environ={"BROKER_ALLOWED_HOSTS": hosts})


def test_allowed_hosts_take_names_wildcards_and_bracketed_ipv6() -> None:
    settings = load_settings(environ={"BROKER_ALLOWED_HOSTS": "a.example, *.b.example,[::1],127.0.0.1"})
    assert settings.allowed_hosts == ("a.example", "*.b.example", "[::1]", "127.0.0.1")
