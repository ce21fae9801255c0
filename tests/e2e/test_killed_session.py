"""An administrator kills a console session: the page in real Chromium (through nginx)
says so, and offers no Reconnect, which could not bring the user back."""

from __future__ import annotations

import httpx
import libvirt
import pytest

from support.nginx import Nginx
from support.processes import BrokerProcess

pytestmark = pytest.mark.e2e

KILLED = "an administrator ended this console session"


def api(nginx: Nginx, broker: BrokerProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {broker.api_key}"}
    return httpx.request(method, f"{nginx.url}/novnc{path}", headers=headers, timeout=15, **kwargs)  # type: ignore[arg-type]


def test_a_killed_session_tells_the_page_why(stack, console_vm: libvirt.virDomain, page) -> None:
    broker, nginx = stack
    link = api(nginx, broker, "POST", f"/api/v1/domains/{console_vm.name()}/console").json()
    page.goto(link["console_url"])
    page.wait_for_selector("body[data-state='connected']", timeout=20_000)

    listed = api(nginx, broker, "GET", "/api/v1/sessions", params={"domain": console_vm.name()}).json()["sessions"]
    session = next(s for s in listed if s["via"] == "page")  # newest first: this page's
    assert session["client"] == "127.0.0.1"  # nginx's X-Forwarded-For (no port), not the UNIX socket
    assert "Chrome" in session["user_agent"] and session["key"] == "key1"

    killed = broker.cli("kill", session["id"])
    assert killed.returncode == 0, killed.stderr
    # Final: Reconnect cannot bring the user back, so it is not offered; nor does a reload.
    page.wait_for_selector("body[data-state='error']", timeout=5_000)
    assert page.get_attribute("body", "data-close-code") == "4305"
    assert KILLED in page.inner_text("#status").lower()
    assert page.is_hidden("#reconnect")
    page.reload()
    page.wait_for_selector("body[data-state='error']", timeout=10_000)
    assert KILLED in page.inner_text("#status").lower()
    assert not page.js_errors
