"""How the tests run Debian's Chromium (through Playwright), and what they do with its pages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXECUTABLE = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def watch_errors(page: Any) -> list[str]:
    """The page's uncaught script errors, collected as they come (also as `page.js_errors`)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    return errors


@contextmanager
def page_in_new_context(browser: Any, *, permissions: tuple[str, ...] = (), **options: Any) -> Iterator[Any]:
    """A page in a context of its own (`options` as for browser.new_context), its script
    errors watched; the context is closed afterwards."""
    context = browser.new_context(**options)
    if permissions:
        context.grant_permissions(list(permissions))
    page = context.new_page()
    watch_errors(page)
    try:
        yield page
    finally:
        context.close()


def wait_state(page: Any, state: str, timeout: float = 20_000) -> None:
    """Until a console page's body says `state` (connecting, connected, waiting, …)."""
    page.wait_for_selector(f"body[data-state='{state}']", timeout=timeout)
