"""Static files carry the same protective headers as the console page."""

from __future__ import annotations

import pytest

from broker.web.app import PAGE_HEADERS


@pytest.mark.parametrize(
    "path", ["/static/console.js", "/static/console.css", "/static/error.html", "/static/novnc/core/rfb.js"]
)
def test_static_files_are_not_sniffed_and_have_a_csp(api, path: str) -> None:
    response = api.client.get(path)
    assert response.status_code == 200, path
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "no-store" not in response.headers.get("cache-control", "")  # static files may be cached
