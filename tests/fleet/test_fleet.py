"""One front, three hypervisors: consoles on every host through one address, mutual TLS
between the front and the brokers, and a front that says clearly when a host is unknown
or down while the others keep serving. Everything real: namespaces, nginx, brokers, QEMU,
Chromium (conftest.py builds and removes it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from broker.web.assets import WebFiles
from support.certs import Pair, client_context, issue, make_ca
from support.chromium import wait_state
from support.fleet import BROKER_PORT, Fleet, links, namespaces
from support.xterm import terminal_text

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

VGA_SIZES = {(640, 480), (720, 400)}


def front_client(fleet: Fleet) -> httpx.Client:
    """What a browser or a panel outside the fleet is: it sees the front's address only."""
    return httpx.Client(base_url=fleet.front_url, verify=client_context(fleet.ca), timeout=15)


def mint_through_front(fleet: Fleet, host: str, domain: str, **body: object) -> dict:
    with front_client(fleet) as client:
        response = client.post(
            f"/h/{host}/api/v1/domains/{domain}/console",
            headers={"Authorization": f"Bearer {fleet.hosts[host].broker.api_key}"},
            json=body,
        )
    assert response.status_code == 201, response.text
    return response.json()


def mint_directly(fleet: Fleet, host: str, domain: str) -> dict:
    """A panel on the management network, with a client certificate from the fleet CA and the host's key."""
    pair = Pair(fleet.certs() / "panel.crt", fleet.certs() / "panel.key")
    if not pair.cert.exists():
        issue(fleet.certs(), "client", "panel")
    target = fleet.hosts[host]
    with httpx.Client(verify=client_context(fleet.ca, pair), timeout=15) as client:
        response = client.post(
            f"{target.url}/api/v1/domains/{domain}/console",
            headers={"Authorization": f"Bearer {target.broker.api_key}"},
        )
    assert response.status_code == 201, response.text
    return response.json()


def mint_with_cli(fleet: Fleet, host: str, domain: str, *args: str) -> dict:
    """`broker token DOMAIN --server https://FRONT/h/HOST`, as an operator or a panel would."""
    env = {
        **os.environ,
        "BROKER_API_KEY": fleet.hosts[host].broker.api_key,
        "SSL_CERT_FILE": str(fleet.ca),  # the test front's certificate is from the fleet CA
    }
    env.pop("BROKER_STATE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "broker", "token", domain, *args, "--json", "--server", f"{fleet.front_url}/h/{host}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def screen(page) -> dict:
    page.wait_for_function(
        "() => { const c = document.querySelector('#screen canvas'); return c && c.width > 0; }", timeout=15_000
    )
    time.sleep(1.0)  # let the first full update land
    return page.evaluate(
        """() => {
            const canvas = document.querySelector('#screen canvas');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const colours = new Set();
            for (let i = 0; i < data.length; i += 4 * 97) colours.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
            return {width: canvas.width, height: canvas.height, colours: colours.size};
        }"""
    )


def test_chromium_sees_each_hosts_vm_through_the_one_front(fleet: Fleet, fleet_vms, page, artifacts: Path) -> None:
    links = {
        "hv1": mint_with_cli(fleet, "hv1", fleet_vms["hv1"]),  # the CLI, through the front
        "hv2": mint_directly(fleet, "hv2", fleet_vms["hv2"]),  # a panel on the management network
        "hv3": mint_through_front(fleet, "hv3", fleet_vms["hv3"]),  # a panel's REST call through the front
    }
    for host, link in links.items():
        assert link["console_url"].startswith(f"{fleet.front_url}/h/{host}/console?token="), link
        assert link["websocket_url"].startswith(
            f"wss://{fleet.front_address}:{fleet.front.port}/h/{host}/websockify?token="
        )
        page.goto(link["console_url"])
        wait_state(page, "connected")
        assert page.url.startswith(f"{fleet.front_url}/h/{host}/console/{link['domain']['uuid']}/")
        assert page.inner_text("#domain-name") == fleet_vms[host]
        facts = screen(page)
        assert (facts["width"], facts["height"]) in VGA_SIZES, facts
        assert facts["colours"] > 1, f"{host}'s VM screen is blank"
        page.screenshot(path=str(artifacts / f"fleet-{host}.png"))
    log = fleet.front.access_log()
    assert "token=" not in log
    assert all(f"host={host} upstream={fleet.hosts[host].address}:{BROKER_PORT}" in log for host in links)


def test_a_second_console_on_a_host_costs_it_no_static_requests(fleet: Fleet, fleet_vms, browser) -> None:
    """The front keeps the page's static files (its bundles) per host, so opening another console
    costs the host the link, the page, its session and the WebSocket only (each a fresh TLS connection)."""
    broker = fleet.hosts["hv2"].broker

    def open_console() -> int:
        before = broker.log().count('"GET /static/')
        context = browser.new_context()  # a new browser cache every time
        try:
            page = context.new_page()
            page.goto(mint_through_front(fleet, "hv2", fleet_vms["hv2"])["console_url"])
            wait_state(page, "connected")
        finally:
            context.close()
        return broker.log().count('"GET /static/') - before

    open_console()  # fills the front's cache, if an earlier test has not
    assert open_console() == 0
    assert "cache=HIT" in fleet.front.access_log()


def test_a_serial_console_through_the_front_shows_the_vms_boot_text(fleet: Fleet, fleet_vms) -> None:
    link = mint_with_cli(fleet, "hv1", fleet_vms["hv1"], "--serial")
    assert link["kind"] == "serial"
    assert link["console_url"].startswith(f"{fleet.front_url}/h/hv1/console?token=")
    output, controls = b"", []
    with connect(link["websocket_url"], ssl=client_context(fleet.ca), origin=fleet.front_url, open_timeout=15) as ws:
        deadline = time.monotonic() + 15
        while b"No bootable device" not in output:
            assert time.monotonic() < deadline, f"serial output so far: {output[-300:]!r}, controls {controls}"
            message = ws.recv(timeout=10)
            if isinstance(message, str):
                controls.append(json.loads(message)["type"])
            else:
                output += message
        ws.send(json.dumps({"type": "ping"}))
        while (answer := ws.recv(timeout=10)) and (isinstance(answer, bytes) or json.loads(answer)["type"] != "pong"):
            if isinstance(answer, str):
                controls.append(json.loads(answer)["type"])
    assert controls[0] == "history" and "live" in controls
    assert b"SeaBIOS" in output
    assert f"Machine UUID {link['domain']['uuid']}".encode() in output  # that VM's own console


def test_a_link_from_one_host_under_anothers_prefix_is_refused(fleet: Fleet, fleet_vms) -> None:
    link = mint_through_front(fleet, "hv1", fleet_vms["hv1"])
    token = link["token"]
    with connect(
        f"wss://{fleet.front_address}:{fleet.front.port}/h/hv2/websockify?token={token}",
        ssl=client_context(fleet.ca),
        open_timeout=15,
    ) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4101  # token_invalid: unknown on hv2
    with front_client(fleet) as client:
        page = client.get(f"/h/hv2/console?token={token}")
        assert page.status_code == 401 and "not valid" in page.text.lower()
        # Under its own host's prefix the link is still good: hv2 cannot spend hv1's links.
        assert client.get(f"/h/hv1/console?token={token}").status_code == 200


def tls_request(address: str, context: ssl.SSLContext) -> bytes:
    """From the root namespace to a host's broker port: a TLS handshake and one request."""
    with socket.create_connection((address, BROKER_PORT), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return tls.recv(4096)


def test_a_host_refuses_clients_without_a_fleet_certificate_and_plain_http(fleet: Fleet, tmp_path: Path) -> None:
    host = fleet.hosts["hv2"]
    stranger_ca = tmp_path / "other"
    make_ca(stranger_ca)
    strangers = {
        "no client certificate": client_context(fleet.ca),
        "another CA's client certificate": client_context(fleet.ca, issue(stranger_ca, "client", "front")),
        "another host's certificate": client_context(fleet.ca, fleet.hosts["hv1"].pair),
    }
    for who, context in strangers.items():
        try:
            answer = tls_request(host.address, context)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b"", f"{who}: {answer[:80]!r}"
    with socket.create_connection((host.address, BROKER_PORT), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            plain = sock.recv(4096)
        except ConnectionResetError:
            plain = b""
    assert b"HTTP/" not in plain
    front = client_context(fleet.ca, Pair(fleet.certs() / "front.crt", fleet.certs() / "front.key"))
    assert tls_request(host.address, front).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in host.broker.log()


def test_unknown_and_stopped_hosts_get_the_fronts_page_while_others_serve(fleet: Fleet, fleet_vms) -> None:
    with front_client(fleet) as client:
        for path in ("/h/hv9/console?token=x", "/h/hv9/websockify", "/", "/novnc/console"):
            unknown = client.get(path)
            assert unknown.status_code == 404, path
            assert 'data-fleet-error="unknown-host"' in unknown.text and "No such console host" in unknown.text
        hv3 = fleet.hosts["hv3"]
        assert hv3.broker.stop() == 0
        try:
            down = client.get("/h/hv3/console?token=x")
            assert down.status_code == 502
            assert 'data-fleet-error="host-unreachable"' in down.text and "hv3 is not reachable" in down.text
            assert down.headers["cache-control"] == "no-store"
            # The others keep serving, page and console.
            link = mint_through_front(fleet, "hv1", fleet_vms["hv1"])
            with connect(link["websocket_url"], ssl=client_context(fleet.ca), open_timeout=15) as ws:
                assert ws.recv(timeout=10).startswith(b"RFB 003.008")
            script = next(n for n in WebFiles().build().files if n.startswith("console-") and n.endswith(".js"))
            assert client.get(f"/h/hv2/static/{script}").status_code == 200
        finally:
            fleet.start_broker(hv3)  # back, with a new process: the fleet is whole for whoever follows
        assert client.get("/h/hv3/healthz").status_code == 200


def test_a_fleet_that_fails_half_way_is_removed_completely(tmp_path: Path) -> None:
    """What the module's finalizer relies on: close() after a failure in the middle of the
    set-up removes the namespaces, links, bridge and processes made so far."""

    class SetUpFailed(Exception):
        pass

    partial = Fleet(tmp_path)
    try:
        partial.build(["hv1", "hv2"])
        partial.start_front()
        broker = partial.start_broker(partial.hosts["hv1"])
        raise SetUpFailed
    except SetUpFailed:
        pass
    finally:
        problems = partial.close()
    assert problems == []
    assert not [name for name in namespaces() + links() if name.startswith(partial.tag)]
    assert broker.process.poll() is not None and partial.front.process.poll() is not None


def reload_front(fleet: Fleet, map_text: str, path: str, status: int) -> None:
    """A new map file, `nginx -s reload` (SIGHUP to the master), until `path` answers `status`."""
    (fleet.front.directory / "hosts.map").write_text(map_text)
    fleet.front.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    with front_client(fleet) as client:
        while answer_status(client, path) != status:
            assert time.monotonic() < deadline, f"{path} did not answer {status} after the reload"
            time.sleep(0.1)


def answer_status(client: httpx.Client, path: str) -> int | None:
    """The status `path` answers; None when an old nginx worker, leaving after the reload,
    closed the kept-alive connection before answering (the next try gets a new worker)."""
    try:
        return client.get(path).status_code
    except httpx.RemoteProtocolError:
        return None


def test_a_map_line_pointing_at_another_hosts_broker_fails_on_its_name(fleet: Fleet) -> None:
    """The front checks the broker's certificate for the map's host name: hv4 mistakenly
    pointed at hv1's address reaches nothing, rather than hv1's consoles under hv4."""
    original = (fleet.front.directory / "hosts.map").read_text()
    try:
        reload_front(fleet, original + f"hv4 {fleet.hosts['hv1'].address}:{BROKER_PORT};\n", "/h/hv4/healthz", 502)
        with front_client(fleet) as client:
            assert "hv4 is not reachable" in client.get("/h/hv4/healthz").text
            assert client.get("/h/hv1/healthz").status_code == 200
        assert "upstream SSL certificate does not match" in (fleet.front.directory / "error.log").read_text()
    finally:
        reload_front(fleet, original, "/h/hv4/healthz", 404)


def test_chromium_opens_a_serial_console_through_the_front(fleet: Fleet, fleet_vms, page, artifacts: Path) -> None:
    """The terminal page, its xterm.js files and its WebSocket all through the one front."""
    link = mint_through_front(fleet, "hv1", fleet_vms["hv1"], kind="serial")
    page.goto(link["console_url"])
    wait_state(page, "connected")
    assert page.url.startswith(f"{fleet.front_url}/h/hv1/console/{link['domain']['uuid']}/terminal")
    deadline = time.monotonic() + 20
    while f"Machine UUID {link['domain']['uuid']}" not in (text := terminal_text(page)):
        assert time.monotonic() < deadline, f"the VM's boot text is not on the page: {text[-300:]!r}"
        time.sleep(0.2)
    page.screenshot(path=str(artifacts / "fleet-hv1-serial.png"))
