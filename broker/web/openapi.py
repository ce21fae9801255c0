"""The REST API described for machines: the OpenAPI 3.0 document served at /api/v1/openapi.json.

Kept by hand, beside the handlers it describes (app.py, screenshots.py): a change to a call,
a field or an error there is a change here. tests/unit/test_openapi.py validates the document
and checks it against the routes and ConsoleRequest; tests/integration/test_api_fuzz.py fuzzes
a live broker with it (schemathesis): no 5xx, every answer as described.

To add a call: one entry in PATHS (see "More calls" at its end), its schemas in SCHEMAS, its
error slugs in the answers it can give.
"""

from __future__ import annotations

from typing import Any

from ..errors import ALL_FAILURES
from ..images import MAX_WIDTH, MIN_WIDTH
from ..sources.consoles import MAX_IDENTIFIER_LENGTH

JSON = "application/json"
Schema = dict[str, Any]

# Every `error.code` an answer may carry: the failures (errors.py) and Starlette's own refusals.
ERROR_CODES = sorted({f.slug for f in ALL_FAILURES} | {"not_found", "method_not_allowed", "http_error"})


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def error(description: str, *codes: str, retry_after: bool = False, authenticate: bool = False) -> Schema:
    """An error answer: {"error": {"code", "message"}}, the codes it may carry named in the text."""
    answer: Schema = {
        "description": f"{description} (`error.code`: {', '.join(f'`{c}`' for c in codes)})",
        "content": {JSON: {"schema": ref("Error")}},
    }
    headers: Schema = {}
    if retry_after:
        headers["Retry-After"] = {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    if authenticate:
        headers["WWW-Authenticate"] = {"description": "`Bearer`", "schema": {"type": "string", "enum": ["Bearer"]}}
    if headers:
        answer["headers"] = headers
    return answer


# Answers every call behind the API key can give.
UNAUTHORIZED = error("No API key, or a wrong one.", "unauthorized", authenticate=True)
LIBVIRT_DOWN = error("libvirt did not answer within `libvirt_timeout`, or is not reachable.", "libvirt_unavailable")
FORBIDDEN = error("The key's scope does not allow this call, or not for this domain.", "forbidden")
LIBVIRT_REFUSED = error("libvirt refused the request; the message says why.", "libvirt_error")
WRONG_KEYS = "too many requests with a wrong API key from this client, or"

IDENT: Schema = {
    "name": "ident",
    "in": "path",
    "required": True,
    "description": (
        "The domain: a UUID (8-4-4-4-12 hex digits, always a UUID), `uuid:UUID`, `name:NAME`, or any "
        "other text as a name. Empty, NUL or longer than "
        f"{MAX_IDENTIFIER_LENGTH} characters: 422. See README.md, REST API."
    ),
    "schema": {"type": "string"},
}

# Printable text, near enough: Python's str.isprintable(), which the broker applies, also
# refuses format, private-use and unassigned characters (422, with the reason).
PRINTABLE = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"

# What every link may say, whatever its kind.
LINK_FIELDS: dict[str, Schema] = {
    "ttl": {
        "type": "number",
        "nullable": True,
        "minimum": 1,
        "description": "The link's lifetime, seconds: 1 to `token_max_ttl` (else 422). Default `token_ttl`.",
    },
    "mode": {"type": "string", "enum": ["interactive", "view-only", "exclusive"], "default": "interactive"},
    "user": {
        "type": "string",
        "maxLength": 128,
        "pattern": PRINTABLE,
        "description": "The panel's user: printable text, kept with the session and logged.",
    },
    "max_session_length": {
        "type": "number",
        "minimum": 0,
        "maximum": 604800,
        "description": "Seconds the session may last (0: only the broker's own limit applies).",
    },
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": ERROR_CODES, "description": "A stable slug (README.md)."},
                    "message": {"type": "string", "description": "What went wrong and what to do, for a person."},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "libvirt"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "libvirt": {
                "type": "string",
                "description": "libvirt's version and URI, or why it is unavailable.",
            },
        },
    },
    "VncConsole": {
        "type": "object",
        "required": ["index"],
        "additionalProperties": False,
        "description": "A VNC graphics device: its `endpoint` when it can be opened, else why not.",
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "endpoint": {"type": "string", "description": "e.g. `tcp:127.0.0.1:5900`, `unix:/path`, `fd:0`"},
            "unavailable": {"type": "string"},
        },
    },
    "SerialConsole": {
        "type": "object",
        "required": ["index", "alias", "target", "history"],
        "additionalProperties": False,
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "alias": {"type": "string"},
            "target": {"type": "string"},
            "history": {"type": "boolean", "description": "Has a log, replayed on attach."},
            "unavailable": {"type": "string"},
        },
    },
    "Domain": {
        "type": "object",
        "required": ["name", "uuid", "state", "consoles", "serial_consoles", "sessions"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "uuid": {"type": "string", "format": "uuid"},
            "state": {
                "type": "string",
                "enum": [
                    "nostate",
                    "running",
                    "blocked",
                    "paused",
                    "shutdown",
                    "shutoff",
                    "crashed",
                    "pmsuspended",
                    "unknown",
                ],
            },
            "consoles": {"type": "array", "items": ref("VncConsole")},
            "console_unavailable": {"type": "string", "description": "Why no VNC link can be minted now."},
            "serial_consoles": {"type": "array", "items": ref("SerialConsole")},
            "sessions": {"type": "integer", "minimum": 0, "description": "Live console sessions on it."},
        },
    },
    "DomainList": {
        "type": "object",
        "required": ["domains"],
        "additionalProperties": False,
        "properties": {"domains": {"type": "array", "items": ref("Domain")}},
    },
    "VncConsoleRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "A link to a VNC console. Every field is optional: an empty body (or none) asks for the first.",
        "properties": {
            "kind": {"type": "string", "enum": ["vnc"], "default": "vnc"},
            "graphics": {
                "type": "integer",
                "nullable": True,
                "minimum": 0,
                "description": "The index of the VNC graphics device (default: the first).",
            },
            **LINK_FIELDS,
        },
    },
    "SerialConsoleRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind"],
        "description": "A link to a serial console (README.md, Serial consoles).",
        "properties": {
            "kind": {"type": "string", "enum": ["serial"]},
            "console": {
                "nullable": True,
                "description": "The serial console's alias or index (default: the first).",
                "oneOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "string", "minLength": 1, "maxLength": 64, "pattern": PRINTABLE},
                ],
            },
            "take_over": {
                "type": "boolean",
                "default": True,
                "description": "May this link force a console that another client holds over.",
            },
            **LINK_FIELDS,
        },
    },
    "ConsoleRequest": {
        "description": "`kind` says which: `vnc` (the default) or `serial`; unknown fields are refused.",
        "oneOf": [ref("VncConsoleRequest"), ref("SerialConsoleRequest")],
    },
    "Session": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "kind",
            "domain",
            "console",
            "client",
            "user_agent",
            "key",
            "via",
            "mode",
            "user",
            "state",
            "started_at",
            "duration",
            "bytes_to_browser",
            "bytes_from_browser",
            "last_input_at",
        ],
        "description": "A live console session (README.md, Operating it). Nothing secret: no token, page pass or key.",
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["vnc", "serial"]},
            "domain": ref("DomainRef"),
            "console": {"type": "integer", "minimum": 0, "description": "The device's index."},
            "client": {"type": "string", "description": "The browser's address (through trusted proxies)."},
            "user_agent": {"type": "string"},
            "key": {"type": "string", "description": "The label of the API key that minted its link (`cli`: the CLI)."},
            "via": {"type": "string", "enum": ["link", "page"]},
            "mode": {"type": "string", "enum": ["interactive", "view-only", "exclusive"]},
            "user": {"type": "string"},
            "state": {"type": "string", "enum": ["opening", "relaying"]},
            "started_at": {"type": "string", "format": "date-time"},
            "duration": {"type": "number", "minimum": 0, "description": "Seconds."},
            "bytes_to_browser": {"type": "integer", "minimum": 0},
            "bytes_from_browser": {"type": "integer", "minimum": 0},
            "last_input_at": {"type": "string", "format": "date-time", "nullable": True},
        },
    },
    "SessionList": {
        "type": "object",
        "required": ["sessions"],
        "additionalProperties": False,
        "properties": {"sessions": {"type": "array", "items": ref("Session")}},
    },
    "SessionAnswer": {
        "type": "object",
        "required": ["session"],
        "additionalProperties": False,
        "properties": {"session": ref("Session")},
    },
    "DomainRef": {
        "type": "object",
        "required": ["name", "uuid"],
        "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "uuid": {"type": "string", "format": "uuid"}},
    },
    "ConsoleLink": {
        "type": "object",
        "required": ["token", "console_url", "websocket_url", "expires_at", "domain", "kind", "console", "mode"],
        "additionalProperties": False,
        "properties": {
            "token": {"type": "string", "description": "Single use; also inside both URLs."},
            "console_url": {"type": "string", "description": "The broker's console page for this link."},
            "websocket_url": {"type": "string", "description": "For a noVNC (or terminal) of the panel's own."},
            "expires_at": {"type": "string", "format": "date-time"},
            "domain": ref("DomainRef"),
            "kind": {"type": "string", "enum": ["vnc", "serial"]},
            "console": {"type": "string", "description": "`graphics N`, or the serial console's alias."},
            "mode": {"type": "string", "enum": ["interactive", "view-only", "exclusive"]},
        },
    },
}

PATHS: dict[str, Schema] = {
    "/healthz": {
        "get": {
            "operationId": "health",
            "summary": "Is libvirt reachable? (no API key)",
            "security": [],
            "responses": {
                "200": {"description": "libvirt answers.", "content": {JSON: {"schema": ref("Health")}}},
                "503": {
                    "description": "libvirt is unreachable or did not answer within `libvirt_timeout`.",
                    "content": {JSON: {"schema": ref("Health")}},
                },
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document (no API key: it holds nothing a clone of the repository does not)",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.0", "content": {JSON: {"schema": {"type": "object"}}}}},
        }
    },
    "/api/v1/domains": {
        "get": {
            "operationId": "listDomains",
            "summary": "Every domain (and static console), its state and consoles",
            "responses": {
                "200": {
                    "description": "Sorted by name; only the domains in the key's scope.",
                    "content": {JSON: {"schema": ref("DomainList")}},
                },
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "429": error(f"Only {WRONG_KEYS[:-4]}: never with a valid key", "rate_limited", retry_after=True),
                "502": LIBVIRT_REFUSED,
                "503": LIBVIRT_DOWN,
            },
        }
    },
    "/api/v1/domains/{ident}/console": {
        "parameters": [IDENT],
        "post": {
            "operationId": "createConsole",
            "summary": "Mint a single-use console link",
            "requestBody": {
                "required": False,
                "description": "At most 16 KiB of JSON; unknown fields are refused (422).",
                "content": {JSON: {"schema": ref("ConsoleRequest")}},
            },
            "responses": {
                "201": {"description": "The link.", "content": {JSON: {"schema": ref("ConsoleLink")}}},
                "401": UNAUTHORIZED,
                "403": error(
                    "The key may not mint this mode of link, or not for this domain.",
                    "forbidden",
                ),
                "404": error("No such domain.", "domain_not_found"),
                "409": error(
                    "The domain is not running, has no such console, or an exclusive link holds it.",
                    "domain_not_running",
                    "no_console",
                    "console_exclusive",
                    "console_busy",
                ),
                "422": error("The body or the identifier is not valid; the message says which field.", "invalid_input"),
                "429": error(
                    f"More than `mint_rate` links a minute with this key, {WRONG_KEYS} the console has `max_viewers`",
                    "rate_limited",
                    "too_many_viewers",
                    retry_after=True,
                ),
                "502": LIBVIRT_REFUSED,
                "503": LIBVIRT_DOWN,
            },
        },
    },
    "/api/v1/domains/{ident}/screenshot": {
        "parameters": [IDENT],
        "get": {
            "operationId": "screenshot",
            "summary": "The domain's screen now, as a PNG",
            "description": (
                "Kept `screenshot_cache` seconds per domain and width; only answers taken from libvirt count "
                "against `screenshot_rate` a minute per API key."
            ),
            "parameters": [
                {
                    "name": "width",
                    "in": "query",
                    "required": False,
                    "description": "A thumbnail this many pixels wide, aspect kept (never wider than the screen).",
                    "schema": {"type": "integer", "minimum": MIN_WIDTH, "maximum": MAX_WIDTH},
                }
            ],
            "responses": {
                "200": {
                    "description": "The screen.",
                    "headers": {
                        "Cache-Control": {"description": "`no-store`", "schema": {"type": "string", "enum": ["no-store"]}}
                    },
                    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                },
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "404": error("No such domain.", "domain_not_found"),
                "409": error("The domain is not running, or is a static console.", "domain_not_running", "no_console"),
                "422": error("width out of bounds, an unknown parameter, or a bad identifier.", "invalid_input"),
                "429": error(
                    f"More than `screenshot_rate` screenshots from libvirt a minute with this key, or {WRONG_KEYS[:-4]}",
                    "rate_limited",
                    retry_after=True,
                ),
                "502": error("libvirt refused, or sent a screen that is not an image.", "libvirt_error"),
                "503": LIBVIRT_DOWN,
            },
        },
    },
    "/api/v1/sessions": {
        "get": {
            "operationId": "listSessions",
            "summary": "The live console sessions in the key's scope, newest first (right `sessions`)",
            "parameters": [
                {
                    "name": "domain",
                    "in": "query",
                    "required": False,
                    "description": "Only this domain's sessions: an identifier as for `{ident}`.",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": {"description": "The sessions.", "content": {JSON: {"schema": ref("SessionList")}}},
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "422": error("`domain` is no identifier a domain can have.", "invalid_input"),
                "429": error(f"Only {WRONG_KEYS[:-4]}: never with a valid key", "rate_limited", retry_after=True),
            },
        }
    },
    "/api/v1/sessions/{session_id}": {
        "parameters": [
            {
                "name": "session_id",
                "in": "path",
                "required": True,
                "description": "A session's `id`; one outside the key's scope is not found either.",
                "schema": {"type": "string"},
            }
        ],
        "get": {
            "operationId": "showSession",
            "summary": "One live session (right `sessions`)",
            "responses": {
                "200": {"description": "The session.", "content": {JSON: {"schema": ref("SessionAnswer")}}},
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "404": error("No live session has that id (it may have ended).", "session_not_found"),
                "429": error(f"Only {WRONG_KEYS[:-4]}: never with a valid key", "rate_limited", retry_after=True),
            },
        },
        "delete": {
            "operationId": "killSession",
            "summary": "End a live session: its browser gets close code 4305 (right `kill`)",
            "responses": {
                "200": {
                    "description": "The session as it was; its close follows within a moment.",
                    "content": {JSON: {"schema": ref("SessionAnswer")}},
                },
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "404": error("No live session has that id (it may have ended).", "session_not_found"),
                "429": error(f"Only {WRONG_KEYS[:-4]}: never with a valid key", "rate_limited", retry_after=True),
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (right `sessions`; `metrics_listen` serves them without a key)",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "429": error(f"Only {WRONG_KEYS[:-4]}: never with a valid key", "rate_limited", retry_after=True),
            },
        }
    },
    # More calls go here, each with its schemas in SCHEMAS and its error codes as above;
    # tests/unit/test_openapi.py fails until every REST route is described.
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "vm-console-broker",
        "version": "1",
        "description": (
            "Console links for libvirt/QEMU domains. Every error is JSON "
            '`{"error": {"code", "message"}}`; the codes are listed in README.md (Close codes).'
        ),
        "license": {"name": "Apache-2.0"},
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (api_keys)."}},
    },
    "security": [{"apiKey": []}],
}
