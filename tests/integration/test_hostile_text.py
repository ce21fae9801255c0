"""Names libvirt accepts and headers clients send reach the log (and close reasons) escaped:
no control, C1 or bidi character can rewrite an operator's terminal or fake a log line."""

from __future__ import annotations

import libvirt
import pytest

from support import vms
from support.processes import BrokerProcess
from support.raw_ws import RawWebSocket
from support.wait import wait_until

pytestmark = pytest.mark.integration

# TAB, an 8-bit CSI sequence (clear screen), RIGHT-TO-LEFT OVERRIDE: libvirt takes them
# all (ESC and CR cannot stand in a name: the XML parser refuses the one, libvirt the other).
HOSTILE = "\t\x9b2J\u202e"
ESCAPED = r"odd\x09\x9b2J\u202e"


@pytest.fixture(scope="module")
def oddly_named_vm(conn: libvirt.virConnect):
    dom = vms.define(conn, "broker-test-odd" + HOSTILE, vms.TCP)
    yield dom
    vms.remove(conn, dom.name())


def assert_escaped(log: str) -> None:
    for raw in ("\t", "\x1b", "\u202e", "\x9b"):
        assert raw not in log, f"{raw!r} reached the log unescaped"


def test_hostile_domain_name_is_escaped_in_log_and_close_reason(
    broker: BrokerProcess, oddly_named_vm: libvirt.virDomain
) -> None:
    assert oddly_named_vm.name().endswith(HOSTILE)
    minted = broker.mint(oddly_named_vm.UUIDString())
    assert minted["domain"]["name"] == oddly_named_vm.name()  # JSON carries it as it is, escaped by JSON
    ws = RawWebSocket(minted["websocket_url"])
    assert ws.read_payload(12).startswith(b"RFB ")
    ws.close()
    wait_until(lambda: ESCAPED in broker.log(), 5, "the escaped name in the log")
    assert_escaped(broker.log())


def test_hostile_origin_is_escaped_in_log(broker: BrokerProcess) -> None:
    origin = "http://evil\u202e\x9b2J.example".encode()  # UTF-8 on the wire
    offset = len(broker.log())  # the shared broker may have refused an origin before
    ws = RawWebSocket(f"{broker.ws_url}/websockify?token={'A' * 43}", headers={"Origin": origin})
    ws.close()
    wait_until(lambda: "origin_refused" in broker.log()[offset:], 5, "the refused origin in the log")
    assert_escaped(broker.log())
