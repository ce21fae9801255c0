"""The hand-overs between websockets' parser and ours at the edges of a splice (splice.py).

Driven through the protocol's real data_received with a stand-in for the VNC side and the
browser's transport: what matters here is which parser reads which bytes.
"""

from __future__ import annotations

import asyncio
import os

from test_wsframes import open_protocol

from broker.relay.pump import RelayEnd, TextAnswer, refuse_text
from broker.server.splice import SplicingWebSocketProtocol
from support.raw_ws import frame
from unit_support import run_async


class VncSide:
    def __init__(self) -> None:
        self.relayed: list[bytes] = []
        self.end: RelayEnd | None = None

    def client_data(self, payload: list[bytes]) -> None:
        self.relayed.append(b"".join(payload))

    def client_text(self, text: str) -> None:
        if refuse_text(text).refused:  # the VNC kind's rule
            self.finish(RelayEnd.CLIENT_SENT_TEXT)

    def finish(self, end: RelayEnd) -> None:
        self.end = self.end or end


class BrowserTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # no socket: the kernel path stays off


class NoTimers:
    """Stands in for the loop: these tests drive the parsers, not time."""

    def call_later(self, delay: float, callback: object, *args: object) -> object:
        return None


def protocol_with_handshake_done() -> SplicingWebSocketProtocol:
    protocol = object.__new__(SplicingWebSocketProtocol)  # no server around it: only the parsers
    protocol.conn = open_protocol(1 << 20)
    protocol.frames, protocol.curr_msg_data_type = [], "bytes"
    protocol.close_sent = protocol.read_paused = protocol.disconnected = False
    protocol.transport = BrowserTransport()  # type: ignore[assignment]
    protocol.queue = asyncio.Queue()
    protocol.logger = __import__("logging").getLogger("test")
    protocol.loop = NoTimers()  # type: ignore[assignment]
    protocol._sink, protocol._reader = None, None
    protocol.writable = asyncio.Event()
    protocol.writable.set()
    return protocol


def splice_now(protocol: SplicingWebSocketProtocol) -> VncSide:
    """What splice() does to the parsers when it starts."""
    from broker.server.splice import ClientFrameReader, reader_may_take_over

    side = VncSide()
    protocol._sink = side  # type: ignore[assignment]
    protocol._reader = ClientFrameReader(protocol.conn) if reader_may_take_over(protocol.conn) else None
    return side


def test_a_binary_message_begun_before_the_splice_arrives_whole() -> None:
    protocol = protocol_with_handshake_done()
    first, second = frame(0x2, b"AAAA", fin=False), frame(0x0, b"BBBB")
    protocol.data_received(first[:3])  # websockets is inside the first fragment
    side = splice_now(protocol)
    protocol.data_received(first[3:])
    protocol.data_received(second)
    assert side.relayed == [b"AAAABBBB"]
    assert protocol._reader is not None  # the message is over: our reader has taken over
    protocol.data_received(frame(0x2, b"next"))
    assert side.relayed == [b"AAAABBBB", b"next"]


def test_a_text_message_begun_before_the_splice_still_ends_the_session() -> None:
    protocol = protocol_with_handshake_done()
    protocol.data_received(frame(0x1, b"hello ", fin=False))
    side = splice_now(protocol)
    assert protocol._reader is None  # a message is in progress: websockets keeps reading
    protocol.data_received(frame(0x0, b"world"))
    assert side.relayed == [] and side.end is RelayEnd.CLIENT_SENT_TEXT


def test_after_a_splice_ends_inside_a_frame_websockets_reads_from_the_next_frame() -> None:
    """The VNC server went away in the middle of a large frame; the browser's next frames
    and its close reply must still be read as frames, not as payload."""
    protocol = protocol_with_handshake_done()
    side = splice_now(protocol)
    big = frame(0x2, os.urandom(2000), key=os.urandom(4))
    protocol.data_received(big[:1000])
    protocol.unsplice()
    protocol.data_received(big[1000:] + frame(0x2, b"\x05\x00\x00\x0a\x00\x0a") * 3 + frame(0x8, b"\x03\xe8"))
    assert protocol.conn.parser_exc is None
    assert protocol.conn.close_rcvd is not None and protocol.conn.close_rcvd.code == 1000
    assert len(side.relayed) == 1  # only what came while spliced


def test_nothing_is_relayed_after_websockets_fails_the_connection() -> None:
    protocol = protocol_with_handshake_done()
    side = splice_now(protocol)
    protocol.data_received(frame(0x2, b"before") + frame(0xB, b"") + frame(0x2, b"AFTER"))
    assert side.relayed == [b"before"]
    assert protocol.conn.close_sent is not None and protocol.conn.close_sent.code == 1002


def test_what_the_vnc_server_said_before_closing_reaches_the_browser_first() -> None:
    """The server sent bytes and closed before the splice began: the bytes go out, then the
    session ends (the close was once reported first, and the bytes dropped)."""
    from broker.relay.backend import SocketBackend

    async def scenario() -> tuple[RelayEnd, bytes]:
        protocol = protocol_with_handshake_done()
        backend = SocketBackend()
        backend.connection_made(BrowserTransport())  # type: ignore[arg-type]  # stands in for the VNC side
        backend.data_received(b"RFB 003.008\n")
        backend.eof_received()
        end = await protocol.splice(backend, stop=asyncio.get_running_loop().create_future())
        return end, protocol.transport.written  # type: ignore[attr-defined]

    end, written = run_async(scenario())
    assert end is RelayEnd.BACKEND_CLOSED
    assert written == bytes((0x82, 12)) + b"RFB 003.008\n"


def test_nothing_after_a_session_ending_frame_reaches_the_vnc_server() -> None:
    """A text frame ends the session (4302): binary frames behind it in the same read are
    not the session's any more and must not be written to the VNC server."""
    from broker.relay.backend import SocketBackend

    async def scenario() -> tuple[RelayEnd, bytes]:
        protocol = protocol_with_handshake_done()
        backend = SocketBackend()
        vnc = BrowserTransport()  # stands in for the VNC side
        backend.connection_made(vnc)  # type: ignore[arg-type]
        relaying = asyncio.ensure_future(protocol.splice(backend, stop=asyncio.get_running_loop().create_future()))
        await asyncio.sleep(0)
        key = os.urandom(4)
        protocol.data_received(
            frame(0x2, b"before", key=key) + frame(0x1, b"text", key=key) + frame(0x2, b"AFTER", key=key)
        )
        return await relaying, vnc.written

    end, written = run_async(scenario())
    assert end is RelayEnd.CLIENT_SENT_TEXT
    assert written == b"before"


def test_text_frames_follow_the_kind_rule_given_to_the_splice() -> None:
    """A kind whose browser speaks text (serial control messages): the rule answers, the
    session goes on, and binary frames around the text still reach the console in order.
    A text message already queued for the app before the splice goes to the rule too."""
    from broker.relay.backend import SocketBackend

    seen: list[str] = []

    def answer_pings(text: str) -> TextAnswer:
        seen.append(text)
        return TextAnswer(reply="pong")

    async def scenario() -> tuple[bytes, bytes, list[str]]:
        protocol = protocol_with_handshake_done()
        protocol.queue.put_nowait({"type": "websocket.receive", "text": "queued"})
        backend = SocketBackend()
        console = BrowserTransport()  # stands in for the console's side
        backend.connection_made(console)  # type: ignore[arg-type]
        stop = asyncio.get_running_loop().create_future()
        relaying = asyncio.ensure_future(protocol.splice(backend, stop=stop, on_text=answer_pings))
        await asyncio.sleep(0)
        key = os.urandom(4)
        protocol.data_received(frame(0x2, b"one", key=key) + frame(0x1, b"ping", key=key) + frame(0x2, b"two", key=key))
        stop.set_result(None)
        assert await relaying is RelayEnd.STOPPED
        return console.written, protocol.transport.written, seen  # type: ignore[attr-defined]

    to_console, to_browser, texts = run_async(scenario())
    assert texts == ["queued", "ping"]
    assert to_console == b"onetwo"
    assert to_browser == (bytes((0x81, 4)) + b"pong") * 2


def test_a_browser_already_full_when_the_splice_starts_pauses_the_backend_until_it_drains() -> None:
    """pause_writing came while nothing was spliced (history sent to a browser that does not
    read): the backend must start paused, and resume on the transport's resume_writing."""
    from broker.relay.backend import SocketBackend

    class VncTransport(BrowserTransport):
        def __init__(self) -> None:
            super().__init__()
            self.reading = True

        def pause_reading(self) -> None:
            self.reading = False

        def resume_reading(self) -> None:
            self.reading = True

    async def scenario() -> tuple[bool, bool]:
        protocol = protocol_with_handshake_done()
        protocol.writable.clear()  # what uvicorn's pause_writing did
        backend = SocketBackend()
        vnc = VncTransport()
        backend.connection_made(vnc)  # type: ignore[arg-type]
        relaying = asyncio.ensure_future(protocol.splice(backend, stop=asyncio.get_running_loop().create_future()))
        await asyncio.sleep(0)
        paused_at_start = not vnc.reading
        protocol.writable.set()
        protocol._sink.browser_drained()  # type: ignore[union-attr]  # what resume_writing does
        reading_after = vnc.reading
        relaying.cancel()
        return paused_at_start, reading_after

    paused_at_start, reading_after = run_async(scenario())
    assert paused_at_start and reading_after
