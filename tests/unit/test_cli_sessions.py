"""`broker sessions` and `broker kill` against a server that says anything: a table a
person can read, and nothing it says reaches the terminal raw."""

from __future__ import annotations

import json

import pytest
import test_cli_output
from test_cli_output import NASTY, is_terminal_safe, run

fake_server = test_cli_output.fake_server  # the same fixture: a server that answers anything

UUID = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"


def session(**fields: object) -> dict[str, object]:
    shown: dict[str, object] = {
        "id": "4be01f7c9a3e52d8",
        "kind": "vnc",
        "domain": {"name": "web1", "uuid": UUID},
        "console": 0,
        "client": "10.0.0.5:51234",
        "user_agent": "Mozilla/5.0",
        "key": "key1",
        "via": "link",
        "mode": "interactive",
        "state": "relaying",
        "started_at": "2026-12-02T14:02:11.523+00:00",
        "duration": 312.4,
        "bytes_to_browser": 13002342,
        "bytes_from_browser": 39117,
        "last_input_at": None,
    }
    shown.update(fields)
    return shown


def test_sessions_as_a_table(capsys, fake_server) -> None:
    fake_server.body = {"sessions": [session(), session(id="0c2d9e8b71f4a6c5", key="cli", bytes_to_browser=12)]}
    status, out, err = run(capsys, "sessions")
    assert (status, err) == (0, "")
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "DOMAIN", "KIND", "CLIENT", "KEY", "SINCE", "TO", "BROWSER", "FROM", "IT"]
    assert first.split()[:5] == ["4be01f7c9a3e52d8", "web1", "vnc", "10.0.0.5:51234", "key1"]
    assert first.split()[-4:] == ["12.4", "MiB", "38.2", "KiB"]
    assert second.split()[4] == "cli" and second.split()[-4:-2] == ["12", "B"]
    assert "ago)" in first
    assert len({line.index("vnc") for line in (first, second)}) == 1  # columns line up


def test_no_sessions_says_so(capsys, fake_server) -> None:
    fake_server.body = {"sessions": []}
    assert run(capsys, "sessions", "web1") == (0, "no live console sessions for web1\n", "")


def test_sessions_text_escapes_every_field(capsys, fake_server) -> None:
    fake_server.body = {
        "sessions": [
            session(id=f"id{nasty}", domain={"name": f"vm{nasty}", "uuid": UUID}, client=f"c{nasty}", key=f"k{nasty}")
            for nasty in NASTY
        ]
    }
    status, out, err = run(capsys, "sessions")
    assert (status, err) == (0, "")
    assert is_terminal_safe(out)
    assert len(out.splitlines()) == 1 + len(NASTY)
    assert "vm\\x1b]0;pwned\\x07" in out and "k\\u202e" in out


def test_sessions_json_is_ascii(capsys, fake_server) -> None:
    fake_server.body = {"sessions": [session(domain={"name": f"vm{nasty}", "uuid": UUID}) for nasty in NASTY]}
    status, out, _ = run(capsys, "sessions", "--json")
    assert status == 0 and out.isascii() and is_terminal_safe(out)
    assert [s["domain"]["name"] for s in json.loads(out)["sessions"]] == [f"vm{nasty}" for nasty in NASTY]


def test_kill_says_what_it_ended(capsys, fake_server) -> None:
    fake_server.body = {"session": session(domain={"name": "web\x1b[2J1", "uuid": UUID})}
    status, out, err = run(capsys, "kill", "4be01f7c9a3e52d8")
    assert (status, err) == (0, "")
    assert out == "ended console session 4be01f7c9a3e52d8 on web\\x1b[2J1 from 10.0.0.5:51234\n"


def test_kill_of_an_unknown_session_is_one_line(capsys, fake_server) -> None:
    fake_server.status = 404
    fake_server.body = {"error": {"code": "session_not_found", "message": "No live console session has that id."}}
    assert run(capsys, "kill", "0000000000000000") == (
        1,
        "",
        "broker: No live console session has that id. [session_not_found]\n",
    )


@pytest.mark.parametrize(
    "body",
    [{"sessions": [{"id": "x"}]}, {"sessions": "x"}, {"sessions": [session(bytes_to_browser="lots")]}],
)
def test_answers_of_the_wrong_shape_are_one_line_errors(capsys, fake_server, body: object) -> None:
    fake_server.body = body
    status, _, err = run(capsys, "sessions")
    assert status == 1
    assert err == "broker: the broker's answer was not understood (is that a broker?)\n"
