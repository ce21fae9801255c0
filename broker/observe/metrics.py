"""Prometheus metrics, with prometheus-client, in a registry of the broker's own.

Labels are few and bounded: console kind, end or refusal reason (a slug from
broker/errors.py or RelayEnd), and the direction of bytes. Never a token, an API key,
a client address or a session id; a domain's name only when the operator asks for it
(`metrics_domain_label`), since a host may run thousands.

What changes every moment (sessions open, bytes relayed, consoles being opened) is read
from the live-session registry when scraped, so a scrape always sees the registry as it
is, and the byte counters include sessions still in progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..live import LiveSessions
from ..model import ConsoleKind

CONTENT_TYPE = CONTENT_TYPE_LATEST
# No `*_created` series beside every counter and histogram: they double what is scraped
# and say only when the broker started (process_start_time_seconds says that).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
KINDS = tuple(kind.value for kind in ConsoleKind)
# A console session lasts from seconds (a glance) to a working day.
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 8 * 3600, 24 * 3600)


class Metrics:
    """Every metric family the broker exports, in one registry (not the process-global one,
    so several brokers in one test process do not collide)."""

    def __init__(self, live: LiveSessions, *, domain_label: bool = False) -> None:
        self.registry = registry = CollectorRegistry()
        Info("broker", "The broker's version.", registry=registry).info({"version": __version__})
        self.links_minted = Counter(
            "broker_links_minted", "Console links minted, by console kind.", ["kind"], registry=registry
        )
        self.links_redeemed = Counter(
            "broker_links_redeemed",
            "Console links spent (on /websockify or by the console page), by console kind.",
            ["kind"],
            registry=registry,
        )
        self.refusals = Counter(
            "broker_console_refusals",
            "Console links and console WebSockets refused, by reason (the close code's slug).",
            ["reason"],
            registry=registry,
        )
        self.api_refusals = Counter(
            "broker_api_refusals", "REST requests refused for their API key, by reason.", ["reason"], registry=registry
        )
        self.sessions_opened = Counter(
            "broker_sessions_opened", "Console sessions that began relaying, by kind.", ["kind"], registry=registry
        )
        self.sessions_ended = Counter(
            "broker_sessions_ended",
            "Console sessions ended, by reason (a close code's slug, client_closed, client_unresponsive, interrupted).",
            ["reason"],
            registry=registry,
        )
        self.sessions_killed = Counter(
            "broker_sessions_killed", "Console sessions ended through the sessions API.", registry=registry
        )
        self.session_duration = Histogram(
            "broker_session_duration_seconds",
            "How long console sessions lasted, from their opening to their end.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.libvirt_up = Gauge(
            "broker_libvirt_up", "1 while libvirt answers the broker, 0 while it does not.", registry=registry
        )
        most = Gauge(
            "broker_sessions_max", "max_sessions: console sessions relayed at once, at most.", registry=registry
        )
        most.set(live.limits.max_sessions)
        for kind in KINDS:  # every series present from the start, so rate() and absent() behave
            self.links_minted.labels(kind)
            self.links_redeemed.labels(kind)
            self.sessions_opened.labels(kind)
            self.session_duration.labels(kind)
        registry.register(LiveCollector(live, domain_label=domain_label))
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_open_fds, …

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LiveCollector(Collector):
    """The families read from the live-session registry at scrape time."""

    def __init__(self, live: LiveSessions, *, domain_label: bool = False) -> None:
        self.live = live
        self.domain_label = domain_label

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        sessions = self.live.all()
        relaying = [s for s in sessions if s.opened]
        open_by_kind = GaugeMetricFamily(
            "broker_sessions_open", "Console sessions relaying now, by kind.", labels=["kind"]
        )
        for kind in KINDS:
            open_by_kind.add_metric([kind], sum(1 for s in relaying if s.kind == kind))
        yield open_by_kind
        yield GaugeMetricFamily(
            "broker_consoles_opening",
            "Consoles being opened now (token check, libvirt, connect); at most max_pending.",
            value=self.live.pending,
        )
        moved = CounterMetricFamily(
            "broker_relayed_bytes",
            "Bytes relayed, by direction: to_browser (from the console) and from_browser; "
            "includes sessions still in progress.",
            labels=["direction"],
        )
        moved.add_metric(["to_browser"], self.live.moved_down + sum(s.traffic.down_now() for s in sessions))
        moved.add_metric(["from_browser"], self.live.moved_up + sum(s.traffic.up for s in sessions))
        yield moved
        if self.domain_label:
            per_domain = GaugeMetricFamily(
                "broker_domain_sessions_open",
                "Console sessions relaying now, by domain name (metrics_domain_label = true).",
                labels=["domain"],
            )
            counts: dict[str, int] = {}
            for session in relaying:
                counts[session.name] = counts.get(session.name, 0) + 1
            for name, count in sorted(counts.items()):
                per_domain.add_metric([name], count)
            yield per_domain
