"""The browser's RFB stream as the broker enforces it (kinds/rfbinput.py): ClientInit's shared
flag forced on for every link, input dropped for view-only ones, on any cut of the stream."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.kinds.rfbinput import ClientStream, InputRefused, ViewOnlyFilter

VERSION = b"RFB 003.008\n"

# Every message noVNC 1.7 can send (core/rfb.js RFB.messages), with what a view-only link does.
SET_PIXEL_FORMAT = bytes([0, 0, 0, 0]) + bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
SET_ENCODINGS = struct.pack(">BxH", 2, 3) + struct.pack(">iii", 7, -223, -258)
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 640, 480)
CONTINUOUS_UPDATES = struct.pack(">BBHHHH", 150, 1, 0, 0, 640, 480)
FENCE = struct.pack(">BxxxIB", 248, 0x80000000, 4) + b"abcd"
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 20)
CUT_TEXT = struct.pack(">BxxxI", 6, 5) + b"hello"
EXTENDED_CLIPBOARD = struct.pack(">Bxxxi", 6, -8) + struct.pack(">I", 0x10000001) + b"\0\0\0\0"
QEMU_KEY = struct.pack(">BBHII", 255, 0, 1, 0x61, 0x1E)
DESKTOP_SIZE = struct.pack(">BxHHBx", 251, 800, 600, 1) + struct.pack(">IHHHHI", 0, 0, 0, 800, 600, 0)
XVP = bytes([250, 0, 1, 2])
PASSED = [SET_PIXEL_FORMAT, SET_ENCODINGS, UPDATE_REQUEST, CONTINUOUS_UPDATES, FENCE]
DROPPED = [KEY, POINTER, CUT_TEXT, EXTENDED_CLIPBOARD, QEMU_KEY, DESKTOP_SIZE, XVP]


def feed_in_pieces(machine: ClientStream | ViewOnlyFilter, data: bytes, cuts: list[int]) -> bytes:
    out = b""
    previous = 0
    for cut in [*sorted(set(c % (len(data) + 1) for c in cuts)), len(data)]:
        out += machine.feed(data[previous:cut])
        previous = cut
    return out


messages = st.lists(st.sampled_from(PASSED + DROPPED), max_size=30)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=20)


@given(messages, cuts)
def test_view_only_passes_exactly_the_requests_for_pictures(stream: list[bytes], where: list[int]) -> None:
    machine = ViewOnlyFilter()
    out = feed_in_pieces(machine, b"".join(stream), where)
    assert out == b"".join(m for m in stream if m in PASSED)
    assert machine.dropped == sum(1 for m in stream if m in DROPPED)


@given(messages, cuts, st.booleans())
def test_a_whole_session_from_the_first_byte(stream: list[bytes], where: list[int], exclusive: bool) -> None:
    """Version, security None, ClientInit asking for exclusive access, then messages."""
    client_init = b"\x00" if exclusive else b"\x01"
    data = VERSION + b"\x01" + client_init + b"".join(stream)
    view_only = ClientStream(view_only=True)
    assert feed_in_pieces(view_only, data, where) == VERSION + b"\x01\x01" + b"".join(m for m in stream if m in PASSED)
    interactive = ClientStream(view_only=False)
    assert feed_in_pieces(interactive, data, where) == VERSION + b"\x01\x01" + b"".join(stream)
    assert interactive.finished


def test_vnc_auth_response_passes_and_client_init_is_shared() -> None:
    response = bytes(range(16))
    machine = ClientStream(view_only=False)
    assert machine.feed(VERSION + b"\x02" + response + b"\x00" + KEY) == VERSION + b"\x02" + response + b"\x01" + KEY


def test_after_the_brokers_own_handshake_the_first_byte_is_client_init() -> None:
    machine = ClientStream(view_only=False, at_client_init=True)
    assert machine.feed(b"\x00") == b"\x01"
    assert machine.finished


def test_rfb_3_3_has_no_security_choice() -> None:
    machine = ClientStream(view_only=True)
    assert machine.feed(b"RFB 003.003\n" + b"\x00" + KEY + UPDATE_REQUEST) == b"RFB 003.003\n\x01" + UPDATE_REQUEST


def test_an_interactive_stream_that_is_not_rfb_is_passed_on_for_the_server_to_refuse() -> None:
    machine = ClientStream(view_only=False)
    assert machine.feed(b"GET / HTTP/1.1\r\n\r\n") == b"GET / HTTP/1.1\r\n\r\n"
    assert machine.finished


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # not RFB
        VERSION + b"\x13",  # VeNCrypt: cannot be followed
        VERSION + b"\x01\x01" + bytes([7]),  # an unknown message type
        VERSION + b"\x01\x01" + bytes([255, 9]),  # an unknown QEMU subtype
        VERSION + b"\x01\x01" + struct.pack(">Bxxxi", 6, 1 << 30),  # a 1 GiB clipboard
        VERSION + b"\x01\x01" + struct.pack(">BxxxIB", 248, 0, 200),  # a fence with 200 bytes
    ],
)
def test_view_only_refuses_what_it_cannot_judge(data: bytes) -> None:
    with pytest.raises(InputRefused):
        ClientStream(view_only=True).feed(data)


def test_a_long_clipboard_message_is_dropped_as_it_streams() -> None:
    machine = ViewOnlyFilter()
    text = b"x" * 100_000
    message = struct.pack(">BxxxI", 6, len(text)) + text
    out = b"".join(machine.feed(message[i : i + 4096]) for i in range(0, len(message), 4096))
    assert out == b"" and machine.dropped == 1
    assert machine.feed(UPDATE_REQUEST) == UPDATE_REQUEST
