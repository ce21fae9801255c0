"""The console page in real Chromium, through real nginx on a sub-path, to a real VM."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import vms
from support.chromium import wait_state
from support.nginx import mint_through
from support.processes import start_broker
from support.rfb_client import handshake
from support.wait import wait_until
from support.ws import open_page

pytestmark = pytest.mark.e2e

VGA_SIZES = {(640, 480), (720, 400)}


def canvas_facts(page) -> dict:
    return page.evaluate(
        """() => {
            const canvas = document.querySelector('#screen canvas');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const colours = new Set();
            for (let i = 0; i < data.length; i += 4 * 97) colours.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
            return {width: canvas.width, height: canvas.height, colours: colours.size};
        }"""
    )


def test_link_opens_the_vm_screen_under_a_sub_path(stack, console_vm: libvirt.virDomain, page, artifacts: Path) -> None:
    broker, nginx = stack
    link = mint_through(nginx, broker, console_vm.name())
    assert link["console_url"].startswith(f"{nginx.url}/novnc/console?token=")
    page.goto(link["console_url"])
    wait_state(page, "connected")
    assert "token=" not in page.url, "the token stayed in the address bar"
    assert page.url.startswith(f"{nginx.url}/novnc/console/{console_vm.UUIDString()}/")
    assert page.inner_text("#domain-name") == console_vm.name()
    # A name with bidi overrides cannot reorder what stands around it.
    assert page.eval_on_selector("#domain-name", "e => getComputedStyle(e).unicodeBidi") == "isolate"
    assert page.title() == f"\u2068{console_vm.name()}\u2069 – Console"
    page.wait_for_function(
        "() => { const c = document.querySelector('#screen canvas'); return c && c.width > 0; }", timeout=15_000
    )

    def drawn() -> dict | None:  # the first full update lands a moment after the canvas is sized
        facts = canvas_facts(page)
        return facts if facts["colours"] > 1 else None

    facts = wait_until(drawn, 10, "the VM's screen on the canvas (it stays of one colour)", interval=0.1)
    assert (facts["width"], facts["height"]) in VGA_SIZES
    page.screenshot(path=str(artifacts / "console.png"))
    assert not page.js_errors
    # The token never reached nginx's access log.
    assert "token=" not in nginx.access_log()


def test_phone_sized_viewport(stack, console_vm: libvirt.virDomain, browser, artifacts: Path) -> None:
    broker, nginx = stack
    context = browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(mint_through(nginx, broker, console_vm.name())["console_url"])
        wait_state(page, "connected")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 375, f"page is {width}px wide on a 375px screen"
        page.screenshot(path=str(artifacts / "console-phone.png"))
    finally:
        context.close()


def test_reload_and_reconnect_need_no_new_link(stack, console_vm: libvirt.virDomain, page) -> None:
    broker, nginx = stack
    page.goto(mint_through(nginx, broker, console_vm.name())["console_url"])
    wait_state(page, "connected")
    page.reload()
    wait_state(page, "connected")
    # A client asking QEMU for exclusive access makes it drop the page's connection (the VM
    # keeps running). Through the broker that is impossible (it forces the shared flag on),
    # so this one connects to QEMU's port directly, as a local user could.
    with socket.create_connection(("127.0.0.1", vms.vnc_port(console_vm)), timeout=10) as rival:
        version = rival.recv(12)
        rival.sendall(version)
        count = rival.recv(1)[0]
        assert 1 in rival.recv(count)  # security type None
        rival.sendall(b"\x01")
        assert rival.recv(4) == b"\0\0\0\0"  # SecurityResult OK
        rival.sendall(b"\x00")  # ClientInit, shared-flag 0
        wait_state(page, "disconnected")
    assert page.get_attribute("body", "data-close-code") == "4301"
    assert "closed the connection" in page.inner_text("#status")
    page.click("#reconnect")
    wait_state(page, "connected")


def test_after_the_window_the_page_says_why(conn, console_vm: libvirt.virDomain, page, tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "state", extra_env={"BROKER_SESSION_WINDOW": "3"})
    try:
        link = broker.mint(console_vm.name())
        page.goto(link["console_url"])
        wait_state(page, "connected")
        time.sleep(3.5)  # the 3 s session window must run out; only the reload below can tell
        page.reload()
        wait_state(page, "error")
        assert "expired" in page.inner_text("#status").lower()
    finally:
        broker.stop()


@pytest.mark.parametrize("how", ["expired", "used"])
def test_dead_links_show_their_reason(stack, console_vm: libvirt.virDomain, page, how: str) -> None:
    broker, nginx = stack
    if how == "expired":
        link = mint_through(nginx, broker, console_vm.name(), ttl=1)
        time.sleep(1.3)  # the link's 1 s lifetime must run out; only opening it can tell (and spends it)
    else:
        link = mint_through(nginx, broker, console_vm.name())
        with open_page(f"ws://127.0.0.1:{nginx.port}/novnc", link):  # another page opened it first
            pass
    page.goto(link["console_url"])
    text = page.inner_text("body").lower()
    assert ("expired" if how == "expired" else "already used") in text


def test_websocket_from_another_origin_is_refused(stack, console_vm: libvirt.virDomain) -> None:
    broker, nginx = stack
    link = mint_through(nginx, broker, console_vm.name())
    with connect(link["websocket_url"], origin="https://evil.example") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4106
    # The Origin is checked before the token is spent: the panel's own page can still use it.
    with connect(link["websocket_url"], origin=nginx.url) as ws:
        assert ws.recv(timeout=10).startswith(b"RFB ")


def raw_get(port: int, target: str) -> tuple[int, str]:
    """Send the request line exactly as written: HTTP clients would normalise these paths."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head = response.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    status = int(head.split(" ", 2)[1])
    location = next(
        (line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("location:")), ""
    )
    return status, location


@pytest.mark.parametrize(
    "target",
    [
        "/novnc//evil.example/%2F..",
        "/novnc///x",
        "/novnc/..%2f..",
        "/novnc/static//evil.example/%2F..",
        "/novnc/static/..%2f..%2fREADME.md",
        "/novnc/static/%2e%2e/%2e%2e/etc/passwd",
        "/novnc/console/x",
        "//evil.example/%2F..",
    ],
)
def test_static_paths_never_redirect_off_site_or_escape(stack, target: str) -> None:
    _broker, nginx = stack
    status, location = raw_get(nginx.port, target)
    assert status in (400, 404), (status, location)
    assert not location


def test_keystrokes_reach_the_guest(stack, tiny_vm, page, artifacts: Path) -> None:
    broker, nginx = stack
    dom, serial = tiny_vm
    vms.wait_for_line(str(serial), "TINY-GUEST-READY", timeout=90)
    page.goto(mint_through(nginx, broker, dom.name())["console_url"])
    wait_state(page, "connected")
    page.click("#screen canvas")
    page.keyboard.type("hello broker", delay=30)
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 15
    while "GOT: hello broker" not in serial.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"typed line not in the serial log:\n{serial.read_text()[-500:]}"
        time.sleep(0.2)
    page.screenshot(path=str(artifacts / "console-typed.png"))


def test_a_view_only_page_shows_the_screen_and_typing_changes_nothing(stack, tiny_vm, page, artifacts: Path) -> None:
    broker, nginx = stack
    dom, serial = tiny_vm
    vms.wait_for_line(str(serial), "TINY-GUEST-READY", timeout=90)
    page.goto(mint_through(nginx, broker, dom.name(), mode="view-only")["console_url"])
    wait_state(page, "connected")
    assert page.is_visible("#view-only-badge")
    assert page.get_attribute("body", "data-mode") == "view-only"
    assert page.is_disabled("#ctrl-alt-del") and page.is_disabled("#clipboard-send")
    facts = canvas_facts(page)
    assert (facts["width"], facts["height"]) in VGA_SIZES
    page.click("#screen canvas")
    page.keyboard.type("view only typed", delay=30)
    page.keyboard.press("Enter")
    # The interactive control on the same guest: a line typed through a normal link arrives.
    with connect(mint_through(nginx, broker, dom.name())["websocket_url"]) as ws:
        handshake(ws)
        for keysym in [*b"control typed", 0xFF0D]:
            ws.send(bytes([4, 1, 0, 0]) + keysym.to_bytes(4, "big") + bytes([4, 0, 0, 0]) + keysym.to_bytes(4, "big"))
        deadline = time.monotonic() + 20
        while "GOT: control typed" not in serial.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the control line never arrived"
            time.sleep(0.2)
    assert "view only typed" not in serial.read_text(errors="replace")
    page.screenshot(path=str(artifacts / "console-view-only.png"))
