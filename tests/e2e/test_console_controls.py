"""The console page's controls in real Chromium, through nginx, to real VMs: paced typing,
focus after toolbar actions, the Keys menu, phone use (folding toolbar, on-screen keys,
sticky modifiers, pan), remote resize falling back to fit, settings, screenshot, and the
guest's clipboard.

Where a test must see keys arrive it uses the tiny guest, which echoes every line typed on
its VGA console to its serial log as "GOT: <line>" (contrib/tiny-guest.sh); the rest use
the SeaBIOS-only VM.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import httpx
import libvirt
import pytest

from support import vms
from support.chromium import page_in_new_context, wait_state, watch_errors
from support.nginx import mint_through

pytestmark = pytest.mark.e2e

VGA_SIZES = {(640, 480), (720, 400)}
ESC = "\x1b"


def open_console(page, stack, dom: libvirt.virDomain, **body: object) -> None:
    broker, nginx = stack
    page.goto(mint_through(nginx, broker, dom.name(), **body)["console_url"])
    wait_state(page, "connected")
    page.wait_for_function("() => { const c = document.querySelector('#screen canvas'); return c && c.width > 0; }")


@pytest.fixture
def tiny(tiny_vm) -> tuple[libvirt.virDomain, Path]:
    dom, serial = tiny_vm
    vms.wait_for_line(str(serial), "TINY-GUEST-READY", timeout=90)
    return dom, serial


def got(serial: Path, line: str, timeout: float = 20.0) -> None:
    vms.wait_for_line(str(serial), f"GOT: {line}\r\n", timeout=timeout)  # the guest's tty ends lines so


@pytest.fixture
def phone(browser):
    with page_in_new_context(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True) as page:
        yield page


# -- typing --------------------------------------------------------------------------------


def test_400_characters_sent_through_the_text_box_all_reach_the_guest(stack, tiny, page) -> None:
    dom, serial = tiny
    # Five lines of 79 characters and their newlines: 400. Shifted characters, digits,
    # punctuation; no backslash (the guest's echo could read it as an escape).
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?@#$%^&*()_+-=[]{}<>|~'\"/`"
    lines = [f"L{n} " + "".join(alphabet[(n * 7 + i) % len(alphabet)] for i in range(76)) for n in range(5)]
    text = "\n".join(lines) + "\n"
    assert len(text) == 400
    open_console(page, stack, dom)
    page.fill("#clipboard-text", text)
    page.click("#clipboard-send")
    page.wait_for_function("() => /^Typing \\d+\\/400…$/.test(document.getElementById('clipboard-note').textContent)")
    assert page.is_visible("#clipboard-stop")
    page.wait_for_selector("body[data-typed='completed']", timeout=30_000)
    assert page.inner_text("#clipboard-note") == "Typed all 400 characters."
    assert not page.is_visible("#clipboard-stop")
    for line in lines:
        got(serial, line)
    assert not page.js_errors


def test_stop_says_how_much_was_typed(stack, console_vm: libvirt.virDomain, page) -> None:
    open_console(page, stack, console_vm)
    page.fill("#clipboard-text", "x" * 2000)
    page.click("#clipboard-send")
    progress = "() => /^Typing [1-9]\\d*\\/2000…$/.test(document.getElementById('clipboard-note').textContent)"
    page.wait_for_function(progress)
    page.click("#clipboard-stop")
    page.wait_for_selector("body[data-typed='stopped']")
    note = page.inner_text("#clipboard-note")
    match = re.fullmatch(r"Stopped after (\d+) of 2000 characters\.", note)
    assert match and 0 < int(match.group(1)) < 2000, note
    assert page.is_enabled("#clipboard-send")


def test_a_connection_lost_while_typing_is_reported(stack, console_vm: libvirt.virDomain, page) -> None:
    broker, nginx = stack
    open_console(page, stack, console_vm)
    page.fill("#clipboard-text", "y" * 2000)
    page.click("#clipboard-send")
    progress = "() => /^Typing [1-9]\\d*\\/2000…$/.test(document.getElementById('clipboard-note').textContent)"
    page.wait_for_function(progress)
    api = f"{nginx.url}/novnc/api/v1/sessions"  # the stack's broker listens on a UNIX socket only
    headers = {"Authorization": f"Bearer {broker.api_key}"}
    sessions = httpx.get(api, params={"domain": console_vm.name()}, headers=headers).json()["sessions"]
    assert sessions
    for session in sessions:  # an administrator ends the console session (4305)
        assert httpx.delete(f"{api}/{session['id']}", headers=headers).status_code == 200
    page.wait_for_selector("body[data-typed='lost']")
    wait_state(page, "error")  # 4305 is final: the page offers no Reconnect
    assert page.is_hidden("#reconnect")
    note = page.inner_text("#clipboard-note")
    match = re.fullmatch(r"Connection lost after (\d+) of 2000 characters; the rest was not typed\.", note)
    assert match and 0 < int(match.group(1)) < 2000, note
    assert not page.is_visible("#clipboard-stop")
    assert page.is_disabled("#clipboard-send")


# -- focus and the Keys menu -----------------------------------------------------------------


def test_typing_reaches_the_guest_after_fullscreen_scaling_and_the_keys_menu(
    stack, tiny, page, artifacts: Path
) -> None:
    dom, serial = tiny
    open_console(page, stack, dom)
    page.click("#fullscreen")
    page.wait_for_function("() => document.activeElement && document.activeElement.tagName === 'CANVAS'")
    page.keyboard.type("after fullscreen", delay=20)
    page.keyboard.press("Enter")
    got(serial, "after fullscreen")
    if page.evaluate("() => !!document.fullscreenElement"):
        page.click("#fullscreen")  # leave it

    # An arrow key on the focused Scaling select changes it once, then the screen has focus.
    page.focus("#scale")
    page.keyboard.press("ArrowDown")
    assert page.eval_on_selector("#scale", "s => s.value") == "none"
    page.keyboard.type("after scaling", delay=20)
    page.keyboard.press("Enter")
    got(serial, "after scaling")
    assert page.eval_on_selector("#scale", "s => s.value") == "none", "typing changed the scaling"

    # The Keys menu works from the keyboard and sends nothing until an item is chosen.
    page.focus("#keys-menu summary")
    page.keyboard.press("Enter")
    assert page.eval_on_selector("#keys-menu", "d => d.open")
    page.keyboard.press("Escape")
    assert not page.eval_on_selector("#keys-menu", "d => d.open")
    page.click("#keys-menu summary")
    page.screenshot(path=str(artifacts / "console-keys-menu.png"))
    page.click("#keys-menu [data-combo='esc']")
    assert not page.eval_on_selector("#keys-menu", "d => d.open")
    page.keyboard.type("menu", delay=20)
    page.keyboard.press("Enter")
    got(serial, ESC + "menu")

    # A sticky Ctrl from the keys row also holds for a real keyboard typing on the screen:
    # Ctrl-U erases the line so far, so only "desk" arrives.
    page.click("#keyboard")
    assert page.is_visible("#extra-keys")
    page.click("#screen canvas")
    page.keyboard.type("junk", delay=20)
    page.click("#extra-keys [data-modifier='ctrl']")
    assert page.evaluate("() => document.activeElement.tagName") == "CANVAS", "the keys row took the focus"
    assert page.get_attribute("#extra-keys [data-modifier='ctrl']", "aria-pressed") == "true"
    page.keyboard.press("u")
    assert page.get_attribute("#extra-keys [data-modifier='ctrl']", "aria-pressed") == "false"
    page.keyboard.type("desk", delay=20)
    page.keyboard.press("Enter")
    got(serial, "desk")
    page.click("#keyboard")
    assert not page.is_visible("#extra-keys")
    assert not page.js_errors


# -- phones -----------------------------------------------------------------------------


def test_on_a_phone_the_toolbar_folds_away_and_the_on_screen_keys_reach_the_guest(
    stack, tiny, phone, artifacts: Path
) -> None:
    dom, serial = tiny
    page = phone
    open_console(page, stack, dom)
    for selector in ("#hide-toolbar", "#keyboard", "#fullscreen", "#keys-menu summary", "#clipboard-send"):
        box = page.locator(selector).bounding_box()
        assert box and box["height"] >= 44 and box["width"] >= 44, (selector, box)
    toolbar_height = page.locator("#toolbar").bounding_box()["height"]
    page.screenshot(path=str(artifacts / "console-phone-toolbar.png"))

    page.tap("#keyboard")
    assert page.is_visible("#extra-keys")
    assert page.evaluate("() => document.activeElement.id") == "soft-keyboard"
    page.tap("#hide-toolbar")
    assert not page.is_visible("#toolbar")
    assert page.is_visible("#show-toolbar")
    handle = page.locator("#show-toolbar").bounding_box()
    assert handle["height"] < toolbar_height / 2
    assert page.is_visible("#extra-keys"), "the keys row went away with the toolbar"

    # Esc from the row, then text from the phone's keyboard (the hidden field).
    page.tap("#extra-keys [data-key='esc']")
    assert page.evaluate("() => document.activeElement.id") == "soft-keyboard", "a key of the row took the focus"
    page.keyboard.type("phone", delay=30)
    page.keyboard.press("Enter")
    got(serial, ESC + "phone")

    # Sticky Ctrl: latched by a tap, used by the next key, then let go. Ctrl-U erases the
    # line typed so far (the guest's terminal), so only "kept" arrives.
    page.keyboard.type("junk", delay=30)
    page.tap("#extra-keys [data-modifier='ctrl']")
    assert page.get_attribute("#extra-keys [data-modifier='ctrl']", "aria-pressed") == "true"
    page.keyboard.type("u", delay=30)
    assert page.get_attribute("#extra-keys [data-modifier='ctrl']", "aria-pressed") == "false"
    page.keyboard.type("kept", delay=30)
    page.keyboard.press("Enter")
    got(serial, "kept")

    # Autocorrect rewrites a word in place, in one input event: the Backspaces and letters
    # it comes to (over 50 key events at once) all arrive, in order.
    page.keyboard.type("teh", delay=30)
    page.evaluate(
        """() => {
            const field = document.getElementById('soft-keyboard');
            field.value = field.value.slice(0, -3) + 'the quick brown fox jumps over';
            field.dispatchEvent(new InputEvent('input', { inputType: 'insertReplacementText' }));
        }"""
    )
    page.keyboard.press("Enter")
    got(serial, "the quick brown fox jumps over")

    page.screenshot(path=str(artifacts / "console-phone-keys.png"))
    page.tap("#show-toolbar")
    assert page.is_visible("#toolbar")
    assert not page.js_errors


def test_the_on_screen_keys_queue_is_bounded_and_left_behind_on_reconnect(
    stack, console_vm: libvirt.virDomain, phone
) -> None:
    """A burst bigger than the queue loses its end, and says so; what is still queued when
    the connection changes goes nowhere (not to the new connection)."""
    page = phone
    open_console(page, stack, console_vm)
    # Count the key events each RFB object is given.
    page.evaluate(
        """() => {
            const proto = Object.getPrototypeOf(globalThis.rfb);
            const sendKey = proto.sendKey;
            globalThis.keysSent = new Map();
            proto.sendKey = function (...args) {
                globalThis.keysSent.set(this, (globalThis.keysSent.get(this) || 0) + 1);
                return sendKey.apply(this, args);
            };
            globalThis.firstRfb = globalThis.rfb;
        }"""
    )
    page.tap("#keyboard")
    page.evaluate(
        """() => {
            const field = document.getElementById('soft-keyboard');
            field.value += 'a'.repeat(1500);  // 3000 key events, one input event
            field.dispatchEvent(new InputEvent('input', { inputType: 'insertText' }));
        }"""
    )
    note = page.inner_text("#scale-note")
    match = re.fullmatch(r"Too many keys at once: (\d+) dropped \(at most 2000 key events wait to be sent\)\.", note)
    assert match, note
    assert 490 <= int(match[1]) <= 510, note  # about 1000 of the 1500 fit
    # The connection drops while the queue still holds most of the burst (12 ms a key).
    page.evaluate("() => globalThis.rfb.disconnect()")
    wait_state(page, "disconnected")
    page.click("#reconnect")
    wait_state(page, "connected")
    page.wait_for_timeout(1000)
    sent = page.evaluate(
        "() => [globalThis.keysSent.get(globalThis.firstRfb) || 0, globalThis.keysSent.get(globalThis.rfb) || 0]"
    )
    assert page.evaluate("() => globalThis.rfb !== globalThis.firstRfb")
    assert 0 < sent[0] < 2000 and sent[1] == 0, sent
    assert not page.js_errors


def test_one_to_one_on_a_touch_screen_pans(stack, console_vm: libvirt.virDomain, phone) -> None:
    page = phone
    open_console(page, stack, console_vm)
    assert not page.is_visible("#pan")
    page.select_option("#scale", "none")
    page.wait_for_selector("#pan", state="visible")
    assert page.evaluate("() => rfb.clipViewport && rfb.clippingViewport")
    page.tap("#pan")
    assert page.get_attribute("#pan", "aria-pressed") == "true"
    assert page.evaluate("() => rfb.dragViewport")
    # A drag on the screen moves the view, not the guest's mouse.
    box = page.locator("#screen canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = page.evaluate("() => rfb._display.absX(0)")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for step in range(1, 11):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x - 15 * step, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_function(f"() => rfb._display.absX(0) !== {before}", timeout=5_000)
    page.select_option("#scale", "fit")
    assert not page.is_visible("#pan")
    assert not page.evaluate("() => rfb.dragViewport")


# -- remote resize, settings, screenshot, clipboard ---------------------------------------


def test_remote_resize_on_standard_vga_falls_back_to_fit_and_says_why(stack, console_vm, page) -> None:
    open_console(page, stack, console_vm)
    page.select_option("#scale", "remote")
    page.wait_for_selector("body[data-resize-fallback='yes']", timeout=10_000)
    assert page.eval_on_selector("#scale", "s => s.value") == "fit"
    assert page.evaluate("() => rfb.scaleViewport && !rfb.resizeSession")
    note = page.inner_text("#scale-note")
    assert "did not resize" in note and "Scaled to fit instead" in note
    # The choice stays remembered: the next page tries again.
    assert page.evaluate("() => localStorage.getItem('console.scale')") == "remote"


def test_quality_and_compression_are_applied_and_remembered(stack, console_vm, page) -> None:
    open_console(page, stack, console_vm)
    assert page.evaluate("() => [rfb.qualityLevel, rfb.compressionLevel]") == [6, 2]
    page.click("#settings-menu summary")
    page.select_option("#quality", "1")
    page.click("#settings-menu summary")
    page.select_option("#compression", "9")
    assert page.evaluate("() => [rfb.qualityLevel, rfb.compressionLevel]") == [1, 9]
    assert page.evaluate("() => document.activeElement.tagName") == "CANVAS"
    page.reload()
    wait_state(page, "connected")
    assert page.evaluate("() => [rfb.qualityLevel, rfb.compressionLevel]") == [1, 9]
    assert page.eval_on_selector("#quality", "s => s.value") == "1"


def test_a_page_without_storage_still_works(stack, console_vm, browser) -> None:
    # As in a third-party frame with site data blocked: every access to localStorage throws.
    context = browser.new_context()
    context.add_init_script(
        "Object.defineProperty(window, 'localStorage',"
        " { get() { throw new DOMException('denied', 'SecurityError'); } });"
    )
    try:
        page = context.new_page()
        errors = watch_errors(page)
        open_console(page, stack, console_vm)
        page.select_option("#scale", "none")
        page.click("#settings-menu summary")
        page.select_option("#quality", "3")
        assert page.evaluate("() => rfb.qualityLevel") == 3
        assert not errors
    finally:
        context.close()


def test_screenshot_saves_a_png_named_after_the_vm(stack, console_vm, page, tmp_path: Path) -> None:
    open_console(page, stack, console_vm)
    with page.expect_download() as download_info:
        page.click("#screenshot")
    download = download_info.value
    name = download.suggested_filename
    assert re.fullmatch(re.escape(console_vm.name()) + r"-\d{4}-\d\d-\d\d-\d{6}\.png", name), name
    target = tmp_path / name
    download.save_as(target)
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) in VGA_SIZES
    assert page.evaluate("() => document.activeElement.tagName") == "CANVAS"


def test_the_guests_clipboard_is_shown_with_copy(stack, console_vm, browser) -> None:
    # QEMU sends its clipboard only with an agent in the guest; the event noVNC raises for
    # it is dispatched here, as noVNC would.
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        page = context.new_page()
        open_console(page, stack, console_vm)
        page.fill("#clipboard-text", "mine")
        assert not page.is_visible("#guest-clipboard")
        page.evaluate("() => rfb.dispatchEvent(new CustomEvent('clipboard', { detail: { text: 'from the guest ✓' } }))")
        assert page.is_visible("#guest-clipboard")
        assert page.input_value("#guest-clipboard-text") == "from the guest ✓"
        assert page.input_value("#clipboard-text") == "mine", "the guest's clipboard overwrote the text box"
        page.click("#guest-clipboard-copy")
        page.wait_for_function("() => document.getElementById('guest-clipboard-note').textContent === 'Copied.'")
        assert page.evaluate("() => navigator.clipboard.readText()") == "from the guest ✓"
        page.click("#guest-clipboard-close")
        assert not page.is_visible("#guest-clipboard")
    finally:
        context.close()


def test_view_only_offers_no_input(stack, console_vm, page) -> None:
    open_console(page, stack, console_vm, mode="view-only")
    assert page.is_visible("#view-only-badge")
    for selector in ("#keyboard", "#clipboard-send", "#ctrl-alt-del", "#keys-menu [data-combo='esc']"):
        assert page.is_disabled(selector), selector
    assert page.is_enabled("#screenshot")
    page.select_option("#scale", "remote")
    page.wait_for_selector("body[data-resize-fallback='yes']")
    assert "view-only link cannot resize" in page.inner_text("#scale-note")
