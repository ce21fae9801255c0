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

from typing import Protocol

from websockets.frames import apply_mask  # type: ignore[attr-defined]  # C version, or its Python fallback

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_PONG = 0x0, 0x1, 0x2, 0xA
FIN, MASKED = 0x80, 0x80
RSV_BITS = 0x70
MAX_CONTROL_PAYLOAD = 125


class FragmentState(Protocol):
    """websockets' Protocol: the part of its state a data frame changes."""

    current_size: int | None
    max_message_size: int | None
    max_fragment_size: int | None


class Parsed:
    """What one `feed` found, in order: payload bytes, then at most one hand-over."""

    __slots__ = ("payload", "handover", "resume")

    def __init__(self, payload: list[bytes], handover: bytes = b"", resume: int | None = None) -> None:
        self.payload = payload
        # Bytes for websockets, starting at a frame boundary: a whole control frame, or
        # everything from a frame the relay does not handle fast.
        self.handover = handover
        # After a whole control frame: where to feed the same data again from (an offset,
        # not a copy of the rest, so a read full of pings costs no more than its length).
        self.resume = resume


# Below this size a payload slice is copied (cheaper than a memoryview); above, viewed.
VIEW_FROM = 1024


class ClientFrameReader:
    """Unmasks the browser's binary frames; stops at anything websockets must judge."""

    def __init__(self, state: FragmentState) -> None:
        self.state = state
        self.pending = b""  # an incomplete header or control frame
        self.remaining = 0  # payload bytes of the current data frame still to come
        self.mask = b""  # its mask, rotated to where the next payload byte falls
        self.passthrough = False  # from here on everything goes to websockets

    def feed(self, data: bytes, offset: int = 0) -> Parsed:
        """The frames in `data[offset:]`, the next piece of the browser's byte stream."""
        # Written for speed (this runs for every read from every browser): locals instead
        # of attributes inside the loop, the common frame (binary, final, small) checked
        # inline, and no memoryview unless a payload is large.
        size = len(data)
        if not offset and not self.remaining and not self.pending and not self.passthrough and 6 <= size < 132:
            # The most common read of all, a keystroke or a mouse move: exactly one small,
            # final, masked binary frame. (data[1] - MASKED == size - 6: the mask bit is set
            # and the 7-bit length is all that follows the header.)
            state = self.state
            if (
                data[0] == FIN | OP_BINARY
                and data[1] - MASKED == size - 6
                and state.current_size is None
                and (state.max_message_size is None or size - 6 <= state.max_message_size)
                and (state.max_fragment_size is None or size - 6 <= state.max_fragment_size)
            ):
                return Parsed([apply_mask(data[6:], data[2:6])])
        payload: list[bytes] = []
        if self.passthrough:
            return Parsed(payload, data[offset:] if offset else data)
        pos = offset
        to_caller = 0  # add to an index in `data` to get one in the caller's data
        if self.pending:
            to_caller = offset - len(self.pending)
            data, self.pending = self.pending + data[offset:], b""
            size = len(data)
            pos = 0
        remaining, mask = self.remaining, self.mask
        state = self.state
        while pos < size:
            if remaining:
                take = remaining if remaining <= size - pos else size - pos
                end = pos + take
                if take < VIEW_FROM:
                    payload.append(apply_mask(data[pos:end], mask))
                else:
                    payload.append(apply_mask(memoryview(data)[pos:end], mask))
                remaining -= take
                pos = end
                if remaining and take % 4:
                    shift = take % 4
                    mask = mask[shift:] + mask[:shift]
                continue

            if size - pos < 2:
                break
            first, second = data[pos], data[pos + 1]
            if first & RSV_BITS or not second & MASKED:
                self.remaining, self.mask = remaining, mask
                return self._hand_over(payload, data, pos)
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

            if (
                opcode == OP_BINARY
                and first & FIN
                and state.current_size is None
                and (state.max_message_size is None or length <= state.max_message_size)
                and (state.max_fragment_size is None or length <= state.max_fragment_size)
            ):
                pass  # one whole message in one frame: nothing for websockets to count
            elif opcode >= 0x8:
                if opcode > OP_PONG or not first & FIN or length > MAX_CONTROL_PAYLOAD:
                    self.remaining, self.mask = remaining, mask
                    return self._hand_over(payload, data, pos)
                end = pos + header + 4 + length
                if end > size:
                    break  # wait for the whole control frame
                self.remaining, self.mask = remaining, mask
                if opcode == 0x8:  # close: websockets ignores what follows it
                    self.passthrough = True
                    return Parsed(payload, data[pos:])
                return Parsed(payload, data[pos:end], end + to_caller if end < size else None)
            elif not self._accept_data_frame(opcode, bool(first & FIN), length):
                self.remaining, self.mask = remaining, mask
                return self._hand_over(payload, data, pos)

            pos += header
            mask = data[pos : pos + 4]
            pos += 4
            remaining = length
        self.remaining, self.mask = remaining, mask
        if pos < size:
            self.pending = data[pos:]
        return Parsed(payload)

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

    def _hand_over(self, payload: list[bytes], data: bytes, pos: int) -> Parsed:
        self.passthrough = True
        return Parsed(payload, data[pos:])


def server_frame_header(length: int) -> bytes:
    """The header of an unmasked, final binary frame carrying `length` bytes."""
    if length < 126:
        return bytes((FIN | OP_BINARY, length))
    if length < 65536:
        return bytes((FIN | OP_BINARY, 126)) + length.to_bytes(2, "big")
    return bytes((FIN | OP_BINARY, 127)) + length.to_bytes(8, "big")


def server_text_frame(text: str) -> bytes:
    """An unmasked, final text frame: the few control answers a console kind sends."""
    payload = text.encode()
    header = server_frame_header(len(payload))
    return bytes((FIN | OP_TEXT,)) + header[1:] + payload
