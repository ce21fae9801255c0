"""The click-to-pixels benchmark's counting (bench/pixreport.py) and its link's arithmetic
(bench/linkemu.py); the benchmark itself is not a test (bash bench/run.sh --only pixels)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from bench import pixreport
from bench.linkemu import Link

ORIGIN_S = 1_700_000_000.0  # the page's performance.timeOrigin, in epoch seconds
MONO = 5000.0  # the browser's monotonic clock at that moment


def event(log: pixreport.NetLog, method: str, at_ms: float, **params: object) -> None:
    """An event `at_ms` after the navigation started, on the browser's monotonic clock."""
    p: dict[str, object] = {"timestamp": MONO + at_ms / 1000, **params}
    if method == "Network.requestWillBeSent":
        p["wallTime"] = ORIGIN_S + at_ms / 1000
    log.add(method, p)


def page_load() -> pixreport.NetLog:
    log = pixreport.NetLog()
    event(log, "Network.requestWillBeSent", 1, requestId="1")  # GET /console?token=…
    event(log, "Network.requestWillBeSent", 20, requestId="1", redirectResponse={"encodedDataLength": 300})
    event(log, "Network.loadingFinished", 40, requestId="1", encodedDataLength=2000)
    event(log, "Network.requestWillBeSent", 50, requestId="2")  # a script, from the HTTP cache
    event(log, "Network.responseReceived", 51, requestId="2", response={"fromDiskCache": True})
    event(log, "Network.loadingFinished", 52, requestId="2", encodedDataLength=0)
    event(log, "Network.webSocketWillSendHandshakeRequest", 60, requestId="3")
    event(log, "Network.webSocketHandshakeResponseReceived", 70, requestId="3", response={"headersText": "x" * 150})
    payload = base64.b64encode(b"RFB 003.008\n").decode()
    event(log, "Network.webSocketFrameReceived", 80, requestId="3", response={"opcode": 2, "payloadData": payload})
    event(log, "Network.requestWillBeSent", 500, requestId="4")  # after the pixel: not counted
    event(log, "Network.loadingFinished", 510, requestId="4", encodedDataLength=9999)
    return log


def test_requests_and_bytes_before_the_first_pixel() -> None:
    counted = page_load().before(ORIGIN_S * 1000 + 100)
    # The redirect hop, the page, the cached script and the WebSocket are requests; the cache
    # answered one of them. Bytes: 300 + 2000 + 0 + 150 + (12 + 2) of the one frame.
    assert counted == {"requests": 4, "network_requests": 3, "bytes": 2464, "websockets": 1}


def test_the_websocket_milestones_are_on_the_page_clock() -> None:
    milestones = page_load().milestones(ORIGIN_S * 1000)
    assert {k: round(v, 3) for k, v in milestones.items()} == {
        "ws_created": 60,
        "ws_open": 70,
        "ws_first_message": 80,
    }


def test_no_events_count_nothing() -> None:
    assert pixreport.NetLog().before(1e12)["requests"] == 0
    assert pixreport.NetLog().milestones(0.0) == {}


def test_frame_sizes_include_the_header() -> None:
    assert pixreport.frame_bytes({"opcode": 1, "payloadData": "hi"}) == 4
    big = base64.b64encode(bytes(70_000)).decode()
    assert pixreport.frame_bytes({"opcode": 2, "payloadData": big}) == 70_010


def result(contender: str, visit: str, ms: float | None, rep: int = 0, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"link": "link", "visit": visit, "contender": contender, "rep": rep, "ms": ms}
    return {**row, "requests": 5, "network_requests": 5, "bytes": 1000, **extra}


def test_medians_leave_failed_visits_out() -> None:
    results = [
        result("broker", "cold", 900, 0),
        result("broker", "cold", 1100, 1),
        result("broker", "cold", 1000, 2),
        result("broker", "cold", None, 3, error="TimeoutError"),
    ]
    m = pixreport.medians(results)
    assert m["link"]["cold"]["broker"]["ms"] == 1000
    assert m["link"]["cold"]["broker"]["reps"] == 3
    assert pixreport.failures(results)[0]["rep"] == 3


def test_targets_compare_with_vnc_lite_on_the_emulated_link() -> None:
    m = pixreport.medians(
        [
            result("broker", "cold", 700),
            result("vnc_lite", "cold", 1000),
            result("broker", "warm", 950),
            result("vnc_lite", "warm", 1000),
        ]
    )
    checks = {name.split(": ", 1)[1]: (measured, met) for name, _, measured, met in pixreport.targets(m)}
    assert checks == {
        "cold, broker / vnc_lite": ("0.70×", True),
        "warm, broker / vnc_lite": ("0.95×", False),
        "requests before the first pixel, cold (broker)": ("5", True),
    }


def test_the_report_is_written_as_json_and_markdown(tmp_path: Path) -> None:
    info = {"command": "bash bench/run.sh --only pixels", "reps": 1}
    results = [result("broker", "cold", 1234.4, ws_created=800.0), result("vnc_lite", "cold", 2000)]
    text = pixreport.write(tmp_path, info, results)
    assert "| 100 ms / 10 Mbit/s, emulated link (bench/linkemu.py) | cold | 1,234 | 2,000 | 0.62× |" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["medians"]["link"]["cold"]["broker"]["ws_created"] == 800.0
    assert (tmp_path / "results.md").read_text() == text


def test_the_link_serialises_then_delays() -> None:
    link = Link(bytes_per_s=1000.0, delay_s=0.05)
    assert link.arrival(100, now=10.0) == 10.0 + 0.1 + 0.05
    # Sent while the first is still on the wire: it waits its turn.
    assert round(link.arrival(100, now=10.05), 9) == round(10.2 + 0.05, 9)
    # After the link went idle: only its own time on the wire.
    assert link.arrival(100, now=20.0) == 20.0 + 0.1 + 0.05
