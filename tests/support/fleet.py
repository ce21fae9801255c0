"""A fleet on one machine: hypervisor "hosts" in network namespaces on a private bridge,
each with its own broker process, state dir, key and TLS certificate, behind one nginx front
in the root namespace running contrib/nginx/fleet.conf.

Every namespace, link and process made here is recorded at once in `Fleet.undo`, and
`Fleet.close()` removes them in reverse order whatever happened in between, then checks
that nothing is left. Names carry this process's id and a letter per fleet (`bfl<pid>a…`),
so two runs never touch each other's, and leftovers of a killed run (pid gone) are swept first.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .certs import Pair, issue, make_ca
from .nginx import Nginx, run_nginx
from .processes import BrokerProcess, free_port, start_broker

FLEET_CONF = Path(__file__).resolve().parents[2] / "contrib" / "nginx" / "fleet.conf"
PREFIX = "bfl"  # short: a link's name has at most 15 characters (bfl<pid><n>br)
BROKER_PORT = 6443


def quiet_ipv6(interface: str, namespace: str | None = None) -> None:
    """No IPv6 on a fleet interface: its link-local address and duplicate-address detection
    would change addresses a second after the link comes up, and Chromium drops requests in
    flight on any address change (net::ERR_NETWORK_CHANGED)."""
    path = Path(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6")
    if namespace is None:
        if path.exists():
            path.write_text("1")
    else:
        subprocess.run(
            ["ip", "netns", "exec", namespace, "sh", "-c", f"[ ! -e {path} ] || echo 1 > {path}"], check=True
        )


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def links() -> list[str]:
    return re.findall(r"^\d+: ([^:@]+)", ip("-o", "link", "show").stdout, re.MULTILINE)


def sweep_leftovers() -> None:
    """Namespaces and links of earlier runs whose process is gone (killed before cleaning up)."""
    for name in [*namespaces(), *links()]:
        found = re.match(rf"{PREFIX}(\d+)[a-z]", name)
        if found and not Path(f"/proc/{found[1]}").exists():
            if name in namespaces():
                ip("netns", "del", name, check=False)
            else:
                ip("link", "del", name, check=False)


def free_subnet() -> str:
    """10.231.N.0/24 with N not on any interface here: the first three octets."""
    used = ip("-o", "addr", "show").stdout
    for offset in range(250):
        third = (os.getpid() + offset) % 250 + 1
        if f"10.231.{third}." not in used:
            return f"10.231.{third}"
    raise RuntimeError("no free 10.231.N.0/24 subnet")


_SERIAL = iter("abcdefghijklmnopqrstuvwxyz")  # one letter per fleet of this process


@dataclass
class Host:
    name: str  # hv1: the map key, the certificate's name, the /h/hv1/ prefix
    namespace: str
    address: str
    pair: Pair
    state_dir: Path
    env: dict[str, str]
    broker: BrokerProcess | None = None

    @property
    def url(self) -> str:
        return f"https://{self.address}:{BROKER_PORT}"


@dataclass
class Fleet:
    directory: Path
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}{next(_SERIAL)}")
    undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    front: Nginx | None = None
    ca: Path | None = None
    subnet: str = ""

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def front_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def front_url(self) -> str:
        assert self.front is not None
        return f"https://{self.front_address}:{self.front.port}"

    def certs(self) -> Path:
        return self.directory / "certs"

    def build(self, names: list[str]) -> None:
        sweep_leftovers()
        self.subnet = free_subnet()
        certs = self.certs()
        self.ca = make_ca(certs)
        ip("link", "add", self.bridge, "type", "bridge")
        self.undo.append((f"bridge {self.bridge}", lambda: ip("link", "del", self.bridge, check=False)))
        quiet_ipv6(self.bridge)
        ip("addr", "add", f"{self.front_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for index, name in enumerate(names, start=1):
            self.add_host(name, index)

    def add_namespace(self, name: str, index: int) -> tuple[str, str]:
        """A namespace on the bridge at .<index>: its name and address."""
        namespace, veth = f"{self.tag}-{name}", f"{self.tag}v{index}"
        ip("netns", "add", namespace)
        self.undo.append((f"netns {namespace}", lambda: ip("netns", "del", namespace, check=False)))
        quiet_ipv6("all", namespace)
        quiet_ipv6("default", namespace)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        self.undo.append((f"link {veth}", lambda: ip("link", "del", veth, check=False)))
        quiet_ipv6(veth)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        address = f"{self.subnet}.{index}"
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        return namespace, address

    def add_client(self) -> str:
        """A namespace for the browser, as on another machine: only the front's address is
        reachable, and no link or address change in the root namespace (another test run's
        fleet, say) reaches Chromium. Its namespace name."""
        namespace, _address = self.add_namespace("client", 200)
        return namespace

    def add_host(self, name: str, index: int) -> Host:
        namespace, address = self.add_namespace(name, 10 + index)
        pair = issue(self.certs(), "host", name, address)
        state_dir = self.directory / name / "state"
        host = Host(name, namespace, address, pair, state_dir, env={})
        self.hosts[name] = host
        return host

    def start_broker(self, host: Host) -> BrokerProcess:
        assert self.ca is not None and self.front is not None
        host.env = {
            "BROKER_TLS_CERT": str(host.pair.cert),
            "BROKER_TLS_KEY": str(host.pair.key),
            "BROKER_TLS_CLIENT_CA": str(self.ca),
            "BROKER_TRUSTED_PROXIES": self.front_address,
            "BROKER_PUBLIC_URL": f"{self.front_url}/h/{host.name}",
        }
        host.broker = start_broker(
            host.state_dir,
            "--listen",
            f"{host.address}:{BROKER_PORT}",
            extra_env=host.env,
            prefix=("ip", "netns", "exec", host.namespace),
        )
        broker = host.broker
        self.undo.append((f"broker of {host.name}", broker.stop))
        return broker

    def start_front(self) -> Nginx:
        """nginx with contrib/nginx/fleet.conf, only the `# test:` lines changed, and a map file."""
        assert self.ca is not None
        directory = self.directory / "front"
        directory.mkdir(parents=True, exist_ok=True)
        certs = self.certs()
        issue(certs, "client", "front")
        issue(certs, "host", "front-server", self.front_address)
        (directory / "hosts.map").write_text(
            "".join(f"{host.name} {host.address}:{BROKER_PORT};\n" for host in self.hosts.values())
        )
        port = free_port()
        swaps = {
            "cache": f"proxy_cache_path {directory / 'cache'} levels=1:2 keys_zone=vm_console_fleet_static:1m",
            "map": f"    include {directory / 'hosts.map'};",
            "listen": f"    listen {self.front_address}:{port} ssl;",
            "server cert": f"    ssl_certificate {certs / 'front-server.crt'};",
            "server key": f"    ssl_certificate_key {certs / 'front-server.key'};",
            "log": f"    access_log {directory / 'access.log'} vm_console_fleet;",
            "client cert": f"    proxy_ssl_certificate {certs / 'front.crt'};",
            "client key": f"    proxy_ssl_certificate_key {certs / 'front.key'};",
            "ca": f"    proxy_ssl_trusted_certificate {self.ca};",
        }
        lines = []
        for line in FLEET_CONF.read_text().splitlines():
            marker = re.search(r"# test: (.+)$", line)
            if marker:
                line = f"{swaps.pop(marker[1].strip())}  # test: {marker[1]}"
            lines.append(line)
        assert not swaps, f"fleet.conf lost its '# test:' lines: {sorted(swaps)}"
        self.front = run_nginx(directory, port, "\n".join(lines) + "\n", scheme="https", host=self.front_address)
        self.undo.append(("front nginx", self.front.stop))
        return self.front

    def close(self) -> list[str]:
        """Undo everything, newest first; then say what is still there (nothing, normally)."""
        problems = []
        while self.undo:
            what, step = self.undo.pop()
            try:
                step()
            except Exception as exc:  # keep going: the rest must still be removed
                problems.append(f"removing {what}: {exc}")
        left = [n for n in [*namespaces(), *links()] if n.startswith(self.tag)]
        problems += [f"left behind: {name}" for name in left]
        for host in self.hosts.values():
            if host.broker and host.broker.process.poll() is None:
                problems.append(f"broker of {host.name} still running")
        return problems
