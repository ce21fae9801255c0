"""What the broker's fast paths take from uvicorn, websockets and h11 beyond their public
API, in one list, checked once at start.

broker/server/splice.py (the relay's fast path, and the bounds on clients that stop reading) and
broker/relay/wsframes.py subclass uvicorn's websockets protocol and read websockets' sans-I/O
parser; broker/server/httpguard.py subclasses uvicorn's h11 protocol and reads h11's buffer.
A release that renames any of these would otherwise fail session by session, or worse,
silently (a renamed flag read with a default). When something here is missing, `broker
serve` logs one warning naming it and the installed versions, and serves with uvicorn's own
protocols instead: every session through the generic ASGI relay (broker/relay/pump.py), without
the header guard and the ping-flood bounds, which live in the subclasses.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Requirement:
    library: str
    name: str  # what is used, as "module:Class.attribute"
    present: Callable[[], bool]
    used_by: str  # "splice" (the WebSocket fast path), "httpguard" (the HTTP guard) or "tls"


def _attribute(path: str) -> Any:
    module, _, dotted = path.partition(":")
    value: Any = importlib.import_module(module)
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _has(path: str) -> Callable[[], bool]:
    """The class or module attribute exists (a method, a constant)."""

    def check() -> bool:
        try:
            _attribute(path)
        except (ImportError, AttributeError):
            return False
        return True

    return check


def _assigns(path: str, attribute: str) -> Callable[[], bool]:
    """The function at `path` stores `self.<attribute>` (instance attributes are set in
    __init__ or a handler, so they can only be seen in its code)."""

    def check() -> bool:
        try:
            function = _attribute(path)
        except (ImportError, AttributeError):
            return False
        return attribute in getattr(getattr(function, "__code__", None), "co_names", ())

    return check


def _websockets_parser() -> bool:
    """ServerProtocol keeps a generator parser, a reader with a buffer, current_size and
    parser_exc on its instances (broker/server/splice.py reader_may_take_over)."""
    try:
        from websockets.server import ServerProtocol

        protocol: Any = ServerProtocol()
        return (
            hasattr(protocol.parser, "gi_yieldfrom")
            and hasattr(protocol.reader, "buffer")
            and hasattr(protocol, "current_size")
            and hasattr(protocol, "parser_exc")
        )
    except (ImportError, AttributeError):
        return False


def _attributes(library: str, owner: str, names: tuple[str, ...], used_by: str) -> list[Requirement]:
    """Attributes of the class `owner` ("module:Class"): methods, constants."""
    return [Requirement(library, f"{owner}.{name}", _has(f"{owner}.{name}"), used_by) for name in names]


def _stored(library: str, owner: str, by: str, names: tuple[str, ...], used_by: str) -> list[Requirement]:
    """Instance attributes that the method `by` of the class `owner` stores."""
    return [Requirement(library, f"{owner}.{name}", _assigns(f"{owner}.{by}", name), used_by) for name in names]


_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol"
_H11 = "uvicorn.protocols.http.h11_impl:H11Protocol"
_SANSIO_METHODS = (
    "handle_connect", "handle_ping", "handle_close", "handle_parser_exception", "send_receive_event_to_app",
    "keepalive_timeout", "run_asgi", "send", "data_received", "pause_writing", "resume_writing", "connection_lost",
)  # fmt: skip
_SANSIO_STATE = (
    "queue", "read_paused", "close_sent", "disconnected", "close_timeout", "frames", "curr_msg_data_type", "conn",
    "transport", "handshake_complete",
)  # fmt: skip
_H11_METHODS = (
    "handle_websocket_upgrade", "on_response_complete", "handle_events", "data_received", "connection_made",
    "connection_lost",
)  # fmt: skip

REQUIREMENTS: list[Requirement] = [
    *_attributes("uvicorn", _SANSIO, _SANSIO_METHODS, "splice"),
    *_stored("uvicorn", _SANSIO, "__init__", _SANSIO_STATE, "splice"),
    *_stored("uvicorn", _SANSIO, "handle_connect", ("request", "response", "scope"), "splice"),
    Requirement("websockets", "websockets.server:ServerProtocol parser internals", _websockets_parser, "splice"),
    Requirement("websockets", "websockets.frames:apply_mask", _has("websockets.frames:apply_mask"), "splice"),
    *_attributes("uvicorn", _H11, _H11_METHODS, "httpguard"),
    *_stored("uvicorn", _H11, "__init__", ("cycle", "conn", "loop", "transport"), "httpguard"),
    *_attributes("h11", "h11:Connection", ("trailing_data", "their_state", "our_state"), "httpguard"),
    # The handshake deadline asks the WebSocket protocol whether its handshake is done.
    *_stored("uvicorn", _SANSIO, "__init__", ("handshake_complete",), "httpguard"),
    # TLS on the TCP listener only (broker/server/run.py BrokerServer.startup): the protocol
    # factory uvicorn builds for its own listeners, and the list of servers it closes.
    *_stored("uvicorn", "uvicorn.server:Server", "__init__", ("server_state",), "tls"),
    *_stored("uvicorn", "uvicorn.server:Server", "_serve", ("lifespan",), "tls"),
    *_stored("uvicorn", "uvicorn.server:Server", "startup", ("servers",), "tls"),
    *_stored("uvicorn", "uvicorn.config:Config", "load", ("http_protocol_class",), "tls"),
]


def missing(used_by: str | None = None) -> list[Requirement]:
    """The requirements this installation does not meet (of one user, or all)."""
    return [r for r in REQUIREMENTS if (used_by is None or r.used_by == used_by) and not r.present()]


def versions() -> str:
    found = []
    for library in ("uvicorn", "websockets", "h11"):
        try:
            found.append(f"{library} {importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{library} (not installed)")
    return ", ".join(found)
