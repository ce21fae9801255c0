"""The click-to-pixels benchmark's arithmetic: requests and bytes before the first pixel from
Chromium's DevTools network events, medians, the table and the targets (bench/pixels.py runs
the browser; this module only counts, so that it can be tested without one)."""

from __future__ import annotations

import base64
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .report import targets_table

CONTENDERS = ("broker", "vnc_lite")
LINKS = {
    "loopback": "loopback",
    "cdp": "100 ms / 10 Mbit/s, Chromium's emulation (CDP)",
    "link": "100 ms / 10 Mbit/s, emulated link (bench/linkemu.py)",
}
VISITS = ("cold", "warm")
EMULATED = ("cdp", "link")
# The targets, on an emulated link: broker / vnc_lite medians, and requests cold.
COLD_RATIO, WARM_RATIO, COLD_REQUESTS = 0.7, 0.9, 6
NETWORK_EVENTS = (
    "Network.requestWillBeSent",
    "Network.requestServedFromCache",
    "Network.responseReceived",
    "Network.loadingFinished",
    "Network.loadingFailed",
    "Network.webSocketWillSendHandshakeRequest",
    "Network.webSocketHandshakeResponseReceived",
    "Network.webSocketFrameReceived",
    "Network.webSocketFrameSent",
)


class NetLog:
    """DevTools network events of one page, and what of them happened before a moment.

    Event timestamps are the browser's monotonic clock in seconds; requestWillBeSent also
    carries wall time, which places them on the page's clock (performance.timeOrigin + now)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def add(self, method: str, params: dict[str, Any]) -> None:
        self.events.append((method, params))

    def wall_offset(self) -> float | None:
        """Seconds to add to a monotonic timestamp to get epoch seconds."""
        for method, p in self.events:
            if method == "Network.requestWillBeSent" and "wallTime" in p:
                return float(p["wallTime"]) - float(p["timestamp"])
        return None

    def first(self, method: str) -> float | None:
        """Epoch milliseconds of the first `method` event, if any."""
        offset = self.wall_offset()
        for m, p in self.events:
            if m == method and offset is not None and "timestamp" in p:
                return (float(p["timestamp"]) + offset) * 1000
        return None

    def milestones(self, time_origin: float) -> dict[str, float]:
        """When the page's first WebSocket was created, opened and first received, in ms since
        the navigation started (`time_origin`: the page's performance.timeOrigin)."""
        found = {
            "ws_created": self.first("Network.webSocketWillSendHandshakeRequest"),
            "ws_open": self.first("Network.webSocketHandshakeResponseReceived"),
            "ws_first_message": self.first("Network.webSocketFrameReceived"),
        }
        return {name: at - time_origin for name, at in found.items() if at is not None}

    def before(self, epoch_ms: float) -> dict[str, int]:
        """Requests started and bytes received (headers and bodies as sent, WebSocket payloads)
        up to `epoch_ms`. A redirect hop, a WebSocket and a request answered from the cache each
        count as a request; `network_requests` leaves out those the cache answered (Blink's memory
        cache or the HTTP cache; a revalidation that the server answers 304 went to the network)."""
        offset = self.wall_offset()
        if offset is None:
            return {"requests": 0, "network_requests": 0, "bytes": 0, "websockets": 0}
        limit = epoch_ms / 1000 - offset
        started: set[str] = set()
        cached: set[str] = set()
        requests = websockets = total = 0
        for method, p in self.events:
            if "timestamp" not in p or float(p["timestamp"]) > limit:
                continue
            rid = str(p.get("requestId", ""))
            if method == "Network.requestWillBeSent":
                requests += 1
                started.add(rid)
                if "redirectResponse" in p:  # the hop before this one ended with its response
                    total += int(p["redirectResponse"].get("encodedDataLength", 0))
            elif method == "Network.requestServedFromCache":
                cached.add(rid)
            elif method == "Network.responseReceived":
                response = p.get("response", {})
                if response.get("fromDiskCache") or response.get("fromPrefetchCache"):
                    cached.add(rid)
            elif method == "Network.loadingFinished":
                total += int(p.get("encodedDataLength", 0))
            elif method == "Network.webSocketWillSendHandshakeRequest":
                requests += 1
                websockets += 1
            elif method == "Network.webSocketHandshakeResponseReceived":
                text = p.get("response", {}).get("headersText") or ""
                total += len(text.encode())
            elif method == "Network.webSocketFrameReceived":
                total += frame_bytes(p.get("response", {}))
        return {
            "requests": requests,
            "network_requests": requests - len(cached & started),
            "bytes": total,
            "websockets": websockets,
        }


def frame_bytes(frame: dict[str, Any]) -> int:
    """A received WebSocket frame's size on the wire: payload (base64 for binary) + header."""
    data = str(frame.get("payloadData", ""))
    size = len(base64.b64decode(data)) if frame.get("opcode") == 2 else len(data.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


def medians(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """link → visit → contender → median of every number over the repetitions that worked."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("ms") is not None:
            groups[r["link"], r["visit"], r["contender"]].append(r)
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for (link, visit, contender), runs in groups.items():
        keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        keys.discard("rep")
        m = {k: float(statistics.median(r[k] for r in runs if isinstance(r.get(k), (int, float)))) for k in keys}
        m["reps"] = len(runs)
        out.setdefault(link, {}).setdefault(visit, {})[contender] = m
    return out


def failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r.get("ms") is None]


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def fmt_kb(value: float | None) -> str:
    return "–" if value is None else f"{value / 1000:,.0f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def cell(m: dict[str, Any], link: str, visit: str, contender: str, key: str) -> float | None:
    value = m.get(link, {}).get(visit, {}).get(contender, {}).get(key)
    return None if value is None else float(value)


def table(m: dict[str, Any]) -> list[str]:
    lines = [
        "| link | visit | broker ms | vnc_lite ms | broker/vnc_lite | requests broker / vnc_lite "
        "| from the network | kB broker / vnc_lite | WebSocket created at, ms | WebSocket open at, ms "
        "| WebSocket open → pixel, ms | CPUs busy | reps |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for link, label in LINKS.items():
        for visit in VISITS:
            if link not in m or visit not in m[link]:
                continue

            def both(key: str, show: Any, link: str = link, visit: str = visit) -> str:
                return " / ".join(show(cell(m, link, visit, c, key)) for c in CONTENDERS)

            b, v = (cell(m, link, visit, c, "ms") for c in CONTENDERS)
            count = lambda x: "–" if x is None else f"{x:g}"  # noqa: E731
            cpus = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
            reps = both("reps", count)
            lines.append(
                f"| {label} | {visit} | {fmt_ms(b)} | {fmt_ms(v)} | {fmt_ratio(ratio(b, v))} "
                f"| {both('requests', count)} | {both('network_requests', count)} | {both('bytes', fmt_kb)} "
                f"| {both('ws_created', fmt_ms)} | {both('ws_open', fmt_ms)} | {both('after_ws_open', fmt_ms)} "
                f"| {both('machine_busy_cpus', cpus)} | {reps} |"
            )
    return lines


def targets(m: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, required, measured, met) on each emulated link in the results."""
    checks: list[tuple[str, str, str, bool | None]] = []
    for link in EMULATED:
        if link not in m:
            continue
        for visit, limit in (("cold", COLD_RATIO), ("warm", WARM_RATIO)):
            r = ratio(cell(m, link, visit, "broker", "ms"), cell(m, link, visit, "vnc_lite", "ms"))
            met = None if r is None else r <= limit
            checks.append((f"{LINKS[link]}: {visit}, broker / vnc_lite", f"≤ {limit}×", fmt_ratio(r), met))
        requests = cell(m, link, "cold", "broker", "requests")
        checks.append(
            (
                f"{LINKS[link]}: requests before the first pixel, cold (broker)",
                f"≤ {COLD_REQUESTS}",
                "–" if requests is None else f"{requests:g}",
                None if requests is None else requests <= COLD_REQUESTS,
            )
        )
    return checks


def markdown(info: dict[str, Any], results: list[dict[str, Any]]) -> str:
    m = medians(results)
    lines = [
        "# Click to pixels: the broker's console page against noVNC's vnc_lite.html behind websockify",
        "",
        f"`{info['command']}` at `{info.get('commit', '?')}`; {info.get('machine', '')}; "
        f"load average {info.get('loadavg', '?')}; served over {info.get('scheme', 'http').upper()}.",
        "",
        f"Medians of {info['reps']} repetition(s). ms: from the start of the navigation to the first "
        "animation frame whose canvas shows the VM's screen. Requests and kB: before that frame. "
        "CPUs busy: the whole machine's, during the visit (of its CPUs; the benchmark's own included).",
        "",
        *table(m),
        "",
        *targets_table(targets(m)),
    ]
    failed = failures(results)
    if failed:
        lines += ["", f"{len(failed)} visit(s) showed no pixel:", ""]
        lines += [f"- {r['link']} {r['visit']} {r['contender']} rep {r['rep']}: {r.get('error')}" for r in failed]
    return "\n".join(lines) + "\n"


def write(out: Path, info: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """results.json (every visit and the medians) and results.md in `out`; the markdown back."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**info, "medians": medians(results), "results": results}, indent=1))
    text = markdown(info, results)
    (out / "results.md").write_text(text)
    return text
