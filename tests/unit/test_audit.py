"""The audit trail: one JSON object per line with a versioned schema, reopened after
logrotate, and nothing secret in any event."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from pathlib import Path

import pytest

from broker.access.limits import SessionLimits
from broker.access.tokens import Grant
from broker.errors import SESSION_KILLED, TOKEN_USED, BrokerError
from broker.live import LiveSessions, Viewer
from broker.model import ConsoleRef
from broker.observe.audit import SCHEMA_VERSION, AuditError, AuditLog
from broker.observe.events import CLIENT_CLOSED, Observer
from unit_support import run_async

UUID_A = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"

# The fields of each event besides v, ts and event (README, "Operating it").
SCHEMA = {
    "link_minted": {"key", "domain", "kind", "console", "ttl", "mode", "user"},
    "session_opened": {"session", "domain", "kind", "console", "client", "user_agent", "key", "via", "mode", "user"},
    "take_over": {"session", "domain", "kind", "console", "how", "ended", "client", "key"},
    "session_killed": {"session", "domain", "by"},
    "session_ended": {"session", "domain", "reason", "duration", "bytes_to_browser", "bytes_from_browser"},
    "refused": {"reason", "at", "client"},  # + "domain" when known, + "path" for the API
}


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_schema(event: dict) -> None:
    assert event["v"] == SCHEMA_VERSION == 1
    assert datetime.fromisoformat(event["ts"]).utcoffset().total_seconds() == 0
    extra = set(event) - {"v", "ts", "event"}
    expected = SCHEMA[event["event"]]
    assert expected <= extra <= expected | {"domain", "path"}, event


def test_a_whole_story_in_schema(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"

    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        observer = Observer(live, AuditLog(str(path)))
        grant = Grant(ConsoleRef(UUID_A), "vm-a", 0.0, minted_by="key1")
        observer.link_minted(grant, 60.0)
        observer.refused(BrokerError(TOKEN_USED), "192.0.2.9:4", at="websocket")
        session = live.add(grant.console, "vm-a", Viewer("192.0.2.1:5", "Firefox", "key1", "link"))
        observer.session_opened(session)
        session.traffic.down, session.traffic.up = 10, 2
        session.end(BrokerError(SESSION_KILLED))
        observer.session_killed(session, "cli")
        live.remove(session)
        observer.session_over(session, "session_killed")
        other = live.add(grant.console, "vm-a")
        observer.session_opened(other)
        live.remove(other)
        observer.session_over(other, CLIENT_CLOSED)
        observer.audit.close()

    run_async(scenario())
    story = events(path)
    assert [e["event"] for e in story] == [
        "link_minted",
        "refused",
        "session_opened",
        "session_killed",
        "session_ended",
        "session_opened",
        "session_ended",
    ]
    for event in story:
        check_schema(event)
    minted, refused, opened, killed, ended = story[:5]
    assert minted["key"] == "key1" and minted["domain"] == {"name": "vm-a", "uuid": UUID_A} and minted["ttl"] == 60
    assert minted["mode"] == "interactive"
    assert refused["reason"] == "token_used" and refused["client"] == "192.0.2.9:4"
    assert opened["client"] == "192.0.2.1:5" and opened["user_agent"] == "Firefox"
    assert killed["session"] == opened["session"] == ended["session"] and killed["by"] == "cli"
    assert (ended["reason"], ended["bytes_to_browser"], ended["bytes_from_browser"]) == ("session_killed", 10, 2)
    assert story[6]["reason"] == "client_closed"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_reopen_after_a_rotation_writes_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    audit.emit("refused", reason="token_used", at="websocket", client="a")
    path.rename(tmp_path / "audit.jsonl.1")
    audit.emit("refused", reason="token_used", at="websocket", client="b")  # still the old file
    audit.reopen()
    audit.emit("refused", reason="token_used", at="websocket", client="c")
    audit.close()
    assert [e["client"] for e in events(tmp_path / "audit.jsonl.1")] == ["a", "b"]
    assert [e["client"] for e in events(path)] == ["c"]


def test_stdout_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    AuditLog("-").emit("session_killed", session="0" * 16, domain={"name": "x", "uuid": UUID_A}, by="key1")
    line = capsys.readouterr().out
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["event"] == "session_killed"
    off = AuditLog(None)
    off.emit("session_killed", session="x")
    assert not off.enabled
    assert capsys.readouterr().out == ""


def test_lines_are_ascii_whatever_a_domain_is_called(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    audit.emit("link_minted", domain={"name": "vm\x1b[2J\u202e\n", "uuid": UUID_A})
    audit.close()
    raw = path.read_bytes()
    assert raw.isascii() and raw.count(b"\n") == 1
    assert events(path)[0]["domain"]["name"] == "vm\x1b[2J\u202e\n"


def test_a_link_at_the_path_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "audit.jsonl").symlink_to(target)
    with pytest.raises(AuditError, match="audit.jsonl"):
        AuditLog(str(tmp_path / "audit.jsonl"))


def test_an_unopenable_path_says_which_and_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditError, match="cannot open the audit log .*file/audit.jsonl"):
        AuditLog(str(tmp_path / "file" / "audit.jsonl"))


def test_a_failed_reopen_keeps_writing_to_the_open_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "audit.jsonl"
    audit = AuditLog(str(path))
    path.rename(tmp_path / "rotated.jsonl")
    os.chmod(logs, 0o500)
    try:
        if os.access(logs, os.W_OK):  # root writes anywhere: make the path unopenable instead
            path.mkdir()
        audit.reopen()
        audit.emit("refused", reason="busy", at="websocket", client="kept")
    finally:
        os.chmod(logs, 0o700)
    audit.close()
    assert events(tmp_path / "rotated.jsonl")[-1]["client"] == "kept"


def test_a_take_over_names_the_sessions_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        observer = Observer(live, AuditLog(str(path)))
        first = live.add(ConsoleRef(UUID_A), "vm-a", Viewer("192.0.2.1:5", "", "key1"))
        second = live.add(ConsoleRef(UUID_A), "vm-a", Viewer("192.0.2.2:6", "", "key2"))
        observer.take_over(second, [first], "exclusive")
        observer.audit.close()

    run_async(scenario())
    (event,) = events(path)
    check_schema(event)
    assert (event["event"], event["how"], event["ended"]) == ("take_over", "exclusive", [event["ended"][0]])
    assert event["ended"][0] != event["session"]
    assert (event["key"], event["client"]) == ("key2", "192.0.2.2:6")
