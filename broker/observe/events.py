"""What happens to links and sessions, told once, to the metrics and to the audit trail.

The app calls one method per event, where it happens; this module decides what each
event counts and records. Everything passed in is already safe to show: key labels (never
keys), session ids (never tokens or page passes), reason slugs, client addresses.
"""

from __future__ import annotations

from ..access.tokens import Grant
from ..errors import BrokerError
from ..live import LiveSession, LiveSessions
from .audit import AuditLog
from .metrics import Metrics

# How a session ended when no close code says it: RelayEnd names, as slugs.
CLIENT_CLOSED = "client_closed"
CLIENT_UNRESPONSIVE = "client_unresponsive"
CLIENT_LEFT = "client_left"  # during the VNC login, before the relay began
INTERRUPTED = "interrupted"  # the session's task was cancelled, or failed unexpectedly


class Observer:
    def __init__(self, live: LiveSessions, audit: AuditLog | None = None, *, domain_label: bool = False) -> None:
        self.metrics = Metrics(live, domain_label=domain_label)
        self.audit = audit or AuditLog(None)

    def link_minted(self, grant: Grant, ttl: float) -> None:
        kind = grant.console.kind.value
        self.metrics.links_minted.labels(kind).inc()
        self.audit.emit(
            "link_minted",
            key=grant.minted_by,
            domain=_domain(grant.name, grant.console.uuid),
            kind=kind,
            console=grant.console.index,
            ttl=ttl,
            mode=grant.mode.value,
            user=grant.user,
        )

    def link_redeemed(self, grant: Grant) -> None:
        self.metrics.links_redeemed.labels(grant.console.kind.value).inc()

    def refused(self, error: BrokerError, client: str, *, at: str, grant: Grant | None = None) -> None:
        """A console link or console WebSocket refused (`at`: "link" for the console page's
        /console?token=, "websocket" for a console socket)."""
        self.metrics.refusals.labels(error.failure.slug).inc()
        fields: dict[str, object] = {"reason": error.failure.slug, "at": at, "client": client}
        if grant is not None:
            fields["domain"] = _domain(grant.name, grant.console.uuid)
        self.audit.emit("refused", **fields)

    def api_refused(self, error: BrokerError, client: str, path: str) -> None:
        """A REST request without a valid API key (the path only: no query, no key)."""
        self.metrics.api_refusals.labels(error.failure.slug).inc()
        self.audit.emit("refused", reason=error.failure.slug, at="api", client=client, path=path)

    def session_opened(self, session: LiveSession) -> None:
        session.opened = True
        self.metrics.sessions_opened.labels(session.kind).inc()
        viewer = session.viewer
        self.audit.emit(
            "session_opened",
            session=session.id,
            domain=_domain(session.name, session.uuid),
            kind=session.kind,
            console=session.console.index,
            client=viewer.client,
            user_agent=viewer.user_agent,
            key=viewer.minted_by,
            via=viewer.via,
            mode=session.mode.value,
            user=session.user,
        )

    def session_over(self, session: LiveSession, reason: str) -> None:
        """The session is over, for `reason` (a slug). One that never began relaying (the
        VNC login failed) was refused rather than ended; a client gone during that login
        is neither."""
        if not session.opened:
            if reason != CLIENT_LEFT:
                self.metrics.refusals.labels(reason).inc()
                self.audit.emit(
                    "refused",
                    reason=reason,
                    at="websocket",
                    client=session.viewer.client,
                    domain=_domain(session.name, session.uuid),
                )
            return
        duration = session.duration()
        self.metrics.sessions_ended.labels(reason).inc()
        self.metrics.session_duration.labels(session.kind).observe(duration)
        self.audit.emit(
            "session_ended",
            session=session.id,
            domain=_domain(session.name, session.uuid),
            reason=reason,
            duration=round(duration, 3),
            bytes_to_browser=session.traffic.down_now(),
            bytes_from_browser=session.traffic.up,
        )

    def take_over(self, session: LiveSession, taken: list[LiveSession], how: str) -> None:
        """`session` (not relaying yet) ends `taken` on its console: an exclusive link
        ("exclusive"), or a serial take-over ("serial": libvirt also cuts whoever else held
        the console outside the broker, so `ended` may be empty)."""
        self.audit.emit(
            "take_over",
            session=session.id,
            domain=_domain(session.name, session.uuid),
            kind=session.kind,
            console=session.console.index,
            how=how,
            ended=[other.id for other in taken],
            client=session.viewer.client,
            key=session.viewer.minted_by,
        )

    def session_killed(self, session: LiveSession, by: str) -> None:
        self.metrics.sessions_killed.inc()
        self.audit.emit("session_killed", session=session.id, domain=_domain(session.name, session.uuid), by=by)

    def libvirt(self, up: bool) -> None:
        self.metrics.libvirt_up.set(1 if up else 0)


def _domain(name: str, uuid: str) -> dict[str, str]:
    return {"name": name, "uuid": uuid}
