"""The generic relay (relay/pump.py) against the Backend protocol: what the kind's text rule
decides, and that bytes pass both ways. A stand-in WebSocket and backend: the pump's own
logic, not the transports (those run for real in test_websocket.py and the integration tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from broker.relay.backend import Sink
from broker.relay.pump import RelayEnd, TextAnswer, relay
from support.wait import wait_until_async
from unit_support import run_async


class ScriptedWebSocket:
    """Receives the scripted messages, then waits; records what is sent."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in messages:
            self.incoming.put_nowait(message)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


class RecordingBackend:
    """A Backend that has `output` to give, then stays open; records what is written."""

    def __init__(self, output: bytes = b"") -> None:
        self.output = output
        self.written = b""
        self.closed = False
        self.write_paused = False
        self.socket_transport = None
        self._forever: asyncio.Future[None] | None = None

    async def read(self, limit: int) -> bytes:
        if self.output:
            data, self.output = self.output[:limit], self.output[limit:]
            return data
        self._forever = asyncio.get_running_loop().create_future()
        await self._forever
        return b""

    async def drain(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def splice(self, sink: Sink) -> bytes:
        raise AssertionError("the generic relay never splices")

    def close(self) -> None:
        self.closed = True


def binary(data: bytes) -> dict[str, Any]:
    return {"type": "websocket.receive", "bytes": data}


def text(data: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": data}


def test_by_default_a_text_frame_ends_the_session_and_nothing_after_it_is_written() -> None:
    async def scenario() -> tuple[RelayEnd, RecordingBackend]:
        backend = RecordingBackend()
        websocket = ScriptedWebSocket(binary(b"before"), text("hello"), binary(b"AFTER"))
        return await relay(websocket, backend), backend  # type: ignore[arg-type]

    end, backend = run_async(scenario())
    assert end is RelayEnd.CLIENT_SENT_TEXT
    assert backend.written == b"before" and backend.closed


def test_a_kind_rule_answers_text_and_the_session_goes_on() -> None:
    seen: list[str] = []

    def rule(message: str) -> TextAnswer:
        seen.append(message)
        return TextAnswer(reply="pong") if message == "ping" else TextAnswer()

    async def scenario() -> tuple[RelayEnd, RecordingBackend, ScriptedWebSocket]:
        backend = RecordingBackend(output=b"console says hi")
        websocket = ScriptedWebSocket(binary(b"one"), text("ping"), text("resize"), binary(b"two"))
        stop = asyncio.get_running_loop().create_future()
        relaying = asyncio.ensure_future(relay(websocket, backend, on_text=rule, stop=stop))  # type: ignore[arg-type]

        # "two" is the browser's last message: once it is written, the relay has been through
        # them all; and the console's output has come the other way.
        def both_ways() -> bool:
            console_output = {"type": "websocket.send", "bytes": b"console says hi"}
            return backend.written.endswith(b"two") and console_output in websocket.sent

        await wait_until_async(both_ways, 5, "the relay to pass every message both ways")
        stop.set_result(None)
        return await relaying, backend, websocket

    end, backend, websocket = run_async(scenario())
    assert end is RelayEnd.STOPPED
    assert seen == ["ping", "resize"]
    assert backend.written == b"onetwo"
    assert {"type": "websocket.send", "text": "pong"} in websocket.sent
    assert {"type": "websocket.send", "bytes": b"console says hi"} in websocket.sent


def test_the_console_closing_ends_the_session() -> None:
    class ClosingBackend(RecordingBackend):
        async def read(self, limit: int) -> bytes:
            return b""

    async def scenario() -> RelayEnd:
        return await relay(ScriptedWebSocket(), ClosingBackend())  # type: ignore[arg-type]

    assert run_async(scenario()) is RelayEnd.BACKEND_CLOSED
