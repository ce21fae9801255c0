"""Faults: the broker stopping, QEMU killed, libvirtd killed and restarted under live sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import vms
from support.processes import BrokerProcess, start_broker
from support.rfb_client import handshake, request_update

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_sigterm_closes_sessions_with_1001_and_exits(tmp_path: Path, tcp_vm: libvirt.virDomain) -> None:
    broker = start_broker(tmp_path / "state")
    try:
        with connect(broker.mint(tcp_vm.name())["websocket_url"]) as ws:
            handshake(ws)
            assert children_of(broker.process.pid) == [], "the broker started child processes"
            started = time.monotonic()
            broker.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert "shutting down" in closed.value.rcvd.reason
        assert broker.process.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
        assert not (tmp_path / "state" / "server.json").exists()
    finally:
        broker.stop()


def test_qemu_killed_mid_session_closes_within_a_second(broker: BrokerProcess, conn: libvirt.virConnect) -> None:
    dom = vms.define(conn, "broker-test-sigkill", vms.TCP)
    try:
        pid = int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text())
        with connect(broker.mint(dom.name())["websocket_url"]) as ws:
            handshake(ws)
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
            elapsed = time.monotonic() - started
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4300, closed.value.rcvd
        assert elapsed < 1.0, f"close took {elapsed:.2f}s"
    finally:
        vms.remove(conn, dom.name())


@pytest.mark.restarts_libvirtd
def test_libvirtd_restart_keeps_sessions_and_recovers(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """Sessions do not depend on libvirtd; the broker reconnects to it by itself."""
    import httpx

    name = tcp_vm.name()
    with connect(broker.mint(name)["websocket_url"]) as ws:
        init = handshake(ws)
        killed = kill_libvirtd()
        deadline = time.monotonic() + 15
        while httpx.get(broker.url + "/healthz").status_code != 503:
            assert time.monotonic() < deadline, "healthz never noticed libvirtd was gone"
            time.sleep(0.2)
        rectangles, _ = request_update(ws, init)  # still relaying with libvirtd down
        assert rectangles >= 1
        subprocess.run(["bash", str(REPO / "contrib" / "libvirt-up.sh"), "up"], check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while httpx.get(broker.url + "/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the broker did not reconnect to libvirtd"
            time.sleep(0.2)
        rectangles, _ = request_update(ws, init)
        assert rectangles >= 1
    assert killed
    with connect(broker.mint(name)["websocket_url"]) as fresh:
        assert handshake(fresh).width > 0


def kill_libvirtd() -> int:
    """SIGKILL the running libvirtd, as a crash would (found by exact name: there is one)."""
    pids = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, f"expected one libvirtd, found {pids}"
    pid = int(pids[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return pid
