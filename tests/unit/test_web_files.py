"""broker/web/assets.py: where the built pages are, how they are filled in, and what a broker
without them says."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from broker.web import assets
from broker.web.assets import BUILD_COMMAND, WebFiles, WebFilesMissing, web_root


def make_build(root: Path, page: str, files: dict[str, dict] | None = None) -> None:
    (root / "pages").mkdir(parents=True, exist_ok=True)
    (root / "pages" / "p.html").write_text(page)
    manifest = {"version": 1, "pages": {"p": "pages/p.html"}, "files": files or {}}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_checkout_serves_its_own_current_build() -> None:
    assert web_root() == Path(__file__).resolve().parents[2] / "web" / "dist"
    assert (web_root() / "manifest.json").is_file()  # tests/conftest.py built it


def test_an_installed_package_serves_the_web_files_inside_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(assets, "CHECKOUT_WEB", tmp_path / "no-checkout")
    assert web_root() == assets.PACKAGE / "webroot"


def test_without_a_build_the_message_says_how_to_make_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(assets, "CHECKOUT_WEB", tmp_path / "web")
    with pytest.raises(WebFilesMissing, match=re.escape(BUILD_COMMAND)):
        WebFiles(tmp_path / "web" / "dist").render("console", static="s")
    with pytest.raises(WebFilesMissing, match="contrib/build-wheel.sh"):
        WebFiles(tmp_path / "elsewhere").render("console", static="s")


def test_a_broker_without_its_pages_answers_503_with_the_command(api, tmp_path: Path) -> None:
    api.broker.web = WebFiles(tmp_path)
    response = api.client.get("/console/6695eb01-f6a4-8304-79aa-97f2502e193f/")
    assert response.status_code == 503
    assert "not built" in response.text and "build-wheel.sh" in response.text
    assert response.headers["cache-control"] == "no-store"
    # A dead link still says why, in a page of its own.
    dead = api.client.get("/console?token=nope")
    assert dead.status_code == 401 and "Cannot open the console" in dead.text


def test_values_are_escaped_and_every_placeholder_needs_one(tmp_path: Path) -> None:
    make_build(tmp_path, '<title>{{title}}</title><link href="{{static}}/a-1.css">')
    web = WebFiles(tmp_path)
    page = web.render("p", static="../../static", title='<b>"x"</b>', unused="y")
    assert page == '<title>&lt;b&gt;&quot;x&quot;&lt;/b&gt;</title><link href="../../static/a-1.css">'
    with pytest.raises(ValueError, match="title"):
        web.render("p", static="s")
    with pytest.raises(WebFilesMissing, match="no page 'q'"):
        web.render("q")


def test_a_rebuild_shows_without_a_restart(tmp_path: Path) -> None:
    make_build(tmp_path, "one")
    web = WebFiles(tmp_path)
    assert web.render("p") == "one"
    make_build(tmp_path, "two, a longer page")
    stat = (tmp_path / "manifest.json").stat()
    os.utime(tmp_path / "manifest.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert web.render("p") == "two, a longer page"


def test_the_error_page_uses_the_built_stylesheet(api) -> None:
    dead = api.client.get("/console?token=nope")
    assert dead.status_code == 401
    sheet = re.search(r'href="static/([^"]+\.css)"', dead.text)
    assert sheet, dead.text
    assert api.client.get(f"/static/{sheet[1]}").status_code == 200


def test_every_file_a_page_names_is_built_compressed_and_licensed() -> None:
    root = web_root()
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["pages"]) >= {"console", "terminal", "error"}
    for name, path in manifest["pages"].items():
        template = (root / path).read_text()
        named = re.findall(r'(?:href|src)="\{\{static\}\}/([^"]+)"', template)
        assert named, name
        assert "../../static/" not in template and "node_modules" not in template, name
        for file in named:
            assert (root / "static" / file).is_file(), file
            assert set(manifest["files"][file]["encodings"]) == {"gzip", "br"}, file
    # Every npm package a bundle holds ships its license texts along.
    assert set(manifest["licenses"]) == {"@novnc/novnc", "@xterm/xterm", "@xterm/addon-fit"}
    for package, meta in manifest["licenses"].items():
        assert meta["files"], package
        assert all((root / "licenses" / f).is_file() for f in meta["files"])
    assert "@novnc/novnc/vendor/pako/LICENSE" in manifest["licenses"]["@novnc/novnc"]["files"]


def test_a_broker_without_its_pages_says_so_when_it_starts(
    make_api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(assets, "web_root", lambda: tmp_path)
    with caplog.at_level("WARNING", logger="broker.app"):
        api = make_api()
    assert api.broker.web.root == tmp_path
    assert any("console pages unavailable" in r.getMessage() and "not built" in r.getMessage() for r in caplog.records)
