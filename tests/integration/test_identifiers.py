"""Domain identifiers in the REST API (security review items 5 and 9), on a real broker and libvirtd.

Odd identifiers (NUL, control characters, invalid UTF-8 escapes, very long) get a JSON
404 or 422 and never a 500 or a traceback. A UUID-shaped identifier always means a UUID;
a domain *named* like another domain's UUID is reached as `name:…` (and either way can be
spelled out: `uuid:…`).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from contextlib import suppress

import httpx
import libvirt
import pytest

from support import vms
from support.processes import BrokerProcess

pytestmark = pytest.mark.integration


def post_console(broker: BrokerProcess, raw_ident: str) -> httpx.Response:
    """POST …/{raw_ident}/console with the identifier exactly as given (percent escapes kept)."""
    url = httpx.URL(broker.url + "/api/v1/domains/" + raw_ident + "/console")
    return httpx.post(url, headers={"Authorization": f"Bearer {broker.api_key}"}, timeout=15)


@pytest.mark.parametrize(
    ("raw_ident", "status", "code"),
    [
        pytest.param("a%00b", 422, "invalid_input", id="nul-byte"),
        pytest.param("%00", 422, "invalid_input", id="only-nul"),
        # Other controls are names libvirt may hold (TAB, C1): looked up, not found.
        pytest.param("a%01b%1f", 404, "domain_not_found", id="control-characters"),
        pytest.param("a%0Ab", 404, "domain_not_found", id="newline"),
        pytest.param("a%7Fb", 404, "domain_not_found", id="delete"),
        pytest.param("a" * 4000, 422, "invalid_input", id="very-long"),
        pytest.param("name:" + "%00", 422, "invalid_input", id="name-prefix-nul"),
        pytest.param("uuid:not-a-uuid", 422, "invalid_input", id="uuid-prefix-not-a-uuid"),
        pytest.param("name:", 422, "invalid_input", id="empty-name"),
        pytest.param("%FF%FE%C0%AF", 404, "domain_not_found", id="invalid-utf8-escapes"),
        pytest.param("%ED%A0%80", 404, "domain_not_found", id="utf8-surrogate-escape"),
        pytest.param("broker-test-nope%E2%80%8B", 404, "domain_not_found", id="zero-width-space"),
        pytest.param("a%2Fb", 404, "not_found", id="encoded-slash"),
        pytest.param("%20", 404, "domain_not_found", id="space"),
    ],
)
def test_odd_identifiers_get_a_json_404_or_422(broker: BrokerProcess, raw_ident: str, status: int, code: str) -> None:
    response = post_console(broker, raw_ident)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code


def test_odd_identifiers_leave_no_traceback_in_the_log(broker: BrokerProcess) -> None:
    for raw_ident in ("a%00b", "%01", "%FF", "x" * 4000):
        assert post_console(broker, raw_ident).status_code in (404, 422)
    log = broker.log()
    assert "Traceback" not in log
    assert '" 500' not in log


@pytest.fixture
def uuid_named_pair(conn: libvirt.virConnect) -> Iterator[tuple[libvirt.virDomain, libvirt.virDomain]]:
    """Domain A (broker-test-…), and domain B *named* like A's UUID; both defined, not started.

    B's name cannot carry the broker-test- prefix (it must look like a UUID), so it is
    removed here by its own UUID rather than by the session's prefix clean-up.
    """
    first = vms.define(conn, "broker-test-uuid-owner", vms.TCP, start=False)
    xml = vms.domain_xml(first.UUIDString(), vms.TCP)
    second = conn.defineXML(xml)
    try:
        yield first, second
    finally:
        with suppress(libvirt.libvirtError):
            conn.lookupByUUIDString(second.UUIDString()).undefine()
        vms.remove(conn, first.name())


def refused_domain(broker: BrokerProcess, raw_ident: str) -> str:
    """Which domain an identifier reached: both are shut off, so the 409 names it."""
    response = post_console(broker, raw_ident)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "domain_not_running"
    return response.json()["error"]["message"]


def test_a_uuid_shaped_identifier_always_means_the_uuid(broker: BrokerProcess, uuid_named_pair) -> None:
    owner, impostor = uuid_named_pair
    uuid = owner.UUIDString()
    assert impostor.name() == uuid
    # Bare, upper case, or spelled out: the domain with that UUID, never the one named so.
    for ident in (uuid, uuid.upper(), f"uuid:{uuid}"):
        assert repr(owner.name()) in refused_domain(broker, ident), ident
    # The domain named like it is reachable, by saying so.
    assert repr(uuid) in refused_domain(broker, f"name:{uuid}")
    assert repr(uuid) in refused_domain(broker, f"uuid:{impostor.UUIDString()}")
    assert repr(owner.name()) in refused_domain(broker, f"name:{owner.name()}")


def test_a_uuid_matching_no_domain_points_at_the_domain_named_so(
    broker: BrokerProcess, conn: libvirt.virConnect
) -> None:
    """A bare UUID never falls back to a name (that would let a new domain take over a
    vanished one's UUID), but the 404 says how to reach the domain that has it as a name."""
    name = str(uuidlib.uuid4())
    dom = conn.defineXML(vms.domain_xml(name, vms.TCP))
    try:
        response = post_console(broker, name)
        assert response.status_code == 404, response.text
        assert f"name:{name}" in response.json()["error"]["message"]
        assert repr(name) in refused_domain(broker, f"name:{name}")
    finally:
        with suppress(libvirt.libvirtError):
            dom.undefine()
