"""The RFB (VNC) security handshake, done by the broker so the browser never needs the password.

When a VM's VNC server asks for a password (libvirt ``<graphics passwd=...>``, QEMU
speaking RFB 3.8 with security type 2, VNC Authentication), the broker logs in on the
user's behalf with the password it read from libvirt and offers the browser (noVNC)
security type 1, None. Two independent machines do that:

* :class:`ServerSide` is the broker as an RFB *client* facing QEMU;
* :class:`ClientSide` is the broker as an RFB *server* facing the browser.

Each ends right after the security handshake. Everything from ClientInit on
(ClientInit, ServerInit, the session) is relayed unchanged, starting with each
machine's ``leftover``: the bytes its peer already sent for the next phase (the
browser's ClientInit, typically; QEMU sends nothing until it gets ClientInit).

Sans-I/O like ``websockets.protocol``: no sockets, no clock. Feed whatever arrived to
``receive_data()``, write ``data_to_send()`` to the peer, look at ``done``, and call
``eof()`` if the peer closed. Chunking never matters: a machine waits for a whole field
before acting, so a partial message is not an error (only ``eof()`` before ``done``
is). Any malformed input raises :class:`RFBError` and nothing else.

RFC 6143 sections: 7.1.1 ProtocolVersion, 7.1.2 Security, 7.1.3 SecurityResult,
7.2.1 None, 7.2.2 VNC Authentication, Appendix A (how 3.3 and 3.7 differ: in 3.3 the
server picks the type and sends it as a u32; 3.3 and 3.7 send no SecurityResult after
None and no reason string after a failed SecurityResult).
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from typing import Literal

Kind = Literal["protocol", "auth_failed", "refused", "unsupported_security"]

NONE = 1
VNC_AUTH = 2
REASON_LIMIT = 4096  # bytes of a length-prefixed reason we keep; a hostile length can't make us wait for more
_VERSIONS = {b"RFB 003.003\n": 3, b"RFB 003.007\n": 7, b"RFB 003.008\n": 8}
_VERSION_BYTES = {minor: data for data, minor in _VERSIONS.items()}

# A step of a handshake: yields how many bytes it needs next, is sent exactly those bytes.
Steps = Generator[int, bytes, None]


class RFBError(ValueError):
    """The handshake cannot succeed. ``kind`` says why, ``message`` says it in words:

    - ``"protocol"``: garbage, an unsupported version, a message out of turn, or the
      peer closed the connection before the handshake was done;
    - ``"auth_failed"``: the server rejected the password (``message``: its reason);
    - ``"refused"``: the server refused the connection (``message``: its reason);
    - ``"unsupported_security"``: no security type offered that the broker can use.
    """

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.message = message


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VNC Authentication challenge (RFC 6143 7.2.2): the challenge
    encrypted with DES-ECB. The key is the password's first 8 UTF-8 bytes, NUL-padded (QEMU
    reads libvirt's string the same way), with each byte's bits reversed: a quirk of the
    original VNC code that every server has kept."""
    # Imported here: only consoles with a VNC password need it, and the module's native
    # library costs every broker process ~6 MiB of resident memory otherwise.
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode()[:8].ljust(8, b"\0"))
    # Triple DES with three equal keys is single DES; `cryptography` has no plain DES.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


class _Handshake:
    """Runs ``_steps()``, a generator that asks for byte counts, over buffered input."""

    def __init__(self) -> None:
        self.done = False
        self._received = bytearray()
        self._to_send = bytearray()
        self._error: RFBError | None = None
        self._steps_left = self._steps()
        self._wanted = self._resume(None)  # runs up to the first read (ClientSide sends its version there)

    def _steps(self) -> Steps:
        raise NotImplementedError

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer, in any chunks; raises RFBError (again, if already raised)."""
        if self._error:
            raise self._error
        self._received += data
        while not self.done and len(self._received) >= self._wanted:
            chunk = bytes(self._received[: self._wanted])
            del self._received[: self._wanted]
            self._wanted = self._resume(chunk)

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now, each returned once (after an RFBError: what was queued before it)."""
        data, self._to_send = bytes(self._to_send), bytearray()
        return data

    def eof(self) -> None:
        """The peer closed its side: an error unless the handshake is done."""
        if self._error:
            raise self._error
        if not self.done:
            self._error = RFBError("protocol", "connection closed during the handshake")
            raise self._error

    @property
    def leftover(self) -> bytes:
        """Bytes received after the handshake: they belong to the next phase, forward them."""
        return bytes(self._received) if self.done else b""

    def _resume(self, chunk: bytes | None) -> int:
        try:
            return self._steps_left.send(chunk)  # type: ignore[arg-type]  # None only to start
        except StopIteration:
            self.done = True
            return 0
        except RFBError as exc:
            self._error = exc
            raise

    @staticmethod
    def _version() -> Generator[int, bytes, int]:
        data = yield 12
        if data not in _VERSIONS:
            raise RFBError("protocol", f"not a supported RFB ProtocolVersion (3.3, 3.7, 3.8): {data!r}")
        return _VERSIONS[data]

    @staticmethod
    def _u32() -> Generator[int, bytes, int]:
        return int.from_bytes((yield 4), "big")

    @classmethod
    def _reason(cls) -> Generator[int, bytes, str]:
        """A u32-length-prefixed reason; QEMU ends its own with a NUL, which we drop."""
        length = yield from cls._u32()
        text = (yield min(length, REASON_LIMIT)).rstrip(b"\0").decode("utf-8", "replace")
        return text + "..." if length > REASON_LIMIT else text


class ServerSide(_Handshake):
    """The broker as an RFB client towards QEMU, logging in with ``password``
    (None or "": no password known, so only security type None can work)."""

    def __init__(self, password: str | None) -> None:
        self._password = password or ""
        self.server_version: tuple[int, int] | None = None
        self.security_type: int | None = None
        super().__init__()

    def _steps(self) -> Steps:
        minor = yield from self._version()
        self.server_version = (3, minor)
        self._to_send += _VERSION_BYTES[minor]  # we speak all three: answer with the server's own
        if minor == 3:  # the server has chosen
            chosen = yield from self._u32()
            if chosen == 0:
                raise RFBError("refused", (yield from self._reason()) or "the VNC server refused the connection")
            self._check_usable([chosen], chosen)
        else:
            count = (yield 1)[0]
            if count == 0:
                raise RFBError("refused", (yield from self._reason()) or "the VNC server refused the connection")
            offered = list((yield count))
            usable = [kind for kind in (VNC_AUTH, NONE) if kind in offered and (kind == NONE or self._password)]
            chosen = usable[0] if usable else offered[0]
            self._check_usable(offered, chosen)
            self._to_send.append(chosen)
        self.security_type = chosen
        if chosen == VNC_AUTH:
            challenge = yield 16  # (not inline: `x += (yield)` would load x before the yield)
            self._to_send += vnc_auth_response(self._password, challenge)
        elif minor < 8:
            return  # None: no SecurityResult before 3.8
        if (yield from self._u32()) != 0:
            reason = (yield from self._reason()) if minor == 8 else ""
            if chosen == VNC_AUTH:
                raise RFBError("auth_failed", reason or "VNC authentication failed")
            raise RFBError("refused", reason or "the VNC server refused the connection")

    def _check_usable(self, offered: list[int], chosen: int) -> None:
        if chosen == NONE or (chosen == VNC_AUTH and self._password):
            return
        hint = " (VNC Authentication needs a password and none is known)" if VNC_AUTH in offered else ""
        raise RFBError("unsupported_security", f"unsupported security types {offered}{hint}")


class ClientSide(_Handshake):
    """The broker as an RFB server towards the browser, offering only security type None.
    Its ProtocolVersion is in ``data_to_send()`` from the start."""

    def __init__(self) -> None:
        self.client_version: tuple[int, int] | None = None
        super().__init__()

    def _steps(self) -> Steps:
        self._to_send += _VERSION_BYTES[8]
        minor = yield from self._version()
        self.client_version = (3, minor)
        if minor == 3:
            self._to_send += struct.pack(">I", NONE)  # the server chooses; no SecurityResult for None
            return
        self._to_send += bytes([1, NONE])
        chosen = (yield 1)[0]
        if chosen != NONE:
            raise RFBError("protocol", f"the client chose security type {chosen}; only 1 (None) was offered")
        if minor == 8:
            self._to_send += struct.pack(">I", 0)
