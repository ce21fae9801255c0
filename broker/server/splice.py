"""The relay's fast path: the WebSocket spliced to the VNC connection below ASGI.

Through ASGI every message costs a queue hop, a task switch, two epoll_ctl calls (uvicorn
pauses reading after each message until the app asks for the next) and an await per
direction; with 16-byte input events that was most of the broker's time. Once the app
has accepted and authorized a console, it hands both connections to this protocol: frames
from the browser are unmasked by our own reader (wsframes.py) and written to the VNC
socket, all frames of one read in one write; VNC bytes get a frame header and go to the
browser with one vectored write, in the transports' callbacks.

Backpressure stays bounded both ways: when the VNC socket's write buffer is over its
high-water mark we stop reading from the browser, and when the browser's is, we stop
reading from the VNC server. Pings, close frames, text and protocol errors are still
handled by uvicorn's protocol and websockets underneath. The app keeps working unchanged
when served some other way (Starlette's TestClient, another ASGI server): without the
scope extension it falls back to the generic relay in relay.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ..relay import zerocopy
from ..relay.backend import Backend
from ..relay.pump import SPLICE_EXTENSION, InputRule, RelayEnd, TextRule, Traffic, refuse_text
from ..relay.wsframes import FIN, OP_BINARY, ClientFrameReader, server_frame_header, server_text_frame

log = logging.getLogger("broker.splice")

# Below this size, copying the payload behind its header costs less than a vectored write.
VECTORED_WRITE_FROM = 4096
FIN_BINARY = FIN | OP_BINARY
# A backend read this large means a framebuffer update is streaming: let the kernel move it
# (zerocopy.py) until a read comes back smaller than ZERO_COPY_UNTIL (the update is over).
# uvloop reads up to 256 KiB at a time, so a 64 KiB read is a socket with plenty queued.
ZERO_COPY_FROM = 64 * 1024
ZERO_COPY_UNTIL = 16 * 1024

# What a client that stops reading can make the broker hold for it (docs/security.md).
# Past CLIENT_BACKLOG_LIMIT bytes waiting for the client, pings go unanswered (the pong for
# the latest one is sent once the backlog drains) and the client is not read. Legitimate
# backlogs stay below it: the browser's buffer pauses the VNC side at 64 KiB, plus one read.
CLIENT_BACKLOG_LIMIT = 512 * 1024
# After our close frame, a client may send this much before its close reply; then it is cut.
AFTER_CLOSE_LIMIT = 64 * 1024
# uvicorn waits 10 s for the close reply; the whole close may take this long before abort().
CLOSE_REPLY_TIMEOUT = 5.0
CLOSE_DEADLINE = 10.0
PONG = bytes((0x80 | 0x0A,))  # a final, unmasked pong frame's first byte, as websockets serializes it


def reader_may_take_over(conn: Any) -> bool:
    """Between frames and outside any fragmented message: then our reader can go on alone."""
    return conn.current_size is None and parser_between_frames(conn)


def parser_between_frames(conn: Any) -> bool:
    """Whether websockets' parser has consumed nothing of a next frame.

    Only then can our reader (wsframes.py) take over the byte stream. websockets' parser
    is a generator; between frames it waits in `StreamReader.at_eof` with an empty buffer.
    If a websockets release changes that, this says False and the relay keeps using
    websockets' parser: slower, never wrong (a unit test catches the change).
    """
    generator = conn.parser
    while getattr(generator, "gi_yieldfrom", None) is not None:
        generator = generator.gi_yieldfrom
    code = getattr(generator, "gi_code", None)
    return code is not None and code.co_name == "at_eof" and not conn.reader.buffer


class SplicingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol, able to splice an accepted connection to a backend,
    and bounded against clients that stop reading (see CLIENT_BACKLOG_LIMIT)."""

    _sink: _Splice | None = None
    _reader: ClientFrameReader | None = None  # None: websockets' own parser reads frames
    _backlogged = False  # over CLIENT_BACKLOG_LIMIT: not reading the client until it drains
    _late_pong: bytes | None = None  # the pong for the latest ping left unanswered meanwhile
    _after_close = 0  # bytes received since our close frame
    _close_deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_REPLY_TIMEOUT

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SPLICE_EXTENSION] = self
        self._bound_close()  # a refused handshake is closed at once

    # -- a client that does not read: bounded backlog, bounded close --------------------

    def client_backlog(self) -> int:
        """Bytes written for the client that it has not taken yet (in the transport, or held
        behind a frame the kernel is moving)."""
        transport = self.transport
        held = transport.held_size if isinstance(transport, _HeldWrites) else 0
        return int(transport.get_write_buffer_size()) + held

    def handle_ping(self) -> None:
        """Answer with a pong, unless our close is sent or the client is not reading what it
        is sent: then no pong, and no more reading until the backlog drains."""
        output = self.conn.data_to_send()
        if not (self.close_sent or self.transport.is_closing() or self.client_backlog() > CLIENT_BACKLOG_LIMIT):
            self.transport.write(b"".join(output))
            return
        pongs = [chunk for chunk in output if chunk[:1] == PONG]
        rest = [chunk for chunk in output if chunk[:1] != PONG]
        if rest:
            self.transport.write(b"".join(rest))
        if not self.close_sent and not self.transport.is_closing():
            self._late_pong = pongs[-1] if pongs else self._late_pong
            if not self._backlogged:
                self._backlogged = True
                self.transport.pause_reading()

    def backlog_may_have_drained(self) -> None:
        """Called on resume_writing, and wherever held or kernel-moved bytes were handed to
        the transport without one (it may take them all at once): read the client again."""
        if not self._backlogged or self.client_backlog() > CLIENT_BACKLOG_LIMIT:
            return
        self._backlogged = False
        pong, self._late_pong = self._late_pong, None
        if self.close_sent or self.transport.is_closing():
            return
        if pong:
            self.transport.write(pong)
        if not self.read_paused:  # paused for a reason of its own (backpressure, the app's queue)
            self.transport.resume_reading()

    def _bound_close(self) -> None:
        """Once a close is under way, the connection is gone within CLOSE_DEADLINE seconds:
        a graceful close waits for the write buffer to drain, which a client that does not
        read never lets happen."""
        if self._close_deadline is None and not self.disconnected and (self.close_sent or self.transport.is_closing()):
            self._close_deadline = self.loop.call_later(CLOSE_DEADLINE, self._abort)

    def _abort(self) -> None:
        if not self.disconnected:
            self.transport.abort()  # while writes are held, _HeldWrites passes abort() on

    async def send(self, message: Any) -> None:
        await super().send(message)
        self._bound_close()

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self._bound_close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_deadline is not None:
            self._close_deadline.cancel()
            self._close_deadline = None
        super().connection_lost(exc)
        if self._sink is not None:
            self._sink.finish(RelayEnd.CLIENT_CLOSED)

    async def splice(
        self,
        backend: Backend,
        *,
        stop: asyncio.Future[None],
        on_text: TextRule = refuse_text,
        on_input: InputRule | None = None,
        idle_timeout: float = 0.0,
        traffic: Traffic | None = None,
    ) -> RelayEnd:
        """Relay until one side ends, `stop` is done, or the browser is idle too long."""
        sink = _Splice(self, backend, on_text, traffic or Traffic(), on_input)
        try:
            # What the browser sent before the splice is still queued for the app: it goes first.
            while not self.queue.empty():
                message = self.queue.get_nowait()
                if message["type"] == "websocket.disconnect":
                    return RelayEnd.CLIENT_CLOSED
                data = cast("bytes | None", message.get("bytes"))
                if data is None:
                    sink.client_text(cast(str, message.get("text") or ""))
                    if sink.ended.done():
                        return sink.ended.result()
                    continue
                sink.client_data([data])
                if sink.ended.done():
                    return sink.ended.result()
            # The handshake is long done: its parsed headers are ~4 KiB a session, kept for nothing.
            self.request = self.response = None  # type: ignore[assignment]
            self._sink = sink
            self._reader = ClientFrameReader(self.conn) if reader_may_take_over(self.conn) else None
            if self.read_paused:
                self.read_paused = False
                if not self._backlogged:
                    self.transport.resume_reading()
            if not self.writable.is_set():
                # The transport paused writing before the splice (history replayed to a
                # browser that is not reading, say): pause_writing will not come again
                # until it resumed, so the backend must know now, or nothing bounds it.
                sink.browser_full()
            leftover = backend.splice(sink)
            if leftover:
                sink.backend_data(leftover)
            if backend.closed:  # after the leftover: the server's last words reach the browser
                sink.backend_closed()
            # Callbacks and one timer, not a watcher task: a task per session is memory at 1000.
            stop.add_done_callback(sink.stopped)
            if idle_timeout:
                sink.watch_idle(idle_timeout)
            return await sink.ended
        finally:
            stop.remove_done_callback(sink.stopped)
            self.unsplice()
            sink.finish(RelayEnd.STOPPED)
            backend.close()

    def unsplice(self) -> None:
        """Back to uvicorn's own handling; our reader stays only to finish a frame it is in."""
        self._sink = None
        reader = self._reader
        if reader is not None and (reader.passthrough or not (reader.remaining or reader.pending)):
            self._reader = None  # between frames: websockets reads on from here

    # -- uvicorn's hooks, diverted while spliced ----------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.close_sent:
            # Only the close reply is awaited now: a client that keeps sending instead is cut.
            self._after_close += len(data)
            if self._after_close > AFTER_CLOSE_LIMIT:
                self._abort()
                return
        sink = self._sink
        reader = self._reader
        if sink is None:
            if reader is None:
                super().data_received(data)
            else:
                self._finish_frame_after_splice(reader, data)
            return
        if reader is None:
            # websockets was inside a frame or a fragmented message when the splice began:
            # it delivers that message (send_receive_event_to_app), then our reader takes over.
            super().data_received(data)
            if self._sink is not None and reader_may_take_over(self.conn):
                self._reader = ClientFrameReader(self.conn)
            return
        offset: int | None = 0
        while offset is not None:
            parsed = reader.feed(data, offset)
            if parsed.payload:
                sink.client_data(parsed.payload)
            offset = parsed.resume
            if parsed.handover:
                # A control frame, text, or something malformed: websockets answers it.
                super().data_received(parsed.handover)
                if self.conn.parser_exc is not None or self.transport.is_closing():
                    reader.passthrough = True  # websockets has failed or closed: relay no more
                    return

    def _finish_frame_after_splice(self, reader: ClientFrameReader, data: bytes) -> None:
        """The splice ended inside a frame: drop the rest of its payload (nobody relays it
        any more), then hand websockets the stream from the next frame boundary on, so the
        browser's close reply is read as a frame and not as payload bytes."""
        if reader.remaining:
            take = min(reader.remaining, len(data))
            reader.remaining -= take
            data = data[take:]
            if reader.remaining:
                return
        self._reader = None
        data, reader.pending = reader.pending + data, b""
        if data:
            super().data_received(data)

    def send_receive_event_to_app(self) -> None:
        sink = self._sink
        if sink is None:
            super().send_receive_event_to_app()
            return
        if self.curr_msg_data_type == "text":
            try:
                text = b"".join(self.frames).decode()
            except UnicodeDecodeError:  # uvicorn closes with 1007 (invalid payload data)
                super().send_receive_event_to_app()
                sink.finish(RelayEnd.CLIENT_CLOSED)
                return
            self.frames = []
            sink.client_text(text)
            return
        frames, self.frames = self.frames, []
        sink.client_data(frames)

    def handle_close(self, event: Any) -> None:
        super().handle_close(event)
        if self._sink is not None:
            self._sink.finish(RelayEnd.CLIENT_CLOSED)
        self._bound_close()

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        self._bound_close()

    def keepalive_timeout(self) -> None:
        """uvicorn sends 1011 and closes gracefully; but a browser that stopped reading never
        lets that close frame out, so the connection, the session and its VNC connection (and
        any frame waiting in its pipe) would stay. End the session, and drop the connection
        if its output cannot drain."""
        sink = self._sink
        super().keepalive_timeout()
        if sink is not None:
            sink.finish(RelayEnd.CLIENT_UNRESPONSIVE)  # also hands a half-sent frame to the transport
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        self._bound_close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._sink is not None:
            self._sink.browser_full()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._sink is not None:
            self._sink.browser_drained()
        self.backlog_may_have_drained()


class _Splice:
    """Both directions of one spliced session (the backend's Sink).

    VNC bytes reach the browser one of two ways: copied (uvloop reads them into `bytes`,
    `backend_data` writes them with a frame header), or, while the backend streams a large
    update, moved by the kernel (`kernel`, zerocopy.py) with the backend transport's reading
    paused. `kernel` is set while the second is on; only the read side switches, writes to
    the VNC server always go through its transport.
    """

    def __init__(
        self,
        protocol: SplicingWebSocketProtocol,
        backend: Backend,
        on_text: TextRule,
        traffic: Traffic,
        on_input: InputRule | None = None,
    ) -> None:
        self.protocol = protocol
        self.backend = backend
        self.on_text = on_text
        self.on_input = on_input
        self.traffic = traffic
        self.loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[RelayEnd] = self.loop.create_future()
        self.last_input = self.loop.time()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.browser = protocol.transport  # the real one, also while writes are held
        self.browser_blocked = False  # the browser's write buffer is over its high-water mark
        self.kernel: zerocopy.KernelDownstream | None = None  # while a large update streams
        source = backend.socket_transport
        self.kernel_possible = source is not None and zerocopy.worth_it(source, self.browser)

    def finish(self, end: RelayEnd) -> None:
        if not self.ended.done():
            self.ended.set_result(end)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.read_by_copying()  # uvicorn's write limits back for the close; the pipe closed

    def stopped(self, _stop: asyncio.Future[None]) -> None:
        self.finish(RelayEnd.STOPPED)

    def watch_idle(self, idle_timeout: float) -> None:
        """End the session once the browser has sent nothing for `idle_timeout` seconds."""
        due = self.last_input + idle_timeout
        if due <= self.loop.time() + 0.001:  # uvloop's clock has millisecond steps: do not spin
            self.finish(RelayEnd.IDLE)
        elif not self.ended.done():
            self.idle_timer = self.loop.call_at(due, self.watch_idle, idle_timeout)

    def client_data(self, payload: list[bytes]) -> None:
        """Bytes from the browser (all frames of one read): to the VNC server in one write.
        Nothing after a frame that ended the session (text, say) in the same read."""
        if self.ended.done():
            return
        self.last_input = self.traffic.last_input = self.loop.time()
        data = payload[0] if len(payload) == 1 else b"".join(payload)
        rule = self.on_input
        if rule is not None:
            allowed = rule(data)
            if allowed is None:
                self.finish(RelayEnd.INPUT_REFUSED)
                return
            data = allowed
            if rule.finished:  # past ClientInit on an interactive link: nothing more to check
                self.on_input = None
        self.traffic.up += len(data)
        self.backend.write(data)
        self.check_backend_buffer()

    def client_text(self, text: str) -> None:
        """A text message from the browser: what it does is the console kind's rule."""
        if self.ended.done():
            return
        self.last_input = self.traffic.last_input = self.loop.time()
        answer = self.on_text(text)
        if answer.refused:
            self.finish(RelayEnd.CLIENT_SENT_TEXT)
        elif answer.reply is not None and not self.protocol.close_sent:
            self.protocol.transport.write(server_text_frame(answer.reply))

    def check_backend_buffer(self) -> None:
        protocol = self.protocol
        if self.backend.write_paused and not protocol.read_paused:
            protocol.read_paused = True
            protocol.transport.pause_reading()

    def backend_data(self, data: bytes) -> None:
        """Bytes from the VNC server: one binary frame to the browser, now."""
        protocol = self.protocol
        if self.ended.done() or protocol.close_sent or protocol.transport.is_closing():
            return
        size = len(data)
        self.traffic.down += size
        if size < 126:  # most messages: the two-byte header, built inline
            protocol.transport.write(bytes((FIN_BINARY, size)) + data)
        elif size < VECTORED_WRITE_FROM:
            protocol.transport.write(server_frame_header(size) + data)
        else:  # one writev() for header and payload: no copy of a large framebuffer update
            protocol.transport.writelines((server_frame_header(size), data))
            if size >= ZERO_COPY_FROM and self.kernel_possible:
                self.read_from_kernel()

    def backend_closed(self) -> None:
        self.finish(RelayEnd.BACKEND_CLOSED)

    def backend_can_write(self) -> None:
        protocol = self.protocol
        if protocol.read_paused and not self.ended.done():
            protocol.read_paused = False
            if not protocol._backlogged:
                protocol.transport.resume_reading()

    # -- where the VNC server's bytes are read: backpressure and the two paths ------------

    def browser_full(self) -> None:
        self.browser_blocked = True
        if self.kernel is not None:
            self.kernel.stop()
        else:
            self.backend.pause_reading()

    def browser_drained(self) -> None:
        self.browser_blocked = False
        if self.ended.done():
            return
        if self.kernel is not None:
            self.kernel.start()
        else:
            self.backend.resume_reading()

    def read_from_kernel(self) -> None:
        """A large update is streaming: the kernel moves it from here on (zerocopy.py)."""
        if self.ended.done() or self.kernel is not None or not zerocopy.supported:
            return
        try:
            self.kernel = zerocopy.KernelDownstream(
                self.loop,
                zerocopy.socket_fd(self.backend.socket_transport),  # type: ignore[arg-type]
                self.browser,
                hold=self.hold_browser_writes,
                release=self.release_browser_writes,
                on_chunk=self.kernel_chunk,
                on_end=self.backend_closed,
            )
        except ValueError as exc:  # not worth it for this session, and will not become so
            log.debug("zero-copy off for this session: %s", exc)
            self.kernel_possible = False
            return
        except OSError as exc:  # out of descriptors, say: copying works too, with more CPU
            log.debug("zero-copy not available just now: %s", exc)
            return
        self.backend.pause_reading()
        self.traffic.kernel = self.kernel  # so that the sessions API sees the bytes as they go
        # With the high-water mark at 0, pause_writing/resume_writing say exactly "something
        # is queued" / "nothing is": the kernel path writes to the socket only in between.
        self.browser.set_write_buffer_limits(high=0)
        if not self.browser_blocked:
            self.kernel.start()

    def kernel_chunk(self, size: int) -> None:
        if size < ZERO_COPY_UNTIL or not zerocopy.supported:
            self.read_by_copying()

    def read_by_copying(self) -> None:
        """The update is over (or the session, or the kernel refused): uvloop reads again."""
        kernel, self.kernel = self.kernel, None
        if kernel is None:
            return
        kernel.close()
        self.traffic.kernel = None
        self.traffic.down += kernel.sent
        self.traffic.zero_copy += kernel.moved
        self.browser.set_write_buffer_limits()  # uvicorn's (64 KiB) again
        if not self.browser_blocked and not self.ended.done():
            self.backend.resume_reading()
        self.protocol.backlog_may_have_drained()

    def hold_browser_writes(self) -> None:
        """A frame is half out: uvicorn's writes (pings, pongs, closes) wait for its end."""
        self.protocol.transport = _HeldWrites(self.browser)  # type: ignore[assignment]

    def release_browser_writes(self) -> None:
        held = self.protocol.transport
        self.protocol.transport = self.browser
        if isinstance(held, _HeldWrites):
            held.replay()
            self.protocol.backlog_may_have_drained()
        if self.kernel is not None and not self.browser_blocked and not self.ended.done():
            self.kernel.start()


class _HeldWrites:
    """Stands in for the browser's transport while a frame the kernel moves is half sent.

    Writes and a close wait here and are replayed in order once the frame is out;
    everything else goes straight to the transport.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._close = False
        self.held_size = 0

    def write(self, data: bytes) -> None:
        self._held.append(bytes(data))
        self.held_size += len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self._close = True

    def is_closing(self) -> bool:
        return self._close or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def replay(self) -> None:
        for data in self._held:
            self._transport.write(data)
        self._held = []
        self.held_size = 0
        if self._close:
            self._transport.close()
