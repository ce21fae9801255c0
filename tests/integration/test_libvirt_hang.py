"""A libvirtd that stops answering must not hang the broker (security review, item 8).

The broker talks to the real libvirtd through a forwarder that the test pauses: the
connection stays open and nothing comes back, which is how a wedged libvirtd looks.
With it paused, /healthz, minting and console opens must each be answered within the
`libvirt_timeout` deadline (plus slack), with `libvirt_unavailable`; the pending slot of
a failed open must be free again; once it answers again, everything works again,
lifecycle events included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import vms
from support.pausable_proxy import PausableProxy
from support.processes import BrokerProcess, start_broker
from support.rfb_client import handshake
from support.wait import wait_until

pytestmark = pytest.mark.integration

LIBVIRT_TIMEOUT = 3.0
# How late an answer may be beyond the deadline (a loaded 2-core machine).
SLACK = 2.5
# libvirt's keepalive: a ping every ceil(LIBVIRT_TIMEOUT) s, closed after 2 unanswered (~3 intervals).
KEEPALIVE_WAIT = 4 * LIBVIRT_TIMEOUT + SLACK
# Cap on how long we wait for anything, so a broker without the fix fails instead of hanging.
CAP = 30.0


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[PausableProxy]:
    forwarder = PausableProxy(tmp_path / "libvirt.sock")
    yield forwarder
    forwarder.close()


@pytest.fixture
def hang_vm(conn: libvirt.virConnect) -> Iterator[libvirt.virDomain]:
    dom = vms.define(conn, "broker-test-hang", vms.TCP)
    yield dom
    vms.remove(conn, dom.name())


@pytest.fixture
def proxied_broker(tmp_path: Path, proxy: PausableProxy) -> Iterator[BrokerProcess]:
    process = start_broker(
        tmp_path / "state",
        "--connect",
        proxy.uri,
        # One pending open at a time: a slot a failed open kept would turn the next into 4402.
        extra_env={"BROKER_LIBVIRT_TIMEOUT": str(LIBVIRT_TIMEOUT), "BROKER_MAX_PENDING": "1"},
    )
    yield process
    process.stop()


def timed(action) -> tuple[object, float]:
    """(what action returned, or the timeout it raised; seconds it took)."""
    started = time.monotonic()
    try:
        result = action()
    except httpx.TimeoutException as exc:
        result = exc
    return result, time.monotonic() - started


def mint(broker: BrokerProcess, name: str, timeout: float = CAP) -> httpx.Response:
    """A link that outlives every wait below (a broker without the fix makes each last CAP)."""
    headers = {"Authorization": f"Bearer {broker.api_key}"}
    url = f"{broker.url}/api/v1/domains/{name}/console"
    return httpx.post(url, headers=headers, json={"ttl": 300}, timeout=timeout)


def open_close(url: str) -> tuple[int | None, str]:
    """Open a console WebSocket and wait for the broker to close it: (code, reason), or (None, why)."""
    try:
        with connect(url, open_timeout=CAP) as ws:
            while True:
                ws.recv(timeout=CAP)
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            return None, "closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason
    except TimeoutError:
        return None, f"no answer in {CAP:g} s"
    return None, "unreachable"


def wait_for_log(broker: BrokerProcess, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while text not in broker.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_healthy(broker: BrokerProcess, timeout: float = CAP) -> float:
    started = time.monotonic()
    while True:
        try:
            if httpx.get(broker.url + "/healthz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.TimeoutException:
            pass
        assert time.monotonic() - started < timeout, "the broker did not recover after libvirtd answered again"
        time.sleep(0.2)


def test_hung_libvirtd_is_answered_within_the_deadline_and_recovered_from(
    proxy: PausableProxy, proxied_broker: BrokerProcess, hang_vm: libvirt.virDomain
) -> None:
    broker, name = proxied_broker, hang_vm.name()
    links = []
    for _ in range(2):
        minted = mint(broker, name)
        assert minted.status_code == 201, minted.text
        links.append(minted.json()["websocket_url"])
    measured: dict[str, float] = {}
    health = refused = None
    keepalive_closed = False
    code = second_code = None
    reason = second_reason = ""

    proxy.pause()
    try:
        health, measured["healthz"] = timed(lambda: httpx.get(broker.url + "/healthz", timeout=CAP))
        refused, measured["mint"] = timed(lambda: mint(broker, name))
        (code, reason), measured["open"] = timed(lambda: open_close(links[0]))
        # The first open's pending slot (max_pending = 1) must be free again: not 4402 busy.
        (second_code, second_reason), measured["second open"] = timed(lambda: open_close(links[1]))
        # The worker is not wedged: later calls are answered as fast, again and again.
        repeated = []
        for attempt in range(3):
            again, measured[f"healthz #{attempt + 2}"] = timed(lambda: httpx.get(broker.url + "/healthz", timeout=CAP))
            repeated.append(again)
            if not isinstance(again, httpx.Response):
                break
        # libvirt's keepalive closes the hung connection by itself, so the call stuck on it returns.
        keepalive_closed = wait_for_log(broker, "keepalive timeout", timeout=KEEPALIVE_WAIT)
    finally:
        print("with libvirtd paused, seconds to answer:", {k: round(v, 2) for k, v in measured.items()})
        print("answers:", health, refused, (code, reason), (second_code, second_reason))
        proxy.resume()

    for what, seconds in measured.items():
        assert seconds < LIBVIRT_TIMEOUT + SLACK, f"{what} took {seconds:.1f} s with libvirtd paused"
    assert all(again.status_code == 503 for again in repeated)
    assert keepalive_closed, "libvirt's keepalive never closed the hung connection"
    assert health.status_code == 503 and health.json()["status"] == "unavailable", health.text
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "libvirt_unavailable"
    assert (code, second_code) == (4204, 4204), (reason, second_reason)
    assert "libvirt" in reason

    recovery = wait_healthy(broker)
    print(f"healthy again {recovery:.2f} s after resume")
    fresh = mint(broker, name, timeout=15)
    assert fresh.status_code == 201, fresh.text
    with connect(fresh.json()["websocket_url"]) as ws:
        assert handshake(ws).width > 0
    # Lifecycle events arrive again: the VM's end revokes its unused link (4104, not 4201).
    unused = mint(broker, name, timeout=15)
    assert unused.status_code == 201, unused.text
    hang_vm.destroy()
    wait_until(lambda: f"domain {hang_vm.UUIDString()} ended" in broker.log(), 10, "the VM's stop to reach the broker")
    assert open_close(unused.json()["websocket_url"])[0] == 4104
    assert "Traceback" not in broker.log()
