"""The operator's endpoints: live console sessions (list, show, end) and the metrics.

    GET    /api/v1/sessions[?domain=IDENT]   newest first
    GET    /api/v1/sessions/{id}
    DELETE /api/v1/sessions/{id}             ends it: close 4305, "An administrator ended …";
                                             a console page's pass that opened it ends too
    GET    /metrics                          Prometheus text format

All behind the API key, like the rest of /api/ (same errors, same limit on failed keys).
`metrics_listen` serves /metrics alone on a listener of its own, without a key, for
scrapers on a management network (MetricsListener).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..access.keys import KILL, SESSIONS, ApiKey
from ..access.tokens import Grant
from ..errors import SESSION_KILLED, SESSION_NOT_FOUND, BrokerError
from ..live import MAX_USER_AGENT, LiveSession, Viewer
from ..observe.metrics import CONTENT_TYPE
from ..sources.consoles import Identifier
from .proxy import CLI_SOCKET_SCOPE_KEY

if TYPE_CHECKING:
    from .app import Broker

log = logging.getLogger("broker.app")

# Requests over the CLI socket (state dir, root's only) are the operator at the host.
CLI_LABEL = "cli"


def key_label(connection: HTTPConnection, key: ApiKey) -> str:
    """What a session, a metric or an audit event may say about an API key: `cli` for the
    CLI socket, else its label (by default its place in api_keys: `key1`, `key2`, …; the
    state dir's key is key1). Never the key, nor anything derived from it."""
    return CLI_LABEL if connection.scope.get(CLI_SOCKET_SCOPE_KEY) else key.label


def client_address(connection: HTTPConnection) -> str:
    """The client as the sessions API shows it: through trusted proxies only (proxy.py)."""
    client = connection.client
    if client is None:
        return "unknown"
    return client.host if not client.port else f"{client.host}:{client.port}"


# Where the console page's socket keeps the digest of the pass it presented or was given
# (app.Broker.page_grant), so that a kill can end that pass too.
PAGE_PASS_SCOPE_KEY = "broker.page_pass"


def viewer_of(connection: HTTPConnection, grant: Grant, *, via: str) -> Viewer:
    return Viewer(
        client=client_address(connection),
        user_agent=connection.headers.get("user-agent", "")[:MAX_USER_AGENT],
        minted_by=grant.minted_by,
        via=via,
        page=str(connection.scope.get(PAGE_PASS_SCOPE_KEY, "")) if via == "page" else "",
    )


class SessionsApi:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def list_sessions(self, request: Request) -> Response:
        key = self.broker.authorize(request)
        key.require(SESSIONS)
        sessions = [s for s in self.broker.live.newest_first() if key.covers(s.name, s.uuid)]
        ident = request.query_params.get("domain")
        if ident is not None:
            wanted = Identifier.parse(ident)
            sessions = [s for s in sessions if (s.uuid if wanted.by_uuid else s.name) == wanted.value]
        return JSONResponse({"sessions": [s.to_json() for s in sessions]})

    async def show_session(self, request: Request) -> Response:
        key = self.broker.authorize(request)
        key.require(SESSIONS)
        return JSONResponse({"session": self.find(request, key).to_json()})

    async def kill_session(self, request: Request) -> Response:
        """End the session: its browser gets 4305 and "An administrator ended this console
        session."; answered at once with the session as it was (the close follows within
        a moment: the relay stops on its next turn of the event loop)."""
        key = self.broker.authorize(request)
        key.require(KILL)
        by = key_label(request, key)
        session = self.find(request, key)
        if not session.stop.done():  # a session already ending is not killed (nor audited) twice
            session.end(BrokerError(SESSION_KILLED))
            if session.viewer.page:  # and the console page may not simply reconnect
                self.broker.pages.end(session.viewer.page)
            self.broker.observe.session_killed(session, by)
            log.info(
                "console session %s for %s from %s ended by API key %s",
                session.id,
                session.name,
                session.viewer.client,
                by,
            )
        return JSONResponse({"session": session.to_json()})

    def find(self, request: Request, key: ApiKey) -> LiveSession:
        """The session by id; one outside the key's scope is not found (its id says nothing)."""
        session = self.broker.live.get(request.path_params["session_id"])
        if session is None or not key.covers(session.name, session.uuid):
            raise BrokerError(SESSION_NOT_FOUND)
        return session

    async def metrics(self, request: Request) -> Response:
        self.broker.authorize(request).require(SESSIONS)
        return self.exposition()

    def exposition(self) -> Response:
        return Response(self.broker.observe.metrics.exposition(), media_type=CONTENT_TYPE)


def routes(broker: Broker) -> list[Route]:
    api = SessionsApi(broker)
    return [
        Route("/api/v1/sessions", api.list_sessions),
        Route("/api/v1/sessions/{session_id}", api.show_session),
        Route("/api/v1/sessions/{session_id}", api.kill_session, methods=["DELETE"]),
        Route("/metrics", api.metrics),
    ]


def metrics_app(broker: Broker) -> Starlette:
    """What the `metrics_listen` listener serves: /metrics without a key, and nothing else."""
    api = SessionsApi(broker)

    async def metrics(_request: Request) -> Response:
        return api.exposition()

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return JSONResponse({"error": {"code": "not_found", "message": "Only /metrics is served here."}}, 404)

    return Starlette(routes=[Route("/metrics", metrics)], exception_handlers={404: not_found, 405: not_found})


class MetricsListener:
    """Requests that came in on the metrics listener go to the metrics app, the others on.

    Told apart like the CLI socket (proxy.CliSocketRequests): uvicorn puts the listening
    socket's getsockname() in scope["server"]."""

    def __init__(self, app: ASGIApp, address: tuple[str, int], metrics: ASGIApp) -> None:
        self.app = app
        host, self.port = address[0], address[1]
        # A connection to a wildcard listener names the local address it reached instead.
        self.host = None if host in ("0.0.0.0", "::") else host
        self.metrics = metrics

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        server = scope.get("server")
        ours = (
            scope["type"] in ("http", "websocket")
            and server is not None
            and server[1] == self.port
            and self.host in (None, server[0])
        )
        return (self.metrics if ours else self.app)(scope, receive, send)
