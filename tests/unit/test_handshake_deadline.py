"""After an upgrade, the header deadline waits on the transport alone (broker/server/httpguard.py)."""

from __future__ import annotations

from dataclasses import dataclass

from broker.server.httpguard import _close_unless_handshaken


@dataclass
class Upgraded:
    handshake_complete: bool


@dataclass
class Transport:
    protocol: object
    closed: bool = False

    def is_closing(self) -> bool:
        return self.closed

    def get_protocol(self) -> object:
        return self.protocol  # type: ignore[attr-defined]

    def close(self) -> None:
        self.closed = True


def test_a_websocket_still_without_its_handshake_is_closed() -> None:
    transport = Transport(Upgraded(handshake_complete=False))
    _close_unless_handshaken(transport)
    assert transport.closed


def test_a_handshaken_websocket_is_left_alone() -> None:
    transport = Transport(Upgraded(handshake_complete=True))
    _close_unless_handshaken(transport)
    assert not transport.closed


def test_the_flag_the_deadline_reads_is_uvicorns_own() -> None:
    """The fakes above cannot see uvicorn rename `handshake_complete` (the deadline would
    then cut every WebSocket at header_timeout): drive uvicorn's real protocol through a
    real upgrade and an accept, and ask the deadline about it."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from broker.server.splice import SplicingWebSocketProtocol
    from support.wait import wait_until_async
    from unit_support import run_async

    accepted = asyncio.Event()  # the app's own word, independent of the flag under test

    async def accept(scope: dict, receive: object, send: object) -> None:
        await receive()  # type: ignore[operator]
        await send({"type": "websocket.accept"})  # type: ignore[operator]
        accepted.set()
        await receive()  # type: ignore[operator]  # stay open: uvicorn closes when the app returns

    class Socket:
        closed = False

        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

        def get_protocol(self) -> object:
            return self.protocol  # type: ignore[attr-defined]

    async def scenario() -> tuple[bool, bool]:
        config = uvicorn.Config(accept, ws="websockets-sansio")
        config.load()
        protocol = SplicingWebSocketProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
        socket = Socket()
        socket.protocol = protocol  # type: ignore[attr-defined]
        protocol.connection_made(socket)  # type: ignore[arg-type]
        before = Socket()
        before.protocol = protocol  # type: ignore[attr-defined]
        _close_unless_handshaken(before)  # no upgrade yet: the deadline must close it
        protocol.data_received(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await wait_until_async(accepted.is_set, 5, "the app to accept")
        _close_unless_handshaken(socket)
        closed = socket.closed
        protocol.connection_lost(None)  # ends the app's second receive()
        await asyncio.sleep(0)
        return before.closed, closed

    closed_before, closed_after = run_async(scenario())
    assert closed_before, "a WebSocket without its handshake was left open"
    assert not closed_after, "the deadline closed a WebSocket whose handshake uvicorn completed"
