"""Run Debian's Prometheus as a real process on a free port, scraping a test broker, and
ask it questions through its own HTTP API (/api/v1/query)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .processes import free_port

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus" / "vm-console-broker-rules.yml"
BINARY = "prometheus"
SCRAPE_INTERVAL = "500ms"  # the tests wait for a few scrapes at most


def missing() -> str | None:
    """Why Prometheus cannot run here, or None (contrib/test.sh installs it)."""
    if shutil.which(BINARY) is None:
        return "no prometheus binary: run contrib/test.sh (it installs Debian's prometheus package)"
    return None


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) `promql` evaluates to now, as Prometheus answers it."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return result if body["data"]["resultType"] == "vector" else [{"metric": {}, "value": result}]

    def value(self, promql: str) -> float | None:
        """The single value `promql` gives now, or None while it gives nothing."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} gave {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, accept: Callable[[float | None], bool], timeout: float = 20.0) -> float | None:
        """Poll until the value of `promql` passes `accept`; the test fails with the last seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.value(promql)
            if accept(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {promql} is {seen} after {timeout} s\n{self.log()[-2000:]}")
            time.sleep(0.2)

    def targets(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]  # type: ignore[no-any-return]

    def rules(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"]["groups"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_prometheus(directory: Path, jobs: dict[str, dict[str, Any]]) -> Prometheus:
    """Prometheus with contrib's alert rules and one scrape job per entry of `jobs`
    (job name -> extra scrape_config keys, e.g. targets and authorization)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": name, "scrape_timeout": "400ms", **job} for name, job in jobs.items()],
    }
    config_path = directory / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = open(directory / "prometheus.log", "wb")  # the process keeps it
    process = subprocess.Popen(
        [
            BINARY,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )
    started = Prometheus(process, port, directory)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{started.log()}")
        try:
            if httpx.get(f"{started.url}/-/ready", timeout=1).status_code == 200:
                return started
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            started.stop()
            raise RuntimeError(f"prometheus was not ready in 30 s:\n{started.log()}")
        time.sleep(0.1)
