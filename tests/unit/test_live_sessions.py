"""The live-session registry: ids, counts, lookups, end reasons and what it shows."""

from __future__ import annotations

import asyncio
import re

import pytest

from broker.access.limits import SessionLimits
from broker.access.tokens import is_token_shaped
from broker.errors import SESSION_KILLED, TOO_MANY_VIEWERS, VM_STOPPED, BrokerError
from broker.live import LiveSessions, Viewer
from broker.model import ConsoleRef
from unit_support import run_async

UUID_A = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"
UUID_B = "0b0f6d5e-1a2b-4c3d-8e9f-a0b1c2d3e4f5"


def test_every_session_gets_its_own_id_that_is_no_token() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits(max_viewers=1000))
        sessions = [live.add(ConsoleRef(UUID_A), "vm-a") for _ in range(500)]
        ids = {s.id for s in sessions}
        assert len(ids) == 500
        assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
        assert not any(is_token_shaped(i) for i in ids)
        assert all(live.get(s.id) is s for s in sessions)

    run_async(scenario())


def test_counts_lookups_and_removal() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits(max_viewers=2))
        a1 = live.add(ConsoleRef(UUID_A), "vm-a")
        a2 = live.add(ConsoleRef(UUID_A), "vm-a")
        b1 = live.add(ConsoleRef(UUID_B), "vm-b")
        assert live.count == 3
        assert set(live.of_domain(UUID_A)) == {a1, a2}
        with pytest.raises(BrokerError) as refused:
            live.add(ConsoleRef(UUID_A), "vm-a")
        assert refused.value.failure is TOO_MANY_VIEWERS
        live.remove(a1)
        live.remove(a1)  # twice is once
        assert live.count == 2
        assert live.get(a1.id) is None
        assert live.of_domain(UUID_A) == [a2]
        live.remove(a2)
        live.remove(b1)
        assert (live.count, live.all(), live.get(b1.id)) == (0, [], None)

    run_async(scenario())


def test_newest_first() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        made = []
        for i in range(3):
            session = live.add(ConsoleRef(UUID_A), "vm-a")
            session.started_at = 1000.0 + i  # as if a second apart
            made.append(session)
        assert live.newest_first() == made[::-1]

    run_async(scenario())


def test_the_first_end_reason_is_the_one_told() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        session = live.add(ConsoleRef(UUID_A), "vm-a")
        assert not session.stop.done()
        session.end(BrokerError(SESSION_KILLED))
        session.end(BrokerError(VM_STOPPED))
        assert session.stop.done()
        assert session.reason is not None and session.reason.failure is SESSION_KILLED
        assert session.reason.close_reason == "An administrator ended this console session."

    run_async(scenario())


def test_bytes_of_ended_sessions_are_kept_so_totals_never_go_down() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        session = live.add(ConsoleRef(UUID_A), "vm-a")
        session.traffic.down, session.traffic.up = 1000, 10
        live_total = live.moved_down + sum(s.traffic.down for s in live.all())
        live.remove(session)
        assert live.moved_down + sum(s.traffic.down for s in live.all()) == live_total == 1000
        assert live.moved_up == 10

    run_async(scenario())


def test_what_a_session_shows() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        viewer = Viewer(client="192.0.2.7:5123", user_agent="Mozilla/5.0", minted_by="key2", via="page")
        session = live.add(ConsoleRef(UUID_A, index=1), "vm-a", viewer)
        shown = session.to_json()
        assert set(shown) == {
            "id", "kind", "domain", "console", "client", "user_agent", "key", "via", "mode", "user", "state",
            "started_at", "duration", "bytes_to_browser", "bytes_from_browser", "last_input_at",
        }  # fmt: skip
        assert shown["id"] == session.id
        assert shown["domain"] == {"name": "vm-a", "uuid": UUID_A}
        assert (shown["kind"], shown["console"], shown["mode"], shown["state"]) == ("vnc", 1, "interactive", "opening")
        assert (shown["client"], shown["user_agent"], shown["key"], shown["via"]) == (
            "192.0.2.7:5123",
            "Mozilla/5.0",
            "key2",
            "page",
        )
        assert shown["last_input_at"] is None
        assert shown["started_at"].endswith("+00:00")
        session.opened = True
        session.traffic.up = 5
        session.traffic.last_input = asyncio.get_running_loop().time()
        shown = session.to_json()
        assert shown["state"] == "relaying"
        assert shown["bytes_from_browser"] == 5
        assert shown["last_input_at"] is not None and shown["last_input_at"] >= shown["started_at"]

    run_async(scenario())
