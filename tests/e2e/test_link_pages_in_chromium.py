"""The console page's link model and life cycle in real Chromium through nginx: previewers
cannot spend a link, panels on allowed origins can embed the page with third-party cookies
blocked (others cannot, and their attempt spends nothing), and the page reconnects by
itself after a broker restart and after its VM was stopped and started again."""

from __future__ import annotations

import html
import http.server
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import libvirt
import pytest

from support import vms
from support.chromium import wait_state, watch_errors
from support.nginx import Nginx, broker_behind_nginx, mint_through, start_nginx
from support.processes import BrokerProcess, start_broker
from support.wait import wait_until

pytestmark = pytest.mark.e2e


def colours(frame) -> int:
    """How many colours the console's canvas shows (1: nothing drawn yet)."""
    return frame.evaluate(
        """() => {
            const canvas = document.querySelector('#screen canvas:not(.last-frame)');
            if (!canvas || !canvas.width) return 0;
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const seen = new Set();
            for (let i = 0; i < data.length; i += 4 * 97) seen.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
            return seen.size;
        }"""
    )


def wait_drawn(frame) -> None:
    wait_until(lambda: colours(frame) > 1, 15, "the VM's screen on the canvas", interval=0.2)


class Panel:
    """A stand-in for a hosting panel on an origin of its own: /panel?src=URL frames URL."""

    def __init__(self, host: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                src = parse_qs(urlsplit(self.path).query).get("src", [""])[0]
                frame = f'<iframe id="console" src="{html.escape(src)}" width="1000" height="700"></iframe>'
                body = f"<!doctype html><title>Panel</title>{frame}".encode()
                self.send_response(200 if urlsplit(self.path).path == "/panel" else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, src: str) -> str:
        return f"{self.origin}/panel?{httpx.QueryParams({'src': src})}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def panels() -> Iterator[tuple[Panel, Panel]]:
    """An allowed panel (127.0.0.2) and another one (127.0.0.3): both cross-site to the broker."""
    allowed, other = Panel("127.0.0.2"), Panel("127.0.0.3")
    yield allowed, other
    allowed.close()
    other.close()


@pytest.fixture(scope="module")
def embeddable(tmp_path_factory: pytest.TempPathFactory, panels) -> Iterator[tuple[BrokerProcess, Nginx]]:
    """A broker (behind nginx on /novnc/) whose frame_ancestors names the allowed panel."""
    base = tmp_path_factory.mktemp("embeddable")
    with broker_behind_nginx(base, extra_env={"BROKER_FRAME_ANCESTORS": panels[0].origin}) as both:
        yield both


def on_localhost(url: str) -> str:
    """The broker as http://localhost: a secure context for cookies over plain HTTP, so the
    third-party cookie probe below can be a SameSite=None; Secure cookie."""
    return url.replace("http://127.0.0.1:", "http://localhost:", 1)


def test_a_link_a_previewer_fetched_first_still_opens(stack, console_vm: libvirt.virDomain, page) -> None:
    broker, nginx = stack
    link = mint_through(nginx, broker, console_vm.name(), timeout=15)
    preview = httpx.get(link["console_url"], timeout=10, headers={"User-Agent": "Slackbot-LinkExpanding 1.0"})
    assert preview.status_code == 200
    page.goto(link["console_url"])
    wait_state(page, "connected")
    assert "token=" not in page.url
    wait_drawn(page)
    assert not page.js_errors


def test_an_allowed_panel_embeds_the_console_with_third_party_cookies_blocked(
    embeddable, panels, console_vm: libvirt.virDomain, browser
) -> None:
    broker, nginx = embeddable
    allowed, _other = panels
    broker_origin = on_localhost(nginx.url)
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    try:
        # The probe: a cookie the broker's origin may use anywhere (SameSite=None; Secure).
        # Playwright's contexts are off-the-record profiles, where Chromium blocks third-party
        # cookies by default (as it does in Incognito windows): the probe shows it is in effect.
        probe = {"name": "probe", "value": "1", "domain": "localhost", "path": "/", "sameSite": "None", "secure": True}
        context.add_cookies([probe])
        first_party = context.new_page()
        first_party.goto(f"{broker_origin}/novnc/healthz")
        assert "probe=1" in first_party.evaluate("() => document.cookie")

        page = context.new_page()
        errors = watch_errors(page)
        page.goto(allowed.url(on_localhost(mint_through(nginx, broker, console_vm.name(), timeout=15)["console_url"])))
        frame = page.frame_locator("#console")
        frame.locator("body[data-state='connected']").wait_for(timeout=20_000)
        console = next(f for f in page.frames if f.url.startswith(broker_origin))
        # Third-party cookies are blocked in this frame: the page works without any.
        assert "probe" not in console.evaluate("() => document.cookie")
        assert console.evaluate("() => document.hasStorageAccess()") is False
        assert "token=" not in console.url
        wait_drawn(console)
        assert not errors
    finally:
        context.close()


def test_another_panel_is_refused_and_the_link_stays_unspent(
    embeddable, panels, console_vm: libvirt.virDomain, page
) -> None:
    broker, nginx = embeddable
    _allowed, other = panels
    link = mint_through(nginx, broker, console_vm.name(), timeout=15)
    sessions_before = broker.log().count("exchanged for a page session")
    page.goto(other.url(link["console_url"]))
    page.wait_for_timeout(1500)  # time enough for a page that would run to spend the link
    framed = [f for f in page.frames if f is not page.main_frame]
    assert framed and not framed[0].url.startswith(nginx.url), "the frame-ancestors refusal did not happen"
    assert broker.log().count("exchanged for a page session") == sessions_before
    page.goto(link["console_url"])  # the person, top-level: the link still works
    wait_state(page, "connected")


def test_the_page_reconnects_by_itself_after_a_broker_restart(
    tmp_path: Path, console_vm: libvirt.virDomain, page
) -> None:
    socket_path = tmp_path / "broker.sock"
    broker = start_broker(tmp_path / "state", "--uds", str(socket_path))
    nginx = start_nginx(socket_path, tmp_path / "nginx")
    try:
        page.goto(mint_through(nginx, broker, console_vm.name(), timeout=15)["console_url"])
        wait_state(page, "connected")
        broker.stop()  # SIGTERM
        wait_state(page, "waiting", timeout=5_000)
        # 1001 with the broker's reason; then 1006 while it is away (nginx finds no socket)
        assert page.get_attribute("body", "data-close-code") in ("1001", "1006")
        assert "restarting; this page reconnects by itself" in page.inner_text("#status")
        assert page.is_visible("#screen canvas.last-frame")  # the last picture stays, dimmed
        broker = start_broker(tmp_path / "state", "--uds", str(socket_path))
        wait_state(page, "connected", timeout=30_000)
        assert not page.is_visible("#screen canvas.last-frame")
        wait_drawn(page)
        # And by hand: Reload works within the window as well.
        page.reload()
        wait_state(page, "connected")
        assert not page.js_errors
    finally:
        nginx.stop()
        broker.stop()


def test_a_vm_stopped_and_started_again_is_reconnected(stack, conn: libvirt.virConnect, page) -> None:
    broker, nginx = stack
    dom = vms.define(conn, "broker-test-e2e-rerun", vms.TCP)
    try:
        page.goto(mint_through(nginx, broker, dom.name(), timeout=15)["console_url"])
        wait_state(page, "connected")
        wait_drawn(page)
        dom.destroy()
        wait_state(page, "waiting", timeout=10_000)
        assert page.get_attribute("body", "data-close-code") == "4300"
        assert "waiting for it to start" in page.inner_text("#status")
        assert page.is_visible("#screen canvas.last-frame")
        page.wait_for_timeout(7_000)  # a retry later (3 s; the next after 6 s more) the last picture is still there
        assert page.get_attribute("body", "data-state") == "waiting"
        assert page.is_visible("#screen canvas.last-frame")
        dom.create()
        wait_state(page, "connected", timeout=30_000)
        wait_drawn(page)
        assert not page.js_errors
    finally:
        vms.remove(conn, "broker-test-e2e-rerun")


def test_a_page_without_its_session_says_so_and_offers_no_reconnect(stack, console_vm, browser) -> None:
    """The page URL without the link (copied into another tab): no pass there."""
    broker, nginx = stack
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{nginx.url}/novnc/console/{console_vm.UUIDString()}/")
        wait_state(page, "error")
        assert "ask for a new console link" in page.inner_text("#status")
        assert page.is_hidden("#reconnect")
    finally:
        context.close()
