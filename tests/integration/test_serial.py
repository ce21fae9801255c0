"""Serial consoles end to end: real libvirtd, the tiny Linux guest with a shell on its serial
PTY (logged to a file), a real `broker serve` and real WebSocket clients."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from support import vms
from support.processes import BrokerProcess, start_broker
from support.raw_ws import RawWebSocket, frame
from support.ws import close_of

PROMPT = b"tiny# "
FLOOD_LINES = 25_000  # 2 MB: ~15 s of the tiny guest's UART


@pytest.fixture(scope="module")
def serial_vm(tiny_vm: tuple[libvirt.virDomain, Path]) -> tuple[libvirt.virDomain, Path]:
    return tiny_vm


@pytest.fixture(scope="module")
def serial_broker(tmp_path_factory: pytest.TempPathFactory, serial_vm) -> Iterator[BrokerProcess]:
    # Pings every 120 s: the flood test's client reads nothing for a while, on purpose (up to
    # 90 s on a loaded machine), and a ping it cannot answer would end its session.
    process = start_broker(tmp_path_factory.mktemp("serial-broker"), extra_env={"BROKER_PING_INTERVAL": "120"})
    yield process
    process.stop()


class Terminal:
    """A real WebSocket client speaking the serial wire protocol: bytes, plus JSON control."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = b""
        self.controls: list[dict] = []

    def read_until(self, marker: bytes, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{marker!r} not seen; got {self.output[-300:]!r}")
            try:
                message = self.ws.recv(timeout=remaining)
            except TimeoutError:
                continue
            if isinstance(message, bytes):
                self.output += message
            else:
                self.controls.append(json.loads(message))
        return self.output

    def until_control(self, kind: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for control in self.controls:
                if control["type"] == kind:
                    return control
            message = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(message, bytes):
                self.output += message
            else:
                self.controls.append(json.loads(message))

    def type(self, text: str) -> None:
        self.ws.send(text.encode())

    def run(self, command: str, marker: str) -> bytes:
        """A command line typed into the guest's shell, and its output up to `marker`."""
        start = len(self.output)
        self.type(command + "\r")
        self.read_until(marker.encode())
        return self.output[start:]


def open_terminal(broker: BrokerProcess, link: dict, *, query: str = "") -> Terminal:
    ws = connect(link["websocket_url"] + query, open_timeout=10)
    return Terminal(ws)


def serial_link(broker: BrokerProcess, name: str, **body: object) -> dict:
    return broker.mint(name, kind="serial", **body)


def test_a_line_sent_to_the_guest_is_answered(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    link = serial_link(serial_broker, dom.name())
    assert (link["kind"], link["console"]) == ("serial", "serial0")
    terminal = open_terminal(serial_broker, link)
    with terminal.ws:
        assert terminal.until_control("live")
        answer = terminal.run("echo $((6 * 7))-answer", "42-answer")
        assert b"42-answer" in answer


def test_history_is_replayed_before_live_output(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, log_path = serial_vm
    vms.wait_for_line(str(log_path), "TINY-GUEST-READY")
    terminal = open_terminal(serial_broker, serial_link(serial_broker, dom.name()))
    with terminal.ws:
        header = terminal.until_control("history")
        assert header["available"] is True and 0 < header["bytes"] <= 64 * 1024
        terminal.until_control("live")
        assert b"TINY-GUEST-READY" in terminal.output  # printed at boot, long before this session
        assert len(terminal.output) >= header["bytes"]


def test_a_multibyte_line_arrives_intact(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    terminal = open_terminal(serial_broker, serial_link(serial_broker, dom.name()))
    with terminal.ws:
        terminal.until_control("live")
        answer = terminal.run("echo 'grüße ✓ €-done'", "€-done")
        assert "grüße ✓ €-done".encode() in answer


def test_the_cli_mints_serial_links_and_lists_serial_consoles(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    minted = serial_broker.cli("token", dom.name(), "--serial", "serial0", "--json", check=True)
    link = json.loads(minted.stdout)
    assert (link["kind"], link["console"]) == ("serial", "serial0")
    listing = serial_broker.cli("domains", check=True).stdout
    line = next(row for row in listing.splitlines() if row.startswith(dom.name()))
    assert "serial0 (history)" in line
    terminal = open_terminal(serial_broker, link)
    with terminal.ws:
        terminal.until_control("live")
        assert b"cli-ok" in terminal.run("echo cli-''ok", "cli-ok")


def test_busy_then_take_over(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    first = open_terminal(serial_broker, serial_link(serial_broker, dom.name()))
    with first.ws:
        first.until_control("live")
        busy = close_of(serial_link(serial_broker, dom.name())["websocket_url"])
        assert busy.code == 4208 and "Take over" in busy.reason
        refused = close_of(serial_link(serial_broker, dom.name(), take_over=False)["websocket_url"] + "&takeover=1")
        assert refused.code == 4208 and "may not take it over" in refused.reason
        second = open_terminal(serial_broker, serial_link(serial_broker, dom.name()), query="&takeover=1")
        with second.ws:
            second.until_control("live")
            with pytest.raises(ConnectionClosed) as lost:
                first.read_until(b"never", timeout=5)
            assert lost.value.rcvd is not None and lost.value.rcvd.code == 4303
            assert b"second-ok" in second.run("echo second-''ok", "second-ok")


def test_virsh_console_holding_it_makes_it_busy(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    # virsh console wants a terminal: script(1) gives it one.
    holder = subprocess.Popen(
        ["script", "-qfec", f"virsh -c {vms.URI} console {dom.name()}", "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.read1(100)  # "Connected to domain …": virsh holds the console now
        closed = close_of(serial_link(serial_broker, dom.name(), take_over=False)["websocket_url"])
        assert closed.code == 4208 and "Another client" in closed.reason
    finally:
        holder.kill()
        holder.wait()


def test_text_that_is_not_control_ends_the_session(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    terminal = open_terminal(serial_broker, serial_link(serial_broker, dom.name()))
    with terminal.ws:
        terminal.until_control("live")
        terminal.ws.send(json.dumps({"type": "ping"}))
        assert terminal.until_control("pong")
        terminal.ws.send("ls -l")
        with pytest.raises(ConnectionClosed) as ended:
            terminal.read_until(b"never", timeout=5)
    assert ended.value.rcvd is not None and ended.value.rcvd.code == 4302
    assert "JSON control messages" in ended.value.rcvd.reason


def test_a_domain_without_a_serial_console_says_what_to_add(serial_broker: BrokerProcess, tcp_vm) -> None:
    response = serial_broker.api("POST", f"/api/v1/domains/{tcp_vm.name()}/console", json={"kind": "serial"})
    assert response.status_code == 409
    assert "<serial type='pty'><log file=" in response.json()["error"]["message"]


def test_a_flooding_guest_and_a_browser_that_stops_reading_keep_memory_bounded(
    serial_broker: BrokerProcess, serial_vm
) -> None:
    """The guest prints FLOOD_LINES as fast as its UART goes while the client reads nothing
    (4 KiB receive buffer): the broker's memory stays bounded, and the session then goes on.
    (The tiny guest's UART moves ~120 KiB/s under TCG, so a flood of tens of MiB would take
    minutes here: that the broker keeps only BUFFER_LIMIT and drops the oldest output is
    shown with a fake stream in tests/unit/test_serial_backend.py.)"""
    dom, log_path = serial_vm
    # A full history first (as after a long test session): 64 KiB are replayed on attach to
    # a client that is not reading, so the browser is full before the relay even starts.
    filler = open_terminal(serial_broker, serial_link(serial_broker, dom.name()))
    with filler.ws:
        filler.until_control("live")
        filler.run("yes history-filler-0123456789abcdefghijklmnop | head -n 1800; echo filled''-up", "filled-up")
    link = serial_link(serial_broker, dom.name())
    client = RawWebSocket(link["websocket_url"], receive_buffer=4096)
    try:  # closed whatever happens: a session left open would keep the console busy (4208)
        before, logged_before = serial_broker.rss_mib(), log_path.stat().st_size
        line = b"flood-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789-ABCDEFGHIJKLMNOPQRSTUVWX"
        client.send_binary(b"yes '" + line + b"' | head -n %d; echo flood-''done\r" % FLOOD_LINES)
        peak, started = before, time.monotonic()
        while b"flood-done" not in log_path.read_bytes()[-200:]:
            assert time.monotonic() - started < 90, "the guest printed too slowly"
            peak = max(peak, serial_broker.rss_mib())
            time.sleep(0.2)
        flooded = (log_path.stat().st_size - logged_before) / 2**20
        seconds = time.monotonic() - started
        client.send_binary(b"echo after-''flood\r")
        seen, deadline = bytearray(), time.monotonic() + 60
        try:
            while b"after-flood" not in seen[-4096:]:
                assert time.monotonic() < deadline, "the session did not come back after the flood"
                opcode, data = client.read_frame()
                if opcode == 0x2:
                    seen += data
                elif opcode == 0x9:  # a browser that reads again answers pings, or the broker's keepalive ends it
                    client.send(frame(0xA, data))
                elif opcode == 0x8:
                    raise AssertionError(f"the broker closed the session: {data[:2].hex()} {data[2:].decode()!r}")
        except (AssertionError, OSError) as exc:
            raise AssertionError(f"{exc}; {_stall_evidence(serial_broker, client, seen)}") from exc
    finally:
        client.close()
    growth = peak - before
    print(f"\nflood: {flooded:.1f} MiB in {seconds:.1f} s; broker RSS {before:.1f} -> peak {peak:.1f} MiB")
    assert b"flood-done" in seen
    assert growth < 16, f"the broker grew by {growth:.1f} MiB while the guest printed {flooded:.1f} MiB"


def _stall_evidence(broker: BrokerProcess, client: RawWebSocket, seen: bytearray) -> str:
    """Where the output stopped, when it did: in the broker (its session's byte count) or in
    TCP between it and the client (the sockets' queues)."""
    port = client.sock.getsockname()[1]
    sockets = subprocess.run(["ss", "-tnmi", f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True)
    sessions = broker.api("GET", "/api/v1/sessions").text
    return f"client has {len(seen)} B, last {bytes(seen[-120:])!r}; sockets:\n{sockets.stdout}\nsessions: {sessions}"


def test_a_vm_destroyed_mid_session_closes_4300_at_once(
    serial_broker: BrokerProcess, conn: libvirt.virConnect, tmp_path: Path
) -> None:
    dom = vms.define_tiny(conn, "broker-test-serial-doomed", str(tmp_path / "doomed.log"))
    try:
        terminal = open_terminal(serial_broker, serial_link(serial_broker, dom.name()))
        with terminal.ws:
            terminal.until_control("live")
            dom.destroy()
            destroyed = time.monotonic()
            with pytest.raises(ConnectionClosed) as ended:
                terminal.read_until(b"never", timeout=5)
            seconds = time.monotonic() - destroyed
        assert ended.value.rcvd is not None and ended.value.rcvd.code == 4300
        assert seconds < 2, f"closed {seconds:.2f} s after the destroy"
    finally:
        vms.remove(conn, dom.name())


# -- the security matrix, on serial links (docs/security.md) -------------------------------


def test_a_serial_link_is_single_use(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    link = serial_link(serial_broker, dom.name())
    with connect(link["websocket_url"], open_timeout=10) as first:
        first.recv(timeout=10)
        again = close_of(link["websocket_url"])
    assert again.code == 4103


def test_an_expired_serial_link_says_so(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    link = serial_link(serial_broker, dom.name(), ttl=1)
    time.sleep(1.1)  # the link's whole lifetime must pass
    assert close_of(link["websocket_url"]).code == 4102


def test_a_forged_serial_token_opens_nothing(serial_broker: BrokerProcess) -> None:
    assert close_of(f"{serial_broker.ws_url}/websockify?token={'A' * 43}&takeover=1").code == 4101


def test_a_foreign_origin_cannot_open_a_serial_console(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    link = serial_link(serial_broker, dom.name())
    assert close_of(link["websocket_url"], origin="https://evil.example").code == 4106


def test_an_oversized_frame_closes_1009(serial_broker: BrokerProcess, serial_vm) -> None:
    dom, _log = serial_vm
    terminal = open_terminal(serial_broker, serial_link(serial_broker, dom.name()))
    with terminal.ws:
        terminal.until_control("live")
        terminal.ws.send(b"x" * (1024 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as ended:
            terminal.read_until(b"never", timeout=10)
    assert ended.value.rcvd is not None and ended.value.rcvd.code == 1009
