"""The relay's own WebSocket framing for data frames, sans I/O.

Written by hand because it is the hot path: websockets parses each frame with a generator
and a `Frame` object, which was most of the broker's time per 16-byte input event. Here a
read full of frames is walked with plain integer arithmetic and each payload unmasked by
websockets' C `apply_mask`. Payloads stream through: the VNC connection is a byte stream,
so a large frame is forwarded piece by piece as it arrives instead of buffered whole.

Only what the relay needs fast is handled here: masked binary and continuation frames.
Everything else (control frames, text, anything malformed or too large) is handed, from
the first byte of that frame, to the websockets protocol, which answers or closes exactly
as it would have. To make that hand-over seamless the reader keeps the protocol's
fragmentation counter (`current_size`) as websockets itself would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from websockets.speedups import apply_mask

OP_CONTINUATION, OP_BINARY = 0x0, 0x2
FIN, MASKED = 0x80, 0x80
RSV_BITS = 0x70
MAX_CONTROL_PAYLOAD = 125


class FragmentState(Protocol):
    """websockets' Protocol: the part of its state a data frame changes."""

    current_size: int | None
    max_message_size: int | None
    max_fragment_size: int | None


@dataclass
class Parsed:
    """What one `feed` found, in order: payload bytes, then at most one hand-over."""

    payload: list[bytes] = field(default_factory=list)
    # Bytes for websockets, starting at a frame boundary: a whole control frame, or
    # everything from a frame the relay does not handle fast.
    handover: bytes = b""
    # Bytes after a whole control frame that have not been looked at yet.
    rest: bytes = b""


class ClientFrameReader:
    """Unmasks the browser's binary frames; stops at anything websockets must judge."""

    def __init__(self, state: FragmentState) -> None:
        self.state = state
        self.pending = b""  # an incomplete header or control frame
        self.remaining = 0  # payload bytes of the current data frame still to come
        self.mask = b""  # its mask, rotated to where the next payload byte falls
        self.passthrough = False  # from here on everything goes to websockets

    def feed(self, data: bytes) -> Parsed:
        parsed = Parsed()
        if self.passthrough:
            parsed.handover = data
            return parsed
        if self.pending:
            data, self.pending = self.pending + data, b""
        view = memoryview(data)
        size = len(data)
        pos = 0
        payload = parsed.payload
        while pos < size:
            if self.remaining:
                take = min(self.remaining, size - pos)
                payload.append(apply_mask(view[pos : pos + take], self.mask))
                self.remaining -= take
                pos += take
                if self.remaining and take % 4:
                    shift = take % 4
                    self.mask = self.mask[shift:] + self.mask[:shift]
                continue

            if size - pos < 2:
                break
            first, second = data[pos], data[pos + 1]
            if first & RSV_BITS or not second & MASKED:
                return self._hand_over(parsed, data, pos)
            opcode = first & 0x0F
            length = second & 0x7F
            header = 2
            if length == 126:
                header = 4
                if size - pos < 8:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                header = 10
                if size - pos < 14:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            elif size - pos < 6:
                break

            if opcode >= 0x8:
                if not first & FIN or length > MAX_CONTROL_PAYLOAD:
                    return self._hand_over(parsed, data, pos)
                end = pos + header + 4 + length
                if end > size:
                    break  # wait for the whole control frame
                parsed.handover = data[pos:end]
                parsed.rest = data[end:]
                if opcode == 0x8:  # close: websockets ignores what follows it
                    self.passthrough = True
                    parsed.handover += parsed.rest
                    parsed.rest = b""
                return parsed
            if not self._accept_data_frame(opcode, bool(first & FIN), length):
                return self._hand_over(parsed, data, pos)

            pos += header
            self.mask = data[pos : pos + 4]
            pos += 4
            self.remaining = length
        if pos < size:
            self.pending = data[pos:]
        return parsed

    def _accept_data_frame(self, opcode: int, fin: bool, length: int) -> bool:
        """Mirror websockets' `recv_frame` bookkeeping; False if it must raise instead."""
        state = self.state
        current = state.current_size
        if opcode == OP_BINARY:
            if current is not None:
                return False  # "expected a continuation frame"
            current = 0
        elif opcode != OP_CONTINUATION or current is None:
            return False  # text, a reserved opcode, or "unexpected continuation frame"
        if state.max_message_size is not None and length > state.max_message_size - current:
            return False  # websockets closes with 1009
        if state.max_fragment_size is not None and length > state.max_fragment_size:
            return False
        state.current_size = None if fin else current + length
        return True

    def _hand_over(self, parsed: Parsed, data: bytes, pos: int) -> Parsed:
        self.passthrough = True
        parsed.handover = data[pos:]
        return parsed


def server_frame_header(length: int) -> bytes:
    """The header of an unmasked, final binary frame carrying `length` bytes."""
    if length < 126:
        return bytes((FIN | OP_BINARY, length))
    if length < 65536:
        return bytes((FIN | OP_BINARY, 126)) + length.to_bytes(2, "big")
    return bytes((FIN | OP_BINARY, 127)) + length.to_bytes(8, "big")
