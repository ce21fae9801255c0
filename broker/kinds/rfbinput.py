"""The browser's side of an RFB session, as the broker enforces it (sans I/O).

`ClientStream` follows the browser's bytes from its ProtocolVersion (or from ClientInit,
when the broker did the security handshake itself, kinds/vncauth.py), forces ClientInit's
shared flag on, so no browser can make QEMU drop the console's other viewers, and then
either retires (an interactive link: the relay writes untouched from there) or filters
every message (a view-only link, `ViewOnlyFilter`).

RFC 6143 §7.1-7.3 and §7.5, and the extensions noVNC 1.7 sends. What only asks the server for
pictures passes (pixel format, encodings, update requests, continuous updates, fences);
what would change the guest is dropped (keys, pointer, clipboard, QEMU's extended key
events, desktop resize, XVP power operations). A message type this table does not know
cannot be measured, so it cannot be skipped: the session ends instead of passing it blind.

Written by hand: no library parses the client side of RFB, and the work is a length table.
Feed any cut of the stream to `feed()`; it returns the bytes to forward and keeps a
partial message until the rest arrives.
"""

from __future__ import annotations

import struct
from collections.abc import Generator

SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
XVP = 250
SET_DESKTOP_SIZE = 251
QEMU = 255
QEMU_EXTENDED_KEY_EVENT = 0
QEMU_AUDIO = 1

PASSED = {SET_PIXEL_FORMAT, SET_ENCODINGS, FRAMEBUFFER_UPDATE_REQUEST, ENABLE_CONTINUOUS_UPDATES, CLIENT_FENCE}
# Clipboard text a browser may send in one message; past it the client is broken or hostile.
MAX_CUT_TEXT = 16 * 1024 * 1024


class InputRefused(Exception):
    """A message a view-only session cannot judge: the session ends with this reason."""


_VERSIONS = {b"RFB 003.003\n": 3, b"RFB 003.007\n": 7, b"RFB 003.008\n": 8}
_NONE, _VNC_AUTH = 1, 2


class ClientStream:
    """The browser's bytes to the VNC server: shared flag forced on, input filtered if view-only.

    `finished` turns true once an interactive stream is past ClientInit: nothing more to
    change, and the relay stops calling `feed`."""

    def __init__(self, *, view_only: bool, at_client_init: bool = False) -> None:
        self.view_only = view_only
        self.finished = False
        self.messages = ViewOnlyFilter() if view_only else None
        self._reading_version = False
        self._steps = self._handshake(at_client_init)
        self._want = next(self._steps)
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """What of `data` may reach the VNC server; raises InputRefused."""
        out: list[bytes] = []
        while self._want and data:
            self._pending += data
            data = b""
            if self._reading_version and not _could_be_version(self._pending):
                return self._not_rfb(out)
            while self._want and len(self._pending) >= self._want:
                field, self._pending = self._pending[: self._want], self._pending[self._want :]
                try:
                    self._want = self._steps.send(field)
                except StopIteration:
                    self._want = 0
                out.append(self._forward)
            if not self._want:
                data, self._pending = self._pending, b""
        if data:
            if self.messages is not None:
                out.append(self.messages.feed(data))
            else:
                out.append(data)
        if not self._want and self.messages is None:
            self.finished = True
        return b"".join(out)

    def _not_rfb(self, out: list[bytes]) -> bytes:
        """The stream does not start like RFB: the VNC server will say so; nothing to enforce."""
        if self.view_only:
            raise InputRefused(f"a stream that is not RFB ({self._pending[:12]!r})")
        out.append(self._pending)
        self._pending, self._want, self.finished = b"", 0, True
        return b"".join(out)

    def _handshake(self, at_client_init: bool) -> Generator[int, bytes, None]:
        """Yields how many bytes the next field has, receives them, sets what to forward."""
        if not at_client_init:
            self._reading_version = True
            version = yield 12
            self._reading_version = False
            self._forward = version
            minor = _VERSIONS.get(version)
            if minor is None:
                if self.view_only:
                    raise InputRefused(f"the RFB version {version!r}")
                return  # not RFB as we know it: the VNC server will say so; nothing to enforce
            if minor != 3:  # 3.3: the server chose the type, and libvirt's QEMU chooses None
                chosen = yield 1
                self._forward = chosen
                if chosen[0] == _VNC_AUTH:
                    self._forward = yield 16  # the response to the server's challenge
                elif chosen[0] != _NONE:
                    if self.view_only:
                        raise InputRefused(f"security type {chosen[0]}, which a view-only link cannot follow")
                    return
        yield 1  # ClientInit
        self._forward = SHARED_CLIENT_INIT


def _could_be_version(start: bytes) -> bool:
    """Whether `start` may still become one of the ProtocolVersions (held until it is whole)."""
    return any(version.startswith(start[:12]) for version in _VERSIONS)


# ClientInit with shared-flag 1: "leave the other clients connected" (RFC 6143 §7.3.1).
SHARED_CLIENT_INIT = b"\x01"


class ViewOnlyFilter:
    """Passes the requests for pictures, drops input; counts what it dropped."""

    def __init__(self) -> None:
        self._pending = b""
        self._skip = 0  # bytes still to drop of a long message (clipboard text)
        self.dropped = 0  # input messages dropped

    def feed(self, data: bytes) -> bytes:
        """What of `data` may reach the VNC server; raises InputRefused."""
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        buffer = self._pending + data if self._pending else data
        passed: list[bytes] = []
        position = 0
        while position < len(buffer):
            size = _message_size(buffer, position)
            if size is None:  # not enough of the message yet to know its length
                break
            kind = buffer[position]
            if kind in PASSED:
                if position + size > len(buffer):
                    break  # forwarded whole, once complete
                passed.append(buffer[position : position + size])
            else:
                self.dropped += 1
                if position + size > len(buffer):  # drop the rest as it comes
                    self._skip = position + size - len(buffer)
                    position = len(buffer)
                    break
            position += size
        self._pending = buffer[position:]
        return b"".join(passed)


def _message_size(buffer: bytes, at: int) -> int | None:
    """The whole length of the message starting at `at`, or None until its header is in."""
    available = len(buffer) - at
    kind = buffer[at]
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed
    if kind == SET_ENCODINGS:
        if available < 4:
            return None
        count: int = struct.unpack_from(">H", buffer, at + 2)[0]
        return 4 + 4 * count
    if kind == CLIENT_CUT_TEXT:
        if available < 8:
            return None
        # The extended clipboard sends a negative length: the same framing.
        length: int = abs(struct.unpack_from(">i", buffer, at + 4)[0])
        if length > MAX_CUT_TEXT:
            raise InputRefused(f"a clipboard message of {length} bytes")
        return 8 + length
    if kind == CLIENT_FENCE:
        if available < 9:
            return None
        payload = buffer[at + 8]
        if payload > 64:
            raise InputRefused(f"a fence with {payload} bytes of payload (at most 64)")
        return 9 + payload
    if kind == SET_DESKTOP_SIZE:
        if available < 8:
            return None
        return 8 + 16 * buffer[at + 6]
    if kind == QEMU:
        if available < 2:
            return None
        subtype = buffer[at + 1]
        if subtype == QEMU_EXTENDED_KEY_EVENT:
            return 12
        if subtype == QEMU_AUDIO:
            if available < 4:
                return None
            operation: int = struct.unpack_from(">H", buffer, at + 2)[0]
            if operation in (0, 1):  # enable, disable
                return 4
            if operation == 2:  # set format
                return 10
            raise InputRefused(f"QEMU audio operation {operation}")
        raise InputRefused(f"QEMU client message subtype {subtype}")
    raise InputRefused(f"RFB client message type {kind}")


_FIXED = {
    SET_PIXEL_FORMAT: 20,
    FRAMEBUFFER_UPDATE_REQUEST: 10,
    KEY_EVENT: 8,
    POINTER_EVENT: 6,
    ENABLE_CONTINUOUS_UPDATES: 10,
    XVP: 4,
}
