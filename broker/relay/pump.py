"""The generic byte pump between a browser's WebSocket and a console's Backend, over ASGI.

Knows nothing of libvirt, tokens or console kinds: it gets an accepted WebSocket, an open
Backend and the kind's rule for text frames, moves bytes both ways until one side ends,
and says which side it was. The broker's own server uses the faster splice (splice.py); this path serves any
other ASGI server and Starlette's TestClient.

Backpressure both ways, no unbounded queue: each direction is one loop that reads a
bounded chunk and awaits the write before reading again (the WebSocket send waits for
uvicorn's transport to drain; the backend write awaits drain()).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.websockets import WebSocket

from .backend import Backend

READ_SIZE = 64 * 1024


class Traffic:
    """What one session moved so far: for its end-of-session log line, and read live by
    the sessions API and the metrics (broker/live.py)."""

    __slots__ = ("down", "up", "zero_copy", "last_input", "kernel")

    def __init__(self) -> None:
        self.down = 0  # bytes console -> browser
        self.up = 0  # bytes browser -> console
        self.zero_copy = 0  # of `down`, bytes the kernel moved without a copy (zerocopy.py)
        self.last_input = 0.0  # the loop's time of the browser's last message; 0: none yet
        # A large update the kernel is moving now (zerocopy.py): its bytes join `down` when
        # it is over; until then down_now() adds them.
        self.kernel: Sending | None = None

    def down_now(self) -> int:
        """Bytes to the browser so far, an update in the kernel's hands included."""
        kernel = self.kernel
        return self.down + (kernel.sent if kernel is not None else 0)

    def summary(self) -> str:
        text = f"{_size(self.down)} to the browser"
        if self.zero_copy:
            text += f" ({_size(self.zero_copy)} of it zero-copy)"
        return f"{text}, {_size(self.up)} from it"


class Sending(Protocol):
    sent: int


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


# The ASGI scope extension under which a faster relay offers itself (broker/server/splice.py):
# the app uses it when present, and relay() below when not.
SPLICE_EXTENSION = "vm-console-broker.splice"


@dataclass(frozen=True)
class TextAnswer:
    """What a console's kind makes of a text frame from the browser (bytes always pass)."""

    reply: str | None = None  # a text frame to send back
    refused: bool = False  # the session ends: RelayEnd.CLIENT_SENT_TEXT


# Per console kind (broker/kinds/rules.py), never the pump's own decision.
TextRule = Callable[[str], TextAnswer]


class InputRule(Protocol):
    """Per kind and link mode (broker/kinds/rules.py): what of the browser's bytes reaches the
    console. No rule, or one `finished`: everything, untouched (the common, fast case)."""

    @property
    def finished(self) -> bool:
        """Nothing more to check: the relay writes the browser's bytes untouched from now on."""
        ...

    def __call__(self, data: bytes) -> bytes | None:
        """The bytes to write (maybe none); None ends the session (RelayEnd.INPUT_REFUSED)."""
        ...


REFUSED = TextAnswer(refused=True)


def refuse_text(_text: str) -> TextAnswer:
    """The rule where the browser never sends text (an RFB client): a text frame ends the session."""
    return REFUSED


class RelayEnd(enum.Enum):
    CLIENT_CLOSED = "client closed"
    BACKEND_CLOSED = "backend closed"
    CLIENT_SENT_TEXT = "client sent a text message"
    INPUT_REFUSED = "client sent input its link does not allow"
    STOPPED = "stopped from outside"
    IDLE = "no input from the client for too long"
    CLIENT_UNRESPONSIVE = "the client stopped answering pings"


async def relay(
    websocket: WebSocket,
    backend: Backend,
    *,
    on_text: TextRule = refuse_text,
    on_input: InputRule | None = None,
    stop: asyncio.Future[None] | None = None,
    idle_timeout: float = 0.0,
    read_size: int = READ_SIZE,
    traffic: Traffic | None = None,
) -> RelayEnd:
    """Relay until one side ends, `stop` is done, or the client sends nothing for
    `idle_timeout` seconds (0: never); close the stream (not the WebSocket) and say why."""
    activity = _Activity()
    traffic = traffic or Traffic()
    upstream = asyncio.create_task(_client_to_backend(websocket, backend, on_text, on_input, activity, traffic))
    downstream = asyncio.create_task(_backend_to_client(backend, websocket, read_size, traffic))
    stopped = asyncio.create_task(idle_or_stopped(stop, activity, idle_timeout))
    tasks = (upstream, downstream, stopped)
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        backend.close()
    # If several finished together, the first in this order is the one to report.
    for task in (stopped, upstream, downstream):
        if task in done and not task.cancelled() and task.exception() is None:
            return task.result()
    return RelayEnd.CLIENT_CLOSED


class _Activity:
    """When the client last sent something: one float store per message, no timer per message."""

    __slots__ = ("last_input",)

    def __init__(self) -> None:
        self.last_input = asyncio.get_running_loop().time()


class HasLastInput(Protocol):
    last_input: float


async def idle_or_stopped(stop: asyncio.Future[None] | None, activity: HasLastInput, idle_timeout: float) -> RelayEnd:
    """Wait for `stop`, or for `idle_timeout` seconds (0: never) without client input."""
    loop = asyncio.get_running_loop()
    stop = stop or loop.create_future()
    if not idle_timeout:
        await asyncio.shield(stop)
        return RelayEnd.STOPPED
    while True:
        remaining = activity.last_input + idle_timeout - loop.time()
        if remaining <= 0:
            return RelayEnd.IDLE
        done, _ = await asyncio.wait({stop}, timeout=remaining)  # never cancels `stop`
        if done:
            return RelayEnd.STOPPED


async def _client_to_backend(
    websocket: WebSocket,
    backend: Backend,
    on_text: TextRule,
    on_input: InputRule | None,
    activity: _Activity,
    traffic: Traffic,
) -> RelayEnd:
    receive = websocket.receive
    loop = asyncio.get_running_loop()
    while True:
        message = await receive()
        activity.last_input = traffic.last_input = loop.time()
        if message["type"] == "websocket.disconnect":
            return RelayEnd.CLIENT_CLOSED
        data = message.get("bytes")
        if data is None:
            answer = on_text(message.get("text") or "")
            if answer.refused:
                return RelayEnd.CLIENT_SENT_TEXT
            if answer.reply is not None:
                await websocket.send({"type": "websocket.send", "text": answer.reply})
            continue
        if on_input is not None:
            allowed = on_input(data)
            if allowed is None:
                return RelayEnd.INPUT_REFUSED
            data = allowed
            if on_input.finished:
                on_input = None
        traffic.up += len(data)
        backend.write(data)
        try:
            await backend.drain()
        except (ConnectionError, OSError):
            return RelayEnd.BACKEND_CLOSED


async def _backend_to_client(backend: Backend, websocket: WebSocket, read_size: int, traffic: Traffic) -> RelayEnd:
    send = websocket.send
    while True:
        data = await backend.read(read_size)  # b"" once the console has closed
        if not data:
            return RelayEnd.BACKEND_CLOSED
        traffic.down += len(data)
        try:
            await send({"type": "websocket.send", "bytes": data})
        except Exception:  # uvicorn raises ClientDisconnected, Starlette a RuntimeError
            return RelayEnd.CLIENT_CLOSED
