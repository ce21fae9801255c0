"""A VNC-like server that streams known bytes, for testing what the relay delivers.

It greets like a VNC server (`RFB 003.008\\n`), then obeys 5-byte commands from the client
(one letter, a 32-bit big-endian count):
  D n  send n bytes of `pattern(n)`
  X n  send n bytes of `pattern(n)`, then close the connection
  E n  echo the next n bytes back
Real sockets and threads, no broker code: it stands where QEMU's VNC server would.
"""

from __future__ import annotations

import random
import socket
import struct
import threading

GREETING = b"RFB 003.008\n"


def pattern(count: int) -> bytes:
    """The same `count` bytes on both sides of the test, and no two chunks alike."""
    return random.Random(count).randbytes(count)


def command(letter: bytes, count: int) -> bytes:
    return letter + struct.pack(">I", count)


class StreamServer:
    """On TCP (127.0.0.1, a free port), or on a UNIX socket at `unix_path`."""

    def __init__(self, unix_path: str | None = None) -> None:
        if unix_path:
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(unix_path)
            self.listener.listen()
            self.target = f"unix:{unix_path}"
        else:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.target = f"tcp:127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="stream-server", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.sendall(GREETING)
            while True:
                head = _read_exact(conn, 5)
                if head is None:
                    return
                letter, count = head[:1], struct.unpack(">I", head[1:])[0]
                if letter in (b"D", b"X"):
                    conn.sendall(pattern(count))
                    if letter == b"X":
                        return
                elif letter == b"E":
                    data = _read_exact(conn, count)
                    if data is None:
                        return
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()


def _read_exact(conn: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
