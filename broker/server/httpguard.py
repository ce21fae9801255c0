"""The guard on request heads and WebSocket upgrades, inside uvicorn's h11 protocol.

uvicorn has no header timeout, no cap on pipelined heads and accepts HTTP/1.0 upgrades;
this module adds those, and drops the app's late answer to a request uvicorn already
answered. It leans on uvicorn's and h11's internals, so only `broker serve` imports it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import h11

if TYPE_CHECKING:  # imported where used, so that importing this module stays cheap
    from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("broker.httpguard")

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 16 * 1024
MAX_HEAD_LINES = 100
# Where a request head ends, exactly as h11 finds it (h11/_receivebuffer.py): bare \n counts.
_BLANK_LINE = re.compile(b"\n\r?\n")


def _plain_response(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


_TOO_SLOW = _plain_response(b"408 Request Timeout", b"The request headers took too long to arrive.\n")
_LINE_TOO_LONG = _plain_response(b"414 URI Too Long", b"The request line is too long.\n")
_HEAD_TOO_LARGE = _plain_response(b"431 Request Header Fields Too Large", b"The request headers are too large.\n")
_UPGRADE_NEEDS_HTTP_1_1 = _plain_response(
    b"400 Bad Request", b"WebSocket upgrades need HTTP/1.1 (RFC 6455); a proxy needs proxy_http_version 1.1.\n"
)


def head_refusal(buffered: bytes, searched: int = 0) -> bytes | None:
    """The 414 or 431 answer for the request head at the start of `buffered`, or None.

    `buffered` is what h11 holds unparsed when it is about to read a head: that head, whole
    or in part, and whatever the client pipelined behind it (never counted). Only the first
    MAX_HEAD_BYTES + 3 bytes are searched for the head's end, and not the first `searched`
    ones, known from an earlier call to hold none: a head trickled in byte by byte costs
    one search over its length, as in h11, not one per byte.
    """
    end = _BLANK_LINE.search(buffered, searched, MAX_HEAD_BYTES + 3)
    head = buffered[: end.end()] if end else buffered[: MAX_HEAD_BYTES + 1]
    line_end = head.find(b"\n")
    if (line_end if line_end >= 0 else len(head)) > MAX_REQUEST_LINE:
        return _LINE_TOO_LONG
    if len(head) > MAX_HEAD_BYTES or head.count(b"\n") > MAX_HEAD_LINES:
        return _HEAD_TOO_LARGE
    return None


class _HeadRefused(Exception):
    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer


class _HeadCheckingConnection(h11.Connection):
    """h11's server connection, measuring every request head before it parses it.

    Every head goes through next_event while the client's side is IDLE: the first, one
    that trickles in, and one pipelined behind an earlier request, already buffered when
    uvicorn starts the next cycle (even inside its own loop, when a body ends after the
    answer went out). Measuring here, from h11's own buffer, is the one place that sees
    them all; counting bytes as they come off the socket misses every head but the first
    of a read. The cost is a copy of the unparsed buffer (`trailing_data`, h11's public
    view of it) per look: per read while a head trickles in, which the caps bound, and
    once per pipelined head, which uvicorn bounds by pausing reads while a cycle runs.
    """

    _searched = 0  # bytes at the front of the awaited head known to hold no end of head

    def next_event(self) -> Any:
        if self.their_state is not h11.IDLE:
            return super().next_event()
        buffered = self.trailing_data[0]
        refusal = head_refusal(buffered, self._searched)
        if refusal is not None:
            raise _HeadRefused(refusal)
        event = super().next_event()
        # NEED_DATA: h11 found no end in all of it; a "\n\r\n" may yet straddle the last bytes.
        self._searched = max(0, len(buffered) - 2) if event is h11.NEED_DATA else 0
        return event


def guarded_http_protocol(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the guards it lacks, for every request on a connection:

    - each request head must arrive within `header_timeout` seconds (slowloris): uvicorn's
      keep-alive timer runs only between requests and every byte resets it. The deadline
      runs only while h11 waits for a head that is not all there: from the connection's
      start or the end of the previous answer (so it also covers the rest of a body that
      answer did not wait for), never while an answer is being produced (a pipelined
      head already buffered is simply in time);
    - a WebSocket upgrade must also complete its handshake by then: uvicorn's websockets
      protocol never answers a head that websockets refuses to parse, and never closes it.
      Once upgraded, the connection is the WebSocket protocol's: only that deadline,
      which closes without a word, applies, and no HTTP is ever written into it;
    - the request line may hold 8 KiB and the head 16 KiB in 100 lines, pipelined or
      not: h11's own limit applies only to heads that arrive in pieces, and a whole
      3000-field head costs megabytes of Python objects to parse;
    - a WebSocket upgrade must be HTTP/1.1 (RFC 6455 §4.1): uvicorn would rewrite an
      HTTP/1.0 one as 1.1 and accept it.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            size = self.config.h11_max_incomplete_event_size
            limit = {} if size is None else {"max_incomplete_event_size": size}
            self.conn = _HeadCheckingConnection(h11.SERVER, **limit)
            self._deadline: asyncio.TimerHandle | None = None
            self._upgraded = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._watch_for_head()

        def handle_events(self) -> None:
            """Every parse goes through here: reading, and uvicorn's next cycle after an answer."""
            try:
                super().handle_events()
            except _HeadRefused as refused:
                self._refuse(refused.answer)
                return
            self._watch_for_head()

        def _waiting_for_head(self) -> bool:
            """Between answers: the client owes the next head (and perhaps the rest of a body
            the answer did not wait for), and no answer of ours is under way."""
            if self._upgraded or self.transport.is_closing():
                return False
            return self.conn.their_state is h11.IDLE or self.conn.our_state is h11.DONE

        def _watch_for_head(self) -> None:
            """Arm the deadline while a head is awaited; drop it once the head is in."""
            if not self._waiting_for_head():
                self._cancel_deadline()
            elif self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._too_slow)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_for_head()  # also when the answer went out before the request's body

        def handle_websocket_upgrade(self, event: Any) -> None:
            if event.http_version != b"1.1":
                log.info(
                    "refused a WebSocket upgrade over HTTP/%s from %s", event.http_version.decode(), _peer(self.client)
                )
                self._refuse(_UPGRADE_NEEDS_HTTP_1_1)
                return
            # The deadline now waits for the WebSocket handshake to complete: the head's own
            # if it was still running, else (a pipelined upgrade, head already in) a fresh
            # one. It is set on the transport alone, so that this h11 protocol object
            # (~3 KiB) is freed at once instead of living on in the timer.
            self._upgraded = True
            deadline = self._deadline
            self._deadline = None
            when = self.loop.time() + header_timeout
            if deadline is not None:
                deadline.cancel()
                # (uvloop turns sub-millisecond delays into plain Handles, without when())
                when = getattr(deadline, "when", self.loop.time)()
            super().handle_websocket_upgrade(event)
            self.loop.call_at(when, _close_unless_handshaken, self.transport)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _refuse(self, answer: bytes) -> None:
            self._cancel_deadline()
            self.transport.write(answer)
            self.transport.close()

        def _too_slow(self) -> None:
            self._deadline = None
            # Only in HTTP, and never into an answer: an upgraded connection belongs to
            # another protocol (so does the transport, then).
            if self._waiting_for_head() and self.transport.get_protocol() is self:
                self._refuse(_TOO_SLOW)

    return GuardedH11Protocol


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a UNIX-socket peer"


def _close_unless_handshaken(transport: Any) -> None:
    """The upgraded connection's deadline: the WebSocket handshake must be done by now."""
    if not transport.is_closing() and not getattr(transport.get_protocol(), "handshake_complete", False):
        transport.close()


class _AnsweredAlready(Exception):
    pass


class QuietLateResponses:
    """uvicorn answers a malformed request body (say, bad chunked encoding) with 400 by
    itself; h11 then refuses the app's own response with LocalProtocolError, which uvicorn
    would log as "Exception in ASGI application" with a traceback. Nobody is waiting for
    that response any more: drop it quietly."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: Any) -> None:
            try:
                await send(message)
            except h11.LocalProtocolError:
                raise _AnsweredAlready from None

        try:
            await self.app(scope, receive, guarded_send)
        except _AnsweredAlready:
            pass
