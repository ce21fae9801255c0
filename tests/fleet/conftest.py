"""A fleet of three hypervisor hosts in network namespaces behind one nginx front.

Built once for the module: a bridge with a private /24, three namespaces (hv1, hv2, hv3)
each running its own `broker serve` on TLS (its own state dir, API key and certificate
from a fleet CA made by contrib/fleet-cert.sh), the front nginx in the root namespace
with exactly contrib/nginx/fleet.conf and a generated map file, and one small QEMU domain
per host from the machine's libvirtd. The domains' consoles have no listener at all
(`listen type='none'`: the broker gets a socket from libvirt), so no namespace needs the
root namespace's loopback. Every piece is removed at the end, also when a test or the
set-up itself fails; a piece left behind fails the run.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from support import chromium as chromium_setup
from support import vms
from support.fleet import Fleet

HOSTS = ["hv1", "hv2", "hv3"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:  # network namespaces and links need root (CAP_NET_ADMIN)
        for item in items:
            if "tests/fleet/" in str(item.path):
                item.add_marker(pytest.mark.skip(reason="the fleet tests make network namespaces: run as root"))


@pytest.fixture(scope="session")
def conn() -> Iterator[libvirt.virConnect]:
    connection = vms.connect()
    yield connection
    connection.close()


def define_with_serial_bios(conn: libvirt.virConnect, name: str, directory: Path) -> None:
    """A SeaBIOS domain that also writes its screen to its serial port (SeaBIOS's "sercon",
    switched on by the fw_cfg file etc/sercon-port = 0x3f8), so the serial console shows
    the same boot text as VNC, with the domain's own UUID; the output is logged for history."""
    port_file = directory / "sercon-port"
    port_file.write_bytes((0x3F8).to_bytes(2, "little"))
    port_file.chmod(0o644)
    xml = vms.domain_xml(name, vms.NO_LISTENER, extra=vms.serial_pty(str(directory / "serial.log")))
    xml = xml.replace(
        "<domain type='qemu'>", "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
    )
    arguments = f"<qemu:arg value='-fw_cfg'/><qemu:arg value='name=etc/sercon-port,file={port_file}'/>"
    xml = xml.replace("</domain>", f"<qemu:commandline>{arguments}</qemu:commandline></domain>")
    vms.remove(conn, name)
    conn.defineXML(xml).create()


@pytest.fixture(scope="module")
def fleet_vms(conn: libvirt.virConnect, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One running domain per host; hv1's also shows its boot text on a serial console."""
    names = {host: vms.domain_name(f"broker-test-fleet-{host}") for host in HOSTS}
    try:
        for host, name in names.items():
            if host == "hv1":
                define_with_serial_bios(conn, name, tmp_path_factory.mktemp("fleet-serial"))
            else:
                vms.define(conn, name, vms.NO_LISTENER)
        yield names
    finally:
        cleanup = vms.connect()
        for name in names.values():
            vms.remove(cleanup, name)
        left = [d.name() for d in cleanup.listAllDomains(0) if d.name() in names.values()]
        cleanup.close()
        assert not left, f"domains left behind: {left}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, fleet_vms: dict[str, str]) -> Iterator[Fleet]:
    built = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        built.build(HOSTS)
        built.start_front()
        with ThreadPoolExecutor(len(HOSTS)) as starting:  # each waits for its broker to answer
            list(starting.map(built.start_broker, built.hosts.values()))
        yield built
    finally:
        problems = built.close()
        assert not problems, problems


@pytest.fixture(scope="module")
def browser(playwright: Any, fleet: Fleet) -> Iterator[Any]:
    """Chromium in a namespace of its own on the fleet's bridge, as on another machine: it
    reaches the front only, and sees no address change elsewhere (it would drop requests in
    flight: net::ERR_NETWORK_CHANGED). It trusts the front's key (pinned), nothing else."""
    namespace = fleet.add_client()
    launcher = fleet.directory / "chromium-in-client-namespace"
    launcher.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {chromium_setup.EXECUTABLE} "$@"\n')
    launcher.chmod(0o755)
    certificate = x509.load_pem_x509_certificate((fleet.certs() / "front-server.crt").read_bytes())
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    chromium = playwright.chromium.launch(
        executable_path=str(launcher), args=[*chromium_setup.ARGS, f"--ignore-certificate-errors-spki-list={pin}"]
    )
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(__file__).resolve().parents[2] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
