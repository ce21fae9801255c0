"""The console pages' built web files (web/build.mjs): where they are, the pages rendered
from their templates, and the bundles served precompressed and cached for good.

The build writes content-hashed bundles, so a name never changes meaning: the browser and
any proxy may keep them a year without asking again, and a new build is new names in a
page that is never cached. The manifest is re-read when it changes, so a rebuild shows
on the next page load without a restart.
"""

from __future__ import annotations

import html
import json
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response

PACKAGE = Path(__file__).resolve().parents[1]
CHECKOUT_WEB = PACKAGE.parent / "web"
BUILD_COMMAND = "cd web && npm ci && npm run build"

IMMUTABLE = "public, max-age=31536000, immutable"
# The server's preference: smallest first (the build keeps brotli only when it beats gzip).
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".map": "application/json"}
PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def web_root() -> Path:
    """Where the built web files are: in a checkout (web/build.mjs beside the package) its
    web/dist, always the current build; else the package's own webroot/, which
    contrib/build-wheel.sh puts into the wheel."""
    if (CHECKOUT_WEB / "build.mjs").is_file():
        return CHECKOUT_WEB / "dist"
    return PACKAGE / "webroot"


class WebFilesMissing(Exception):
    """The build output is not there; the message says how to make it."""


@dataclass(frozen=True)
class Build:
    """One build's manifest, as read: page templates and the static files' encodings."""

    stamp: tuple[int, int]
    pages: dict[str, str]
    files: dict[str, tuple[str, ...]]  # name -> the encodings beside it, preferred first


class WebFiles:
    """The web root of one broker: pages by name, static files by hashed name."""

    def __init__(self, root: Path | None = None, headers: dict[str, str] | None = None) -> None:
        self.root = root or web_root()
        self.headers = headers or {}  # on every static file, besides caching and encoding
        self._build: Build | None = None

    def build(self) -> Build:
        manifest = self.root / "manifest.json"
        try:
            stat = manifest.stat()
        except OSError:
            raise WebFilesMissing(self._missing()) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._build is None or self._build.stamp != stamp:
            try:
                data = json.loads(manifest.read_text())
                pages = {name: (self.root / path).read_text() for name, path in data["pages"].items()}
                files = {
                    name: tuple(enc for enc, _ in ENCODINGS if enc in meta.get("encodings", {}))
                    for name, meta in data["files"].items()
                }
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise WebFilesMissing(f"The console pages' build in {self.root} is unreadable ({exc}). {self._fix()}") from None
            self._build = Build(stamp, pages, files)
        return self._build

    def render(self, name: str, **values: str) -> str:
        """Page `name` (web/public/NAME.html as built), its placeholders ({{key}}) filled with
        `values`, HTML-escaped. `static` is the static files' URL relative to the page.
        A placeholder without a value is a bug in the caller: ValueError."""
        template = self.build().pages.get(name)
        if template is None:
            raise WebFilesMissing(f"The console pages' build in {self.root} has no page {name!r}. {self._fix()}")

        def fill(match: re.Match[str]) -> str:
            key = match[1]
            if key not in values:
                raise ValueError(f"page {name!r} needs a value for {{{{{key}}}}}")
            return html.escape(values[key])

        return PLACEHOLDER.sub(fill, template)

    async def static_file(self, request: Request) -> Response:
        """GET /static/{name}: a bundle, in the smallest encoding the client accepts."""
        name = request.path_params["name"]
        try:
            encodings = self.build().files.get(name)
        except WebFilesMissing:
            encodings = None
        if encodings is None:
            raise HTTPException(404, "No such static file.")
        accepted = accepted_encodings(request.headers.get("accept-encoding", ""))
        encoding = next((enc for enc in encodings if enc in accepted), None)
        suffix = dict(ENCODINGS)[encoding] if encoding else ""
        headers = {**self.headers, "Cache-Control": IMMUTABLE, "Vary": "Accept-Encoding"}
        if encoding:
            headers["Content-Encoding"] = encoding
        return FileResponse(self.root / "static" / (name + suffix), headers=headers, media_type=media_type(name))

    def _missing(self) -> str:
        return f"The console pages are not built ({self.root / 'manifest.json'} is missing). {self._fix()}"

    def _fix(self) -> str:
        if self.root == CHECKOUT_WEB / "dist":
            return f"Build them: {BUILD_COMMAND} (contrib/setup.sh does this too)."
        return "This installation lacks its web files: install a package built with contrib/build-wheel.sh."


def accepted_encodings(header: str) -> set[str]:
    """The content codings an Accept-Encoding header allows (RFC 9110 12.5.3): q=0 refuses,
    * stands for every coding not named."""
    named: dict[str, float] = {}
    for part in header.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if not coding:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        named[coding.lower()] = q
    wildcard = named.pop("*", 0.0)
    accepted = {coding for coding, q in named.items() if q > 0}
    if wildcard > 0:
        accepted |= {coding for coding, _ in ENCODINGS if coding not in named}
    return accepted


def media_type(name: str) -> str:
    suffix = Path(name).suffix
    return TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
