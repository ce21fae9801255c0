"""Certificates made the way an operator makes them: with contrib/fleet-cert.sh (openssl)."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "contrib" / "fleet-cert.sh"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def fleet_cert(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env)


def make_ca(directory: Path) -> Path:
    result = fleet_cert("ca", str(directory))
    assert result.returncode == 0, result.stderr
    return directory / "ca.crt"


def issue(directory: Path, kind: str, name: str, *ips: str) -> Pair:
    """`kind` is host (a TLS server named `name`, with `ips`) or client."""
    result = fleet_cert(kind, str(directory), name, *ips)
    assert result.returncode == 0, result.stderr
    return Pair(directory / f"{name}.crt", directory / f"{name}.key")


def client_context(ca: Path | None, pair: Pair | None = None) -> ssl.SSLContext:
    """A TLS client that trusts `ca` (or nothing: no verification) and shows `pair`, if any."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    context.check_hostname = False
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    return context
