"""Shared fixtures for the fast unit tests.

libvirt is never mocked: every test that needs domains uses libvirt's own
`test:///default` driver, whose state is shared by every connection in this
process. Each test defines domains with unique names and removes them again.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libvirt
import pytest

from broker.access.tokens import MemoryTokenStore, Tokens
from broker.sources.consoles import LibvirtConsoles, start_libvirt_event_loop
from broker.web.app import Broker, create_app
from unit_support import API_KEY, AUTH, TEST_URI, FakeClock, FakeVncServer, mute

with warnings.catch_warnings():
    # Starlette 1.x would like `httpx2`; the plain httpx that is installed works.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

# libvirt needs its event implementation registered before the first connection.
start_libvirt_event_loop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _clean_broker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BROKER_* setting or HTTP proxy of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("BROKER_") or name.lower() in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open(TEST_URI)
    yield connection
    connection.close()


DefineDomain = Callable[..., libvirt.virDomain]


@pytest.fixture
def define_domain(conn: libvirt.virConnect) -> Iterator[DefineDomain]:
    """define_domain(devices_xml="", start=True) -> a fresh, uniquely named test-driver domain."""
    made: list[libvirt.virDomain] = []

    def define(devices: str = "", *, start: bool = True) -> libvirt.virDomain:
        name = f"unit-{uuid.uuid4().hex[:12]}"
        xml = (
            f"<domain type='test'><name>{name}</name><memory unit='KiB'>1024</memory>"
            f"<os><type>hvm</type></os><devices>{devices}</devices></domain>"
        )
        domain = conn.defineXML(xml)
        made.append(domain)
        if start:
            domain.create()
        return domain

    yield define
    for domain in made:
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isActive():
                domain.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            domain.undefine()


@dataclass
class Api:
    client: TestClient
    broker: Broker
    clock: FakeClock

    def post_console(self, ident: str, body: object = None, **kwargs: object):
        if body is None:
            return self.client.post(f"/api/v1/domains/{ident}/console", headers=AUTH, **kwargs)
        return self.client.post(f"/api/v1/domains/{ident}/console", headers=AUTH, json=body, **kwargs)

    def token_for(self, domain: libvirt.virDomain, **body: object) -> str:
        response = self.post_console(domain.name(), body)
        assert response.status_code == 201, response.text
        return response.json()["token"]


MakeApi = Callable[..., Api]


@pytest.fixture
def make_api(define_domain: DefineDomain, clock: FakeClock) -> Iterator[MakeApi]:
    """make_api(public_url=None, allowed_origins=(), frame_ancestors=()) -> an Api on
    test:///default with a fake token clock.

    Depends on define_domain so that the app (and its libvirt connection) goes
    away before the test's domains are undefined.
    """
    stack = contextlib.ExitStack()

    def make(
        public_url: str | None = None, allowed_origins: tuple[str, ...] = (), frame_ancestors: tuple[str, ...] = ()
    ) -> Api:
        consoles = LibvirtConsoles(TEST_URI)
        stack.callback(consoles.close)
        tokens = Tokens(MemoryTokenStore(), clock=clock)
        broker = Broker(
            consoles,
            tokens,
            (API_KEY,),
            public_url,
            allowed_origins=allowed_origins,
            frame_ancestors=frame_ancestors,
        )
        client = stack.enter_context(TestClient(create_app(broker)))
        stack.callback(mute, consoles)  # runs before the client's event loop closes
        return Api(client, broker, clock)

    with stack:
        yield make


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    return make_api()


@pytest.fixture
def vnc_server() -> Iterator[FakeVncServer]:
    server = FakeVncServer()
    yield server
    server.close()
