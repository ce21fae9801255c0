"""The console pages' HTML: templates filled in, and the headers they are served with.

The pages (web/public/*.html) are templates: placeholders in double braces are replaced
with HTML-escaped values. Every URL in them stays relative (the broker may live under a
sub-path such as /novnc), and the page is served at more than one depth (the link at
/console, the page at /console/{uuid}/ after the script has dropped the token from the
address), so the path to the static files is a placeholder too.
"""

from __future__ import annotations

import html
from pathlib import Path

CSP = "default-src 'self'; img-src 'self' data:; connect-src 'self'"


def page_headers(frame_ancestors: tuple[str, ...] = ()) -> dict[str, str]:
    """Never cached, never leaking the URL onwards, framed only by the broker itself and
    the configured panel origins (`frame_ancestors`)."""
    ancestors = " ".join(["'self'", *frame_ancestors])
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": f"{CSP}; frame-ancestors {ancestors}",
    }
    if not frame_ancestors:
        # For browsers without CSP frame-ancestors; with panel origins there is no X-Frame-Options
        # value that could name them, and browsers that know frame-ancestors ignore it anyway.
        headers["X-Frame-Options"] = "SAMEORIGIN"
    return headers


def fill(template: str, **values: str) -> str:
    """The template with each {{name}} replaced by its value, HTML-escaped."""
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", html.escape(value))
    return template


def console_page(web_dir: Path, name: str, *, uuid: str, console_dir: str, static: str) -> str | None:
    """A console page (console.html or terminal.html) for the console `uuid`, or None if it
    is not installed. `console_dir` is the relative URL of /console/{uuid}/ from where the
    page is served; `static` that of /static."""
    path = web_dir / "public" / name
    if not path.is_file():
        return None
    return fill(path.read_text(), uuid=uuid, console_dir=console_dir, static=static)
