"""Run Debian's nginx with the project's own contrib/nginx file, on a free port, as a real process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .processes import BrokerProcess, free_port, start_broker

CONTRIB_CONF = Path(__file__).resolve().parents[2] / "contrib" / "nginx" / "vm-console-broker.conf"


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def site_conf(socket_path: Path, port: int, directory: Path) -> str:
    """contrib's file with only the lines marked `# test:` changed."""
    lines = []
    for line in CONTRIB_CONF.read_text().splitlines():
        if line.rstrip().endswith("# test: socket"):
            line = f"    server unix:{socket_path};  # test: socket"
        elif line.rstrip().endswith("# test: listen"):
            line = f"    listen 127.0.0.1:{port};  # test: listen"
        elif "access_log /var/log/nginx/" in line:
            line = line.replace("/var/log/nginx/vm-console-broker.access.log", str(directory / "access.log"))
        lines.append(line)
    return "\n".join(lines) + "\n"


def start_nginx(socket_path: Path, directory: Path) -> Nginx:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return run_nginx(directory, port, site_conf(socket_path, port, directory))


def run_nginx(directory: Path, port: int, site: str, scheme: str = "http", host: str = "127.0.0.1") -> Nginx:
    """nginx in the foreground with `site` in its http {} block, once it answers on `port`."""
    (directory / "site.conf").write_text(site)
    (directory / "nginx.conf").write_text(
        f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include /etc/nginx/mime.types;
    include {directory}/site.conf;
}}
"""
    )
    process = subprocess.Popen(
        ["nginx", "-c", str(directory / "nginx.conf"), "-p", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "stderr.log", "wb"),
    )
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(directory / 'stderr.log').read_text()}")
        try:
            httpx.get(f"{scheme}://{host}:{port}/", timeout=1, verify=False)
            return Nginx(process, port, directory)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("nginx did not come up in 10 s") from None
            time.sleep(0.05)


def mint_through(
    nginx: Nginx, broker: BrokerProcess, domain: str, *, timeout: float = 5.0, **body: object
) -> dict[str, Any]:
    """A console link for `domain`, asked for over REST through nginx (201, or the test fails)."""
    response = httpx.post(
        f"{nginx.url}/novnc/api/v1/domains/{domain}/console",
        headers={"Authorization": f"Bearer {broker.api_key}"},
        json=body,
        timeout=timeout,
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@contextmanager
def broker_behind_nginx(base: Path, **broker_options: Any) -> Iterator[tuple[BrokerProcess, Nginx]]:
    """A broker on a UNIX socket under `base`, served by nginx on /novnc/ (start_broker's
    keyword options pass through); both stopped afterwards."""
    socket_path = base / "broker.sock"
    broker = start_broker(base / "state", "--uds", str(socket_path), **broker_options)
    try:
        nginx = start_nginx(socket_path, base / "nginx")
    except Exception:
        broker.stop()
        raise
    try:
        yield broker, nginx
    finally:
        nginx.stop()
        broker.stop()
