"""Medians, ratios, targets, the profile summary and the scaling plot, from the raw results."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

ARMS = ("direct", "websockify", "broker")
FLOOR = "c-relay"  # the plain C forwarder (bench/relay.c), on the down and rtt workloads
BASE = "broker-base"  # the broker from --base-tree
GiB = 1024**3

# (label, workload, key, unit, higher is better)
ROWS = [
    ("down: 256 MiB backend → client, TCP backend", "down", "mib_s", "MiB/s", True),
    ("down, UNIX-socket backend", "down_unix", "mib_s", "MiB/s", True),
    ("up: 64 MiB client → backend, 64 KiB frames", "up", "mib_s", "MiB/s", True),
    ("small-frame rate: 16-byte frames client → backend", "flood", "msg_s", "msg/s", True),
    ("round trip 64 B, p50", "rtt", "rtt_p50_us", "µs", False),
    ("round trip 64 B, p99", "rtt", "rtt_p99_us", "µs", False),
    ("set-up (mint →) connect → first VNC byte, p50", "setup", "first_byte_p50_us", "µs", False),
    ("set-up, p99", "setup", "first_byte_p99_us", "µs", False),
    (
        "set-up without the mint (WebSocket connect → first byte), p50",
        "setup",
        "connect_to_first_byte_p50_us",
        "µs",
        False,
    ),
]
CONC_ROWS = [
    ("opened", "opened", "sessions", True),
    ("aggregate echoes", "msg_s", "msg/s", True),
    ("echo p50", "rtt_p50_us", "µs", False),
    ("echo p99", "rtt_p99_us", "µs", False),
    ("relay RSS, sessions open", "mem_loaded.rss_mib", "MiB", False),
    ("relay PSS, sessions open", "mem_loaded.pss_mib", "MiB", False),
    ("relay CPU per echo", "relay_cpu_us_per_msg", "µs", False),
]


def flatten(result: dict) -> dict:
    flat = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def derive(r: dict) -> dict:
    """Per-repetition figures computed before taking medians."""
    r = flatten(r)
    seconds = r.get("seconds")
    if seconds:
        if "client_cpu_s" in r:
            r["client_cpu_pct"] = 100 * r["client_cpu_s"] / seconds
        if "relay_cpu_s" in r:
            r["relay_cpu_pct"] = 100 * r["relay_cpu_s"] / seconds
    if r.get("bytes") and "relay_cpu_s" in r and r["workload"] in ("down", "down_unix", "up"):
        r["relay_cpu_s_per_gib"] = r["relay_cpu_s"] * GiB / r["bytes"]
    if r.get("messages") and "relay_cpu_s" in r:
        r["relay_cpu_us_per_msg"] = 1e6 * r["relay_cpu_s"] / r["messages"]
    if r.get("opened") and "mem_loaded.pss_mib" in r:
        for kind in ("rss", "pss"):
            r[f"{kind}_per_session_kib"] = (
                1024 * (r[f"mem_loaded.{kind}_mib"] - r[f"mem_baseline.{kind}_mib"]) / r["opened"]
            )
    return r


def medians(results: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[r["workload"], r["arm"]].append(derive(r))
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (workload, arm), runs in groups.items():
        keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and k != "rep"}
        out[workload][arm] = {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}
        out[workload][arm]["reps"] = len(runs)
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def get(m: dict, workload: str, arm: str, key: str) -> float | None:
    return m.get(workload, {}).get(arm, {}).get(key)


def table(m: dict) -> list[str]:
    lines = [
        "| workload | unit | direct | websockify | broker | broker/websockify | broker/direct | websockify/direct |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, unit: str, workload: str, key: str) -> None:
        d, w, b = (get(m, workload, arm, key) for arm in ARMS)
        lines.append(
            f"| {label} | {unit} | {fmt(d)} | {fmt(w)} | {fmt(b)} | {ratio(b, w)} | {ratio(b, d)} | {ratio(w, d)} |"
        )

    for label, workload, key, unit, _ in ROWS:
        row(label, unit, workload, key)
        if workload == "rtt" and key.endswith("p99_us"):
            for q in ("p50", "p99"):
                d, w, b = (get(m, "rtt", arm, f"rtt_{q}_us") for arm in ARMS)
                if None not in (d, w, b):
                    lines.append(
                        f"| round trip, latency added over direct, {q} | µs | 0 | {fmt(w - d)} | {fmt(b - d)} "
                        f"| {ratio(b - d, w - d)} | – | – |"
                    )
    for workload in sorted((w for w in m if w.startswith("conc")), key=lambda w: int(w[4:])):
        for label, key, unit, _ in CONC_ROWS:
            row(f"{workload[4:]} sessions: {label}", unit, workload, key)
    return lines


def floor_table(m: dict) -> list[str]:
    """Downstream beside the least any relay process can do here (bench/relay.c), and what
    each relay's CPU costs per GiB moved."""
    lines = [
        "| workload | direct MiB/s | plain C relay MiB/s | broker MiB/s | C relay/direct | broker/direct "
        "| broker/C relay | relay CPU s/GiB: websockify | C relay | broker |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload in ("down", "down_unix", "up"):
        if workload not in m:
            continue
        d, c, b = (get(m, workload, arm, "mib_s") for arm in ("direct", FLOOR, "broker"))
        cpu = [get(m, workload, arm, "relay_cpu_s_per_gib") for arm in ("websockify", FLOOR, "broker")]
        lines.append(
            f"| {workload} | {fmt(d)} | {fmt(c)} | {fmt(b)} | {ratio(c, d)} | {ratio(b, d)} | {ratio(b, c)} "
            f"| {' | '.join(fmt(x) for x in cpu)} |"
        )
    if "rtt" in m:
        lines += [
            "",
            "| round trip 64 B: latency added over direct | websockify µs | plain C relay µs | broker µs "
            "| C relay/websockify | broker/websockify |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for q in ("p50", "p99"):
            d, w, c, b = (get(m, "rtt", arm, f"rtt_{q}_us") for arm in ("direct", "websockify", FLOOR, "broker"))
            if None not in (d, w, c, b):
                cells = (q, fmt(w - d), fmt(c - d), fmt(b - d), ratio(c - d, w - d), ratio(b - d, w - d))
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def base_table(m: dict) -> list[str]:
    """The broker beside the broker of --base-tree, workload by workload."""
    lines = ["| workload | figure | broker-base | broker | broker/broker-base |", "| --- | --- | ---: | ---: | ---: |"]
    figures = [
        ("mib_s", "MiB/s"),
        ("msg_s", "msg/s"),
        ("rtt_p50_us", "p50 µs"),
        ("rtt_p99_us", "p99 µs"),
        ("first_byte_p50_us", "set-up p50 µs"),
        ("relay_cpu_s_per_gib", "relay CPU s/GiB"),
        ("relay_cpu_us_per_msg", "relay CPU µs/echo"),
        ("mem_loaded.rss_mib", "relay RSS MiB"),
    ]
    for workload in m:
        for key, label in figures:
            a, b = get(m, workload, BASE, key), get(m, workload, "broker", key)
            if a is not None and b is not None:
                lines.append(f"| {workload} | {label} | {fmt(a)} | {fmt(b)} | {ratio(b, a)} |")
    return lines


def targets(m: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, required, measured, met) for the goals set for the broker."""

    def v(workload: str, arm: str, key: str) -> float | None:
        return get(m, workload, arm, key)

    checks = []

    def check(name: str, required: str, value: float | None, ok) -> None:
        checks.append((name, required, "–" if value is None else f"{value:.2f}", None if value is None else ok(value)))

    def r(workload: str, key: str, over: str = "websockify", arm: str = "broker") -> float | None:
        b, o = v(workload, arm, key), v(workload, over, key)
        return b / o if b is not None and o else None

    def added(q: str, arm: str = "broker") -> float | None:
        """The latency `arm` adds over direct, as a share of what websockify adds."""
        d, w, a = (v("rtt", x, f"rtt_{q}_us") for x in ("direct", "websockify", arm))
        return (a - d) / (w - d) if None not in (d, w, a) and w != d else None

    context = lambda x: None  # noqa: E731  (a figure to read beside a target, no target itself)
    check("down vs websockify", "≥ 1.25×", r("down", "mib_s"), lambda x: x >= 1.25)
    check("down vs direct", "≥ 0.6×", r("down", "mib_s", "direct"), lambda x: x >= 0.6)
    check("(context) the plain C relay's own down vs direct", "–", r("down", "mib_s", "direct", FLOOR), context)
    check("up vs websockify", "≥ 2×", r("up", "mib_s"), lambda x: x >= 2)
    check("small-frame rate vs websockify", "≥ 10×", r("flood", "msg_s"), lambda x: x >= 10)
    for q in ("p50", "p99"):
        check(f"round-trip latency added over direct, {q}, vs websockify's", "≤ 0.5×", added(q), lambda x: x <= 0.5)
        check(f"(context) the plain C relay's own added latency, {q}, vs websockify's", "–", added(q, FLOOR), context)
    opened = v("conc1000", "broker", "opened")
    check("1000 sessions: all open (broker)", "= 1000", opened, lambda x: x >= 1000)
    check("1000 sessions: aggregate msg/s vs websockify", "≥ 3×", r("conc1000", "msg_s"), lambda x: x >= 3)
    check("1000 sessions: p99 vs websockify", "≤ 0.33×", r("conc1000", "rtt_p99_us"), lambda x: x <= 1 / 3)
    check("1000 sessions: broker RSS (MiB)", "≤ 80", v("conc1000", "broker", "mem_loaded.rss_mib"), lambda x: x <= 80)
    check("set-up p50 vs websockify", "≤ 0.5×", r("setup", "first_byte_p50_us"), lambda x: x <= 0.5)
    return checks


def targets_table(rows: list[tuple[str, str, str, bool | None]]) -> list[str]:
    """Targets as a markdown table: met, not met, or – where the run could not tell."""
    return [
        "| target | required | measured | met |",
        "| --- | --- | ---: | --- |",
        *(f"| {name} | {req} | {val} | {_met(ok)} |" for name, req, val, ok in rows),
    ]


def _met(ok: bool | None) -> str:
    return "yes" if ok else "no" if ok is not None else "–"


def scaling(m: dict) -> list[tuple[int, dict]]:
    return sorted((int(w[4:]), arms) for w, arms in m.items() if w.startswith("conc"))


def scaling_table(m: dict) -> list[str]:
    lines = [
        "| sessions | broker CPU µs/echo | broker CPU % | broker ΔRSS KiB/session | broker ΔPSS KiB/session "
        "| broker RSS MiB | websockify CPU µs/echo | websockify ΔPSS KiB/session | client CPU % (broker arm) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, arms in scaling(m):
        b, w = arms.get("broker", {}), arms.get("websockify", {})
        lines.append(
            f"| {n} | {fmt(b.get('relay_cpu_us_per_msg'))} | {fmt(b.get('relay_cpu_pct'))} "
            f"| {fmt(b.get('rss_per_session_kib'))} | {fmt(b.get('pss_per_session_kib'))} "
            f"| {fmt(b.get('mem_loaded.rss_mib'))} | {fmt(w.get('relay_cpu_us_per_msg'))} "
            f"| {fmt(w.get('pss_per_session_kib'))} | {fmt(b.get('client_cpu_pct'))} |"
        )
    return lines


def cpu_table(m: dict) -> list[str]:
    """Who used the CPU during each workload: shows whether the client could have been the bottleneck."""
    lines = [
        "| workload | arm | seconds | client CPU % | relay CPU % | other processes' CPU % |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for workload in m:
        for arm in (*ARMS, FLOOR, BASE):
            x = m[workload].get(arm)
            if x and "seconds" in x:
                lines.append(
                    f"| {workload} | {arm} | {fmt(x['seconds'])} | {fmt(x.get('client_cpu_pct'))} "
                    f"| {fmt(x.get('relay_cpu_pct'))} | {fmt(x.get('other_cpu_pct'))} |"
                )
    return lines


def plot(m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    # Memory: the broker is one process, so its RSS growth is its cost; websockify's forks share
    # pages, so for it the honest sum is PSS (its RSS sum counts the shared pages once per child).
    for arm, style, mem_key, mem_label in (
        ("broker", "o-", "rss_per_session_kib", "broker (ΔRSS)"),
        ("websockify", "s--", "pss_per_session_kib", "websockify (ΔPSS)"),
    ):
        points = [(n, arms[arm]) for n, arms in scaling(m) if arm in arms]
        if not points:
            continue
        ax1.plot(
            [n for n, _ in points], [x.get("relay_cpu_us_per_msg", float("nan")) for _, x in points], style, label=arm
        )
        ax2.plot([n for n, _ in points], [x.get(mem_key, float("nan")) for _, x in points], style, label=mem_label)
    ax1.set_ylim(bottom=0)
    ax1.set(xscale="log", xlabel="open sessions", ylabel="relay CPU per echo (µs)", title="CPU per message")
    ax2.set_yscale("symlog", linthresh=10)
    ax2.set(
        xscale="log",
        xlabel="open sessions",
        ylabel="relay memory per session (KiB)",
        title="Memory per session (growth over the idle relay)",
    )
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile_summary(raw: Path, top: int = 15) -> list[str]:
    """Self and inclusive time per frame of the event-loop thread from py-spy's collapsed stacks.

    py-spy here counts blocked threads as busy, so we keep the main (event-loop) thread only and
    call its samples in epoll_wait idle; the other threads (libvirt's event loop, the executor)
    only wait in this workload and are counted apart."""
    own, total, package = Counter(), Counter(), Counter()
    busy = idle = others = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")]
        if frames[0].startswith("Thread._bootstrap"):
            others += n
            continue
        if frames[-1].startswith("EpollSelector.select"):
            idle += n
            continue
        busy += n
        own[frames[-1]] += n
        package[where(frames[-1])] += n
        for f in set(frames):
            total[f] += n
    pct = lambda n: f"{100 * n / max(busy, 1):.1f}%"  # noqa: E731
    lines = [
        f"Event-loop thread: {busy} samples busy, {idle} in epoll_wait (idle); {others} samples of other threads "
        "left out. Percentages are of the busy samples.",
        "",
        "Self time by package:",
        "",
    ]
    lines += [f"    {pct(n):>6}  {name}" for name, n in package.most_common()]
    lines += ["", f"Top {top} frames by self time:", ""]
    lines += [f"    {pct(n):>6}  {name}" for name, n in own.most_common(top)]
    lines += ["", f"Top {top} frames by inclusive time (below the event loop itself):", ""]
    lines += [f"    {pct(n):>6}  {name}" for name, n in total.most_common() if n < 0.99 * busy][:top]
    return lines


def short(frame: str) -> str:
    """`send (/x/.venv/lib/python3.11/site-packages/uvicorn/a.py)` → `send (uvicorn/a.py)`."""
    return re.sub(r"\((?:.*/site-packages/|.*/lib/python3\.\d+/|.*/work/main/)?([^)]*)\)", r"(\1)", frame)


def where(frame: str) -> str:
    m = re.search(r"\(([^/)]+)", frame)
    name = m.group(1) if m else "?"
    return (
        name
        if name in {"broker", "uvicorn", "websockets", "starlette", "asyncio", "h11", "anyio"}
        else ("stdlib/other: " + name)
    )


def write(out: Path, info: dict, results: list[dict]) -> None:
    m = medians(results)
    (out / "results.json").write_text(json.dumps({**info, "medians": m, "results": results}, indent=1) + "\n")
    if any(w.startswith("conc") for w in m):
        plot(m, out / "scaling.png")
    mach = info["machine"]
    lines = [
        f"# Benchmark results ({info['mode']} run)",
        "",
        f"`{info['command']}` — {mach['nproc']} CPUs ({mach['cpu']}), kernel {mach['kernel']}, "
        f"broker on Python {mach['broker_python']} ({', '.join(mach['broker_packages'])}), "
        f"peer: {', '.join(mach['peer_packages'])}; load average at start {' '.join(mach['loadavg_start'])}, "
        f"at end {' '.join(mach['loadavg_end'])}; {info['duration_s']:.0f} s, of which "
        f"{info.get('waited_for_quiet_s', 0):.0f} s waiting for other processes to quieten down.",
        "",
        f"Medians of {info['sizes']['reps']} repetition(s), each with a fresh relay process.",
        "",
    ]
    lines += table(m) + ["", "## Targets (broker vs websockify, this run)", "", *targets_table(targets(m))]
    lines += [
        "",
        "## Downstream beside the least a relay can do (plain C forwarder, bench/relay.c)",
        "",
        *floor_table(m),
    ]
    if any(BASE in arms for arms in m.values()):
        lines += ["", f"## The broker beside the broker of `{info.get('base_tree')}`", "", *base_table(m)]
    lines += [
        "",
        "## Scaling: broker cost per session",
        "",
        "Δ = growth over the same relay idle, before the sessions opened, divided by the sessions opened. The "
        "broker's PSS moves with whatever else maps the same libraries, so its ΔRSS is the figure to read.",
        "",
        *scaling_table(m),
        "",
        "![scaling](scaling.png)",
        "",
        "## CPU use during each workload (medians)",
        "",
        *cpu_table(m),
    ]
    for name, profile in info.get("profiles", {}).items():
        lines += [
            "",
            f"## Profile of the broker: {name} workload (py-spy, {profile['rate_hz']} Hz)",
            "",
            f"{len(profile['runs'])} run(s) in {profile['wall_s']:.1f} s, broker CPU {profile['relay_cpu_s']:.2f} s; "
            f"collapsed stacks in `{profile['raw']}`.",
            "",
            *profile_summary(out / profile["raw"]),
        ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
