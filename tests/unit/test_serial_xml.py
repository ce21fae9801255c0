"""parse_devices: a domain's serial consoles and the graphics the broker cannot open, from literal XML."""

from __future__ import annotations

import pytest

from broker.errors import NO_CONSOLE, BrokerError
from broker.model import DomainInfo, SerialConsole
from broker.sources.graphics import parse_devices

UUID = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"


def domain(*devices: str) -> str:
    return f"<domain type='qemu'><name>vm</name><devices>{''.join(devices)}</devices></domain>"


PTY_WITH_LOG = """
<serial type='pty'>
  <source path='/dev/pts/3'/>
  <log file='/var/log/libvirt/qemu/vm-serial0.log' append='off'/>
  <target type='isa-serial' port='0'><model name='isa-serial'/></target>
  <alias name='serial0'/>
</serial>
<console type='pty' tty='/dev/pts/3'>
  <source path='/dev/pts/3'/>
  <log file='/var/log/libvirt/qemu/vm-serial0.log' append='off'/>
  <target type='serial' port='0'/>
  <alias name='serial0'/>
</console>"""


def test_a_pty_serial_with_a_log_is_one_console_with_history() -> None:
    assert parse_devices(domain(PTY_WITH_LOG)).serials == [
        SerialConsole(0, "serial0", "serial", "isa-serial", "/var/log/libvirt/qemu/vm-serial0.log")
    ]


def test_a_pty_serial_without_a_log_has_no_history() -> None:
    xml = domain("<serial type='pty'><target type='isa-serial' port='0'/><alias name='serial0'/></serial>")
    [console] = parse_devices(xml).serials
    assert console.log_path is None and console.unavailable is None


def test_several_devices_keep_their_order_and_a_virtio_console_is_its_own() -> None:
    xml = domain(
        PTY_WITH_LOG,
        "<serial type='pty'><target type='isa-serial' port='1'/><alias name='serial1'/></serial>",
        "<console type='pty'><target type='virtio' port='1'/><alias name='console1'/></console>",
    )
    consoles = parse_devices(xml).serials
    assert [(c.index, c.alias, c.target) for c in consoles] == [
        (0, "serial0", "isa-serial"),
        (1, "serial1", "isa-serial"),
        (2, "console1", "virtio"),
    ]


def test_inactive_xml_without_aliases_gets_libvirts_names() -> None:
    xml = domain("<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial'/></console>")
    assert [c.alias for c in parse_devices(xml).serials] == ["serial0"]


@pytest.mark.parametrize("source", ["tcp", "udp", "file", "unix"])
def test_a_device_libvirt_cannot_open_is_listed_with_what_to_change(source: str) -> None:
    xml = domain(f"<serial type='{source}'><target port='0'/><alias name='serial0'/></serial>")
    [console] = parse_devices(xml).serials
    assert console.unavailable is not None
    assert f"type {source!r}" in console.unavailable and "<serial type='pty'>" in console.unavailable


def test_no_serial_devices() -> None:
    assert parse_devices(domain("<graphics type='vnc' port='5900'/>")).serials == []


def test_spice_only_is_named_with_the_conversion_command() -> None:
    devices = parse_devices(domain("<graphics type='spice' port='5900'/>"))
    assert devices.vnc == [] and devices.other_graphics == ["spice"]
    info = DomainInfo("vm", UUID, "running", True, consoles=devices.vnc, other_graphics=devices.other_graphics)
    with pytest.raises(BrokerError) as caught:
        info.console()
    assert caught.value.failure is NO_CONSOLE
    assert "only SPICE graphics" in caught.value.message
    assert "virt-xml vm --convert-to-vnc" in caught.value.message
    assert "virt-xml vm --convert-to-vnc" in info.to_json()["console_unavailable"]


def running(*serials: SerialConsole) -> DomainInfo:
    return DomainInfo("vm", UUID, "running", True, run_id=3, serials=list(serials))


SERIAL0 = SerialConsole(0, "serial0", "serial", "isa-serial")
CONSOLE1 = SerialConsole(1, "console1", "console", "virtio")


@pytest.mark.parametrize(("which", "alias"), [(None, "serial0"), ("console1", "console1"), (1, "console1")])
def test_a_serial_console_by_alias_or_index(which: str | int | None, alias: str) -> None:
    assert running(SERIAL0, CONSOLE1).serial(which).alias == alias


def test_an_unknown_serial_console_names_the_ones_there_are() -> None:
    with pytest.raises(BrokerError) as caught:
        running(SERIAL0, CONSOLE1).serial("serial7")
    assert caught.value.failure is NO_CONSOLE and "serial0, console1" in caught.value.message


def test_no_serial_console_says_which_element_to_add() -> None:
    with pytest.raises(BrokerError) as caught:
        running().serial()
    assert "<serial type='pty'><log file='/var/log/libvirt/qemu/vm-serial0.log'/></serial>" in caught.value.message


def test_the_listing_shows_serial_consoles_with_history_and_reasons() -> None:
    tcp = SerialConsole(1, "serial1", "serial", "isa-serial", unavailable="change it")
    body = running(SerialConsole(0, "serial0", "serial", "isa-serial", "/log"), tcp).to_json()
    assert body["serial_consoles"] == [
        {"index": 0, "alias": "serial0", "target": "isa-serial", "history": True},
        {
            "index": 1,
            "alias": "serial1",
            "target": "isa-serial",
            "history": False,
            "unavailable": "change it",
        },
    ]
