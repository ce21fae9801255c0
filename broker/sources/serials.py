"""Where a domain's serial consoles are, parsed from its libvirt XML.

Pure, like graphics.py: XML text in, SerialConsole values out. libvirt opens a console
(virDomainOpenConsole) by the alias of a `<serial>` or `<console>` element, and only when
its host side is a PTY; every other device is listed with what to change.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..model import SerialConsole


def parse_serials(root: ET.Element) -> list[SerialConsole]:
    """The serial consoles of a parsed <domain>, in device order: every <serial>, then the
    <console> elements that are not the same device again (libvirt repeats serial0 as a
    <console target type='serial'>)."""
    devices = root.find("devices")
    if devices is None:
        return []
    found: list[SerialConsole] = []
    seen: set[str] = set()
    for element in [*devices.findall("serial"), *devices.findall("console")]:
        target = element.find("target")
        target_type = target.get("type") if target is not None else None
        port = target.get("port", "0") if target is not None else "0"
        if element.tag == "console" and target_type in (None, "serial"):
            continue  # the serial port itself, listed as <serial> already
        alias_element = element.find("alias")
        alias = alias_element.get("name") if alias_element is not None else None
        alias = alias or f"{element.tag}{port}"  # what libvirt names it once the domain runs
        if alias in seen:
            continue
        seen.add(alias)
        found.append(_console(len(found), alias, element, target_type))
    return found


def _console(index: int, alias: str, element: ET.Element, target_type: str | None) -> SerialConsole:
    source_type = element.get("type", "pty")
    log = element.find("log")
    log_path = log.get("file") if log is not None else None
    model = element.find("target/model")
    target = (model.get("name") if model is not None else None) or target_type or "serial"
    unavailable = None
    if source_type != "pty":
        unavailable = (
            f"libvirt opens only PTY-backed consoles, and this <{element.tag}> is type {source_type!r}: "
            f"change it to <{element.tag} type='pty'> (a <log file=…/> inside keeps its output)"
        )
    return SerialConsole(index, alias, element.tag, target, log_path or None, unavailable)
