"""Schemathesis against a live broker and real libvirt: the REST API as its OpenAPI document
(/api/v1/openapi.json) says, for generated valid and invalid requests.

No 5xx, and every answer's status, content type, headers and body as described; calls
without the key are refused; methods not described get 405. Not checked: that every
schema-valid request succeeds (`positive_data_acceptance`): a valid-looking request may
rightly be refused (a stopped domain, `ttl` over `token_max_ttl`, a rate limit), and those
refusals are described. The run is bounded by examples, not by time: a fixed seed, so a
failure reproduces (BROKER_FUZZ_SEED picks another), BROKER_FUZZ_EXAMPLES per call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from support.processes import start_broker

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "ignored_auth",
        "unsupported_method",
        "missing_required_header",
    ]
)


def test_the_api_answers_as_its_openapi_document_says(
    tmp_path: Path, tcp_vm: libvirt.virDomain, off_vm: libvirt.virDomain
) -> None:
    # Its own broker: minting as fast as the fuzzer goes would spend the shared one's budget
    # (and without raised limits most mints would only be fuzzed into 429s).
    limits = {"BROKER_MINT_RATE": "100000", "BROKER_MINT_BURST": "100000", "BROKER_SCREENSHOT_RATE": "100000"}
    broker = start_broker(tmp_path / "state", extra_env=limits)
    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(TESTS),
            "SCHEMATHESIS_HOOKS": "support.fuzz_hooks",
            "BROKER_FUZZ_DOMAINS": f"{tcp_vm.name()},{off_vm.name()},uuid:{tcp_vm.UUIDString()}",
        }
        command = [
            str(SCHEMATHESIS),
            "run",
            f"{broker.url}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {broker.api_key}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            os.environ.get("BROKER_FUZZ_EXAMPLES", "100"),
            "--seed",
            os.environ.get("BROKER_FUZZ_SEED", "14"),
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--suppress-health-check",
            "too_slow",
        ]
        # In tmp_path: schemathesis keeps a cache (.schemathesis/) in its working directory.
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        report = result.stdout[-20000:] + result.stderr[-5000:]
        assert result.returncode == 0, report
        assert broker.api_key not in report
    finally:
        broker.stop()
    assert "Traceback" not in broker.log()
