"""The headers the console pages (and their error page) are served with.

The pages themselves are templates that web/build.mjs builds and web/assets.py fills in;
what is decided here is how a browser may keep, pass on and frame them.
"""

from __future__ import annotations

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
