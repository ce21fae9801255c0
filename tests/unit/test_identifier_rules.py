"""Domain identifiers: what is a UUID, what is a name, what is refused (review items 5 and 9).

The same rules on a real broker and libvirtd: tests/integration/test_identifiers.py
(this file has another name: pytest cannot collect two modules both called test_identifiers).
"""

from __future__ import annotations

import uuid as uuidlib

import pytest

from broker.errors import INVALID_INPUT, BrokerError
from broker.model import TcpEndpoint
from broker.sources.consoles import MAX_IDENTIFIER_LENGTH, Identifier, LibvirtConsoles
from broker.sources.static import CombinedConsoles, StaticConsoles
from unit_support import TEST_URI, mute, run_async, vnc_graphics

UUID = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (UUID, Identifier(UUID, by_uuid=True)),
        (UUID.upper(), Identifier(UUID, by_uuid=True)),
        (f"uuid:{UUID}", Identifier(UUID, by_uuid=True, explicit=True)),
        (f"name:{UUID}", Identifier(UUID, by_uuid=False, explicit=True)),
        ("web1", Identifier("web1", by_uuid=False)),
        ("name:name:x", Identifier("name:x", by_uuid=False, explicit=True)),
        ("other:x", Identifier("other:x", by_uuid=False)),
        (UUID.replace("-", ""), Identifier(UUID.replace("-", ""), by_uuid=False)),  # only 8-4-4-4-12 is a UUID
        (
            UUID.replace("-", "") + "----",
            Identifier(UUID.replace("-", "") + "----", by_uuid=False),
        ),  # 36, not 8-4-4-4-12
        ("{" + UUID[:34] + "}", Identifier("{" + UUID[:34] + "}", by_uuid=False)),
    ],
)
def test_identifiers_parse(text: str, expected: Identifier) -> None:
    assert Identifier.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "a\x00b", "\x00", "\udcff", "x" * (MAX_IDENTIFIER_LENGTH + 1), "uuid:web1", "uuid:", "name:", "name:a\x00"],
)
def test_impossible_identifiers_are_invalid_input(text: str) -> None:
    with pytest.raises(BrokerError) as caught:
        Identifier.parse(text)
    assert caught.value.failure is INVALID_INPUT
    assert "\x00" not in caught.value.message


def test_nul_in_an_identifier_is_a_json_422_not_a_500(api) -> None:
    response = api.post_console("a%00b")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"


def test_a_uuid_shaped_identifier_means_the_uuid_and_name_reaches_the_namesake(api, conn, define_domain) -> None:
    owner = define_domain(vnc_graphics(5905))
    impostor = conn.defineXML(
        f"<domain type='test'><name>{owner.UUIDString()}</name><memory unit='KiB'>1024</memory>"
        f"<os><type>hvm</type></os><devices>{vnc_graphics(5906)}</devices></domain>"
    )
    try:
        impostor.create()
        for ident in (owner.UUIDString(), f"uuid:{owner.UUIDString()}"):
            response = api.post_console(ident)
            assert response.status_code == 201, response.text
            assert response.json()["domain"]["name"] == owner.name()
        response = api.post_console(f"name:{owner.UUIDString()}")
        assert response.status_code == 201, response.text
        assert response.json()["domain"]["uuid"] == impostor.UUIDString()
    finally:
        impostor.destroy()
        impostor.undefine()


def test_a_uuid_matching_only_a_name_is_not_found_with_a_pointer(api, conn) -> None:
    name = str(uuidlib.uuid4())
    dom = conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='KiB'>1024</memory><os><type>hvm</type></os></domain>"
    )
    try:
        response = api.post_console(name)
        assert response.status_code == 404, response.text
        assert f"'name:{name}'" in response.json()["error"]["message"]
    finally:
        dom.undefine()


def test_a_static_console_named_like_a_domains_uuid_does_not_shadow_it(define_domain) -> None:
    domain = define_domain(vnc_graphics(5905))
    uuid = domain.UUIDString()
    libvirt_consoles = LibvirtConsoles(TEST_URI)
    consoles = CombinedConsoles(StaticConsoles({uuid: TcpEndpoint("127.0.0.1", 5999)}), libvirt_consoles)

    async def scenario() -> None:
        assert (await consoles.find(uuid)).name == domain.name()
        assert (await consoles.find(f"name:{uuid}")).state == "static"
        with pytest.raises(BrokerError) as caught:
            await consoles.find("a\x00b")
        assert caught.value.failure is INVALID_INPUT

    try:
        run_async(scenario())
    finally:
        mute(libvirt_consoles)
        consoles.close()
