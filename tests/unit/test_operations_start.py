"""`broker serve` with the operating settings: a wrong audit_log or a taken metrics_listen
stops it at start with a message that names them; a working one serves /metrics alone."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from support.processes import BROKER, free_port, start_broker


def serve(state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    state.mkdir(mode=0o700, exist_ok=True)
    environ = {**os.environ, "BROKER_STATE_DIR": str(state), "BROKER_CONNECT": "test:///default", **env}
    try:
        return subprocess.run(
            [*BROKER, "serve", "--listen", f"127.0.0.1:{free_port()}"],
            env=environ,
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("broker serve started when it should have refused")


def test_an_audit_log_that_cannot_be_opened_stops_the_broker(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    done = serve(tmp_path / "state", BROKER_AUDIT_LOG=str(tmp_path / "not-a-dir" / "audit.jsonl"))
    assert done.returncode == 1
    assert f"\nbroker: cannot open the audit log {tmp_path}/not-a-dir/audit.jsonl: " in done.stderr
    assert "Traceback" not in done.stderr


def test_a_metrics_listen_address_in_use_stops_the_broker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = serve(tmp_path / "state", BROKER_METRICS_LISTEN=address)
    assert done.returncode == 1
    assert f"\nbroker: metrics_listen {address}: Address already in use\n" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_metrics_listener_serves_metrics_alone(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    broker = start_broker(
        tmp_path / "state", extra_env={"BROKER_CONNECT": "test:///default", "BROKER_METRICS_LISTEN": address}
    )
    try:
        metrics = httpx.get(f"http://{address}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'broker_sessions_open{kind="vnc"} 0.0' in metrics.text
        assert "broker_libvirt_up 1.0" in metrics.text
        for path in ("/api/v1/sessions", "/api/v1/domains", "/healthz"):
            assert httpx.get(f"http://{address}{path}", timeout=5).status_code == 404
        # The main listener: /metrics only with the key, and the rest as always.
        assert httpx.get(f"{broker.url}/metrics", timeout=5).status_code == 401
        assert broker.api("GET", "/metrics").status_code == 200
        assert httpx.get(f"{broker.url}/healthz", timeout=5).status_code == 200
    finally:
        assert broker.stop() == 0
