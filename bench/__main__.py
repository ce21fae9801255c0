"""Peer benchmark: the same workloads direct to the backend, through websockify 0.13, and
through the broker (one REST-minted token per connection). Run it with `bash bench/run.sh`
(which builds the C programs and the bench venv first); see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .procs import Proc, cpu_seconds, free_port, machine_busy, memory, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"
CLIENT = str(BUILD / "client")
BROKER = ROOT / ".venv" / "bin" / "broker"
WEBSOCKIFY = Path(sys.executable).parent / "websockify"  # the bench venv's, from PyPI
PYSPY = Path(sys.executable).parent / "py-spy"
API_KEY = "bench-key-0123456789abcdef"
ARMS = ("direct", "websockify", "broker")
# The plain C forwarder (relay.c): the least any relay process can do, so the ceiling beside
# which the broker's downstream and round-trip figures read.
FLOOR = "c-relay"
FLOOR_WORKLOADS = ("down", "down_unix", "rtt")
# With --base-tree DIR: the broker from another checkout's code (this venv), in every workload,
# so that a change to the relay is measured side by side with what it changes.
BASE = "broker-base"
MiB = 1024 * 1024

SIZES = {
    "full": dict(
        reps=3,
        down=256 * MiB,
        up=64 * MiB,
        frame=64 * 1024,
        flood=200_000,
        rtt=1000,
        setup=200,
        conc_seconds=5.0,
        levels=(1, 10, 50, 100, 200, 1000),
        quiet_wait=(10.0, 240.0),
    ),
    "quick": dict(
        reps=1,
        down=32 * MiB,
        up=16 * MiB,
        frame=64 * 1024,
        flood=20_000,
        rtt=300,
        setup=30,
        conc_seconds=2.0,
        levels=(1, 10, 100, 200),
        quiet_wait=(2.0, 20.0),
    ),
}


@dataclass
class Relay:
    """A fresh relay for one measurement (none for the direct arm) and the target the client uses."""

    arm: str
    target: str
    proc: Proc | None = None

    def cpu(self) -> float | None:
        return cpu_seconds(self.proc.pid) if self.proc else None

    def memory(self) -> dict[str, float] | None:
        return memory(self.proc.pid) if self.proc else None


@dataclass
class Bench:
    out: Path
    logs: Path
    sizes: dict
    backend_port: int = 0
    backend_sock: str = ""
    backend_pid: int = 0
    waited: float = 0.0  # seconds spent waiting for a quiet machine, in all
    base_tree: Path | None = None  # --base-tree
    results: list[dict] = field(default_factory=list)

    # -- relays ---------------------------------------------------------------------

    def start(self, arm: str, unix: bool = False) -> Relay:
        if arm == "direct":
            return Relay(arm, f"unix:{self.backend_sock}" if unix else f"tcp:127.0.0.1:{self.backend_port}")
        port = free_port()
        log = self.logs / f"{arm}.log"
        if arm == FLOOR:
            backend = f"unix:{self.backend_sock}" if unix else f"tcp:{self.backend_port}"
            proc = Proc([str(BUILD / "relay"), str(port), backend], log)
            relay = Relay(arm, f"tcp:127.0.0.1:{port}", proc)
            wait_port(port)
        elif arm == "websockify":
            backend = [f"--unix-target={self.backend_sock}"] if unix else [f"127.0.0.1:{self.backend_port}"]
            proc = Proc([str(WEBSOCKIFY), f"127.0.0.1:{port}", *backend], log)
            relay = Relay(arm, f"ws://127.0.0.1:{port}/", proc)
            wait_port(port)
        else:
            config = self.logs / f"{arm}.toml"
            config.write_text(broker_config(port, self.backend_port, self.backend_sock, self.logs / f"state-{arm}"))
            if arm == BASE:  # -P: import broker from PYTHONPATH, not from the working directory
                proc = Proc(
                    [str(BROKER.parent / "python"), "-P", "-m", "broker", "serve", "--config", str(config)],
                    log,
                    env={**os.environ, "PYTHONPATH": str(self.base_tree)},
                )
            else:
                proc = Proc([str(BROKER), "serve", "--config", str(config)], log)
            console = "bench-unix" if unix else "bench-tcp"
            relay = Relay(arm, f"mint:http://127.0.0.1:{port}/api/v1/domains/{console}/console", proc)
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        self.client("setup", relay.target, 3)  # warm-up: first connection's lazy imports, forks, caches
        return relay

    # -- one measurement ------------------------------------------------------------

    def client(self, mode: str, target: str, *args: object, timeout: float = 600, input: str = "") -> dict:
        done = subprocess.run(
            [CLIENT, mode, target, *map(str, args)],
            capture_output=True,
            text=True,
            input=input,
            env={**os.environ, "BENCH_API_KEY": API_KEY},
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"client {mode} {target} failed: {done.stderr.strip()}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def measure(self, workload: str, arm: str, rep: int, mode: str, *args: object, unix: bool = False) -> None:
        relay = self.start(arm, unix)
        try:
            self.wait_quiet()
            window = Window(self, relay)
            result = self.client(mode, relay.target, *args)
            time.sleep(0.1)  # let websockify reap the finished child, so its CPU lands in cutime
            window.close(result, resource.getrusage(resource.RUSAGE_CHILDREN))
        finally:
            self.stop(relay)
        self.record(workload, arm, rep, result)

    def concurrency(self, sessions: int, arm: str, rep: int) -> None:
        relay = self.start(arm)
        try:
            time.sleep(0.3)
            baseline = relay.memory()
            client = subprocess.Popen(
                [CLIENT, "conc", relay.target, str(sessions), str(self.sizes["conc_seconds"]), "16"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "BENCH_API_KEY": API_KEY},
            )
            try:
                result = json.loads(client.stdout.readline())
                time.sleep(0.5)  # websockify's last children may still be starting
                result["mem_open"] = relay.memory()
                self.wait_quiet()
                window = Window(self, relay)
                client.stdin.write("go\n")
                client.stdin.flush()
                result.update(json.loads(client.stdout.readline()))
                window.close(result)
                if relay.proc:
                    result["mem_baseline"] = baseline
                    result["mem_loaded"] = relay.memory()
                client.stdin.write("close\n")
                client.stdin.flush()
                client.wait(60)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        finally:
            self.stop(relay)
        self.record(f"conc{sessions}", arm, rep, result)

    def wait_quiet(self) -> None:
        """The machine is shared: before a measurement, wait (up to `limit` s, `budget` s per run)
        until other processes use less than a quarter of a CPU. Our own processes are idle here."""
        limit, budget = self.sizes["quiet_wait"]
        t0 = time.monotonic()
        while self.waited + time.monotonic() - t0 < budget and time.monotonic() - t0 < limit:
            busy0 = machine_busy()
            time.sleep(0.5)
            if machine_busy() - busy0 < 0.125:
                break
        self.waited += time.monotonic() - t0

    def stop(self, relay: Relay) -> None:
        if relay.proc:
            relay.proc.stop()

    def record(self, workload: str, arm: str, rep: int, result: dict) -> None:
        result = {"workload": workload, "arm": arm, "rep": rep, **result}
        self.results.append(result)
        shown = {k: v for k, v in result.items() if not isinstance(v, dict)}
        print(json.dumps(shown), flush=True)

    # -- the run ----------------------------------------------------------------------

    def run(self, only: set[str] | None) -> None:
        s = self.sizes
        workloads = [
            ("down", lambda arm, rep: self.measure("down", arm, rep, "down", s["down"])),
            ("down_unix", lambda arm, rep: self.measure("down_unix", arm, rep, "down", s["down"], unix=True)),
            ("up", lambda arm, rep: self.measure("up", arm, rep, "up", s["up"], s["frame"])),
            ("flood", lambda arm, rep: self.measure("flood", arm, rep, "flood", s["flood"], 16)),
            ("rtt", lambda arm, rep: self.measure("rtt", arm, rep, "rtt", s["rtt"], 64)),
            ("setup", lambda arm, rep: self.measure("setup", arm, rep, "setup", s["setup"])),
        ] + [(f"conc{n}", lambda arm, rep, n=n: self.concurrency(n, arm, rep)) for n in s["levels"]]
        for rep in range(s["reps"]):
            for name, run in workloads:
                if only and name not in only and name.rstrip("0123456789") not in only:
                    continue
                arms = ARMS + (FLOOR,) if name in FLOOR_WORKLOADS else ARMS
                if self.base_tree:
                    arms += (BASE,)
                for arm in arms[rep % len(arms) :] + arms[: rep % len(arms)]:  # rotated: drift spreads over the arms
                    run(arm, rep)

    def profile(self, name: str, load) -> dict:
        """py-spy on a fresh broker while `load(relay)` runs; collapsed stacks in OUT/profile-NAME.txt."""
        relay = self.start("broker")
        raw = self.out / f"profile-{name}.txt"
        spy = subprocess.Popen(
            [
                str(PYSPY),
                "record",
                "--pid",
                str(relay.proc.pid),
                "--rate",
                "250",
                "--nolineno",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)  # py-spy attaches
            t0, cpu0 = time.monotonic(), relay.cpu()
            runs = load(relay)
            wall, cpu = time.monotonic() - t0, relay.cpu() - cpu0
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            self.stop(relay)
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.strip()}")
        return {"raw": raw.name, "runs": runs, "wall_s": wall, "relay_cpu_s": cpu, "rate_hz": 250}

    def profiles(self, downs: int) -> dict:
        """Where the broker's time goes: on the down workload, and on small echoes (100 sessions)."""
        down = lambda relay: [self.client("down", relay.target, self.sizes["down"]) for _ in range(downs)]  # noqa: E731
        echo = lambda relay: [self.client("conc", relay.target, 100, 3, 16, input="go\nclose\n")]  # noqa: E731
        return {"down": self.profile("down", down), "echo": self.profile("echo", echo)}


class Window:
    """CPU used during one measurement by the relay, the backend, and everything else on the
    machine (other_cpu_pct: processes not part of the benchmark, in % of one CPU)."""

    def __init__(self, bench: Bench, relay: Relay) -> None:
        self.bench, self.relay = bench, relay
        self.t0, self.busy0 = time.monotonic(), machine_busy()
        self.relay0, self.backend0 = relay.cpu(), cpu_seconds(bench.backend_pid)
        self.children0 = resource.getrusage(resource.RUSAGE_CHILDREN)

    def close(self, result: dict, children: resource.struct_rusage | None = None) -> None:
        wall, busy = time.monotonic() - self.t0, machine_busy() - self.busy0
        ours = cpu_seconds(self.bench.backend_pid) - self.backend0
        if self.relay.proc:
            result["relay_cpu_s"] = self.relay.cpu() - self.relay0
            ours += result["relay_cpu_s"]
        if children:  # the client process, waited for
            c0 = self.children0
            ours += children.ru_utime + children.ru_stime - c0.ru_utime - c0.ru_stime
        else:
            ours += result.get("client_cpu_s", 0)
        result["other_cpu_pct"] = round(100 * max(0.0, busy - ours) / wall, 1)


def broker_config(port: int, backend_port: int, backend_sock: str, state: Path) -> str:
    # Limits raised so that 1000 sessions on one console and 1000 mints fit; everything else default.
    return f"""connect = "test:///default"
listen = "127.0.0.1:{port}"
state_dir = "{state}"
api_keys = ["{API_KEY}"]
token_max_ttl = 600
ping_interval = 0
max_sessions = 2000
max_viewers = 2000
mint_rate = 1000000
mint_burst = 100000
[static_consoles]
bench-tcp = "tcp:127.0.0.1:{backend_port}"
bench-unix = "unix:{backend_sock}"
"""


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the broker did not come up; see {proc.log}")
        time.sleep(0.1)


def machine() -> dict:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    versions = run(
        str(ROOT / ".venv/bin/python"),
        "-c",
        "import importlib.metadata as m, platform; print(platform.python_version(), *(p + '=' + m.version(p) "
        "for p in ('starlette', 'uvicorn', 'websockets', 'h11', 'libvirt-python')))",
    ).split()
    peer = run(
        sys.executable,
        "-c",
        "import importlib.metadata as m; print(*(p + '=' + m.version(p) "
        "for p in ('websockify', 'numpy', 'matplotlib', 'py-spy')))",
    ).split()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "broker_python": versions[0] if versions else "?",
        "broker_packages": versions[1:],
        "bench_python": platform.python_version(),
        "peer_packages": peer,
        "gcc": run("gcc", "-dumpfullversion"),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bash bench/run.sh", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 repetition, smaller sizes (development)")
    parser.add_argument(
        "--out", type=Path, help="results folder (default bench/results, or /tmp/bench-quick with --quick)"
    )
    parser.add_argument("--only", help="comma-separated workloads: down,down_unix,up,flood,rtt,setup,conc")
    parser.add_argument("--levels", help="comma-separated session counts for the concurrency runs (default: by mode)")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON", help="only re-render results.md and the plot")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the broker")
    parser.add_argument("--reps", type=int, help="repetitions of each measurement (default: 3, or 1 with --quick)")
    parser.add_argument(
        "--base-tree",
        type=Path,
        metavar="DIR",
        help="also run the broker from this checkout (e.g. a git worktree of the commit before a change)",
    )
    args = parser.parse_args()
    # Killed from outside (`timeout`, CI): unwind through the finally blocks that stop the
    # backend and relays, instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.report:
        saved = json.loads(args.report.read_text())
        results = saved.pop("results")
        saved.pop("medians", None)
        report.write(args.report.parent, saved, results)
        return
    if not BROKER.exists():
        sys.exit(f"bench: {BROKER} is missing; run contrib/setup.sh (or make the project venv) first")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    mode = "quick" if args.quick else "full"
    out = args.out or (Path("/tmp/bench-quick") if args.quick else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    sizes = (
        dict(SIZES[mode], levels=tuple(int(n) for n in args.levels.split(","))) if args.levels else dict(SIZES[mode])
    )
    if args.reps:
        sizes["reps"] = args.reps
    if args.base_tree and not (args.base_tree / "broker" / "__init__.py").exists():
        sys.exit(f"bench: {args.base_tree} holds no broker/ package")
    bench = Bench(out=out, logs=logs, sizes=sizes, base_tree=args.base_tree.resolve() if args.base_tree else None)
    bench.backend_port, bench.backend_sock = free_port(), str(logs / "backend.sock")
    info = {
        "mode": mode,
        "command": " ".join(["bash bench/run.sh", *sys.argv[1:]]),
        "machine": machine(),
        "sizes": sizes,
        "logs": str(logs),
        "base_tree": str(bench.base_tree) if bench.base_tree else None,
    }
    print(f"bench: {mode} run, logs in {logs}", flush=True)
    started = time.monotonic()
    backend = Proc([str(BUILD / "backend"), str(bench.backend_port), bench.backend_sock], logs / "backend.log")
    bench.backend_pid = backend.pid
    try:
        wait_port(bench.backend_port)
        bench.run(set(args.only.split(",")) if args.only else None)
        if not args.no_profile:
            info["profiles"] = bench.profiles(2 if args.quick else 8)
        info["backend_cpu_s"] = cpu_seconds(backend.pid)
    finally:
        backend.stop()
    info["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    info["duration_s"] = round(time.monotonic() - started, 1)
    info["waited_for_quiet_s"] = round(bench.waited, 1)
    report.write(out, info, bench.results)
    print(f"bench: done in {info['duration_s']:.0f}s; see {out}/results.md", flush=True)


if __name__ == "__main__":
    main()
