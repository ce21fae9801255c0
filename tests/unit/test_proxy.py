"""X-Forwarded-* from a trusted proxy: what is taken, and what is refused."""

from __future__ import annotations

import pytest

from broker.web.proxy import apply_forwarded


def scope_with(prefix: str) -> dict:
    return {
        "type": "http",
        "path": "/console",
        "raw_path": b"/console",
        "root_path": "",
        "headers": [(b"x-forwarded-prefix", prefix.encode("latin-1"))],
    }


@pytest.mark.parametrize("prefix", ["/novnc", "/h/hv-1", "/a.b/c_d/~e"])
def test_a_path_prefix_is_taken(prefix: str) -> None:
    scope = apply_forwarded(scope_with(prefix))
    assert scope["root_path"] == prefix and scope["path"] == prefix + "/console"


@pytest.mark.parametrize(
    "prefix",
    ["/x;Domain=evil.example", "/x=1", "/a,b", "/x; Secure", "/%3B", "/a/../b", "//evil.example", "/a b", "/é"],
)
def test_a_prefix_that_could_change_a_cookie_or_a_link_is_ignored(prefix: str) -> None:
    scope = apply_forwarded(scope_with(prefix))
    assert scope["root_path"] == "" and scope["path"] == "/console"
