"""Session-wide real parts: one libvirt connection, a few shared QEMU domains, one broker process.

Every domain is named broker-test-* and removed at the end; the broker process is
stopped with SIGTERM. Nothing is left running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from support import vms
from support.audit import audit_events, secrets_in
from support.processes import BrokerProcess, start_broker

# The passwords test_vnc_auth.py gives its domain (kept here: a conftest imports no test module).
VNC_PASSWORDS = ("s3cret", "n3wpass")


@pytest.fixture(scope="session")
def conn() -> Iterator[libvirt.virConnect]:
    connection = vms.connect()
    vms.remove_all_test_domains(connection)
    yield connection
    # A fresh connection: a test may have restarted libvirtd under the first one.
    cleanup = vms.connect()
    vms.remove_all_test_domains(cleanup)
    cleanup.close()


@pytest.fixture(scope="session")
def tiny_vm(conn: libvirt.virConnect, tmp_path_factory: pytest.TempPathFactory) -> tuple[libvirt.virDomain, Path]:
    """The tiny Linux guest, booted once for every test that needs a guest that reacts: a
    shell on its serial PTY (logged to the returned file), VGA keys echoed there as GOT: …."""
    log_path = tmp_path_factory.mktemp("tiny") / "serial0.log"
    dom = vms.define_tiny(conn, "broker-test-tiny", str(log_path))
    vms.wait_for_line(str(log_path), "TINY-GUEST-READY")
    return dom, log_path


@pytest.fixture(scope="session")
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vnc-sockets")


@pytest.fixture(scope="session")
def tcp_vm(conn: libvirt.virConnect) -> libvirt.virDomain:
    return vms.define(conn, "broker-test-tcp", vms.TCP)


@pytest.fixture(scope="session")
def unix_vm(conn: libvirt.virConnect, socket_dir: Path) -> libvirt.virDomain:
    return vms.define(conn, "broker-test-unix", vms.unix_at(str(socket_dir / "unix.sock")))


@pytest.fixture(scope="session")
def fd_vm(conn: libvirt.virConnect) -> libvirt.virDomain:
    return vms.define(conn, "broker-test-fd", vms.NO_LISTENER)


@pytest.fixture(scope="session")
def off_vm(conn: libvirt.virConnect) -> libvirt.virDomain:
    return vms.define(conn, "broker-test-off", vms.TCP, start=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, conn: libvirt.virConnect) -> Iterator[BrokerProcess]:
    state = tmp_path_factory.mktemp("broker-state")
    audit = state / "audit.jsonl"
    process = start_broker(state, extra_env={"BROKER_AUDIT_LOG": str(audit)})
    yield process
    process.stop()
    # Every audit event of the whole run, grepped for secrets: the API key, the VNC
    # passwords of test_vnc_auth.py, anything shaped like a token or cookie, any query.
    assert audit_events(audit), "the shared broker wrote no audit event"
    assert secrets_in(audit, [process.api_key, *VNC_PASSWORDS]) == []
