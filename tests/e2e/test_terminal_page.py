"""The serial-console page (terminal.html) in real Chromium.

Two halves. The first drives the page against a scripted stand-in for the broker's
socket (support/fake_serial.py), under the broker's own headers and CSP, to make the
frames a guest cannot produce on cue: a character split across two frames, a
dropped-output notice, each close code. The second runs the whole deployment, as
test_console_page.py does: Chromium → nginx on /novnc/ → the broker → a real guest with
a shell on its serial console.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import libvirt
import pytest

from support import vms
from support.chromium import page_in_new_context, wait_state
from support.fake_serial import PASS, TOKEN, FakeSerial, fake_serial
from support.processes import start_broker
from support.xterm import terminal_text

pytestmark = pytest.mark.e2e

PROMPT = "tiny# "  # the tiny guest's shell on ttyS0 (contrib/tiny-guest.sh)
PROMPT_TIMEOUT = 90  # it boots a kernel under TCG


def wait_text(page, pattern: str, timeout: float = 15.0) -> str:
    """The terminal's text once `pattern` (a regex) matches it."""
    deadline = time.monotonic() + timeout
    while True:
        text = terminal_text(page)
        if re.search(pattern, text):
            return text
        assert time.monotonic() < deadline, f"{pattern!r} not on the terminal:\n{text[-1500:]}"
        time.sleep(0.1)


def wait_sent(fake: FakeSerial, expected: bytes, connection: int = 1, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        sent = fake.wait_connections(connection).sent_bytes()
        if expected in sent:
            return sent
        assert time.monotonic() < deadline, f"{expected!r} not among the bytes the page sent: {sent!r}"
        time.sleep(0.05)


def wait_controls(fake: FakeSerial, connection: int = 1, count: int = 1, timeout: float = 10.0) -> list[dict]:
    """The control messages the page sent on a connection, once there are `count`."""
    deadline = time.monotonic() + timeout
    while True:
        controls = fake.wait_connections(connection).sent_controls()
        if len(controls) >= count:
            return controls
        assert time.monotonic() < deadline, f"{len(controls)} control message(s), not {count}: {controls}"
        time.sleep(0.05)


@pytest.fixture
def fake() -> Iterator[FakeSerial]:
    with fake_serial() as server:
        yield server


@pytest.fixture
def fresh_page(browser) -> Iterator[object]:
    """A page in its own context, with clipboard access for copy tests."""
    permissions = ("clipboard-read", "clipboard-write")
    with page_in_new_context(browser, viewport={"width": 1024, "height": 768}, permissions=permissions) as page:
        yield page


# -- the page against the stand-in ---------------------------------------------------------


def test_history_then_live_output_split_mid_character(fake: FakeSerial, fresh_page, artifacts: Path) -> None:
    page = fresh_page
    history = "boot: Grüße ✓\r\n".encode()
    fake.greeting = [{"type": "history", "available": True, "bytes": len(history)}, history[:9], history[9:]]
    page.goto(fake.page_url)
    wait_state(page, "connected")
    assert page.inner_text("#domain-name") == "web-1"
    assert page.title() == "\u2068web-1\u2069 – Serial console"
    fake.send({"type": "live"})
    page.wait_for_selector("body[data-history='replayed']")
    # Live output with a two-byte, a three-byte and a wide character each cut in half.
    line = "live: ü ✓ 世界 ok\r\n".encode()
    cuts = [line.index("ü".encode()) + 1, line.index("✓".encode()) + 2, line.index("世".encode()) + 1]
    pieces = [line[a:b] for a, b in zip([0, *cuts], [*cuts, len(line)], strict=True)]
    fake.send(*pieces)
    text = wait_text(page, "live: .* ok")
    assert "boot: Grüße ✓\nlive: ü ✓ 世界 ok" in text
    assert "\ufffd" not in text
    # The page tells the broker its size when it connects.
    assert wait_controls(fake)[0] == {"type": "resize", "cols": 80, "rows": 24}
    page.screenshot(path=str(artifacts / "terminal-stand-in.png"))
    assert not page.js_errors


def test_no_history_and_dropped_output_are_shown(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    hint = "Add <log file='/var/log/libvirt/qemu/web-1-serial0.log'/> to the serial device."
    fake.greeting = [{"type": "history", "available": False, "hint": hint + "\x1b[2J"}, {"type": "live"}, b"login: "]
    page.goto(fake.page_url)
    wait_state(page, "connected")
    assert page.get_attribute("body", "data-history") == "unavailable"
    text = wait_text(page, "login: ")
    assert page.get_attribute("body", "data-history") == "unavailable"
    # The hint's escape sequence was shown as text, not obeyed (it would clear the screen).
    assert "[Add <log file='/var/log/libvirt/qemu/web-1-serial0.log'/> to the serial device. [2J]" in text.replace(
        "\n", ""
    )
    fake.send(b"\x1b[31", {"type": "dropped", "bytes": 5 * 1024 * 1024}, b"after\r\n")
    text = wait_text(page, "after")
    assert "5.0 MiB of output dropped here" in text
    # The half escape sequence before the gap did not swallow the marker or what followed.
    assert re.search(r"dropped here[^\n]*\]\nafter", text), text


def test_reconnect_replays_history_instead_of_repeating_it(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    history = b"\x1b[1mkernel\x1b[0m: booted\r\n/ # "
    fake.greeting = [{"type": "history", "available": True, "bytes": len(history)}, history, {"type": "live"}]
    page.goto(fake.page_url)
    wait_state(page, "connected")
    fake.send(b"uptime\r\n")
    wait_text(page, "uptime")
    fake.close(4301, "")
    wait_state(page, "disconnected")
    assert "serial console was closed" in page.inner_text("#status")
    page.click("#reconnect")
    wait_state(page, "connected")
    page.wait_for_selector("body[data-history='replayed']")
    text = terminal_text(page).rstrip("\n")
    assert text == "kernel: booted\n/ # ", text  # the old screen and scrollback gave way to the replay
    assert wait_controls(fake, connection=2)[0] == {"type": "resize", "cols": 80, "rows": 24}


def test_replayed_queries_get_no_answer(fake: FakeSerial, fresh_page) -> None:
    """Earlier output may hold a program's queries (cursor position, device attributes):
    the terminal must not answer them to the guest of now."""
    page = fresh_page
    history = b"resize\r\n\x1b7\x1b[r\x1b[999;999H\x1b[6n\x1b8\x1b[c"
    fake.greeting = [{"type": "history", "available": True, "bytes": len(history)}, history, {"type": "live"}]
    page.goto(fake.page_url)
    wait_state(page, "connected")
    page.wait_for_selector("body[data-history='replayed']")
    fake.send(b"\x1b[6n")  # a live query is answered
    sent = wait_sent(fake, b"R")
    assert re.fullmatch(rb"\x1b\[\d+;\d+R", sent), sent


def test_colours_and_cell_size_survive_the_content_security_policy(fake: FakeSerial, fresh_page) -> None:
    """xterm.js writes <style> elements and style="" attributes, which the page's CSP
    refuses; cspstyles.js copies them into constructed style sheets."""
    page = fresh_page
    page.goto(fake.page_url)
    wait_state(page, "connected")
    fake.send(b"plain \x1b[31mred\x1b[0m \x1b[38;2;0;200;100mrgb\x1b[0m\r\n")
    wait_text(page, "plain red rgb")
    styles = page.evaluate(
        """() => {
            const spans = [...document.querySelectorAll('.xterm-rows span')];
            const style = (text) => getComputedStyle(spans.find((s) => s.textContent === text) || document.body);
            const row = document.querySelector('.xterm-rows > div');
            return {
                plain: getComputedStyle(row).color, red: style('red').color, rgb: style('rgb').color,
                font: getComputedStyle(row).fontFamily, rowHeight: row.getBoundingClientRect().height,
                cellHeight: document.querySelector('.xterm-screen').getBoundingClientRect().height / term.rows,
            };
        }"""
    )
    assert styles["red"] not in (styles["plain"], "rgb(0, 0, 0)"), styles
    assert styles["rgb"] == "rgb(0, 200, 100)", styles
    assert "monospace" in styles["font"], styles
    assert styles["rowHeight"] == pytest.approx(styles["cellHeight"], abs=0.5), styles
    # The policy itself is the broker's, unchanged: no inline styles allowed.
    csp = page.evaluate("() => fetch(location.href).then((r) => r.headers.get('content-security-policy'))")
    assert "unsafe-inline" not in csp and "default-src 'self'" in csp


def test_keys_and_a_pasted_block_reach_the_broker_as_bytes(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    page.goto(fake.page_url)
    wait_state(page, "connected")
    page.click(".xterm-screen")
    page.keyboard.type("ls -l")
    page.keyboard.press("Enter")
    wait_sent(fake, b"ls -l\r")
    page.keyboard.type("é")
    wait_sent(fake, "é".encode())
    # A paste into the terminal (what Ctrl+Shift+V or the context menu does): LF → CR.
    page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.setData('text/plain', 'echo one\\necho zwei ü\\r\\n');
            document.querySelector('.xterm-helper-textarea')
                .dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
        }"""
    )
    wait_sent(fake, "echo one\recho zwei ü\r".encode())
    # The box for text (phones, or a browser that refuses the clipboard).
    page.fill("#clipboard-text", "uname -a\ndate\n")
    page.click("#clipboard-send")
    wait_sent(fake, b"uname -a\rdate\r")
    assert page.inner_text("#clipboard-note") == "Sent 3 lines."
    page.select_option("#keys", "ctrl-c")
    sent = wait_sent(fake, b"\x03")
    assert b"\n" not in sent, "a line feed reached the guest: terminals send CR"
    # A guest that asks for bracketed paste gets pastes bracketed.
    fake.send(b"\x1b[?2004h")
    page.wait_for_function("() => term.modes.bracketedPasteMode")
    page.fill("#clipboard-text", "a\nb")
    page.click("#clipboard-send")
    wait_sent(fake, b"\x1b[200~a\rb\x1b[201~")


def test_copy_puts_the_selection_on_the_clipboard(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    fake.greeting = []  # a broker that says nothing first: the page counts it open after a moment
    page.goto(fake.page_url)
    wait_state(page, "connected")
    fake.send(b"uptime: 3 days\r\n")
    wait_text(page, "uptime")
    assert page.is_disabled("#copy")
    page.evaluate("() => term.select(0, 0, 14)")
    page.click("#copy")
    page.wait_for_function("() => document.querySelector('#clipboard-note').textContent === 'Copied.'")
    assert page.evaluate("() => navigator.clipboard.readText()") == "uptime: 3 days"


def test_busy_console_offers_take_over_and_loses_it_again(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    fake.refuse = lambda query: None if query.get("takeover") == "1" else (4208, "")  # no reason: ours is shown
    page.goto(fake.page_url)
    wait_state(page, "disconnected")
    assert page.get_attribute("body", "data-close-code") == "4208"
    status = page.inner_text("#status")
    assert "Another client is using this serial console." in status
    assert "Take over" in status
    page.click("#take-over")
    wait_state(page, "connected")
    assert fake.wait_connections(2).query == {"takeover": "1"}
    assert page.is_hidden("#take-over")
    # Someone else takes it from us.
    fake.close(4303, "Another session took over this console.")
    wait_state(page, "disconnected")
    assert page.get_attribute("body", "data-close-code") == "4303"
    assert "took over this console" in page.inner_text("#status")
    assert page.is_visible("#take-over")
    # Reconnect does not take over: it asks, and is told the console is busy.
    page.click("#reconnect")
    wait_state(page, "disconnected")
    assert fake.wait_connections(3).query == {}
    assert page.get_attribute("body", "data-close-code") == "4208"


def test_busy_console_without_take_over_permission_says_who_can(fresh_page) -> None:
    page = fresh_page
    with fake_serial(may_take_over=False) as fake:
        fake.refuse = lambda _query: (4208, "Another client is using this serial console.")
        page.goto(fake.page_url)
        wait_state(page, "disconnected")
        assert page.is_hidden("#take-over")
        assert "An operator can end the other session." in page.inner_text("#status")


@pytest.mark.parametrize(
    ("code", "reason", "state", "expected"),
    [
        (4300, "", "waiting", "waiting for it to start"),
        (4105, "", "error", "session has expired"),
        (1001, "The broker is shutting down.", "waiting", "restarting; this page reconnects by itself"),
        (4304, "", "disconnected", "took exclusive control"),
        (4999, "", "disconnected", "code 4999"),
    ],
)
def test_every_close_shows_a_reason(
    fake: FakeSerial, fresh_page, code: int, reason: str, state: str, expected: str
) -> None:
    """Each close says what is true and offers what can work: waiting ones retry by
    themselves, final ones offer no Reconnect."""
    page = fresh_page
    page.goto(fake.page_url)
    wait_state(page, "connected")
    fake.close(code, reason)
    wait_state(page, state)
    assert expected in page.inner_text("#status")
    assert page.is_hidden("#take-over")
    if state == "error":
        assert page.is_hidden("#reconnect")
    else:
        assert page.is_visible("#reconnect") and page.is_enabled("#reconnect")
    if state == "waiting":  # it comes back by itself, with its pass
        wait_state(page, "connected")
        assert fake.wait_connections(2).credential == {"pass": PASS}
    # The last output stays on screen, dimmed, while not connected.
    assert page.eval_on_selector("#screen", "e => e.style.opacity") == ("" if state == "waiting" else "0.5")


def wait_closed(fake: FakeSerial, connection: int, timeout: float = 10.0) -> None:
    """Until the stand-in has seen the page's `connection`th socket (from 1) end."""
    deadline = time.monotonic() + timeout
    while not fake.wait_connections(connection, timeout).closed:
        assert time.monotonic() < deadline, f"connection {connection} is still open"
        time.sleep(0.02)


def wait_credential(fake: FakeSerial, connection: int, timeout: float = 10.0) -> dict[str, str]:
    """What the page presented first on its `connection`th socket, once it has."""
    deadline = time.monotonic() + timeout
    while not fake.wait_connections(connection, timeout).credential:
        assert time.monotonic() < deadline, f"no credential on connection {connection}"
        time.sleep(0.02)
    return fake.connections[connection - 1].credential


def test_while_the_vm_stays_off_the_retries_back_off(fake: FakeSerial, fresh_page) -> None:
    """Each retry costs the broker a libvirt lookup, a log line and an audit event: after
    3 s, then twice as long each time up to 30 s; a connection that works starts over."""
    page = fresh_page
    page.clock.install()
    page.goto(fake.page_url)
    wait_state(page, "connected")
    fake.refuse = lambda _query: (4300, "")
    fake.close(4300)
    wait_state(page, "waiting")
    count = 1

    def next_retry_after(seconds: int) -> None:
        nonlocal count
        wait_closed(fake, count)
        page.wait_for_timeout(200)  # the page has read the close (timers run at the real pace)
        page.clock.fast_forward(seconds * 1000 - 1000)
        page.wait_for_timeout(300)
        assert len(fake.connections) == count, f"retried before {seconds} s"
        page.clock.fast_forward(2000)
        count += 1
        assert wait_credential(fake, count) == {"pass": PASS}

    for seconds in (3, 6, 12, 24, 30, 30):
        next_retry_after(seconds)
        assert "waiting for it to start" in page.inner_text("#status")
    # The VM runs again: the next retry connects, and the next wait starts from 3 s.
    wait_closed(fake, count)
    fake.refuse = lambda _query: None
    page.wait_for_timeout(200)
    page.clock.fast_forward(31_000)
    wait_state(page, "connected")
    count += 1
    fake.refuse = lambda _query: (4300, "")
    fake.close(4300)
    wait_state(page, "waiting")
    next_retry_after(3)


def test_reconnect_while_a_retry_is_on_its_way_leaves_one_socket(fake: FakeSerial, fresh_page) -> None:
    """Reconnect stays offered while the page waits; pressed while an automatic retry is
    still being answered, the page closes that retry's socket rather than leave the broker
    relaying a console nobody reads (on a serial console it would hold the console)."""
    page = fresh_page
    page.goto(fake.page_url)
    wait_state(page, "connected")
    fake.close(4300)
    wait_state(page, "waiting")
    fake.session_delay = 1.5  # the broker is slow to answer the retry
    wait_credential(fake, 2)  # the automatic retry has presented its pass
    assert page.is_enabled("#reconnect")
    page.click("#reconnect")
    fake.wait_connections(3)
    wait_state(page, "connected")
    wait_closed(fake, 2)
    time.sleep(2 * fake.session_delay)  # long enough for a stray session to have come through
    assert fake.open_connections() == [fake.connections[2]]
    assert len(fake.connections) == 3
    assert page.get_attribute("body", "data-state") == "connected"
    assert not page.js_errors


def test_a_client_clock_far_ahead_still_reconnects(fresh_page) -> None:
    """The page counts the session's time from the broker's expires_in, not by comparing
    expires_at with its own clock: here a day behind it, as a clock a day fast would see it."""
    page = fresh_page
    with fake_serial(expires_at="2000-01-01T00:00:00+00:00", expires_in=600) as fake:
        page.goto(fake.page_url)
        wait_state(page, "connected")
        fake.close(4300)
        wait_state(page, "waiting")
        wait_state(page, "connected")
        assert fake.wait_connections(2).credential == {"pass": PASS}
        page.reload()  # the stored deadline is on the page's clock too
        wait_state(page, "connected")
        assert fake.wait_connections(3).credential == {"pass": PASS}


def test_past_its_deadline_the_page_stops_retrying_and_the_broker_decides(fresh_page) -> None:
    """The page's deadline only ends the automatic retries; Reconnect still asks the
    broker, whose 4105 is what ends the session for good."""
    page = fresh_page
    with fake_serial(expires_in=1) as fake:
        page.goto(fake.page_url)
        wait_state(page, "connected")
        time.sleep(1.2)
        fake.close(4300)
        wait_state(page, "disconnected")
        assert "time is up" in page.inner_text("#status")
        assert page.is_visible("#reconnect") and page.is_enabled("#reconnect")
        time.sleep(3.5)  # no automatic retry
        assert len(fake.connections) == 1
        page.click("#reconnect")
        wait_state(page, "connected")
        assert fake.wait_connections(2).credential == {"pass": PASS}
        fake.close(4105)
        wait_state(page, "error")
        assert "session has expired" in page.inner_text("#status")
        assert page.is_hidden("#reconnect")


def test_a_view_only_link_offers_no_input(fresh_page) -> None:
    page = fresh_page
    with fake_serial(mode="view-only") as fake:
        page.goto(fake.page_url)
        wait_state(page, "connected")
        assert page.is_visible("#view-only-badge")
        assert page.get_attribute("body", "data-mode") == "view-only"
        assert page.inner_text("#status") == "Connected (view only)"
        for control in ("#keys", "#clipboard-text", "#clipboard-send"):
            assert page.is_disabled(control), control
        page.click(".xterm-screen")
        page.keyboard.type("reboot")
        page.keyboard.press("Enter")
        fake.send(b"\x1b[6n")  # not even the terminal's answers go out
        page.wait_for_timeout(500)
        assert fake.connections[0].sent_bytes() == b""
        # Control messages still do: the broker may log the size.
        assert wait_controls(fake)[0]["type"] == "resize"


def test_a_broker_that_stops_answering_is_noticed(fake: FakeSerial, fresh_page) -> None:
    """The page pings every 20 s; a ping unanswered for 30 s ends the connection."""
    page = fresh_page
    page.clock.install()
    page.goto(fake.page_url)
    wait_state(page, "connected")

    def pings() -> int:
        return sum(1 for c in fake.connections[0].sent_controls() if c == {"type": "ping"})

    def wait_pings(count: int) -> None:
        deadline = time.monotonic() + 10
        while pings() < count:
            assert time.monotonic() < deadline, f"{pings()} ping(s), not {count}"
            time.sleep(0.05)

    page.clock.fast_forward(20_000)
    wait_pings(1)
    fake.send({"type": "pong"})
    page.wait_for_timeout(200)  # the pong is read (timers run, at the real pace, between jumps)
    page.clock.fast_forward(20_000)
    wait_pings(2)  # answered, so a new one
    page.clock.fast_forward(20_000)  # unanswered for 20 s: still waiting
    page.wait_for_timeout(200)
    assert page.get_attribute("body", "data-state") == "connected"
    assert pings() == 2
    page.clock.fast_forward(20_000)
    wait_state(page, "disconnected")
    assert "No answer from the broker" in page.inner_text("#status")
    assert page.is_enabled("#reconnect")


def test_fit_to_window_shows_the_stty_command(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    page.goto(fake.page_url)
    wait_state(page, "connected")
    assert page.evaluate("() => [term.cols, term.rows]") == [80, 24]
    assert page.is_hidden("#size-note")
    page.select_option("#size", "fit")
    page.wait_for_selector("#size-note:not([hidden])")
    cols, rows = page.evaluate("() => [term.cols, term.rows]")
    assert cols > 80 and rows > 24, (cols, rows)
    command = f"stty rows {rows} cols {cols}"
    assert page.inner_text("#size-command") == command
    # The broker hears the new size (the frame may still be on its way).
    resize = {"type": "resize", "cols": cols, "rows": rows}
    deadline = time.monotonic() + 10
    while fake.connections[0].sent_controls()[-1] != resize:
        assert time.monotonic() < deadline, fake.connections[0].sent_controls()
        time.sleep(0.05)
    # Typed, not pasted: even a shell in bracketed-paste mode runs it at once.
    fake.send(b"\x1b[?2004h")
    page.wait_for_function("() => term.modes.bracketedPasteMode")
    page.click("#size-send")
    sent = wait_sent(fake, f"{command}\r".encode())
    assert b"\x1b[200~" not in sent
    # A smaller window: the terminal follows, and so does the command.
    page.set_viewport_size({"width": 800, "height": 600})
    page.wait_for_function(f"() => term.cols < {cols}")
    assert page.inner_text("#size-command") == page.evaluate("() => `stty rows ${term.rows} cols ${term.cols}`")
    # The setting survives a reload.
    page.reload()
    wait_state(page, "connected")
    assert page.input_value("#size") == "fit"
    page.select_option("#size", "80x24")
    assert page.evaluate("() => [term.cols, term.rows]") == [80, 24]
    assert page.is_hidden("#size-note")


def test_fullscreen_takes_the_toolbar_along(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    page.goto(fake.page_url)
    wait_state(page, "connected")
    page.click("#fullscreen")
    page.wait_for_function("() => document.fullscreenElement && document.fullscreenElement.id === 'app'")
    page.wait_for_function("() => document.querySelector('#fullscreen').textContent === 'Exit fullscreen'")
    page.click("#fullscreen")
    page.wait_for_function("() => !document.fullscreenElement")
    page.wait_for_function("() => document.querySelector('#fullscreen').textContent === 'Fullscreen'")


def test_scrollback_and_font_size_settings(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    page.goto(fake.page_url)
    wait_state(page, "connected")
    assert page.evaluate("() => term.options.scrollback") == 10000
    fake.send(b"".join(b"line %d\r\n" % i for i in range(12000)))
    wait_text(page, "line 11999", timeout=30)
    assert page.evaluate("() => term.buffer.active.length") == 10000 + 24
    page.select_option("#scrollback", "50000")
    assert page.evaluate("() => term.options.scrollback") == 50000
    page.select_option("#font-size", "18")
    assert page.evaluate("() => term.options.fontSize") == 18
    page.reload()
    wait_state(page, "connected")
    assert page.evaluate("() => [term.options.scrollback, term.options.fontSize]") == [50000, 18]


def test_phone_sized_screen(fake: FakeSerial, browser, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(fake.page_url)
        wait_state(page, "connected")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 375, f"page is {width}px wide on a 375px screen"
        small = page.evaluate(
            """() => [...document.querySelectorAll('#app button, #app select, #app textarea')]
                .filter((el) => !el.closest('.xterm'))
                .filter((el) => el.offsetParent !== null)
                .map((el) => [el.id, el.getBoundingClientRect().width, el.getBoundingClientRect().height])
                .filter(([, w, h]) => w < 44 || h < 44)"""
        )
        assert not small, f"tap targets under 44 px: {small}"
        page.screenshot(path=str(artifacts / "terminal-phone.png"))
        page.tap("#hide-toolbar")
        assert page.is_hidden("#toolbar")
        box = page.locator("#show-toolbar").bounding_box()
        assert box and box["width"] >= 44 and box["height"] >= 44
        page.screenshot(path=str(artifacts / "terminal-phone-no-toolbar.png"))
        page.tap("#show-toolbar")
        assert page.is_visible("#toolbar")
    finally:
        context.close()


@pytest.mark.parametrize(
    ("page_name", "missing"),
    [("terminal", "**/static/terminal-*.js"), ("", "**/static/console-*.js")],
)
def test_scripts_that_do_not_load_are_reported(fake: FakeSerial, fresh_page, page_name: str, missing: str) -> None:
    """Either page (the VNC page too) says so instead of "Loading…" for ever."""
    page = fresh_page
    page.route(missing, lambda route: route.fulfill(status=404, body="Not Found"))
    page.goto(fake.link(page_name))
    wait_state(page, "error")
    assert "could not load its scripts" in page.inner_text("#status")
    assert not fake.connections


def test_a_vnc_session_on_the_terminal_page_goes_to_the_vnc_page(fresh_page) -> None:
    page = fresh_page
    with fake_serial(kind="vnc") as fake:
        page.goto(fake.page_url)
        page.wait_for_url(re.compile(r".*/console/[0-9a-f-]+/$"))
        page.wait_for_selector("#ctrl-alt-del")  # console.html, the VNC page


def test_a_serial_session_on_the_vnc_page_goes_to_the_terminal_page(fake: FakeSerial, fresh_page) -> None:
    page = fresh_page
    page.goto(fake.link(""))
    page.wait_for_url(fake.clean_url)
    wait_state(page, "connected")
    # The VNC page spent the link, heard it is a serial console and sent nothing on its socket;
    # the terminal page came back with the pass.
    assert fake.connections[0].credential == {"token": TOKEN}
    assert fake.connections[0].frames == []
    assert fake.wait_connections(2).credential == {"pass": PASS}


# -- the whole deployment ------------------------------------------------------------------


@pytest.fixture(scope="session")
def serial_vm(tiny_vm: tuple[libvirt.virDomain, Path]) -> libvirt.virDomain:
    """conftest's tiny guest (a shell on its logged serial PTY), once its shell is up."""
    dom, log = tiny_vm
    vms.wait_for_line(str(log), PROMPT, timeout=PROMPT_TIMEOUT)
    return dom


@pytest.fixture
def bare_serial_vm(conn: libvirt.virConnect) -> Iterator[libvirt.virDomain]:
    """A SeaBIOS-only domain with a serial console and no log: nothing to replay."""
    dom = vms.define(conn, "broker-test-serial-bare", vms.TCP, extra=vms.serial_pty())
    yield dom
    vms.remove(conn, dom.name())


def mint_serial(stack, dom) -> dict:
    broker, nginx = stack
    response = httpx.post(
        f"{nginx.url}/novnc/api/v1/domains/{dom.name()}/console",
        headers={"Authorization": f"Bearer {broker.api_key}"},
        json={"kind": "serial", "console": "serial0"},
    )
    assert response.status_code == 201, response.text
    link = response.json()
    assert link["console_url"].startswith(f"{nginx.url}/novnc/console?token=")
    return link


def open_terminal(page, stack, dom) -> None:
    link = mint_serial(stack, dom)
    page.goto(link["console_url"])
    wait_state(page, "connected")
    assert "token=" not in page.url
    assert page.url.endswith(f"/novnc/console/{dom.UUIDString()}/terminal")


def run(page, command: str, expect: str, timeout: float = 15.0) -> str:
    """Type a command into the terminal and wait for `expect` (a regex) in its output."""
    page.click(".xterm-screen")
    page.keyboard.type(command, delay=10)
    page.keyboard.press("Enter")
    return wait_text(page, expect, timeout)


def test_boot_history_then_a_command_and_its_output(stack, serial_vm, page, artifacts: Path) -> None:
    open_terminal(page, stack, serial_vm)
    assert page.inner_text("#domain-name") == serial_vm.name()
    page.wait_for_selector("body[data-history='replayed']", timeout=10_000)
    # What the guest printed before the page was opened: its boot.
    wait_text(page, "TINY-GUEST-READY", timeout=PROMPT_TIMEOUT)
    run(page, "echo $((6 * 7))", r"\n42\s*\n")
    page.screenshot(path=str(artifacts / "terminal.png"))
    assert not page.js_errors


def test_a_multibyte_line_from_the_guest(stack, serial_vm, page) -> None:
    open_terminal(page, stack, serial_vm)
    # The guest writes the bytes itself (printf's octal escapes are plain ASCII to type).
    text = run(page, r"printf 'M:\303\274\342\234\223\344\270\226\360\237\231\202:E\n'", r"\nM:.*:E")
    assert "\nM:ü✓世🙂:E" in text
    assert "\ufffd" not in text
    # And drawn so: the row on screen holds the same characters (wide ones padded).
    rows = page.eval_on_selector_all(".xterm-rows > div", "rows => rows.map((r) => r.textContent)")
    assert any(re.sub(r"\s", "", row) == "M:ü✓世🙂:E" for row in rows), rows


def test_a_block_pasted_into_the_guest(stack, serial_vm, page) -> None:
    open_terminal(page, stack, serial_vm)
    page.fill("#clipboard-text", "echo first-$((1+1))\necho second-$((2+2))\n")
    page.click("#clipboard-send")
    wait_text(page, r"\nfirst-2\s*\n(.*\n)*second-4")


def test_take_over_between_two_browsers(stack, serial_vm, browser, page) -> None:
    open_terminal(page, stack, serial_vm)
    other = browser.new_context(viewport={"width": 1024, "height": 768})
    try:
        second = other.new_page()
        second.goto(mint_serial(stack, serial_vm)["console_url"])
        wait_state(second, "disconnected")
        assert second.get_attribute("body", "data-close-code") == "4208"
        assert second.is_visible("#take-over")
        # The broker's reason says what to do; the page adds nothing to it.
        status = second.inner_text("#status")
        assert status.count("Take over") == 1, status
        second.click("#take-over")
        wait_state(second, "connected")
        wait_state(page, "disconnected")
        assert page.get_attribute("body", "data-close-code") == "4303"
        assert "took over" in page.inner_text("#status")
        assert page.is_visible("#take-over")
        run(second, "echo taken-$((3*3))", r"\ntaken-9")
        # The first page takes it back.
        page.click("#take-over")
        wait_state(page, "connected")
        wait_state(second, "disconnected")
        run(page, "echo back-$((4*4))", r"\nback-16")
    finally:
        other.close()


def test_reload_and_reconnect_need_no_new_link(stack, serial_vm, browser, page) -> None:
    open_terminal(page, stack, serial_vm)
    run(page, "echo before-reload", r"\nbefore-reload")
    page.reload()
    wait_state(page, "connected")
    page.wait_for_selector("body[data-history='replayed']", timeout=10_000)
    # The replayed history holds what was typed before the reload.
    wait_text(page, r"\nbefore-reload")
    # Lose the console to another browser, wait for it to leave, then Reconnect.
    other = browser.new_context()
    try:
        second = other.new_page()
        second.goto(mint_serial(stack, serial_vm)["console_url"])
        wait_state(second, "disconnected")
        second.click("#take-over")
        wait_state(second, "connected")
        wait_state(page, "disconnected")
    finally:
        other.close()
    # The broker frees the console once it sees the other socket close: until then
    # Reconnect is told the console is busy.
    deadline = time.monotonic() + 10
    while True:
        page.click("#reconnect")
        page.wait_for_selector("body[data-state='connected'], body[data-state='disconnected']", timeout=20_000)
        if page.get_attribute("body", "data-state") == "connected" or time.monotonic() > deadline:
            break
        assert page.get_attribute("body", "data-close-code") == "4208", page.inner_text("#status")
        time.sleep(0.3)
    wait_state(page, "connected")
    run(page, "echo after-reconnect", r"\nafter-reconnect")


def test_a_view_only_link_watches_but_types_nothing(stack, serial_vm, page) -> None:
    broker, nginx = stack
    response = httpx.post(
        f"{nginx.url}/novnc/api/v1/domains/{serial_vm.name()}/console",
        headers={"Authorization": f"Bearer {broker.api_key}"},
        json={"kind": "serial", "mode": "view-only"},
    )
    assert response.status_code == 201, response.text
    page.goto(response.json()["console_url"])
    wait_state(page, "connected")
    assert page.inner_text("#status") == "Connected (view only)"
    page.wait_for_selector("body[data-history='replayed']", timeout=10_000)
    wait_text(page, PROMPT.strip())  # it does show the console
    page.click(".xterm-screen")
    page.keyboard.type("echo viewonly-$((5*5))", delay=10)
    page.keyboard.press("Enter")
    time.sleep(2)
    assert "viewonly" not in terminal_text(page)


def test_no_history_then_the_vm_stops(stack, bare_serial_vm, page) -> None:
    open_terminal(page, stack, bare_serial_vm)
    assert page.get_attribute("body", "data-history") == "unavailable"
    wait_text(page, r"<log file=")  # the broker's hint: how to keep a history
    bare_serial_vm.destroy()
    # The page's pass outlives the run: it waits, and is back by itself once the VM is.
    wait_state(page, "waiting", timeout=5_000)
    assert page.get_attribute("body", "data-close-code") == "4300"
    assert "waiting for it to start" in page.inner_text("#status")
    assert page.is_hidden("#take-over")
    bare_serial_vm.create()
    wait_state(page, "connected", timeout=20_000)


def test_after_the_window_the_page_says_why(conn, bare_serial_vm, page, tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "state", extra_env={"BROKER_SESSION_WINDOW": "3"})
    try:
        link = broker.mint(bare_serial_vm.name(), kind="serial", console="serial0")
        page.goto(link["console_url"])
        wait_state(page, "connected")
        time.sleep(3.5)
        page.reload()
        wait_state(page, "error")
        assert "expired" in page.inner_text("#status").lower()
    finally:
        broker.stop()
