"""VNC authentication on the user's behalf: the I/O around broker/kinds/rfb.py's machines.

When a console has a password, the broker logs in to QEMU itself and then offers the
browser security type None, so the password never leaves the broker. QEMU goes first:
a wrong password fails before the browser has seen a byte. After both handshakes, what
the server already sent for the next phase goes to the browser, and what the browser sent
(its ClientInit, typically) is returned for the link's input rule (kinds/rfbinput.py,
which forces the shared flag on) to pass on; then the relay takes over.
"""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import VNC_AUTH_FAILED, VNC_HANDSHAKE_FAILED, BrokerError
from ..model import Stream
from .rfb import ClientSide, RFBError, ServerSide

HANDSHAKE_TIMEOUT = 30.0


class ClientLeft(Exception):
    """The browser went away during the handshake: nobody to tell anything."""


async def authenticate(websocket: WebSocket, stream: Stream, name: str, timeout: float = HANDSHAKE_TIMEOUT) -> bytes:
    """Log in to the VNC server with stream.password, then hand the browser a None handshake.

    Raises BrokerError (with a reason for the browser) or ClientLeft; both ways the browser
    can vanish (its disconnect received, a send to it failing) are ClientLeft, so the
    caller ends the session quietly and closes the VNC connection. Returns what the browser
    sent past the security handshake.
    """
    try:
        return await asyncio.wait_for(_both_sides(websocket, stream), timeout)
    except WebSocketDisconnect:  # Starlette's word for a send to a browser that has gone
        raise ClientLeft from None
    except TimeoutError:
        raise BrokerError(
            VNC_HANDSHAKE_FAILED, f"The VNC handshake with {name!r} took longer than {timeout:g} s."
        ) from None
    except RFBError as exc:
        failure = VNC_AUTH_FAILED if exc.kind == "auth_failed" else VNC_HANDSHAKE_FAILED
        raise BrokerError(failure, f"{failure.summary.rstrip('.')} ({name!r}: {exc.message}).") from None


async def _both_sides(websocket: WebSocket, stream: Stream) -> bytes:
    server = ServerSide(stream.password)
    while not server.done:
        data = await stream.backend.read(4096)
        if not data:
            server.eof()
        server.receive_data(data)
        stream.backend.write(server.data_to_send())
    client = ClientSide()
    while True:
        outgoing = client.data_to_send()
        if outgoing:
            await websocket.send({"type": "websocket.send", "bytes": outgoing})
        if client.done:
            break
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise ClientLeft
        payload: bytes | None = message.get("bytes")
        if payload is None:
            raise RFBError("protocol", "the browser sent a text message during the handshake")
        client.receive_data(payload)
    if server.leftover:
        await websocket.send({"type": "websocket.send", "bytes": server.leftover})
    try:
        await stream.backend.drain()
    except ConnectionResetError:  # the VNC server, not the browser, went away
        raise RFBError("protocol", "the VNC server closed the connection during the handshake") from None
    return client.leftover
