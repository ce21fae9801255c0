"""Start the broker as a real process and always stop it again."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BROKER = [sys.executable, "-m", "broker"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class BrokerProcess:
    process: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = tuple(BROKER)  # how `broker` is run: this checkout's, or an installed one
    cwd: Path | None = None

    @property
    def api_key(self) -> str:
        return (self.state_dir / "api-key").read_text().strip()

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mib(self) -> float:
        """The broker's resident memory (VmRSS), in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def ended_sessions(self) -> list[str]:
        """The end-of-session log lines, oldest first."""
        return [line for line in self.log().splitlines() if "console session" in line and " ended: " in line]

    def ended_session(self, index: int, timeout: float = 10.0) -> str:
        """End-of-session line number `index` (from 0), waiting for it to be logged."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.ended_sessions()
            if len(ended) > index:
                return ended[index]
            if time.monotonic() > deadline:
                raise AssertionError(f"no end-of-session line #{index} in the broker's log")
            time.sleep(0.02)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `broker …` as a user on this host would: no flags pointing at the server."""
        return subprocess.run(
            [*self.command, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=30, check=check
        )

    def mint(self, domain: str, **body: object) -> dict[str, Any]:
        """A console link for `domain` over REST (201, or the test fails)."""
        response = self.api("POST", f"/api/v1/domains/{domain}/console", json=body)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=15, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_broker(
    state_dir: Path,
    *args: str,
    extra_env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    command: tuple[str, ...] = tuple(BROKER),
    cwd: Path | None = None,
) -> BrokerProcess:
    """`prefix` runs it through another command that execs it (e.g. `ip netns exec NAME`);
    `command` is the broker to run (an installed one's `broker` script, run from `cwd`)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BROKER_STATE_DIR": str(state_dir), **(extra_env or {})}
    env.pop("BROKER_API_KEY", None)
    env.pop("BROKER_SERVER", None)
    if not any(a in args for a in ("--listen", "--uds")):
        args = (*args, "--listen", f"127.0.0.1:{free_port()}")
    log_path = state_dir / "broker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*prefix, *command, "serve", *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 20
    server_file = state_dir / "server.json"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}:\n{log_path.read_text()}")
        if server_file.exists():
            where = json.loads(server_file.read_text())
            url = where.get("url", "http://localhost")
            try:
                if where.get("uds") or url.startswith("https:"):
                    # TLS listeners may want a client certificate: ask over a plain socket.
                    transport = httpx.HTTPTransport(uds=where.get("uds") or where["cli"])
                    httpx.Client(transport=transport).get("http://localhost/healthz", timeout=2)
                else:
                    httpx.get(url + "/healthz", timeout=2)
                return BrokerProcess(process, state_dir, log_path, url, env, command, cwd)
            except httpx.TransportError:
                pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"broker did not come up in 20 s:\n{log_path.read_text()}")
        time.sleep(0.05)


def zero_copied_mib(ended_line: str) -> float:
    """MiB the kernel moved, from an end-of-session line's '(15.8 MiB of it zero-copy)'."""
    found = re.search(r"\(([\d.]+) (B|KiB|MiB) of it zero-copy\)", ended_line)
    if not found:
        return 0.0
    return float(found[1]) / {"B": 1024 * 1024, "KiB": 1024, "MiB": 1}[found[2]]
