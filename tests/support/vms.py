"""Real QEMU test domains through libvirt: SeaBIOS-only by default (no disk, boots in ~0.4 s under TCG)."""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from contextlib import suppress

import libvirt

from .wait import wait_until

URI = "qemu:///system"
# BROKER_TEST_DOMAIN_PREFIX lets two test runs share one libvirtd without removing each
# other's domains (a second checkout, a helper's run): every broker-test-* name is mapped.
BASE_PREFIX = "broker-test-"
PREFIX = os.environ.get("BROKER_TEST_DOMAIN_PREFIX") or BASE_PREFIX


def domain_name(name: str) -> str:
    """The name a test's domain gets in libvirt under this run's prefix.

    Idempotent: callers pass libvirt's own names back (remove(conn, dom.name())), and a
    name mapped twice (broker-test-x- + x-vm) would never be found, so never removed."""
    if name.startswith(PREFIX):
        return name
    return PREFIX + name[len(BASE_PREFIX) :] if name.startswith(BASE_PREFIX) else name


libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def domain_xml(name: str, graphics: str, *, memory_mib: int = 64, os_xml: str = "", extra: str = "") -> str:
    return f"""
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuidlib.uuid4()}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    {os_xml}
  </os>
  <devices>
    <video><model type='vga'/></video>
    {graphics}
    {extra}
  </devices>
</domain>"""


TCP = "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"


def tcp_on(port: int) -> str:
    return f"<graphics type='vnc' port='{port}' autoport='no' listen='127.0.0.1'/>"


def unix_at(path: str) -> str:
    return f"<graphics type='vnc'><listen type='socket' socket='{path}'/></graphics>"


NO_LISTENER = "<graphics type='vnc'><listen type='none'/></graphics>"


def connect() -> libvirt.virConnect:
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as exc:
        raise RuntimeError(
            f"libvirtd is not reachable at {URI} ({exc.get_error_message()}): "
            "run `bash contrib/libvirt-up.sh up` (contrib/test.sh does it for you)"
        ) from None


def define(
    conn: libvirt.virConnect, name: str, graphics: str, *, start: bool = True, **kwargs: object
) -> libvirt.virDomain:
    name = domain_name(name)
    remove(conn, name)
    dom = conn.defineXML(domain_xml(name, graphics, **kwargs))  # type: ignore[arg-type]
    if start:
        dom.create()
    return dom


def remove(conn: libvirt.virConnect, name: str) -> None:
    with suppress(libvirt.libvirtError):
        dom = conn.lookupByName(domain_name(name))
        with suppress(libvirt.libvirtError):
            dom.destroy()
        with suppress(libvirt.libvirtError):
            dom.undefine()


def remove_all_test_domains(conn: libvirt.virConnect) -> None:
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(PREFIX):
            remove(conn, dom.name())


def vnc_port(dom: libvirt.virDomain, timeout: float = 5.0) -> int:
    """The autoport libvirt assigned, from the live XML."""
    import xml.etree.ElementTree as ET

    deadline = time.monotonic() + timeout
    while True:
        graphics = ET.fromstring(dom.XMLDesc(0)).find("devices/graphics")
        port = int(graphics.get("port", "-1")) if graphics is not None else -1
        if port > 0 or time.monotonic() > deadline:
            return port
        time.sleep(0.05)


TINY_GUEST_DIR = "/var/cache/vm-console-broker/tiny-guest"


def serial_pty(log_path: str | None = None) -> str:
    """A serial port on a PTY (what virDomainOpenConsole opens), with its output logged."""
    log = f"<log file='{log_path}' append='off'/>" if log_path else ""
    console = "<console type='pty'><target type='serial' port='0'/></console>"
    return f"<serial type='pty'>{log}<target port='0'/></serial>{console}"


def define_tiny(conn: libvirt.virConnect, name: str, log_path: str) -> libvirt.virDomain:
    """The tiny Linux guest (contrib/tiny-guest.sh, built first): a shell on its serial PTY,
    whose output is also logged to `log_path`; VGA keys echoed there as "GOT: <line>"."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "contrib" / "tiny-guest.sh"
    subprocess.run(["bash", str(script), TINY_GUEST_DIR], check=True)
    os_xml = (
        f"<kernel>{TINY_GUEST_DIR}/vmlinuz</kernel><initrd>{TINY_GUEST_DIR}/initrd.gz</initrd>"
        "<cmdline>console=ttyS0 quiet</cmdline>"
    )
    return define(conn, name, TCP, memory_mib=256, os_xml=os_xml, extra=serial_pty(log_path))


def wait_for_line(path: str, text: str, timeout: float = 60.0) -> None:
    """Until `text` appears in the log file at `path` (a guest's serial log)."""

    def logged() -> bool:
        with suppress(OSError), open(path, "rb") as log_file:
            return text.encode() in log_file.read()
        return False  # not written yet

    wait_until(logged, timeout, f"{text!r} in {path}", interval=0.2)
