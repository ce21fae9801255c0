"""Every way a console request can fail, as values.

Each failure has one WebSocket close code (4xxx, sent with a human reason so the
browser never sees a bare 1006), one HTTP status for the REST API, and a stable
slug for JSON error bodies. The table in README.md is generated from nothing:
keep it in step with this file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    slug: str
    close_code: int
    http_status: int
    summary: str


TOKEN_MISSING = Failure("token_missing", 4100, 401, "No console token was given.")
TOKEN_INVALID = Failure("token_invalid", 4101, 401, "This console link is not valid.")
TOKEN_EXPIRED = Failure("token_expired", 4102, 401, "This console link has expired; ask for a new one.")
TOKEN_USED = Failure("token_used", 4103, 401, "This console link was already used; ask for a new one.")
TOKEN_REVOKED = Failure(
    "token_revoked", 4104, 401, "The virtual machine stopped after this link was made; ask for a new one."
)
SESSION_ENDED = Failure("session_ended", 4105, 401, "This console session has ended; ask for a new console link.")
ORIGIN_REFUSED = Failure("origin_refused", 4106, 403, "Consoles cannot be opened from this web page's origin.")

DOMAIN_NOT_FOUND = Failure("domain_not_found", 4200, 404, "The virtual machine does not exist (any more).")
DOMAIN_NOT_RUNNING = Failure("domain_not_running", 4201, 409, "The virtual machine is not running.")
NO_CONSOLE = Failure("no_console", 4202, 409, "The virtual machine has no VNC console.")
CONSOLE_UNREACHABLE = Failure("console_unreachable", 4203, 502, "The VNC console could not be reached.")
LIBVIRT_UNAVAILABLE = Failure("libvirt_unavailable", 4204, 503, "libvirt is not reachable right now.")
VNC_AUTH_FAILED = Failure("vnc_auth_failed", 4206, 502, "The VM's VNC server refused the password libvirt has for it.")
VNC_HANDSHAKE_FAILED = Failure("vnc_handshake_failed", 4207, 502, "The VNC handshake failed.")
LIBVIRT_ERROR = Failure("libvirt_error", 4205, 502, "libvirt refused the request.")
CONSOLE_BUSY = Failure("console_busy", 4208, 409, "Another client is using this serial console.")
CONSOLE_EXCLUSIVE = Failure(
    "console_exclusive", 4209, 409, "Another user has exclusive control of this console; only view-only links may join."
)

VM_STOPPED = Failure("vm_stopped", 4300, 410, "The virtual machine stopped.")
CONSOLE_CLOSED = Failure("console_closed", 4301, 502, "The VNC server closed the connection.")
UNSUPPORTED_DATA = Failure("unsupported_data", 4302, 400, "Only binary WebSocket messages are relayed.")
TAKEN_OVER = Failure("taken_over", 4303, 409, "Another session took over this console.")
EXCLUSIVE_TAKEN = Failure("exclusive_taken", 4304, 409, "Another user took exclusive control of this console.")
SESSION_KILLED = Failure("session_killed", 4305, 410, "An administrator ended this console session.")

TOO_MANY_SESSIONS = Failure(
    "too_many_sessions", 4400, 429, "The broker serves as many consoles as it may; try again later."
)
TOO_MANY_VIEWERS = Failure("too_many_viewers", 4401, 429, "This console already has as many viewers as allowed.")
BUSY = Failure("busy", 4402, 503, "Too many consoles are being opened at once; try again in a moment.")
IDLE_TIMEOUT = Failure("idle_timeout", 4403, 408, "The console was closed after a time without input.")
SESSION_TIME_LIMIT = Failure("session_time_limit", 4404, 408, "The console reached its maximum session length.")
SHUTTING_DOWN = Failure("shutting_down", 1001, 503, "The console broker is shutting down; reconnect in a moment.")

# REST-only failures (never a WebSocket close).
UNAUTHORIZED = Failure("unauthorized", 0, 401, "A valid API key is required (Authorization: Bearer <key>).")
FORBIDDEN = Failure("forbidden", 0, 403, "This API key's scope does not allow that.")
INVALID_INPUT = Failure("invalid_input", 0, 422, "The request is not valid.")
RATE_LIMITED = Failure("rate_limited", 0, 429, "Too many console links were asked for with this API key; slow down.")
SESSION_NOT_FOUND = Failure("session_not_found", 0, 404, "No live console session has that id (it may have ended).")

ALL_FAILURES = [value for value in dict(globals()).values() if isinstance(value, Failure)]


class BrokerError(Exception):
    """A failure with an optional detail a person can act on."""

    def __init__(self, failure: Failure, detail: str | None = None, *, retry_after: float | None = None) -> None:
        self.failure = failure
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.detail or self.failure.summary

    @property
    def close_reason(self) -> str:
        """The reason sent in a close frame: at most 123 bytes of UTF-8."""
        return truncate_reason(self.message)

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.failure.slug, "message": self.message}}


def truncate_reason(text: str, limit: int = 123) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "..."
