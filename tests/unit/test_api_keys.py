"""Scoped API keys (access/keys.py): the config forms, globs and UUIDs, rights, and the
answers a key outside its scope gets from the REST API."""

from __future__ import annotations

import hashlib

import pytest

from broker.access.keys import RIGHTS, ApiKey, match, parse_keys
from broker.errors import FORBIDDEN, BrokerError
from broker.model import LinkMode
from unit_support import vnc_graphics

PANEL = "panel-key-0123456789"
UUID = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"


def test_plain_strings_are_full_rights_keys_labelled_by_position() -> None:
    keys = parse_keys(["a" * 16, "b" * 16])
    assert [(k.label, k.unscoped) for k in keys] == [("key1", True), ("key2", True)]


def test_a_table_with_a_digest_and_a_scope() -> None:
    digest = hashlib.sha256(PANEL.encode()).hexdigest()
    [key] = parse_keys(
        [
            {
                "label": "panel-eu",
                "sha256": digest.upper(),
                "domains": ["web-*", UUID.upper()],
                "rights": ["mint", "list"],
            }
        ]
    )
    assert key.secret is None and key.label == "panel-eu"
    assert match([key], PANEL) is key and match([key], PANEL + "x") is None
    assert key.covers("web-1", "00000000-0000-0000-0000-000000000000")
    assert key.covers("db-1", UUID) and not key.covers("db-1", "00000000-0000-0000-0000-000000000000")
    assert not key.covers("Web-1", "x")  # globs are case-sensitive, like domain names


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"label": "x"}, "exactly one of key or sha256"),
        ({"key": "a" * 16, "sha256": "0" * 64}, "exactly one of key or sha256"),
        ({"key": "short"}, "at least 16 characters"),
        ({"sha256": "abc"}, "64 hex digits"),
        ({"key": "a" * 16, "rights": ["mint", "root"]}, "unknown right(s) root"),
        ({"key": "a" * 16, "domains": []}, "domains is empty"),
        ({"key": "a" * 16, "label": "has space"}, "label must be"),
        ({"key": "a" * 16, "scope": "all"}, "unknown field(s) scope"),
    ],
)
def test_a_wrong_table_says_what_is_wrong(entry: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_keys([entry])


def test_labels_must_differ() -> None:
    with pytest.raises(ValueError, match="used twice"):
        parse_keys([{"label": "a", "key": "a" * 16}, {"label": "a", "key": "b" * 16}])


def test_every_key_is_compared() -> None:
    """The last match wins and no comparison is skipped: same work whichever key it is."""
    keys = parse_keys(["a" * 16, "b" * 16, "c" * 16])
    assert match(keys, "b" * 16) is keys[1]


@pytest.mark.parametrize(
    ("rights", "mode", "allowed"),
    [
        (["mint"], LinkMode.INTERACTIVE, True),
        (["mint"], LinkMode.VIEW_ONLY, True),
        (["mint"], LinkMode.EXCLUSIVE, False),
        (["mint-view-only"], LinkMode.VIEW_ONLY, True),
        (["mint-view-only"], LinkMode.INTERACTIVE, False),
        (["mint-exclusive"], LinkMode.EXCLUSIVE, True),
        (["list"], LinkMode.INTERACTIVE, False),
    ],
)
def test_mint_rights_by_mode(rights: list[str], mode: LinkMode, allowed: bool) -> None:
    [key] = parse_keys([{"key": "a" * 16, "rights": rights}])
    if allowed:
        key.require_mint(mode, "vm", UUID)
    else:
        with pytest.raises(BrokerError) as caught:
            key.require_mint(mode, "vm", UUID)
        assert caught.value.failure is FORBIDDEN and "right" in caught.value.message


# -- through the REST API (test:///default) ------------------------------------------------


@pytest.fixture
def scoped(api, monkeypatch):
    keys = (
        ApiKey.full("full", "f" * 20),
        *parse_keys(
            [{"label": "web-viewer", "key": "w" * 20, "domains": ["web-*"], "rights": ["mint-view-only", "list"]}]
        ),
    )
    monkeypatch.setattr(api.broker, "api_keys", keys)
    return {"Authorization": "Bearer " + "w" * 20}


def test_a_scoped_key_lists_only_its_domains(api, define_domain, scoped) -> None:
    define_domain(vnc_graphics(5905))
    names = [d["name"] for d in api.client.get("/api/v1/domains", headers=scoped).json()["domains"]]
    assert names == [] or all(name.startswith("web-") for name in names)


def test_a_scoped_key_cannot_mint_outside_its_scope_or_above_its_rights(api, define_domain, scoped) -> None:
    outside = define_domain(vnc_graphics(5905))  # named unit-…: not web-*
    refused = api.client.post(f"/api/v1/domains/{outside.name()}/console", headers=scoped, json={"mode": "view-only"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert "outside the scope" in refused.json()["error"]["message"]
    sessions = api.client.get("/api/v1/sessions", headers=scoped)
    assert sessions.status_code == 403 and "'sessions'" in sessions.json()["error"]["message"]


def test_rights_cover_every_call() -> None:
    assert set(RIGHTS) == {"mint", "mint-view-only", "mint-exclusive", "list", "screenshot", "sessions", "kill"}
