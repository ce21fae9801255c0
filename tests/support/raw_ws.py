"""A WebSocket client on a bare socket, for what a well-behaved client library never does:
stop reading, flood control frames, or vanish with a TCP reset at a chosen moment."""

from __future__ import annotations

import base64
import os
import socket
import struct
from urllib.parse import urlsplit


class RawWebSocket:
    def __init__(self, url: str, *, receive_buffer: int | None = None, headers: str = "") -> None:
        parts = urlsplit(url)
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect((parts.hostname, parts.port))
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            byte = self.sock.recv(1)  # byte by byte: nothing after the head is consumed
            if not byte:
                raise ConnectionError(f"closed before a whole answer: {answer!r}")
            answer += byte
        assert answer.startswith(b"HTTP/1.1 101"), answer
        self.buffer = b""
        self.payload = b""

    def send_binary(self, data: bytes) -> None:
        mask = os.urandom(4)
        length = len(data)
        header = bytes((0x82, 0x80 | length)) if length < 126 else bytes((0x82, 0x80 | 126)) + struct.pack(">H", length)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def read_payload(self, count: int) -> bytes:
        """`count` bytes of binary payload, across frames (the relay chunks a byte stream freely)."""
        while len(self.payload) < count:
            opcode, data = self.read_frame()
            assert opcode == 0x2, f"expected a binary frame, got opcode {opcode}"
            self.payload += data
        chunk, self.payload = self.payload[:count], self.payload[count:]
        return chunk

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame, any opcode: (opcode, payload)."""
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

    def _fill(self, count: int) -> None:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buffer += chunk

    def reset(self) -> None:
        """Vanish: close with a TCP RST, no close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
