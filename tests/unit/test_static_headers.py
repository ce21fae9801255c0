"""Static files carry the same protective headers as the console page."""

from __future__ import annotations

import pytest

from broker.web.app import PAGE_HEADERS


@pytest.mark.parametrize(
    "path",
    [
        "/static/console.js",
        "/static/console.css",
        "/static/error.html",
        "/static/novnc/core/rfb.js",
        "/static/terminal.js",
        "/static/closecodes.js",
        "/static/session.js",
        "/static/pageload.js",
        "/static/xterm/xterm/lib/xterm.mjs",
        "/static/xterm/xterm/css/xterm.css",
        "/static/xterm/addon-fit/lib/addon-fit.mjs",
    ],
)
def test_static_files_are_not_sniffed_and_have_a_csp(api, path: str) -> None:
    response = api.client.get(path)
    assert response.status_code == 200, path
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "no-store" not in response.headers.get("cache-control", "")  # static files may be cached


@pytest.mark.parametrize("path", ["/static/xterm/xterm/lib/xterm.mjs", "/static/xterm/addon-fit/lib/addon-fit.mjs"])
def test_module_scripts_are_served_as_javascript(api, path: str) -> None:
    # Under nosniff a browser runs a module script only with a JavaScript type.
    content_type = api.client.get(path).headers["content-type"]
    assert content_type.split(";")[0] in ("text/javascript", "application/javascript"), content_type


def test_terminal_page_is_served_like_the_console_page(api) -> None:
    response = api.client.get("/console/6695eb01-f6a4-8304-79aa-97f2502e193f/terminal")
    assert response.status_code == 200
    assert "terminal.js" in response.text
    for name, value in PAGE_HEADERS.items():
        assert response.headers[name] == value, name
