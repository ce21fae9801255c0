"""A UNIX-socket forwarder in front of libvirtd's socket that a test can pause.

Paused, it moves no byte either way: libvirtd looks hung to every client behind it
(its connections stay open, nothing is answered), which is what a wedged libvirtd
looks like from the broker's side. Resumed, the held bytes flow on as if nothing
happened. Plain threads and sockets, no broker code.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"


class PausableProxy:
    def __init__(self, path: Path, upstream: str = LIBVIRT_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self._running = threading.Event()
        self._running.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def pause(self) -> None:
        """Stop forwarding: bytes already read are held, nothing more is passed on."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        self._closed = True
        self._running.set()  # let held pumps finish instead of waiting forever
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.connect(self.upstream)
            except OSError:
                client.close()
                server.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy src to dst; a byte read while paused waits for resume() before it is sent."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._running.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side gone: close both, as a real socket pair would end.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
