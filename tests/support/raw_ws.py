"""A WebSocket client on a bare socket, for what a well-behaved client library never does:
stop reading, flood control frames, send frames no library would (unmasked, oversized,
reserved opcodes), or vanish with a TCP reset at a chosen moment.

`upgrade_head` and `frame` build the bytes on their own, for a test that sends a spoilt
upgrade or frame by hand."""

from __future__ import annotations

import base64
import os
import socket
import struct
from urllib.parse import urlsplit

CLOSE = 0x8


def upgrade_head(
    target: str,
    *,
    host: str = "127.0.0.1",
    headers: dict[str, str | bytes] | None = None,
    drop: tuple[str, ...] = (),
    version: str = "1.1",
) -> bytes:
    """A WebSocket upgrade request, header by header, so that a test can leave any of them
    out (`drop`) or spoil it (`headers`). Text goes out as Latin-1, byte for byte (a
    non-ASCII target stays one byte a character); a header value given as bytes goes out
    as it is."""
    fields: dict[str, str | bytes] = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    lines = [f"GET {target} HTTP/{version}".encode("latin-1")]
    for name, value in fields.items():
        if name not in drop:
            lines.append(
                name.encode("latin-1") + b": " + (value if isinstance(value, bytes) else value.encode("latin-1"))
            )
    return b"\r\n".join(lines) + b"\r\n\r\n"


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    key: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One client frame (RFC 6455 §5.2), masked with `key` (by default a random one).
    `rsv` sets the reserved bits (4 is RSV1); `length` may claim a size the payload does
    not have."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    key = os.urandom(4) if key is None else key
    # Masked as one big integer: independent of the code under test, and fast for MiBs.
    keystream = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked_payload = int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")
    return head + key + masked_payload.to_bytes(len(payload), "big")


class RawWebSocket:
    def __init__(
        self, url: str, *, receive_buffer: int | None = None, headers: dict[str, str | bytes] | None = None
    ) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket()
        if receive_buffer is not None:  # before connecting: the window is agreed on then
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect((parts.hostname, parts.port))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall(upgrade_head(target, host=parts.netloc, headers=headers))
        answer = b""
        while b"\r\n\r\n" not in answer:
            byte = self.sock.recv(1)  # byte by byte: nothing after the head is consumed
            if not byte:
                raise ConnectionError(f"closed before a whole answer: {answer!r}")
            answer += byte
        assert answer.startswith(b"HTTP/1.1 101"), answer
        self.buffer = b""
        self.payload = b""

    def send(self, data: bytes) -> None:
        """Bytes exactly as given: frames from `frame`, spoilt or not."""
        self.sock.sendall(data)

    def send_binary(self, data: bytes) -> None:
        self.send(frame(0x2, data))

    def read_payload(self, count: int) -> bytes:
        """`count` bytes of binary payload, across frames (the relay chunks a byte stream freely)."""
        while len(self.payload) < count:
            opcode, data = self.read_frame()
            assert opcode == 0x2, f"expected a binary frame, got opcode {opcode}"
            self.payload += data
        chunk, self.payload = self.payload[:count], self.payload[count:]
        return chunk

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame, any opcode: (opcode, payload). Server frames are never masked."""
        self._fill(2)
        length = self.buffer[1] & 0x7F
        start = 2 + {126: 2, 127: 8}.get(length, 0)
        self._fill(start)
        if length >= 126:
            length = int.from_bytes(self.buffer[2:start], "big")
        self._fill(start + length)
        opcode, data = self.buffer[0] & 0x0F, self.buffer[start : start + length]
        self.buffer = self.buffer[start + length :]
        return opcode, data

    def read_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Pass over data frames (the relayed console bytes) until the close frame: (code, reason)."""
        self.sock.settimeout(timeout)
        while True:
            opcode, payload = self.read_frame()
            if opcode == CLOSE:
                assert len(payload) >= 2, "a close frame without a code"
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def _fill(self, count: int) -> None:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection without a close frame")
            self.buffer += chunk

    def reset(self) -> None:
        """Vanish: close with a TCP RST, no close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
