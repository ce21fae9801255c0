"""Operating the broker (issue 13) against real QEMU domains, a real `broker serve` and
a real Prometheus: live sessions listed and killed through REST and the CLI, the metrics
read back through Prometheus's own query API, and the audit trail of the whole story."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from support import prometheus as prom
from support.audit import audit_events, secrets_in
from support.processes import BrokerProcess, free_port, start_broker
from support.rfb_client import ServerInit, handshake, request_update
from support.ws import close_of

pytestmark = pytest.mark.integration

KILLED_REASON = "An administrator ended this console session."
LOGROTATE = Path(__file__).resolve().parents[2] / "contrib" / "logrotate" / "vm-console-broker"
# Every token and key this module handles, to look for in the audit trail at the end.
SEEN_SECRETS: list[str] = []
# What the tests did, for the audit trail's test to find in order.
STORY: dict[str, Any] = {}


@dataclass
class Ops:
    broker: BrokerProcess
    metrics_address: str  # metrics_listen
    audit: Path
    rotated: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.broker.url.removeprefix("http://")

    def sessions(self, query: str = "") -> list[dict[str, Any]]:
        response = self.broker.api("GET", f"/api/v1/sessions{query}")
        assert response.status_code == 200, response.text
        return response.json()["sessions"]  # type: ignore[no-any-return]

    def mint(self, vm: libvirt.virDomain) -> dict[str, Any]:
        link = self.broker.mint(vm.name())
        SEEN_SECRETS.append(link["token"])
        return link


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, conn: libvirt.virConnect) -> Iterator[Ops]:
    state = tmp_path_factory.mktemp("ops-state")
    metrics_address = f"127.0.0.1:{free_port()}"
    audit = state / "logs" / "audit.jsonl"
    env = {"BROKER_AUDIT_LOG": str(audit), "BROKER_METRICS_LISTEN": metrics_address}
    process = start_broker(state, extra_env=env)
    SEEN_SECRETS.append(process.api_key)
    yield Ops(process, metrics_address, audit)
    process.stop()


@pytest.fixture(scope="module")
def prometheus(ops: Ops, tmp_path_factory: pytest.TempPathFactory) -> Iterator[prom.Prometheus]:
    reason = prom.missing()
    if reason:
        pytest.fail(reason)
    key_file = ops.broker.state_dir / "api-key"  # Prometheus sends it as the bearer token
    server = prom.start_prometheus(
        tmp_path_factory.mktemp("prometheus"),
        {
            "vm-console-broker": {
                "authorization": {"type": "Bearer", "credentials_file": str(key_file)},
                "static_configs": [{"targets": [ops.address]}],
            },
            "vm-console-broker-metrics-listen": {"static_configs": [{"targets": [ops.metrics_address]}]},
        },
    )
    yield server
    server.stop()


def open_console(stack: ExitStack, url: str) -> tuple[ClientConnection, ServerInit]:
    ws = stack.enter_context(connect(url, open_timeout=10))
    return ws, handshake(ws)


class CloseWatcher:
    """Reads a console WebSocket on a thread of its own until the broker closes it, and
    notes when: the test can then say how long after the kill the browser knew."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.code: int | None = None
        self.reason = ""
        self.at = 0.0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.ws.recv(timeout=30)
        except ConnectionClosed as closed:
            self.at = time.monotonic()
            if closed.rcvd is not None:
                self.code, self.reason = closed.rcvd.code, closed.rcvd.reason
        except TimeoutError:
            pass

    def wait(self) -> tuple[int | None, str, float]:
        self.thread.join(10)
        return self.code, self.reason, self.at


def test_two_sessions_are_listed_and_killed_through_rest_and_cli(
    ops: Ops, tcp_vm: libvirt.virDomain, unix_vm: libvirt.virDomain
) -> None:
    rest_link = ops.mint(tcp_vm)
    minted = ops.broker.cli("token", unix_vm.name(), "--json")
    assert minted.returncode == 0, minted.stderr
    cli_link = json.loads(minted.stdout)
    SEEN_SECRETS.append(cli_link["token"])

    with ExitStack() as stack:
        ws_tcp, init_tcp = open_console(stack, rest_link["websocket_url"])
        ws_unix, init_unix = open_console(stack, cli_link["websocket_url"])
        request_update(ws_tcp, init_tcp)
        listed = ops.sessions()
        assert [s["domain"]["name"] for s in listed] == [unix_vm.name(), tcp_vm.name()]  # newest first
        unix_session, tcp_session = listed
        assert tcp_session["domain"]["uuid"] == tcp_vm.UUIDString()
        assert (tcp_session["key"], unix_session["key"]) == ("key1", "cli")
        for session in listed:
            assert session["kind"] == "vnc" and session["mode"] == "interactive"
            assert session["state"] == "relaying" and session["via"] == "link"
            assert session["client"].startswith("127.0.0.1:")
            assert "websockets" in session["user_agent"]
            assert session["bytes_to_browser"] > 0 and session["bytes_from_browser"] > 0
            assert session["last_input_at"] is not None
        STORY["sessions"] = {"tcp": tcp_session["id"], "unix": unix_session["id"]}

        # The counters are live: a full-screen update (raw, 4 bytes a pixel) shows at once.
        before = tcp_session["bytes_to_browser"]
        request_update(ws_tcp, init_tcp)
        shown = ops.broker.api("GET", f"/api/v1/sessions/{tcp_session['id']}").json()["session"]
        assert shown["bytes_to_browser"] >= before + init_tcp.width * init_tcp.height * 4
        assert shown["bytes_from_browser"] > tcp_session["bytes_from_browser"]

        domains = {d["name"]: d for d in ops.broker.api("GET", "/api/v1/domains").json()["domains"]}
        assert domains[tcp_vm.name()]["sessions"] == domains[unix_vm.name()]["sessions"] == 1
        assert [s["id"] for s in ops.sessions(f"?domain={unix_vm.name()}")] == [unix_session["id"]]
        assert [s["id"] for s in ops.sessions(f"?domain={tcp_vm.UUIDString()}")] == [tcp_session["id"]]

        table = ops.broker.cli("sessions")
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split()[:5] == ["ID", "DOMAIN", "KIND", "CLIENT", "KEY"]
        assert [row.split()[0] for row in rows] == [unix_session["id"], tcp_session["id"]]
        assert rows[0].split()[1:3] == [unix_vm.name(), "vnc"] and " cli " in rows[0]
        assert rows[1].split()[1:3] == [tcp_vm.name(), "vnc"] and " key1 " in rows[1]
        only = ops.broker.cli("sessions", unix_vm.name(), "--json")
        assert [s["id"] for s in json.loads(only.stdout)["sessions"]] == [unix_session["id"]]

        # Killed through REST: that browser is told within a second, the other goes on.
        watcher = CloseWatcher(ws_tcp)
        asked = time.monotonic()
        killed = ops.broker.api("DELETE", f"/api/v1/sessions/{tcp_session['id']}")
        assert killed.status_code == 200, killed.text
        code, reason, at = watcher.wait()
        assert (code, reason) == (4305, KILLED_REASON)
        STORY["rest_kill_seconds"] = at - asked
        assert at - asked < 1.0
        request_update(ws_unix, init_unix)
        assert [s["id"] for s in ops.sessions()] == [unix_session["id"]]

        # Killed through the CLI: told within a second of the command's return.
        watcher = CloseWatcher(ws_unix)
        started = time.monotonic()
        result = ops.broker.cli("kill", unix_session["id"])
        returned = time.monotonic()
        assert result.returncode == 0, result.stderr
        assert unix_session["id"] in result.stdout and unix_vm.name() in result.stdout
        code, reason, at = watcher.wait()
        assert (code, reason) == (4305, KILLED_REASON)
        STORY["cli_kill_seconds"] = (at - started, returned - started)
        assert at - returned < 1.0
        print(  # measurements, shown with pytest -s
            f"kill -> close seen: REST {STORY['rest_kill_seconds'] * 1000:.0f} ms; "
            f"CLI {(at - started) * 1000:.0f} ms after it started (it ran {(returned - started) * 1000:.0f} ms)"
        )
        assert ops.sessions() == []

        again = ops.broker.cli("kill", unix_session["id"])
        assert again.returncode == 1
        assert "[session_not_found]" in again.stderr


def test_prometheus_scrapes_the_broker(ops: Ops, prometheus: prom.Prometheus, tcp_vm: libvirt.virDomain) -> None:
    job = '{job="vm-console-broker"}'

    def one(value: float | None) -> bool:
        return value == 1

    prometheus.wait_for(f"up{job}", one)
    prometheus.wait_for('up{job="vm-console-broker-metrics-listen"}', one)
    assert prometheus.value('broker_info{job="vm-console-broker",version!=""}') == 1
    prometheus.wait_for(f"broker_libvirt_up{job}", one)
    assert prometheus.value(f"broker_sessions_max{job}") == 1024

    # A session opens: the gauge goes up, and down again when the browser leaves.
    open_now = 'sum(broker_sessions_open{job="vm-console-broker"})'
    prometheus.wait_for(open_now, lambda v: v == 0)
    link = ops.mint(tcp_vm)
    with ExitStack() as stack:
        ws, init = open_console(stack, link["websocket_url"])
        request_update(ws, init)
        prometheus.wait_for(open_now, one)
        prometheus.wait_for(
            'broker_relayed_bytes_total{job="vm-console-broker",direction="to_browser"}',
            lambda v: v is not None and v >= init.width * init.height * 4,
        )
    prometheus.wait_for(open_now, lambda v: v == 0)
    prometheus.wait_for('broker_sessions_ended_total{job="vm-console-broker",reason="client_closed"}', one)
    prometheus.wait_for(
        'broker_sessions_ended_total{job="vm-console-broker",reason="session_killed"}', lambda v: v == 2
    )

    # Refusals, counted by reason: the same link twice, and a forged one.
    assert close_of(link["websocket_url"]).code == 4103
    assert close_of(link["websocket_url"]).code == 4103
    assert close_of(f"{ops.broker.ws_url}/websockify?token={'A' * 43}").code == 4101
    refused = 'broker_console_refusals_total{job="vm-console-broker",reason="%s"}'
    prometheus.wait_for(refused % "token_used", lambda v: v == 2)
    prometheus.wait_for(refused % "token_invalid", one)
    minted = 'broker_links_minted_total{job="vm-console-broker",kind="vnc"}'
    assert prometheus.value(minted) == 3  # two above, one here
    # The key-less listener shows the same registry.
    prometheus.wait_for(
        'broker_console_refusals_total{job="vm-console-broker-metrics-listen",reason="token_used"}',
        lambda v: v == 2,
    )

    # contrib's alert rules are loaded and evaluate without error; none fires here.
    deadline = time.monotonic() + 20
    while True:
        groups = {g["name"]: g for g in prometheus.rules()}
        rules = groups["vm-console-broker"]["rules"] if "vm-console-broker" in groups else []
        if rules and all(r.get("health") == "ok" for r in rules):
            break
        assert time.monotonic() < deadline, f"rules not healthy: {rules}"
        time.sleep(0.2)
    assert {r["name"] for r in rules} == {
        "ConsoleBrokerDown",
        "ConsoleBrokerLibvirtDown",
        "ConsoleBrokerFailingConsoles",
        "ConsoleBrokerNearSessionLimit",
    }
    assert all(r["state"] == "inactive" for r in rules), rules

    # /metrics on the broker's own listener needs the key; the metrics listener serves nothing else.
    assert httpx.get(f"{ops.broker.url}/metrics", timeout=5).status_code == 401
    assert httpx.get(f"http://{ops.metrics_address}/api/v1/sessions", timeout=5).status_code == 404
    text = httpx.get(f"http://{ops.metrics_address}/metrics", timeout=5).text
    assert ops.broker.api_key not in text and "127.0.0.1" not in text
    assert not [t for t in SEEN_SECRETS if t in text]


def test_an_exclusive_link_taking_over_is_audited(ops: Ops, tcp_vm: libvirt.virDomain) -> None:
    with ExitStack() as stack:
        other, _ = open_console(stack, ops.mint(tcp_vm)["websocket_url"])
        (listed,) = ops.sessions()
        watcher = CloseWatcher(other)
        exclusive = ops.broker.mint(tcp_vm.name(), mode="exclusive", user="admin-on-call")
        SEEN_SECRETS.append(exclusive["token"])
        owner, _ = open_console(stack, exclusive["websocket_url"])
        assert watcher.wait()[0] == 4304
        (owner_session,) = ops.sessions()
        assert (owner_session["mode"], owner_session["user"]) == ("exclusive", "admin-on-call")
    events = audit_events(ops.audit)
    (taken,) = [e for e in events if e["event"] == "take_over"]
    assert (taken["session"], taken["how"], taken["ended"]) == (owner_session["id"], "exclusive", [listed["id"]])
    (ended,) = [e for e in events if e["event"] == "session_ended" and e["session"] == listed["id"]]
    assert ended["reason"] == "exclusive_taken"
    STORY["take_over"] = taken["session"]


def test_sighup_reopens_the_audit_file(ops: Ops, tcp_vm: libvirt.virDomain) -> None:
    rotated = ops.audit.with_name("audit.jsonl.1")
    ops.audit.rename(rotated)  # what logrotate does
    ops.rotated.append(rotated)
    ops.mint(tcp_vm)  # before the signal: still into the moved file
    ops.broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not ops.audit.exists():
        assert time.monotonic() < deadline, "no new audit file after SIGHUP"
        time.sleep(0.02)
    link = ops.mint(tcp_vm)
    assert ops.broker.process.poll() is None, "SIGHUP must not end the broker"
    assert audit_events(rotated)[-1]["event"] == "link_minted"
    (fresh,) = audit_events(ops.audit)
    assert fresh["event"] == "link_minted" and fresh["domain"]["name"] == tcp_vm.name()
    assert oct(os.stat(ops.audit).st_mode & 0o777) == "0o640"
    assert close_of(link["websocket_url"] + "x").code == 4101  # one more event for the new file
    assert "audit log reopened" in ops.broker.log()


def test_contrib_logrotate_file_rotates_the_audit_trail(ops: Ops, tcp_vm: libvirt.virDomain, tmp_path: Path) -> None:
    """The real logrotate with contrib's file (only its paths moved here): the file is
    moved away, its postrotate signals the broker (no systemd here: through the pid in
    server.json), and the next event lands in a new file."""
    assert shutil.which("logrotate"), "no logrotate: run contrib/test.sh (it installs Debian's logrotate)"
    conf = LOGROTATE.read_text()
    conf = conf.replace("/var/log/vm-console-broker/", f"{ops.audit.parent}/")
    conf = conf.replace("/var/lib/vm-console-broker/", f"{ops.broker.state_dir}/")
    conf_path = tmp_path / "vm-console-broker"
    conf_path.write_text(conf)
    conf_path.chmod(0o644)
    before = set(ops.audit.parent.iterdir())
    result = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "status"), str(conf_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    (rotated,) = set(ops.audit.parent.iterdir()) - before - {ops.audit}
    assert rotated.name.startswith("audit.jsonl-")  # dateext; compressed only at the next rotation
    ops.rotated.append(rotated)
    deadline = time.monotonic() + 5
    while not ops.audit.exists():  # the broker reopens as soon as the signal arrives
        assert time.monotonic() < deadline, f"no new audit file after logrotate: {result.stderr}"
        time.sleep(0.02)
    ops.mint(tcp_vm)
    assert [e["event"] for e in audit_events(ops.audit)] == ["link_minted"]
    assert ops.broker.log().count("audit log reopened") == 2


def test_the_audit_trail_tells_the_story_in_order_and_nothing_secret(ops: Ops) -> None:
    files = [*ops.rotated, ops.audit]
    events = [event for path in files for event in audit_events(path)]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    ids = STORY.get("sessions")
    assert ids, "runs after test_two_sessions_are_listed_and_killed_through_rest_and_cli"

    def about(session_id: str) -> list[tuple[str, str]]:
        return [
            (e["event"], e.get("reason") or e.get("by") or e.get("key", ""))
            for e in events
            if e.get("session") == session_id
        ]

    assert about(ids["tcp"]) == [
        ("session_opened", "key1"),
        ("session_killed", "key1"),
        ("session_ended", "session_killed"),
    ]
    assert about(ids["unix"]) == [
        ("session_opened", "cli"),
        ("session_killed", "cli"),
        ("session_ended", "session_killed"),
    ]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["link_minted", "link_minted"]
    assert [e["key"] for e in events[:2]] == ["key1", "cli"]
    refusals = [e["reason"] for e in events if e["event"] == "refused"]
    assert refusals.count("token_used") == 2 and refusals.count("token_invalid") == 2
    ended = [e for e in events if e["event"] == "session_ended"]
    assert all(e["duration"] > 0 and e["bytes_to_browser"] > 0 for e in ended)
    for path in files:
        assert secrets_in(path, SEEN_SECRETS) == []
