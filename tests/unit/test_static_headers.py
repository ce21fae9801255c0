"""The console pages' bundles (web/build.mjs): protective headers, cached for good under
content-hashed names, precompressed, and only what the build made."""

from __future__ import annotations

import json
import re

import pytest

from broker.web.app import PAGE_HEADERS
from broker.web.assets import IMMUTABLE, accepted_encodings, web_root

UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def bundles(page_html: str) -> list[str]:
    """The static URLs a served page refers to (relative: ../../static/NAME)."""
    return re.findall(r'(?:href|src)="\.\./\.\./static/([^"]+)"', page_html)


@pytest.fixture
def console_bundles(api) -> list[str]:
    return bundles(api.client.get(f"/console/{UUID}/").text)


def test_a_page_is_one_stylesheet_one_module_and_the_load_check(console_bundles: list[str]) -> None:
    assert [name.rsplit(".", 1)[1] for name in console_bundles] == ["css", "js", "js"]
    for name in console_bundles:
        assert re.fullmatch(r"[a-z]+-[A-Z0-9]{8}\.(css|js)", name), name


@pytest.mark.parametrize("page", ["", "terminal"])
def test_bundles_are_cached_for_good_and_not_sniffed(api, page: str) -> None:
    for name in bundles(api.client.get(f"/console/{UUID}/{page}").text):
        response = api.client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.headers["vary"] == "Accept-Encoding"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
        assert response.headers["referrer-policy"] == "no-referrer"
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        assert response.headers["content-type"].split(";")[0] == kind  # a module runs only with a JS type


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [
        ("gzip, deflate, br, zstd", "br"),
        ("gzip", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("*", "br"),
        ("br;q=0, *", "gzip"),
        ("identity", None),
        ("", None),
        ("gzip;q=0", None),
    ],
)
def test_the_smallest_encoding_the_client_accepts(api, console_bundles: list[str], accept: str, encoding) -> None:
    script = next(name for name in console_bundles if name.startswith("console-") and name.endswith(".js"))
    plain = (web_root() / "static" / script).read_bytes()
    response = api.client.get(f"/static/{script}", headers={"Accept-Encoding": accept})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == encoding
    assert response.headers["vary"] == "Accept-Encoding"
    if encoding != "br":  # httpx decodes gzip itself, br only with the brotli package
        assert response.content == plain
    if encoding:
        suffix = {"br": ".br", "gzip": ".gz"}[encoding]
        sent = int(response.headers["content-length"])
        assert sent == (web_root() / "static" / (script + suffix)).stat().st_size < len(plain) / 2


def test_accept_encoding_parsing() -> None:
    assert accepted_encodings("gzip, deflate, br") == {"gzip", "deflate", "br"}
    assert accepted_encodings("GZIP ; q=0.5, br;q=0") == {"gzip"}
    assert accepted_encodings("*;q=0.1, gzip;q=0") == {"br"}
    assert accepted_encodings("br;q=nonsense") == set()


@pytest.mark.parametrize(
    "path",
    [
        "/static/console.js",  # the unbundled sources are not served
        "/static/session.js",
        "/static/novnc/core/rfb.js",
        "/static/xterm/xterm/lib/xterm.mjs",
        "/static/manifest.json",
        "/static/..%2fmanifest.json",
        "/static/..%2fpages%2fconsole.html",
    ],
)
def test_only_the_builds_files_are_served(api, path: str) -> None:
    assert api.client.get(path).status_code == 404


def test_source_maps_are_served_for_developer_tools(api, console_bundles: list[str]) -> None:
    script = next(name for name in console_bundles if name.startswith("console-") and name.endswith(".js"))
    response = api.client.get(f"/static/{script}.map")
    assert response.status_code == 200
    assert "core/rfb.js" in " ".join(json.loads(response.content)["sources"])


def test_the_pages_are_not_cached(api) -> None:
    for page in ("", "terminal"):
        response = api.client.get(f"/console/{UUID}/{page}")
        assert response.status_code == 200
        for name, value in PAGE_HEADERS.items():
            assert response.headers[name] == value, name
    assert "terminal-" in api.client.get(f"/console/{UUID}/terminal").text
