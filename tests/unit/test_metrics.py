"""The metric families: names, types, labels (never a secret, an address or a domain
unless asked), and how events move them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from broker import __version__
from broker.access.limits import SessionLimits
from broker.access.tokens import Grant
from broker.errors import SESSION_KILLED, TOKEN_EXPIRED, UNAUTHORIZED, BrokerError
from broker.live import LiveSessions, Viewer
from broker.model import ConsoleRef
from broker.observe.events import CLIENT_CLOSED, Observer
from unit_support import run_async

UUID_A = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"

FAMILIES = {
    "broker_info": "gauge",  # an Info, as the text format shows it
    "broker_links_minted": "counter",
    "broker_links_redeemed": "counter",
    "broker_console_refusals": "counter",
    "broker_api_refusals": "counter",
    "broker_sessions_opened": "counter",
    "broker_sessions_ended": "counter",
    "broker_sessions_killed": "counter",
    "broker_session_duration_seconds": "histogram",
    "broker_libvirt_up": "gauge",
    "broker_sessions_max": "gauge",
    "broker_sessions_open": "gauge",
    "broker_consoles_opening": "gauge",
    "broker_relayed_bytes": "counter",
}
# Every label any broker_* series may carry: bounded sets, nothing a client chooses.
ALLOWED_LABELS = {"kind", "reason", "direction", "version", "le"}


def scrape(observer: Observer) -> dict[str, object]:
    text = observer.metrics.exposition().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict, name: str, sample: str | None = None, **labels: str) -> float:
    family = families[name]
    for s in family.samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample or name} {labels}")


def test_families_types_and_labels() -> None:
    async def scenario() -> None:
        observer = Observer(LiveSessions(SessionLimits(max_sessions=77)))
        families = scrape(observer)
        broker_families = {name: f.type for name, f in families.items() if name.startswith("broker")}
        assert broker_families == FAMILIES  # and no *_created series: they only double the count
        assert "process_resident_memory_bytes" in families
        for name in broker_families:
            for sample in families[name].samples:
                assert set(sample.labels) <= ALLOWED_LABELS, (name, sample.labels)
        assert value(families, "broker_info", version=__version__) == 1
        assert value(families, "broker_sessions_max") == 77
        assert value(families, "broker_sessions_open", kind="vnc") == 0
        assert value(families, "broker_links_minted", sample="broker_links_minted_total", kind="vnc") == 0

    run_async(scenario())


def test_events_move_the_metrics() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        observer = Observer(live)
        grant = Grant(ConsoleRef(UUID_A), "vm-a", 0.0, minted_by="key1")
        observer.link_minted(grant, 60.0)
        observer.link_redeemed(grant)
        observer.refused(BrokerError(TOKEN_EXPIRED), "192.0.2.1:1", at="websocket")
        observer.api_refused(BrokerError(UNAUTHORIZED), "192.0.2.1", "/api/v1/domains")
        observer.libvirt(True)
        one = live.add(ConsoleRef(UUID_A), "vm-a", Viewer(client="192.0.2.1:1"))
        two = live.add(ConsoleRef(UUID_A), "vm-a", Viewer(client="192.0.2.2:2"))
        observer.session_opened(one)
        observer.session_opened(two)
        one.traffic.down, one.traffic.up = 3000, 30
        two.traffic.down = 500
        families = scrape(observer)
        assert value(families, "broker_links_minted", sample="broker_links_minted_total", kind="vnc") == 1
        assert value(families, "broker_links_redeemed", sample="broker_links_redeemed_total", kind="vnc") == 1
        assert value(families, "broker_console_refusals", reason="token_expired") == 1
        assert value(families, "broker_api_refusals", reason="unauthorized") == 1
        assert value(families, "broker_libvirt_up") == 1
        assert value(families, "broker_sessions_open", kind="vnc") == 2
        assert value(families, "broker_relayed_bytes", direction="to_browser") == 3500
        assert value(families, "broker_relayed_bytes", direction="from_browser") == 30

        one.end(BrokerError(SESSION_KILLED))
        observer.session_killed(one, "cli")
        live.remove(one)
        observer.session_over(one, "session_killed")
        live.remove(two)
        observer.session_over(two, CLIENT_CLOSED)
        families = scrape(observer)
        assert value(families, "broker_sessions_open", kind="vnc") == 0
        assert value(families, "broker_sessions_ended", reason="session_killed") == 1
        assert value(families, "broker_sessions_ended", reason="client_closed") == 1
        assert value(families, "broker_sessions_killed", sample="broker_sessions_killed_total") == 1
        count = "broker_session_duration_seconds_count"
        assert value(families, "broker_session_duration_seconds", sample=count, kind="vnc") == 2
        # Bytes of ended sessions stay counted.
        assert value(families, "broker_relayed_bytes", direction="to_browser") == 3500

    run_async(scenario())


def test_a_session_that_never_relayed_counts_as_refused() -> None:
    async def scenario() -> None:
        live = LiveSessions(SessionLimits())
        observer = Observer(live)
        session = live.add(ConsoleRef(UUID_A), "vm-a")
        live.remove(session)
        observer.session_over(session, "vnc_auth_failed")
        families = scrape(observer)
        assert value(families, "broker_console_refusals", reason="vnc_auth_failed") == 1
        assert not [s for s in families["broker_sessions_ended"].samples if s.value]

    run_async(scenario())


def test_the_domain_label_only_when_turned_on() -> None:
    async def scenario() -> None:
        for turned_on in (False, True):
            live = LiveSessions(SessionLimits())
            observer = Observer(live, domain_label=turned_on)
            for _ in range(2):
                observer.session_opened(live.add(ConsoleRef(UUID_A), "vm-a"))
            families = scrape(observer)
            assert ("broker_domain_sessions_open" in families) is turned_on
            if turned_on:
                assert value(families, "broker_domain_sessions_open", domain="vm-a") == 2

    run_async(scenario())
