"""The relay's own frame reader against websockets' parser, which it must agree with."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from broker.relay.wsframes import ClientFrameReader, server_frame_header
from broker.server.splice import parser_between_frames
from support.raw_ws import frame

HANDSHAKE = (
    b"GET /websockify HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
DATA_OPCODES = (Opcode.CONT, Opcode.BINARY)


def open_protocol(max_size: int) -> ServerProtocol:
    conn = ServerProtocol(max_size=max_size)
    conn.receive_data(HANDSHAKE)
    conn.send_response(conn.accept(conn.events_received()[0]))
    conn.data_to_send()
    return conn


class Outcome:
    """What a stream of client bytes did: bytes for the VNC server, other frames, the close."""

    def __init__(self) -> None:
        self.relayed = bytearray()
        self.others: list[tuple[int, bytes, bool]] = []

    def collect(self, conn: ServerProtocol) -> None:
        for event in conn.events_received():
            if event.opcode in DATA_OPCODES:
                self.relayed += event.data
            else:
                self.others.append((event.opcode, bytes(event.data), event.fin))


def through_websockets(chunks: list[bytes], max_size: int) -> tuple[Outcome, ServerProtocol]:
    conn, outcome = open_protocol(max_size), Outcome()
    for chunk in chunks:
        conn.receive_data(chunk)
        outcome.collect(conn)
    return outcome, conn


def through_reader(chunks: list[bytes], max_size: int) -> tuple[Outcome, ServerProtocol, ClientFrameReader]:
    """The splice's data_received loop, minus the sockets."""
    conn, outcome = open_protocol(max_size), Outcome()
    reader = ClientFrameReader(conn)
    for chunk in chunks:
        offset: int | None = 0
        while offset is not None:
            parsed = reader.feed(chunk, offset)
            for piece in parsed.payload:
                outcome.relayed += piece
            offset = parsed.resume
            if parsed.handover:
                conn.receive_data(parsed.handover)
                outcome.collect(conn)
                if conn.parser_exc is not None or conn.close_sent is not None:
                    reader.passthrough = True  # as the splice does once websockets has failed
                    break
    return outcome, conn, reader


def close_of(conn: ServerProtocol) -> tuple[int, str] | None:
    return None if conn.close_sent is None else (conn.close_sent.code, conn.close_sent.reason)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


frames_strategy = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x2, 0x2, 0x2, 0x0, 0x8, 0x9, 0xA, 0x3, 0xB]),
        st.booleans(),  # fin
        st.one_of(st.integers(0, 20), st.integers(120, 300), st.sampled_from([65535, 65536, 70000])),
        st.booleans() | st.just(True),  # masked (mostly)
        st.sampled_from([0, 0, 0, 0, 1, 4]),  # rsv bits
        st.binary(min_size=4, max_size=4),  # mask key
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    frames=frames_strategy, cuts=st.lists(st.integers(0, 10**6), max_size=8), max_size=st.sampled_from([200, 1 << 20])
)
def test_reader_agrees_with_websockets(frames, cuts, max_size) -> None:
    """Same bytes relayed, same control frames seen, same close, however the stream is cut."""
    stream = b""
    for opcode, fin, size, masked, rsv, key in frames:
        payload = (bytes(range(opcode, 256)) * (size // 200 + 1))[:size]
        if opcode == 0x8 and size >= 2:
            payload = struct.pack("!H", 1000) + b"x" * (min(size, 100) - 2)
        stream += frame(opcode, payload, fin=fin, masked=masked, rsv=rsv, key=key)
    chunks = split(stream, cuts)
    expected, reference = through_websockets(chunks, max_size)
    got, conn, reader = through_reader(chunks, max_size)
    # The reader streams a frame's payload as it arrives; websockets waits for the whole
    # frame. So websockets' bytes are a prefix of the reader's, and all of them at the end.
    assert bytes(got.relayed[: len(expected.relayed)]) == bytes(expected.relayed)
    assert got.others == expected.others
    assert close_of(conn) == close_of(reference)
    assert type(conn.parser_exc) is type(reference.parser_exc)
    if not reader.passthrough and not reader.remaining and not reader.pending:
        assert bytes(got.relayed) == bytes(expected.relayed)  # ended between frames


@settings(max_examples=200, deadline=None)
@given(frames=frames_strategy, max_size=st.sampled_from([10, 200, 1 << 20]))
def test_one_frame_per_read_agrees_with_websockets(frames, max_size) -> None:
    """Reads that hold exactly one frame (a keystroke each) take the reader's shortcut."""
    chunks = [
        frame(opcode, bytes(size), fin=fin, masked=masked, rsv=rsv, key=key)
        for opcode, fin, size, masked, rsv, key in frames
    ]
    expected, reference = through_websockets(chunks, max_size)
    got, conn, _reader = through_reader(chunks, max_size)
    assert bytes(got.relayed) == bytes(expected.relayed)
    assert got.others == expected.others
    assert close_of(conn) == close_of(reference)


@pytest.mark.parametrize(
    ("single", "max_size"),
    [
        pytest.param(frame(0x2, b"k" * 15), 10, id="over-max-size"),
        pytest.param(frame(0x2, b"k" * 10), 10, id="at-max-size"),
        pytest.param(frame(0x2, b"k" * 125), 1 << 20, id="longest-short-frame"),
        pytest.param(frame(0x2, b"k" * 126), 1 << 20, id="extended-length"),
        pytest.param(frame(0x1, b"text"), 1 << 20, id="text"),
        pytest.param(frame(0x2, b"keys", masked=False), 1 << 20, id="unmasked"),
        pytest.param(frame(0x2, b"keys", masked=False) + b"more", 1 << 20, id="unmasked-and-4-bytes-more"),
        pytest.param(frame(0x2, b"keys", fin=False), 1 << 20, id="not-final"),
        pytest.param(frame(0x2, b"keys", rsv=4), 1 << 20, id="rsv1"),
        pytest.param(frame(0x9, b"ping"), 1 << 20, id="ping"),
    ],
)
def test_a_read_of_exactly_one_frame(single: bytes, max_size: int) -> None:
    """The shortcut for one whole small frame per read, at each of its edges."""
    expected, reference = through_websockets([single], max_size)
    got, conn, _reader = through_reader([single], max_size)
    assert bytes(got.relayed) == bytes(expected.relayed)
    assert got.others == expected.others
    assert close_of(conn) == close_of(reference)


def test_payload_of_one_frame_streams_byte_by_byte() -> None:
    """A frame cut at every byte still unmasks right: the mask turns with the offset."""
    payload = os.urandom(1000)
    conn = open_protocol(1 << 20)
    reader = ClientFrameReader(conn)
    relayed = b""
    for byte in frame(0x2, payload, key=b"\x9a\x1b\x2c\x3d"):
        parsed = reader.feed(bytes([byte]))
        relayed += b"".join(parsed.payload)
        assert not parsed.handover
    assert relayed == payload


def test_many_small_frames_in_one_read() -> None:
    events = [os.urandom(16) for _ in range(500)]
    conn = open_protocol(1 << 20)
    parsed = ClientFrameReader(conn).feed(b"".join(frame(0x2, e, key=os.urandom(4)) for e in events))
    assert b"".join(parsed.payload) == b"".join(events)
    assert not parsed.handover and parsed.resume is None


def test_control_frame_is_handed_over_whole_and_the_rest_kept() -> None:
    conn = open_protocol(1 << 20)
    reader = ClientFrameReader(conn)
    ping = frame(0x9, b"are you there")
    data = frame(0x2, b"before") + ping + frame(0x2, b"after")
    parsed = reader.feed(data)
    assert parsed.payload == [b"before"]
    assert parsed.handover == ping
    assert parsed.resume is not None
    assert reader.feed(data, parsed.resume).payload == [b"after"]
    assert not reader.passthrough


def test_fragment_counter_is_kept_for_websockets() -> None:
    conn = open_protocol(100)
    reader = ClientFrameReader(conn)
    reader.feed(frame(0x2, b"a" * 60, fin=False))
    assert conn.current_size == 60
    parsed = reader.feed(frame(0x0, b"b" * 60))  # 120 > 100: websockets must refuse it
    assert reader.passthrough and parsed.handover
    conn.receive_data(parsed.handover)
    assert conn.close_sent is not None and conn.close_sent.code == 1009


def test_after_a_close_frame_everything_goes_to_websockets() -> None:
    conn = open_protocol(1 << 20)
    reader = ClientFrameReader(conn)
    close = frame(0x8, struct.pack("!H", 1000))
    parsed = reader.feed(close + frame(0x2, b"late"))
    assert parsed.handover.startswith(close) and parsed.resume is None
    assert reader.passthrough


def test_server_frame_header_matches_websockets() -> None:
    for size in (0, 1, 125, 126, 65535, 65536, 1 << 20):
        payload = b"\0" * size
        assert server_frame_header(size) + payload == Frame(Opcode.BINARY, payload).serialize(mask=False)


def test_parser_between_frames_follows_websockets_parser() -> None:
    """The splice hands the stream to the reader only between frames (see splice.py).

    If this fails after a websockets upgrade, the relay still works, on the slower path.
    """
    conn = open_protocol(1 << 20)
    assert parser_between_frames(conn)
    whole = frame(0x2, b"hello")
    conn.receive_data(whole[:2])
    assert not parser_between_frames(conn)
    conn.receive_data(whole[2:])
    assert parser_between_frames(conn)
    conn.receive_data(whole[:1])
    assert not parser_between_frames(conn)
