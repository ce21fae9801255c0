"""Click to pixels: how long from opening a console link until the VM's screen shows, for the
broker's console page and, side by side in the same run, Debian's noVNC vnc_lite.html behind
websockify 0.13, both on one disk-less SeaBIOS VM of the bench's own.

    bash bench/run.sh --only pixels [--reps 5] [--links loopback,cdp,link] [--out DIR]

Headless Chromium (through Playwright, as the tests launch it) opens each contender's link cold
(a new browser context: empty cache, no cookies) and then warm (the same context, a fresh link),
on loopback, under Chromium's network emulation (CDP) and through a user-space emulated link
(bench/linkemu.py), both 100 ms RTT / 10 Mbit/s. The same detector (bench/pixels.js) runs in
every page. Runs with the project's Python (Playwright, libvirt-python, the broker from this
tree); websockify comes from the bench venv (bench/.venv, made by run.sh). Not a test: it
measures, it does not assert. See docs/benchmarks.md, "Click to pixels".
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import libvirt

from . import pixreport
from .procs import Proc, free_port, machine_busy

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions; no stderr noise
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import chromium as chromium_setup  # noqa: E402  (the executable and flags the tests use)

DETECTOR = HERE / "pixels.js"
WEBSOCKIFY = HERE / ".venv" / "bin" / "websockify"
NOVNC = Path("/usr/share/novnc")  # Debian's package `novnc`
LIBVIRT_URI = "qemu:///system"
LOOPBACK, EMULATED_HOST = "127.0.0.1", "127.0.0.2"  # the emulated link listens on 127.0.0.2, same ports
RTT_MS, MBIT = 100, 10
CDP_CONDITIONS = {
    "offline": False,
    "latency": RTT_MS,
    "downloadThroughput": MBIT * 1e6 / 8,
    "uploadThroughput": MBIT * 1e6 / 8,
}
PIXEL_TIMEOUT_MS = int(os.environ.get("BENCH_PIXEL_TIMEOUT_MS", "30000"))


def domain_xml(name: str) -> str:
    """SeaBIOS and VGA, no disk: it stops at "No bootable device" and, with rebootTimeout -1,
    stays there, so the screen never changes during the run."""
    return f"""
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <bios rebootTimeout='-1'/>
  </os>
  <devices>
    <video><model type='vga'/></video>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>"""


class VM:
    """The bench's own domain; removed again by close(), whatever happened."""

    def __init__(self, name: str) -> None:
        self.conn = libvirt.open(LIBVIRT_URI)
        self.name = name
        self.remove()
        self.dom = self.conn.defineXML(domain_xml(name))
        self.dom.create()

    def vnc_port(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            graphics = ET.fromstring(self.dom.XMLDesc(0)).find("devices/graphics")
            port = int(graphics.get("port", "-1")) if graphics is not None else -1
            if port > 0:
                return port
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} got no VNC port")
            time.sleep(0.05)

    def remove(self) -> None:
        try:
            dom = self.conn.lookupByName(self.name)
        except libvirt.libvirtError:
            return
        for step in (dom.destroy, dom.undefine):
            try:
                step()
            except libvirt.libvirtError:
                pass

    def close(self) -> None:
        self.remove()
        self.conn.close()


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and 127.0.0.2, and the hash of its public key,
    which Chromium is told to trust (--ignore-certificate-errors-spki-list): trusted, not
    merely ignored, so that the HTTP cache keeps what it serves, as with a real certificate."""

    cert: Path
    key: Path
    spki: str

    @classmethod
    def make(cls, directory: Path) -> Certificate:
        cert, key = directory / "tls.crt", directory / "tls.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
            + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench-pixels"]
            + ["-addext", f"subjectAltName=IP:{LOOPBACK},IP:{EMULATED_HOST}"],
            check=True,
            capture_output=True,
        )
        public = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], check=True, capture_output=True
        ).stdout
        der = subprocess.run(
            ["openssl", "pkey", "-pubin", "-outform", "der"], input=public, check=True, capture_output=True
        ).stdout
        return cls(cert, key, base64.b64encode(hashlib.sha256(der).digest()).decode())


class Servers:
    """The broker (this tree), websockify serving Debian's noVNC, and the emulated link."""

    def __init__(self, work: Path, vnc_port: int, vm_name: str, tls: Certificate | None) -> None:
        self.work, self.vm_name = work, vm_name
        self.scheme = "https" if tls else "http"
        self.procs: list[Proc] = []
        self.broker_port, self.ws_port = free_port(), free_port()
        state = work / "state"
        state.mkdir()
        # Default settings: none of this shell's BROKER_* (a public_url would send the links elsewhere).
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(BROKER_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
        websockify_tls: list[str] = []
        if tls:
            env.update(BROKER_TLS_CERT=str(tls.cert), BROKER_TLS_KEY=str(tls.key))
            websockify_tls = ["--cert", str(tls.cert), "--key", str(tls.key), "--ssl-only"]
        self.broker = self.start(
            [sys.executable, "-m", "broker", "serve", "--listen", f"{LOOPBACK}:{self.broker_port}"], "broker", env
        )
        self.start(
            [
                str(WEBSOCKIFY),
                *websockify_tls,
                "--web",
                str(NOVNC),
                f"{LOOPBACK}:{self.ws_port}",
                f"127.0.0.1:{vnc_port}",
            ],
            "websockify",
        )
        pairs = [f"{EMULATED_HOST}:{p}={LOOPBACK}:{p}" for p in (self.broker_port, self.ws_port)]
        self.start(
            [sys.executable, "-m", "bench.linkemu", "--rtt-ms", str(RTT_MS), "--mbit", str(MBIT), *pairs], "linkemu"
        )
        self.wait(f"{self.scheme}://{LOOPBACK}:{self.broker_port}/healthz")
        self.wait(f"{self.scheme}://{LOOPBACK}:{self.ws_port}/vnc_lite.html")
        self.wait(f"{self.scheme}://{EMULATED_HOST}:{self.ws_port}/vnc_lite.html")
        self.api_key = (state / "api-key").read_text().strip()

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(argv, self.work / f"{name}.log", env=env)
        self.procs.append(proc)
        return proc

    def wait(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url, timeout=5, verify=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            for proc in self.procs:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.argv[0]} exited; see {proc.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout:g}s; logs in {self.work}")
            time.sleep(0.1)

    def url(self, contender: str, link: str) -> str:
        """A fresh link for `contender`, as the browser on `link` reaches it."""
        host = EMULATED_HOST if link == "link" else LOOPBACK
        if contender == "vnc_lite":  # its defaults: this host and port, path "websockify"
            return f"{self.scheme}://{host}:{self.ws_port}/vnc_lite.html"
        # Minted over REST as a panel would; the Host header names the address the browser uses,
        # so the console_url the broker gives points there.
        response = httpx.post(
            f"{self.scheme}://{LOOPBACK}:{self.broker_port}/api/v1/domains/{self.vm_name}/console",
            headers={"Authorization": f"Bearer {self.api_key}", "Host": f"{host}:{self.broker_port}"},
            json={},
            timeout=15,
            verify=False,
        )
        response.raise_for_status()
        return str(response.json()["console_url"])

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def visit(context: Any, url: str, link: str, failures_dir: Path) -> dict[str, Any]:
    """Open `url` in a new page of `context`; when the canvas first shows the screen, and what
    went over the network until then."""
    page = context.new_page()
    try:
        cdp = context.new_cdp_session(page)
        log = pixreport.NetLog()
        for event in pixreport.NETWORK_EVENTS:
            cdp.on(event, lambda params, event=event: log.add(event, params))
        cdp.send("Network.enable")
        if link == "cdp":
            cdp.send("Network.emulateNetworkConditions", CDP_CONDITIONS)
        started = time.time()
        try:
            page.goto(url, wait_until="commit", timeout=PIXEL_TIMEOUT_MS)
            page.wait_for_function("() => window.__bench && window.__bench.pixel", timeout=PIXEL_TIMEOUT_MS)
        except Exception as exc:  # a page that never shows the screen is a result, not a crash
            shot = Path(tempfile.mkstemp(prefix="no-pixel-", suffix=".png", dir=failures_dir)[1])
            state = "?"
            try:
                page.screenshot(path=str(shot))
                state = page.evaluate("() => JSON.stringify(window.__bench || null)")
            except Exception:  # noqa: S110  (the page may be gone: the error above says why)
                pass
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}; detector {state}; screenshot {shot}"
            return {"ms": None, "error": error, "url": page.url}
        seen = page.evaluate(
            """() => {
                const nav = performance.getEntriesByType('navigation')[0];
                return {...window.__bench, redirects: nav ? nav.redirectCount : null,
                        response_end: nav ? nav.responseEnd : null,
                        dom_content_loaded: nav ? nav.domContentLoadedEventEnd : null};
            }"""
        )
        page.wait_for_timeout(300)  # the DevTools events of the moments before the pixel arrive
        pixel = seen["pixel"]
        milestones = log.milestones(seen["timeOrigin"])
        at = seen["timeOrigin"] + pixel["t"]
        return {
            "ms": pixel["t"],
            "from_goto_ms": at - started * 1000,
            "canvas": f"{pixel['width']}x{pixel['height']}",
            "redirects": seen["redirects"],
            "response_end": seen["response_end"],
            "dom_content_loaded": seen["dom_content_loaded"] or None,
            **milestones,
            "after_ws_open": pixel["t"] - milestones["ws_open"] if "ws_open" in milestones else None,
            **log.before(at),
        }
    finally:
        page.close()


def busy(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`'s result with how many of the machine's CPUs were busy meanwhile (all
    processes, the browser's and the servers' included): the run's noise, next to each figure."""
    t0, busy0 = time.monotonic(), machine_busy()
    result = measure()
    result["machine_busy_cpus"] = round((machine_busy() - busy0) / (time.monotonic() - t0), 2)
    return result


def wait_quiet(limit: float = 10.0) -> float:
    """The machine is shared: wait (at most `limit` s) until other processes use less than a
    quarter of a CPU; the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        busy = machine_busy()
        time.sleep(0.5)
        if machine_busy() - busy < 0.125:
            break
    return time.monotonic() - t0


def run(servers: Servers, links: list[str], reps: int, tls: Certificate | None) -> tuple[list[dict[str, Any]], float]:
    from playwright.sync_api import sync_playwright

    results: list[dict[str, Any]] = []
    waited = 0.0
    with sync_playwright() as playwright:
        trust = [f"--ignore-certificate-errors-spki-list={tls.spki}"] if tls else []
        browser = playwright.chromium.launch(
            executable_path=chromium_setup.EXECUTABLE, args=[*chromium_setup.ARGS, *trust]
        )
        try:

            def pair(contender: str, link: str) -> tuple[dict[str, Any], dict[str, Any]]:
                context = browser.new_context(viewport={"width": 1024, "height": 768})
                try:
                    context.add_init_script(path=str(DETECTOR))
                    cold = busy(lambda: visit(context, servers.url(contender, link), link, servers.work))
                    warm = busy(lambda: visit(context, servers.url(contender, link), link, servers.work))
                    return cold, warm
                finally:
                    context.close()

            for contender in pixreport.CONTENDERS:  # warm-up: first connections, lazy imports, forks
                pair(contender, "loopback")
            for link in links:
                for rep in range(reps):
                    order = pixreport.CONTENDERS[rep % 2 :] + pixreport.CONTENDERS[: rep % 2]
                    for contender in order:
                        waited += wait_quiet()
                        cold, warm = pair(contender, link)
                        for name, result in (("cold", cold), ("warm", warm)):
                            row = {"link": link, "visit": name, "contender": contender, "rep": rep, **result}
                            results.append(row)
                            print(
                                f"{link:8} {name:4} {contender:8} rep {rep}: "
                                + (
                                    f"{row['ms']:7.0f} ms, {row['requests']} requests, {row['bytes'] / 1000:.0f} kB"
                                    if row["ms"] is not None
                                    else f"no pixel ({row['error']})"
                                ),
                                flush=True,
                            )
        finally:
            browser.close()
    return results, waited


def versions() -> dict[str, str]:
    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return "?"

    import importlib.metadata as md

    query = "import importlib.metadata as m; print(m.version('websockify'))"
    websockify = out(str(WEBSOCKIFY.parent / "python"), "-c", query)
    novnc = out("dpkg-query", "-W", "-f=${Version}", "novnc")
    return {
        "chromium": out(chromium_setup.EXECUTABLE, "--version").split(" built")[0],
        "playwright": md.version("playwright"),
        "websockify": websockify,
        "novnc_deb": novnc,
        "qemu": (out("qemu-system-x86_64", "--version").splitlines() or ["qemu ?"])[0],
        "python": platform.python_version(),
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bash bench/run.sh --only pixels", description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--links", default="loopback,cdp,link", help="comma-separated: loopback,cdp,link")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pixels", help="results folder")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve both contenders over HTTPS (a self-signed certificate the browser trusts); "
        "Chromium offers brotli and zstd only over HTTPS",
    )
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON", help="only re-render results.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally blocks
    if args.report:
        import json

        saved = json.loads(args.report.read_text())
        results = saved.pop("results")
        saved.pop("medians", None)
        print(pixreport.write(args.report.parent, saved, results))
        return
    links = args.links.split(",")
    unknown = set(links) - set(pixreport.LINKS)
    if unknown:
        sys.exit(f"bench: unknown link(s) {sorted(unknown)}; choose from {list(pixreport.LINKS)}")
    if not (NOVNC / "vnc_lite.html").exists():
        sys.exit("bench: Debian's noVNC is missing: apt-get install --no-install-recommends novnc")
    if not WEBSOCKIFY.exists():
        sys.exit(f"bench: {WEBSOCKIFY} is missing; run through bash bench/run.sh, which makes bench/.venv")
    work = Path(tempfile.mkdtemp(prefix="bench-pixels-"))
    print(f"bench: click to pixels, {args.reps} repetition(s) on {', '.join(links)}; logs in {work}", flush=True)
    started = time.monotonic()
    loadavg_start = Path("/proc/loadavg").read_text().split()[0]
    vm = VM(f"bench-pixels-{os.getpid()}")
    try:
        tls = Certificate.make(work) if args.tls else None
        servers = Servers(work, vm.vnc_port(), vm.name, tls)
        try:
            time.sleep(3)  # SeaBIOS reaches "No bootable device"
            results, waited = run(servers, links, args.reps, tls)
        finally:
            servers.close()
    finally:
        vm.close()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    v = versions()
    info = {
        "command": " ".join(["bash bench/run.sh --only pixels", *sys.argv[1:]]),
        "commit": commit.stdout.strip() or "?",
        "reps": args.reps,
        "links": links,
        "scheme": "https" if args.tls else "http",
        "versions": v,
        "machine": f"{v['nproc']} CPUs, kernel {v['kernel']}, {v['chromium']}, Playwright {v['playwright']}, "
        f"websockify {v['websockify']}, Debian novnc {v['novnc_deb']}, {v['qemu']}",
        "loadavg": f"{loadavg_start} at the start, {Path('/proc/loadavg').read_text().split()[0]} at the end",
        "duration_s": round(time.monotonic() - started, 1),
        "waited_for_quiet_s": round(waited, 1),
        "logs": str(work),
    }
    print(pixreport.write(args.out, info, results))
    print(f"bench: done in {info['duration_s']:.0f}s; see {args.out}/results.md", flush=True)


if __name__ == "__main__":
    main()
