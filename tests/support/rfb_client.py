"""A minimal RFB 3.8 client over a WebSocket, enough to prove a console really works.

The broker relays the TCP byte stream in arbitrary chunks, so reads here are
buffered across WebSocket messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from websockets.sync.client import ClientConnection


@dataclass
class ServerInit:
    width: int
    height: int
    name: str


class WsBytes:
    def __init__(self, ws: ClientConnection, timeout: float = 10.0) -> None:
        self.ws = ws
        self.timeout = timeout
        self.buffer = bytearray()

    def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            message = self.ws.recv(timeout=self.timeout)
            assert isinstance(message, bytes), f"expected binary frames, got text {message!r}"
            self.buffer += message
        chunk, self.buffer = bytes(self.buffer[:n]), self.buffer[n:]
        return chunk


def handshake(ws: ClientConnection, shared: bool = True) -> ServerInit:
    """ProtocolVersion, security None, ClientInit; returns ServerInit.

    shared=False asks QEMU to disconnect every other viewer (its default share policy).
    """
    stream = WsBytes(ws)
    version = stream.read_exact(12)
    assert version.startswith(b"RFB 003."), version
    ws.send(b"RFB 003.008\n")
    count = stream.read_exact(1)[0]
    assert count > 0, "server refused: " + stream.read_exact(struct.unpack(">I", stream.read_exact(4))[0]).decode()
    types = stream.read_exact(count)
    assert 1 in types, f"security type None not offered: {list(types)}"
    ws.send(bytes([1]))
    (result,) = struct.unpack(">I", stream.read_exact(4))
    assert result == 0, f"SecurityResult {result}"
    ws.send(bytes([1 if shared else 0]))  # ClientInit
    width, height = struct.unpack(">HH", stream.read_exact(4))
    stream.read_exact(16)  # pixel format
    (name_length,) = struct.unpack(">I", stream.read_exact(4))
    name = stream.read_exact(name_length).decode(errors="replace")
    ws.stream = stream  # type: ignore[attr-defined]
    return ServerInit(width, height, name)


def request_update(ws: ClientConnection, init: ServerInit) -> tuple[int, bytes]:
    """Ask for the whole screen and read the reply to its end.

    We never send SetEncodings, so QEMU answers in Raw with the pixel format from
    ServerInit (32 bpp). Returns (rectangle count, pixel bytes of the rectangles).
    """
    ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, init.width, init.height))
    stream: WsBytes = ws.stream  # type: ignore[attr-defined]
    message_type = stream.read_exact(1)[0]
    while message_type != 0:  # skip Bell (2) or a colour map (1) until FramebufferUpdate
        assert message_type in (1, 2), f"unexpected server message {message_type}"
        if message_type == 1:
            _pad, _first, count = struct.unpack(">BHH", stream.read_exact(5))
            stream.read_exact(6 * count)
        message_type = stream.read_exact(1)[0]
    _pad, rectangles = struct.unpack(">BH", stream.read_exact(3))
    pixels = bytearray()
    for _ in range(rectangles):
        _x, _y, width, height, encoding = struct.unpack(">HHHHi", stream.read_exact(12))
        if encoding == 0:
            pixels += stream.read_exact(width * height * 4)
        else:
            assert encoding < 0, f"unexpected encoding {encoding} (we asked for Raw only)"
    return rectangles, bytes(pixels)
