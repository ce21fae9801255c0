"""The Starlette application: REST API, health check, console page and the WebSocket routes."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..access.keys import LIST, SCREENSHOT, ApiKey, match
from ..access.limits import AUTH_FAILURE_BURST, AUTH_FAILURE_RATE, RateLimiter, SessionLimits
from ..access.pages import UNDEFINED, PagePasses
from ..access.tokens import Grant, MintedToken, Tokens, digest_of
from ..errors import (
    CONSOLE_BUSY,
    CONSOLE_CLOSED,
    DOMAIN_NOT_RUNNING,
    EXCLUSIVE_TAKEN,
    IDLE_TIMEOUT,
    INVALID_INPUT,
    ORIGIN_REFUSED,
    RATE_LIMITED,
    SESSION_ENDED,
    SESSION_TIME_LIMIT,
    SHUTTING_DOWN,
    TAKEN_OVER,
    TOKEN_INVALID,
    TOKEN_REVOKED,
    UNAUTHORIZED,
    UNSUPPORTED_DATA,
    VM_STOPPED,
    BrokerError,
)
from ..kinds import serial as serial_kind
from ..kinds.rules import VncInput, input_rule, text_rule
from ..kinds.vncauth import ClientLeft, authenticate
from ..live import LiveSession, LiveSessions
from ..model import ConsoleKind, ConsoleRef, DomainInfo, LinkMode, Stream, serial_xml_hint
from ..observe.audit import AuditLog
from ..observe.events import CLIENT_CLOSED, CLIENT_LEFT, CLIENT_UNRESPONSIVE, INTERRUPTED, Observer
from ..relay.pump import SPLICE_EXTENSION, RelayEnd, relay
from . import ops
from .assets import WebFiles, WebFilesMissing
from .openapi import OPENAPI
from .pageauth import Credential, PageLeft, read_credential, session_frame
from .pagehtml import page_headers
from .proxy import CLI_SOCKET_SCOPE_KEY
from .screenshots import SCREENSHOT_HEADERS, Screenshots, screenshot_width

log = logging.getLogger("broker.app")

# Refusals a console page waits through, retrying by itself (web/public/session.js).
WAITING = frozenset({DOMAIN_NOT_RUNNING})

# The console page and its links: never cached, never leak the URL onwards (pagehtml.py);
# the broker's own headers add the configured frame_ancestors.
PAGE_HEADERS = page_headers()

# Static files are cached for good (web/assets.py), but never sniffed into another type, and
# anything among them that a browser would render runs under the page's policy.
STATIC_HEADERS = {k: v for k, v in PAGE_HEADERS.items() if k != "Cache-Control"}


class HostCheck:
    """Starlette's TrustedHostMiddleware, for every request but those on the CLI socket,
    which carry the broker's own listen address as Host (proxy.CliSocketRequests)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get(CLI_SOCKET_SCOPE_KEY):
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)


# Why console pages' sessions close on SIGTERM: the page reconnects with its pass.
RESTARTING = "The console broker is restarting; this page reconnects by itself when it is back."

# How long a backend EOF may wait for libvirt to report the domain stopped before
# we call it "the VNC server closed the connection" instead.
STOP_CONFIRM_SECONDS = 1.5


class ConsoleSource(Protocol):
    """What the app needs from a console source: libvirt, static consoles, or both combined."""

    def on_domain_ended(self, callback: Callable[[str, bool], None]) -> None: ...
    async def healthy(self) -> tuple[bool, str]: ...
    async def list_domains(self) -> list[DomainInfo]: ...
    async def find(self, ident: str) -> DomainInfo: ...
    async def open(self, ref: ConsoleRef, *, take_over: bool = False) -> tuple[DomainInfo, Stream]: ...
    async def still_running(self, uuid: str, run_id: int) -> bool: ...
    async def screenshot(self, uuid: str) -> tuple[str, bytes]: ...


class Broker:
    """Request handlers bound to one console source, one token set and the API keys."""

    def __init__(
        self,
        consoles: ConsoleSource,
        tokens: Tokens,
        api_keys: tuple[ApiKey | str, ...],
        public_url: str | None = None,
        *,
        pages: PagePasses | None = None,
        allowed_origins: tuple[str, ...] = (),
        allowed_hosts: tuple[str, ...] = (),
        frame_ancestors: tuple[str, ...] = (),
        web_dir: Path | None = None,  # the built web files (default: web/assets.py's web_root())
        limits: SessionLimits | None = None,
        serial_take_over: bool = True,
        audit: AuditLog | None = None,
        metrics_domain_label: bool = False,
    ) -> None:
        if not api_keys:
            raise ValueError("at least one API key is required")
        self.consoles = consoles
        self.tokens = tokens
        self.pages = pages if pages is not None else PagePasses()  # an empty one is falsy (__len__)
        # Plain strings (tests, embedding): full-rights keys labelled by position.
        self.api_keys = tuple(
            key if isinstance(key, ApiKey) else ApiKey.full(f"key{n}", key) for n, key in enumerate(api_keys, 1)
        )
        self.public_url = public_url
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.allowed_hosts = allowed_hosts
        self.web = WebFiles(web_dir, headers=STATIC_HEADERS)
        self.page_headers = page_headers(frame_ancestors)
        self.limits = limits = limits or SessionLimits()
        self.serial_take_over = serial_take_over  # the broker-wide switch; each link says too
        self.mint_limiter = RateLimiter(limits.mint_rate, limits.mint_burst)
        # Failed API-key attempts per client (_key_client): AUTH_FAILURE_BURST, then
        # AUTH_FAILURE_RATE a minute.
        self.failed_keys = RateLimiter(AUTH_FAILURE_RATE, AUTH_FAILURE_BURST)
        self.live = LiveSessions(limits)
        self.observe = Observer(self.live, audit, domain_label=metrics_domain_label)
        self.screenshots = Screenshots(limits.screenshot_cache, limits.screenshot_rate)
        consoles.on_domain_ended(self.domain_ended)

    def domain_ended(self, uuid: str, undefined: bool = False) -> None:
        """The domain stopped, crashed or was undefined: end its sessions, spend its links
        (bound to the run). Console pages' passes name the UUID, not the run: they wait for
        the VM to start again, and end only with the domain itself (access/pages.py)."""
        sessions = self.live.of_domain(uuid)
        for session in sessions:
            session.end(BrokerError(VM_STOPPED, f"The virtual machine stopped: {session.name!r}."))
        revoked = self.tokens.revoke(uuid)
        pages = self.pages.end_for(uuid) if undefined else 0
        if sessions or revoked or pages:
            log.info(
                "domain %s ended: closing %d session(s), revoking %d unused link(s) and %d page session(s)",
                uuid,
                len(sessions),
                revoked,
                pages,
            )

    def end_all_sessions(self) -> int:
        """On shutdown: close every session with 1001 and a reason, before the server goes."""
        sessions = self.live.all()
        for session in sessions:
            # A console page reconnects with its pass, which survives the restart (access/pages.py).
            page = session.viewer.via == "page"
            session.end(BrokerError(SHUTTING_DOWN, RESTARTING if page else None))
        return len(sessions)

    # -- HTTP ------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        ok, detail = await self.consoles.healthy()
        self.observe.libvirt(ok)
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "libvirt": detail}, status_code=200 if ok else 503
        )

    async def list_domains(self, request: Request) -> Response:
        key = self.authorize(request)
        key.require(LIST)
        domains = [d for d in await self.consoles.list_domains() if key.covers(d.name, d.uuid)]
        return JSONResponse({"domains": [{**d.to_json(), "sessions": len(self.live.of_domain(d.uuid))} for d in domains]})

    async def create_console(self, request: Request) -> Response:
        key = self.authorize(request)
        minted_by = ops.key_label(request, key)
        wait = self.mint_limiter.allow(key.label)
        if wait:
            raise BrokerError(RATE_LIMITED, retry_after=wait)
        request_ = ConsoleRequest.parse(await _json_body(request))
        try:
            ttl = self.tokens.check_ttl(request_.ttl)
        except ValueError as exc:
            raise BrokerError(INVALID_INPUT, f"{exc}.") from None
        domain = await self.consoles.find(request.path_params["ident"])
        key.require_mint(request_.mode, domain.name, domain.uuid)
        if request_.kind is ConsoleKind.SERIAL:
            serial = domain.serial(request_.serial)
            ref, device = ConsoleRef(domain.uuid, serial.index, domain.run_id, ConsoleKind.SERIAL), serial.alias
        else:
            console = domain.console(request_.graphics)
            ref, device = ConsoleRef(domain.uuid, console.index, domain.run_id), f"graphics {console.index}"
        self.live.check_viewers(domain.uuid)
        self.live.check_exclusive(ref, request_.mode)
        may_take_over = self.serial_take_over and request_.take_over and ref.kind is ConsoleKind.SERIAL
        minted = self.tokens.mint(
            ref,
            domain.name,
            ttl,
            may_take_over=may_take_over,
            device=device,
            mode=request_.mode,
            user=request_.user,
            max_session_length=request_.max_session_length,
            minted_by=minted_by,
        )
        self.observe.link_minted(minted.grant, ttl)
        log.info(
            "minted a %s %s console token for domain %s (%s)%s, ttl %gs",
            request_.mode.value,
            ref.kind.value,
            domain.name,
            domain.uuid,
            f" for user {request_.user!r}" if request_.user else "",
            ttl,
        )
        return JSONResponse(self.token_json(request, minted, domain), status_code=201)

    async def screenshot(self, request: Request) -> Response:
        """The domain's screen as a PNG (web/screenshots.py: cached, rate-limited per key)."""
        key = self.authorize(request)
        key.require(SCREENSHOT)
        width = screenshot_width(request.query_params.multi_items())
        domain = await self.consoles.find(request.path_params["ident"])
        key.require(SCREENSHOT, domain.name, domain.uuid)
        png = await self.screenshots.take(self.consoles, domain, width, key.label)
        return Response(png.data, media_type="image/png", headers=SCREENSHOT_HEADERS)

    async def openapi(self, request: Request) -> Response:
        """The API's description (web/openapi.py); public, as README.md says why."""
        return JSONResponse(OPENAPI, headers={"Cache-Control": "no-cache"})

    def authorize(self, request: Request) -> ApiKey:
        """The API key presented, or UNAUTHORIZED; RATE_LIMITED instead for a
        client with too many failed attempts. A valid key is never refused: the limit only
        slows guessing (hopeless against keys of 16+ characters anyway), and must not let a
        mistyped key elsewhere lock the panel or the CLI out."""
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        key = match(self.api_keys, presented.strip())  # every key compared: timing says nothing
        if scheme.lower() == "bearer" and key is not None:
            return key
        client = _key_client(request)
        wait = self.failed_keys.wait(client)
        if wait:
            error = BrokerError(
                RATE_LIMITED, "Too many requests with a wrong API key from this address.", retry_after=wait
            )
            self.observe.api_refused(error, client, quote(request.url.path))
            raise error
        self.key_refused(request, client)
        raise BrokerError(UNAUTHORIZED)

    def key_refused(self, request: Request, client: str) -> None:
        """Count a failed attempt and log it: who and where, never what key was presented."""
        self.failed_keys.allow(client)
        self.observe.api_refused(BrokerError(UNAUTHORIZED), client, quote(request.url.path))
        wait = self.failed_keys.wait(client)
        then = f"; its next API requests get 429 for {math.ceil(wait)} s" if wait else ""
        log.warning("refused API request from %s to %s: no valid API key%s", client, quote(request.url.path), then)

    def token_json(self, request: HTTPConnection, minted: MintedToken, domain: DomainInfo) -> dict[str, Any]:
        base = self.base_url(request)
        ws_base = "ws" + base[len("http") :]
        return {
            "token": minted.token,
            "console_url": f"{base}/console?token={minted.token}",
            "websocket_url": f"{ws_base}/websockify?token={minted.token}",
            "expires_at": _iso(minted.grant.expires_at),
            "domain": {"name": domain.name, "uuid": domain.uuid},
            "kind": minted.grant.console.kind.value,
            "console": minted.grant.device,
            "mode": minted.grant.mode.value,
        }

    def base_url(self, request: HTTPConnection) -> str:
        if self.public_url:
            return self.public_url
        return str(request.base_url).rstrip("/")

    # -- console page ------------------------------------------------------------------

    async def open_console_link(self, request: Request) -> Response:
        """The console link: the page for its console's kind. The token is only looked at,
        never spent (link previewers and mail scanners GET links too): the page's script
        spends it on its WebSocket (pageauth.py) and drops it from the address bar."""
        try:
            grant = self.tokens.peek(request.query_params.get("token"))
        except BrokerError as exc:
            self.observe.refused(exc, ops.client_address(request), at="link")
            return self.error_page(exc)
        uuid = grant.console.uuid
        # Relative, so it stays right under any sub-path a proxy adds.
        return self.page_file(grant.console.kind, uuid, console_dir=f"console/{uuid}/", static="static")

    async def console_page(self, request: Request) -> Response:
        return self.page_file(ConsoleKind.VNC, request.path_params["uuid"])

    async def terminal_page(self, request: Request) -> Response:
        return self.page_file(ConsoleKind.SERIAL, request.path_params["uuid"])

    def page_file(
        self, kind: ConsoleKind, uuid: str, *, console_dir: str = "./", static: str = "../../static"
    ) -> Response:
        """The console page for the console `uuid` (web/public/console.html or terminal.html as
        web/build.mjs built it, its {{placeholders}} filled: `console_dir` is /console/{uuid}/
        and `static` the static files, both relative to where the page is served), or 503 and
        how to build it."""
        name = "terminal" if kind is ConsoleKind.SERIAL else "console"
        try:
            page = self.web.render(name, static=static, uuid=uuid, console_dir=console_dir)
        except WebFilesMissing as exc:
            return PlainTextResponse(str(exc), status_code=503, headers=self.page_headers)
        return HTMLResponse(page, headers=self.page_headers)

    def error_page(self, error: BrokerError) -> Response:
        title = "Cannot open the console"
        try:
            page = self.web.render("error", static="static", title=title, message=error.message)
        except WebFilesMissing:
            page = f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{html.escape(error.message)}</p>"
        return HTMLResponse(page, status_code=error.failure.http_status, headers=self.page_headers)

    # -- WebSocket -------------------------------------------------------------------

    async def websockify(self, websocket: WebSocket) -> None:
        """noVNC's default path: the single-use token is in the query."""
        await self.serve_console(websocket, lambda: self.redeem_link(websocket))

    def redeem_link(self, websocket: WebSocket) -> Grant:
        grant = self.tokens.redeem(websocket.query_params.get("token"))
        self.observe.link_redeemed(grant)
        return grant

    async def console_websocket(self, websocket: WebSocket) -> None:
        """The console page's socket: its first frame spends the link's token or presents
        the page's pass (pageauth.py); the broker's first frame answers with the session."""
        uuid = websocket.path_params["uuid"]
        presented: list[Credential] = []
        issued: list[str] = []  # the pass, for the session frame

        async def read_first_frame() -> None:
            if not self.origin_allowed(websocket):  # nothing is read from a foreign page
                raise self.origin_refused(websocket)
            # Sockets waiting for their first frame count as consoles being opened
            # (max_pending, BUSY), like every other socket between accept and relay.
            with self.live.opening():
                credential = await read_credential(websocket)
            if credential.token is not None:
                await self.check_link_run(credential.token, uuid)
            else:
                await self.check_pass_domain(credential.pass_id, uuid)
            presented.append(credential)

        def authorize() -> Grant:
            grant, pass_id = self.page_grant(websocket, uuid, presented[0])
            issued.append(pass_id)
            return grant

        async def announce(grant: Grant) -> None:
            try:
                await websocket.send_text(session_frame(grant, issued[0], self.pages.clock()))
            except (WebSocketDisconnect, OSError):  # uvicorn's ClientDisconnected is an OSError
                raise PageLeft from None

        await self.serve_console(websocket, authorize, prelude=read_first_frame, announce=announce)

    async def check_link_run(self, token: str, uuid: str) -> None:
        """A link is for the run of the domain it was minted in (the pass it turns into is
        not): before it is spent for a pass, that run must be the one running, so a lost
        stop event (libvirtd restarting) cannot hand a pass for a re-provisioned VM."""
        link = self.tokens.peek(token)
        run_id = link.console.run_id
        if link.console.uuid != uuid or run_id is None:  # another console's (page_grant says so); static
            return
        domain = await self.consoles.find(uuid)
        if not domain.active:
            raise BrokerError(TOKEN_REVOKED)
        if domain.run_id != run_id:
            raise BrokerError(TOKEN_REVOKED, "The VM was restarted after the link was made; ask for a new one.")

    async def check_pass_domain(self, pass_id: str | None, uuid: str) -> None:
        """A pass ends with its domain's undefine (a libvirt event). Should the broker have
        missed that event (it was down, or its connection was), a domain defined again with
        the same UUID under another name is not the one the link was for: the pass ends.
        (One defined again under the same name and UUID cannot be told apart: docs/security.md.)"""
        grant = self.pages.check(pass_id, uuid)
        domain = await self.consoles.find(uuid)
        if domain.name != grant.name:
            assert pass_id is not None  # check() refuses a missing pass
            self.pages.end_for_digest(digest_of(pass_id))
            raise BrokerError(SESSION_ENDED, UNDEFINED)

    def page_grant(self, websocket: WebSocket, uuid: str, credential: Credential) -> tuple[Grant, str]:
        """The page's pass checked, or its link spent for a new pass: (grant, pass). The
        session a link opens is still checked against the link's run when the console is
        opened (consoles.open); a mismatch there ends the new pass too (serve_console)."""
        if credential.pass_id is not None:
            grant, pass_id = self.pages.check(credential.pass_id, uuid), credential.pass_id
        else:
            # Another console's link: refused before it is spent, so its own page still works.
            if self.tokens.peek(credential.token).console.uuid != uuid:
                raise BrokerError(TOKEN_INVALID, "This console link is for another console.")
            link = self.tokens.redeem(credential.token)
            self.observe.link_redeemed(link)
            pass_id, grant = self.pages.open(link)
            grant = replace(grant, console=link.console)  # this first session: the link's run only
            log.info("console link for %s exchanged for a page session from %s", link.name, _client(websocket))
        websocket.scope[ops.PAGE_PASS_SCOPE_KEY] = digest_of(pass_id)
        return grant, pass_id

    async def serve_console(
        self,
        websocket: WebSocket,
        authorize: Callable[[], Grant],
        *,
        prelude: Callable[[], Awaitable[None]] | None = None,
        announce: Callable[[Grant], Awaitable[None]] | None = None,
    ) -> None:
        """Accept first, so that every refusal can carry its own close code and reason.
        `prelude` runs before any other check (the page's first frame), `announce` once
        the client is authorized, before the console is opened (the page's session frame)."""
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        client = _client(websocket)
        take_over = websocket.query_params.get("takeover") == "1"
        try:
            if prelude is not None:
                await prelude()
            session, domain, stream = await self.open_session(websocket, authorize, take_over, announce)
        except PageLeft:
            log.info("console page from %s left before it sent its token or pass", client)
            return
        except BrokerError as exc:
            page_pass = websocket.scope.get(ops.PAGE_PASS_SCOPE_KEY)
            if exc.failure is TOKEN_REVOKED and page_pass:  # the link's run was over after all
                self.pages.end_for_digest(page_pass)
            if exc.failure in WAITING and self.pages.still_waiting(page_pass):
                # A page waiting for its VM retries by itself: its first refusal is on
                # record (log, audit, metrics), the repeats only in the debug log.
                log.debug("refused console session from %s: %s (still waiting)", client, exc.failure.slug)
            else:
                log.info("refused console session from %s: %s (%s)", client, exc.failure.slug, exc.message)
                self.observe.refused(exc, ops.client_address(websocket), at="websocket")
            await _close(websocket, exc)
            return
        self.pages.stop_waiting(websocket.scope.get(ops.PAGE_PASS_SCOPE_KEY))
        limit = _shortest(self.limits.max_session_length, session.max_session_length)
        timer = (
            asyncio.get_running_loop().call_later(limit, session.end, BrokerError(SESSION_TIME_LIMIT))
            if limit
            else None
        )
        traffic = session.traffic  # read live by the sessions API and the metrics
        try:
            on_input = input_rule(stream, session.mode, at_client_init=bool(stream.password))
            if stream.password:
                after = await authenticate(websocket, stream, domain.name)
                if after:
                    allowed = on_input(after) if on_input is not None else after
                    if allowed is None:
                        raise input_refused(on_input)
                    stream.backend.write(allowed)
            if stream.kind is ConsoleKind.SERIAL:
                await replay_history(websocket, stream, domain.name)
            log.info(
                "%s console session for %s%s opened from %s via %s",
                session.mode.value,
                domain.name,
                f" (user {session.user!r})" if session.user else "",
                client,
                stream.endpoint,
            )
            self.observe.session_opened(session)
            splicer = websocket.scope.get("extensions", {}).get(SPLICE_EXTENSION)
            on_text, idle = text_rule(stream.kind), self.limits.idle_timeout
            if splicer is not None:  # served by our uvicorn protocol: the fast path
                end = await splicer.splice(
                    stream.backend,
                    on_text=on_text,
                    on_input=on_input,
                    stop=session.stop,
                    idle_timeout=idle,
                    traffic=traffic,
                )
            else:
                end = await relay(
                    websocket,
                    stream.backend,
                    on_text=on_text,
                    on_input=on_input,
                    stop=session.stop,
                    idle_timeout=idle,
                    traffic=traffic,
                )
        except BrokerError as exc:  # from the VNC-auth handshake
            log.warning("console session for %s from %s failed: %s", domain.name, client, exc.message)
            self.observe.session_over(session, exc.failure.slug)
            await _close(websocket, exc)
            return
        except ClientLeft:
            log.info("console session for %s from %s: the client left during the VNC handshake", domain.name, client)
            self.observe.session_over(session, CLIENT_LEFT)
            return
        except BaseException:  # cancelled (a shutdown past its grace period), or a bug: still on record
            self.observe.session_over(session, INTERRUPTED)
            raise
        finally:
            # Whatever ended it (also a cancellation): the VNC connection QEMU counts goes too.
            stream.backend.close()
            if timer is not None:
                timer.cancel()
            self.live.remove(session)
        reason = await self.end_reason(end, session, domain, stream, on_input)
        await _close(websocket, reason)
        self.observe.session_over(session, reason.failure.slug if reason else _end_slug(end))
        log.info("console session for %s from %s ended: %s; %s", domain.name, client, end.value, traffic.summary())

    async def open_session(
        self,
        websocket: WebSocket,
        authorize: Callable[[], Grant],
        take_over: bool = False,
        announce: Callable[[Grant], Awaitable[None]] | None = None,
    ) -> tuple[LiveSession, DomainInfo, Stream]:
        """Every check before a console is relayed, cheapest first; the link is spent only
        once the broker-wide limits allow the session. Once spent, the client hears so
        (announce) before anything else can fail: a page keeps its pass for a retry."""
        if not self.origin_allowed(websocket):
            raise self.origin_refused(websocket)
        with self.live.opening():
            grant = authorize()
            if announce is not None:
                await announce(grant)
            self.live.check_exclusive(grant.console, grant.mode)
            taken: list[LiveSession] = []  # for the audit trail: the sessions this one ends
            if grant.mode is LinkMode.EXCLUSIVE:  # the others hear why before this one connects
                for other in self.live.of_console(grant.console):
                    other.end(BrokerError(EXCLUSIVE_TAKEN))
                    taken.append(other)
            force = take_over and grant.may_take_over and self.serial_take_over
            if force:  # our own sessions on that console hear why they end before libvirt cuts them
                for other in self.live.of_console(grant.console):
                    other.end(BrokerError(TAKEN_OVER))
                    taken.append(other)
            via = "page" if "uuid" in websocket.path_params else "link"
            viewer = ops.viewer_of(websocket, grant, via=via)
            session = self.live.add(grant.console, grant.name, viewer, grant.mode, grant.user)
            session.max_session_length = grant.max_session_length
            if taken or force:
                self.observe.take_over(session, taken, "exclusive" if grant.mode is LinkMode.EXCLUSIVE else "serial")
            try:
                domain, stream = await self.consoles.open(grant.console, take_over=force)
            except BrokerError as exc:
                self.live.remove(session)
                if exc.failure is CONSOLE_BUSY:
                    raise BrokerError(CONSOLE_BUSY, busy_reason(exc, grant, take_over, self.serial_take_over)) from None
                raise
            except BaseException:
                self.live.remove(session)
                raise
            return session, domain, stream

    async def end_reason(
        self, end: RelayEnd, session: LiveSession, domain: DomainInfo, stream: Stream, on_input: object = None
    ) -> BrokerError | None:
        """What to tell the client when the relay ended (None: the client left by itself)."""
        if end is RelayEnd.STOPPED:
            return session.reason
        if end is RelayEnd.IDLE:
            return BrokerError(
                IDLE_TIMEOUT, f"The console was closed after {self.limits.idle_timeout:g} s without input."
            )
        serial = stream.kind is ConsoleKind.SERIAL
        if end is RelayEnd.INPUT_REFUSED:
            return input_refused(on_input)
        if end is RelayEnd.CLIENT_SENT_TEXT:
            return BrokerError(UNSUPPORTED_DATA, serial_kind.VOCABULARY if serial else None)
        if end is RelayEnd.BACKEND_CLOSED:
            if await self._stopped(domain):
                return BrokerError(VM_STOPPED, f"{VM_STOPPED.summary.rstrip('.')}: {domain.name!r}.")
            if serial and stream.backend.failure:  # libvirt cut the stream: a forced open elsewhere
                return BrokerError(TAKEN_OVER, f"Another session took over this console of {domain.name!r}.")
            if serial:
                return BrokerError(CONSOLE_CLOSED, f"The serial console of {domain.name!r} closed.")
            return BrokerError(CONSOLE_CLOSED, f"{CONSOLE_CLOSED.summary.rstrip('.')}: {domain.name!r}.")
        return None

    def origin_refused(self, connection: HTTPConnection) -> BrokerError:
        return BrokerError(ORIGIN_REFUSED, f"Consoles cannot be opened from {connection.headers['origin']!r}.")

    def origin_allowed(self, connection: HTTPConnection) -> bool:
        """Browsers always send Origin: it must be ours or configured. Without Origin
        (a non-browser client that holds a valid token) the token alone decides."""
        origin = connection.headers.get("origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        return origin in self.allowed_origins or origin == self.own_origin(connection)

    def own_origin(self, connection: HTTPConnection) -> str:
        if self.public_url:
            parts = urlsplit(self.public_url)
            return f"{parts.scheme}://{parts.netloc}".lower()
        scheme = {"ws": "http", "wss": "https"}.get(connection.url.scheme, connection.url.scheme)
        return f"{scheme}://{connection.headers.get('host', '')}".lower()

    async def watch_libvirt(self) -> None:
        """Keep the libvirt connection (and so its lifecycle events) up; retry with backoff."""
        delay = 1.0
        while True:
            ok, detail = await self.consoles.healthy()
            self.observe.libvirt(ok)
            if ok:
                delay = 1.0
                await asyncio.sleep(5.0)
            else:
                log.warning("libvirt unavailable (%s); retrying in %.0fs", detail, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

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


@dataclass(frozen=True)
class ConsoleRequest:
    """The body of POST /api/v1/domains/{ident}/console, checked."""

    kind: ConsoleKind = ConsoleKind.VNC
    ttl: float | None = None
    graphics: int | None = None  # VNC: the <graphics> index
    serial: str | int | None = None  # serial: alias or index
    take_over: bool = True  # serial: may this link force a busy console over
    mode: LinkMode = LinkMode.INTERACTIVE
    user: str = ""
    max_session_length: float = 0.0

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ConsoleRequest:
        unknown = set(body) - {"ttl", "graphics", "kind", "console", "take_over", "mode", "user", "max_session_length"}
        if unknown:
            raise BrokerError(INVALID_INPUT, f"Unknown field(s): {', '.join(sorted(unknown))}.")
        try:
            kind = ConsoleKind(body.get("kind", "vnc"))
        except ValueError:
            raise BrokerError(INVALID_INPUT, "kind must be 'vnc' or 'serial'.") from None
        index = body.get("graphics")
        if index is not None and (kind is not ConsoleKind.VNC or not _is_index(index)):
            raise BrokerError(INVALID_INPUT, "graphics must be a device index (0 or more), for kind 'vnc' only.")
        serial = body.get("console")
        if serial is not None and (kind is not ConsoleKind.SERIAL or not (_is_index(serial) or _is_alias(serial))):
            raise BrokerError(INVALID_INPUT, "console must be a serial console's alias or index, for kind 'serial'.")
        take_over = body.get("take_over", True)
        if not isinstance(take_over, bool) or (kind is not ConsoleKind.SERIAL and "take_over" in body):
            raise BrokerError(INVALID_INPUT, "take_over must be true or false, for kind 'serial' only.")
        try:
            mode = LinkMode(body.get("mode", "interactive"))
        except ValueError:
            raise BrokerError(INVALID_INPUT, "mode must be 'interactive', 'view-only' or 'exclusive'.") from None
        user = body.get("user", "")
        if not isinstance(user, str) or len(user) > MAX_USER_LABEL or not user.isprintable():
            raise BrokerError(INVALID_INPUT, f"user must be printable text of at most {MAX_USER_LABEL} characters.")
        length = body.get("max_session_length", 0)
        if isinstance(length, bool) or not isinstance(length, (int, float)) or not 0 <= length <= 7 * 86400:
            raise BrokerError(INVALID_INPUT, "max_session_length must be a number of seconds from 0 (none) to 604800.")
        return cls(kind, body.get("ttl"), index, serial, take_over, mode, user, float(length))


MAX_USER_LABEL = 128


def input_refused(on_input: object) -> BrokerError:
    """A view-only session sent a message its filter cannot judge (kinds/rfbinput.py)."""
    what = on_input.refused if isinstance(on_input, VncInput) and on_input.refused else "input"
    return BrokerError(UNSUPPORTED_DATA, f"This view-only link sent {what}, which it may not; the session ended.")


def _shortest(*limits: float) -> float:
    """The tightest of several session-length caps, 0 meaning none."""
    return min((limit for limit in limits if limit), default=0.0)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_alias(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable()


def busy_reason(error: BrokerError, grant: Grant, asked: bool, broker_allows: bool) -> str:
    """Why a busy serial console was not opened, and what the user can do."""
    if not broker_allows:
        return f"{error.message} Taking a console over is turned off on this broker."
    if not grant.may_take_over:
        return f"{error.message} This link may not take it over."
    if asked:
        return f"{error.message} Taking it over failed; try again."
    return f"{error.message} Take over to end the other session."


async def replay_history(websocket: WebSocket, stream: Stream, name: str) -> None:
    """Before live output: the end of the console's log, or why there is none."""
    hint = f"No history: the console has no log. To keep one, put <log file=…/> in its <serial>: {serial_xml_hint(name)}"
    await websocket.send_text(serial_kind.history_header(stream.history, hint))
    if stream.history:
        await websocket.send_bytes(stream.history)
    await websocket.send_text(serial_kind.LIVE)


def create_app(broker: Broker) -> Starlette:
    routes = [
        Route("/healthz", broker.healthz),
        Route("/api/v1/domains", broker.list_domains),
        Route("/api/v1/domains/{ident}/console", broker.create_console, methods=["POST"]),
        Route("/api/v1/domains/{ident}/screenshot", broker.screenshot),
        Route("/api/v1/openapi.json", broker.openapi),
        WebSocketRoute("/websockify", broker.websockify),
        Route("/console", broker.open_console_link),
        Route("/console/{uuid}/", broker.console_page),
        Route("/console/{uuid}/terminal", broker.terminal_page),
        WebSocketRoute("/console/{uuid}/websockify", broker.console_websocket),
        *ops.routes(broker),
    ]
    routes.append(Route("/static/{name}", broker.web.static_file))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            broker.web.build()
        except WebFilesMissing as exc:  # said once at start, not only to the first user
            log.warning("console pages unavailable (they answer 503): %s", exc)
        watcher = asyncio.create_task(broker.watch_libvirt())
        yield
        watcher.cancel()

    # Without public_url the broker's own origin (the Origin check) and its links come from
    # the Host header: a DNS-rebinding page would pass as "our own". allowed_hosts pins it.
    middleware = [Middleware(HostCheck, allowed_hosts=list(broker.allowed_hosts))]
    app = Starlette(
        routes=routes,
        middleware=middleware if broker.allowed_hosts else None,
        exception_handlers={BrokerError: _broker_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    # A missing slash is a 404, never a redirect built from the request's own path.
    app.router.redirect_slashes = False
    app.state.broker = broker
    return app


async def _broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    headers = {}
    if exc.failure is UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(exc.to_json(), status_code=exc.failure.http_status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": slug, "message": exc.detail}}, status_code=exc.status_code, headers=exc.headers
    )


MAX_BODY = 16 * 1024  # a console request is a few bytes of JSON


async def _json_body(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BrokerError(INVALID_INPUT, f"The request body is larger than {MAX_BODY} bytes.")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BrokerError(INVALID_INPUT, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BrokerError(INVALID_INPUT, "The request body must be a JSON object.")
    return body


async def _close(websocket: WebSocket, error: BrokerError | None) -> None:
    if error is None:
        return
    try:
        await websocket.close(error.failure.close_code, error.close_reason)
    except Exception:  # already gone: nobody is left to tell
        pass


def _end_slug(end: RelayEnd) -> str:
    """How a session ended that no close code of ours describes (the client's doing)."""
    return CLIENT_UNRESPONSIVE if end is RelayEnd.CLIENT_UNRESPONSIVE else CLIENT_CLOSED


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _key_client(connection: HTTPConnection) -> str:
    """Who counts as one client for failed API keys: its address (behind a trusted proxy,
    X-Forwarded-For), or for peers of a UNIX socket, which have none, that socket."""
    if connection.client:
        return connection.client.host
    server = connection.scope.get("server")
    return f"unix:{server[0]}" if server else "unknown"


def _client(connection: HTTPConnection) -> str:
    return f"{connection.client.host}:{connection.client.port}" if connection.client else "unknown"
