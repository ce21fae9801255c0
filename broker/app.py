"""The Starlette application: REST API, health check and the WebSocket relay route."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from datetime import datetime, timezone
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from .consoles import DomainInfo, Stream
from .errors import (
    CONSOLE_CLOSED,
    INVALID_INPUT,
    UNAUTHORIZED,
    UNSUPPORTED_DATA,
    VM_STOPPED,
    BrokerError,
)
from .relay import RelayEnd, relay
from .tokens import ConsoleRef, MintedToken, Tokens

log = logging.getLogger("broker.app")

# How long a backend EOF may wait for libvirt to report the domain stopped before
# we call it "the VNC server closed the connection" instead.
STOP_CONFIRM_SECONDS = 1.5


class ConsoleSource(Protocol):
    """What the app needs from a console source (libvirt today, static targets later)."""

    async def healthy(self) -> tuple[bool, str]: ...
    async def list_domains(self) -> list[DomainInfo]: ...
    async def find(self, ident: str) -> DomainInfo: ...
    async def open(self, ref: ConsoleRef) -> tuple[DomainInfo, Stream]: ...
    async def still_running(self, uuid: str, run_id: int) -> bool: ...


class Broker:
    """Request handlers bound to one console source, one token set and the API keys."""

    def __init__(
        self,
        consoles: ConsoleSource,
        tokens: Tokens,
        api_keys: tuple[str, ...],
        public_url: str | None = None,
    ) -> None:
        if not api_keys:
            raise ValueError("at least one API key is required")
        self.consoles = consoles
        self.tokens = tokens
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.public_url = public_url

    # -- HTTP ------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        ok, detail = await self.consoles.healthy()
        return JSONResponse({"status": "ok" if ok else "unavailable", "libvirt": detail}, status_code=200 if ok else 503)

    async def list_domains(self, request: Request) -> Response:
        self.authorize(request)
        domains = await self.consoles.list_domains()
        return JSONResponse({"domains": [d.to_json() for d in domains]})

    async def create_console(self, request: Request) -> Response:
        self.authorize(request)
        body = await _json_body(request)
        unknown = set(body) - {"ttl", "graphics"}
        if unknown:
            raise BrokerError(INVALID_INPUT, f"Unknown field(s): {', '.join(sorted(unknown))}.")
        try:
            ttl = self.tokens.check_ttl(body.get("ttl"))
        except ValueError as exc:
            raise BrokerError(INVALID_INPUT, f"{exc}.") from None
        index = body.get("graphics")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
            raise BrokerError(INVALID_INPUT, "graphics must be a device index (0 or more).")
        domain = await self.consoles.find(request.path_params["ident"])
        console = domain.console(index)
        minted = self.tokens.mint(ConsoleRef(domain.uuid, console.index), domain.name, ttl)
        log.info("minted a console token for domain %s (%s), ttl %gs", domain.name, domain.uuid, ttl)
        return JSONResponse(self.token_json(request, minted, domain), status_code=201)

    def authorize(self, request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        presented = key.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(presented, k) for k in self.api_keys):
            raise BrokerError(UNAUTHORIZED)

    def token_json(self, request: HTTPConnection, minted: MintedToken, domain: DomainInfo) -> dict[str, Any]:
        base = self.base_url(request)
        ws_base = "ws" + base[len("http"):]
        return {
            "token": minted.token,
            "console_url": f"{base}/console?token={minted.token}",
            "websocket_url": f"{ws_base}/websockify?token={minted.token}",
            "expires_at": datetime.fromtimestamp(minted.grant.expires_at, timezone.utc).isoformat(timespec="seconds"),
            "domain": {"name": domain.name, "uuid": domain.uuid},
        }

    def base_url(self, request: HTTPConnection) -> str:
        if self.public_url:
            return self.public_url
        return str(request.base_url).rstrip("/")

    # -- WebSocket -------------------------------------------------------------------

    async def websockify(self, websocket: WebSocket) -> None:
        """Accept first, so that every refusal can carry its own close code and reason."""
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        client = _client(websocket)
        try:
            grant = self.tokens.redeem(websocket.query_params.get("token"))
            domain, stream = await self.consoles.open(grant.console)
        except BrokerError as exc:
            log.info("refused console session from %s: %s (%s)", client, exc.failure.slug, exc.message)
            await _close(websocket, exc)
            return
        log.info("console session for %s opened from %s via %s", domain.name, client, stream.endpoint)
        end = await relay(websocket, stream.reader, stream.writer)
        if end is RelayEnd.BACKEND_CLOSED:
            failure = CONSOLE_CLOSED
            if await self._stopped(domain):
                failure = VM_STOPPED
            error = BrokerError(failure, f"{failure.summary.rstrip('.')}: {domain.name}.")
            await _close(websocket, error)
        elif end is RelayEnd.CLIENT_SENT_TEXT:
            await _close(websocket, BrokerError(UNSUPPORTED_DATA))
        log.info("console session for %s from %s ended: %s", domain.name, client, end.value)

    async def _stopped(self, domain: DomainInfo) -> bool:
        """After the VNC stream ended: did the VM stop? libvirt may need a moment to notice."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_CONFIRM_SECONDS
        while True:
            if not await self.consoles.still_running(domain.uuid, domain.run_id):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.1)


def create_app(broker: Broker) -> Starlette:
    routes = [
        Route("/healthz", broker.healthz),
        Route("/api/v1/domains", broker.list_domains),
        Route("/api/v1/domains/{ident}/console", broker.create_console, methods=["POST"]),
        WebSocketRoute("/websockify", broker.websockify),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={BrokerError: _broker_error, HTTPException: _http_error},
    )
    app.state.broker = broker
    return app


async def _broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.failure is UNAUTHORIZED else None
    return JSONResponse(exc.to_json(), status_code=exc.failure.http_status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": slug, "message": exc.detail}}, status_code=exc.status_code, headers=exc.headers)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BrokerError(INVALID_INPUT, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BrokerError(INVALID_INPUT, "The request body must be a JSON object.")
    return body


async def _close(websocket: WebSocket, error: BrokerError) -> None:
    try:
        await websocket.close(error.failure.close_code, error.close_reason)
    except Exception:  # already gone: nobody is left to tell
        pass


def _client(connection: HTTPConnection) -> str:
    return f"{connection.client.host}:{connection.client.port}" if connection.client else "unknown"
