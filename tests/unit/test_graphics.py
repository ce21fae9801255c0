"""parse_graphics: every way libvirt describes a VNC console, from literal XML."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.model import FdEndpoint, TcpEndpoint, UnixEndpoint, VncConsole
from broker.sources.graphics import GraphicsXMLError, parse_graphics


def domain(*devices: str) -> str:
    """A live-domain XML in libvirt's own layout, with these devices."""
    return (
        "<domain type='kvm' id='7'>\n"
        "  <name>vm</name>\n"
        "  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>\n"
        "  <devices>\n"
        "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        + "".join(f"    {device}\n" for device in devices)
        + "  </devices>\n"
        "</domain>\n"
    )


def only(xml: str) -> VncConsole:
    consoles = parse_graphics(xml)
    assert len(consoles) == 1
    return consoles[0]


# -- TCP ------------------------------------------------------------------------------


def test_tcp_with_listen_attribute() -> None:
    console = only(domain("<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'/>"))
    assert console == VncConsole(0, TcpEndpoint("127.0.0.1", 5901))
    assert console.unavailable is None


def test_tcp_with_listen_address_child_as_libvirt_writes_it() -> None:
    xml = domain(
        "<graphics type='vnc' port='5902' autoport='yes' listen='192.0.2.10'>"
        "<listen type='address' address='192.0.2.10'/></graphics>"
    )
    assert only(xml).endpoint == TcpEndpoint("192.0.2.10", 5902)


def test_tcp_with_only_a_listen_address_child() -> None:
    xml = domain("<graphics type='vnc' port='5903'><listen type='address' address='10.1.2.3'/></graphics>")
    assert only(xml).endpoint == TcpEndpoint("10.1.2.3", 5903)


def test_tcp_listen_network_child_uses_its_resolved_address() -> None:
    xml = domain(
        "<graphics type='vnc' port='5904'><listen type='network' address='192.168.122.1' network='default'/></graphics>"
    )
    assert only(xml).endpoint == TcpEndpoint("192.168.122.1", 5904)


def test_tcp_without_any_listen_address_defaults_to_loopback() -> None:
    assert only(domain("<graphics type='vnc' port='5900'/>")).endpoint == TcpEndpoint("127.0.0.1", 5900)


def test_tcp_with_empty_listen_address_child_defaults_to_loopback() -> None:
    xml = domain("<graphics type='vnc' port='5900'><listen type='address'/></graphics>")
    assert only(xml).endpoint == TcpEndpoint("127.0.0.1", 5900)


def test_ipv6_address_is_kept() -> None:
    xml = domain("<graphics type='vnc' port='5900' listen='fd00::5'/>")
    assert only(xml).endpoint == TcpEndpoint("fd00::5", 5900)


# -- wildcards ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wildcard", "loopback"),
    [("0.0.0.0", "127.0.0.1"), ("::", "::1")],
)
def test_wildcard_listen_attribute_is_reached_over_loopback(wildcard: str, loopback: str) -> None:
    xml = domain(f"<graphics type='vnc' port='5910' listen='{wildcard}'/>")
    assert only(xml).endpoint == TcpEndpoint(loopback, 5910)


@pytest.mark.parametrize(
    ("wildcard", "loopback"),
    [("0.0.0.0", "127.0.0.1"), ("::", "::1")],
)
def test_wildcard_listen_child_is_reached_over_loopback(wildcard: str, loopback: str) -> None:
    xml = domain(f"<graphics type='vnc' port='5911'><listen type='address' address='{wildcard}'/></graphics>")
    assert only(xml).endpoint == TcpEndpoint(loopback, 5911)


# -- ports not known yet --------------------------------------------------------------


def test_autoport_before_start_is_unavailable_with_a_reason() -> None:
    console = only(domain("<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"))
    assert console.endpoint is None
    assert console.unavailable is not None
    assert "port" in console.unavailable


@pytest.mark.parametrize("port", ["0", "65536", "abc", ""])
def test_out_of_range_or_garbage_port_is_unavailable(port: str) -> None:
    console = only(domain(f"<graphics type='vnc' port='{port}'/>"))
    assert console.endpoint is None
    assert console.unavailable


def test_missing_port_is_unavailable() -> None:
    console = only(domain("<graphics type='vnc' autoport='yes'/>"))
    assert console.endpoint is None
    assert console.unavailable


# -- UNIX sockets ---------------------------------------------------------------------


def test_socket_attribute() -> None:
    xml = domain("<graphics type='vnc' socket='/run/libvirt/qemu/vm.vnc'/>")
    assert only(xml) == VncConsole(0, UnixEndpoint("/run/libvirt/qemu/vm.vnc"))


def test_listen_socket_child_with_path() -> None:
    xml = domain("<graphics type='vnc'><listen type='socket' socket='/x.sock'/></graphics>")
    assert only(xml).endpoint == UnixEndpoint("/x.sock")


def test_socket_attribute_and_child_as_libvirt_writes_them() -> None:
    xml = domain(
        "<graphics type='vnc' socket='/var/lib/libvirt/qemu/vm.sock'>"
        "<listen type='socket' socket='/var/lib/libvirt/qemu/vm.sock'/></graphics>"
    )
    assert only(xml).endpoint == UnixEndpoint("/var/lib/libvirt/qemu/vm.sock")


def test_listen_socket_child_without_path_is_unavailable() -> None:
    console = only(domain("<graphics type='vnc'><listen type='socket'/></graphics>"))
    assert console.endpoint is None
    assert console.unavailable is not None
    assert "socket" in console.unavailable


def test_socket_path_on_an_address_listen_is_ignored() -> None:
    xml = domain("<graphics type='vnc' port='5900'><listen type='address' socket='/x.sock' address='::'/></graphics>")
    assert only(xml).endpoint == TcpEndpoint("::1", 5900)


# -- no listener: a file descriptor from libvirt -------------------------------------


def test_listen_none_is_an_fd_endpoint() -> None:
    console = only(domain("<graphics type='vnc'><listen type='none'/></graphics>"))
    assert console == VncConsole(0, FdEndpoint(0))


def test_fd_endpoint_index_counts_every_graphics_element() -> None:
    xml = domain(
        "<graphics type='spice' autoport='yes'/>",
        "<graphics type='sdl' display=':0'/>",
        "<graphics type='vnc'><listen type='none'/></graphics>",
    )
    assert only(xml) == VncConsole(2, FdEndpoint(2))


# -- several devices ------------------------------------------------------------------


def test_spice_then_two_vnc_devices_are_indexed_across_all_graphics() -> None:
    xml = domain(
        "<graphics type='spice' port='5930' autoport='no' listen='127.0.0.1'/>",
        "<video><model type='qxl'/></video>",
        "<graphics type='vnc' port='5901' listen='127.0.0.1'/>",
        "<graphics type='vnc' socket='/run/vm-2.sock'/>",
    )
    assert parse_graphics(xml) == [
        VncConsole(1, TcpEndpoint("127.0.0.1", 5901)),
        VncConsole(2, UnixEndpoint("/run/vm-2.sock")),
    ]


def test_graphics_outside_devices_are_ignored() -> None:
    xml = "<domain><graphics type='vnc' port='5900'/><devices/></domain>"
    assert parse_graphics(xml) == []


def test_no_graphics_at_all() -> None:
    assert parse_graphics(domain("<disk type='file' device='disk'/>")) == []


def test_only_non_vnc_graphics() -> None:
    assert parse_graphics(domain("<graphics type='spice' autoport='yes'/>")) == []


def test_no_devices_element() -> None:
    assert parse_graphics("<domain type='kvm'><name>vm</name></domain>") == []


# -- not domain XML -------------------------------------------------------------------


@pytest.mark.parametrize(
    "xml",
    ["", "   ", "not xml", "<domain>", "<domain><devices></domain>", "<a/><b/>", "<domain attr=x/>"],
)
def test_not_well_formed_xml_raises_graphics_xml_error(xml: str) -> None:
    with pytest.raises(GraphicsXMLError, match="not well-formed"):
        parse_graphics(xml)


@pytest.mark.parametrize("xml", ["<network><devices/></network>", "<Domain/>", "<x:domain xmlns:x='urn:x'/>"])
def test_wrong_root_element_raises_graphics_xml_error(xml: str) -> None:
    with pytest.raises(GraphicsXMLError, match="expected <domain>"):
        parse_graphics(xml)


def test_graphics_xml_error_is_a_value_error() -> None:
    assert issubclass(GraphicsXMLError, ValueError)


# Lone surrogates cannot come out of libvirt, but they are "arbitrary text".
_text_without_surrogates = st.text(st.characters(blacklist_categories=("Cs",)))


def _xmlish() -> st.SearchStrategy[str]:
    attr = st.sampled_from(["type", "port", "listen", "socket", "passwd", "address", "autoport"])
    value = st.one_of(
        st.sampled_from(["vnc", "spice", "socket", "none", "address", "-1", "5900", "0.0.0.0", "::", "", "/x"]),
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="'<&\x00"), max_size=8),
    )
    attrs = st.lists(st.tuples(attr, value), max_size=4, unique_by=lambda kv: kv[0]).map(
        lambda kvs: "".join(f" {k}='{v}'" for k, v in kvs)
    )
    tag = st.sampled_from(["graphics", "listen", "devices", "domain", "video"])
    element = st.tuples(tag, attrs).map(lambda ta: f"<{ta[0]}{ta[1]}/>")
    inner = st.lists(element, max_size=4).map("".join)
    graphics = st.tuples(attrs, inner).map(lambda ai: f"<graphics{ai[0]}>{ai[1]}</graphics>")
    devices = st.lists(st.one_of(graphics, element), max_size=4).map(lambda g: f"<devices>{''.join(g)}</devices>")
    root = st.sampled_from(["domain", "domain", "network"])
    return st.tuples(root, devices, st.booleans()).map(
        lambda r: f"<{r[0]}>{r[1]}</{r[0]}>" if r[2] else f"<{r[0]}>{r[1]}"
    )


def _only_graphics_xml_error(xml: str) -> None:
    try:
        consoles = parse_graphics(xml)
    except GraphicsXMLError:
        return
    for console in consoles:
        assert isinstance(console, VncConsole)
        assert (console.endpoint is None) == (console.unavailable is not None)


@settings(max_examples=300, deadline=None)
@given(_text_without_surrogates)
def test_arbitrary_text_raises_nothing_but_graphics_xml_error(xml: str) -> None:
    _only_graphics_xml_error(xml)


@settings(max_examples=300, deadline=None)
@given(_xmlish())
def test_arbitrary_graphics_like_xml_raises_nothing_but_graphics_xml_error(xml: str) -> None:
    _only_graphics_xml_error(xml)


def test_text_with_a_lone_surrogate_raises_graphics_xml_error() -> None:
    with pytest.raises(GraphicsXMLError):
        parse_graphics("<domain>\ud800</domain>")


# -- passwords and printing -----------------------------------------------------------


def test_password_is_parsed_but_never_shown_in_repr() -> None:
    console = only(domain("<graphics type='vnc' port='5900' passwd='s3cr3t-pw'/>"))
    assert console.password == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(console)
    assert "s3cr3t-pw" not in str(console)


@pytest.mark.parametrize(
    "device",
    [
        "<graphics type='vnc' port='-1' autoport='yes' passwd='pw'/>",
        "<graphics type='vnc' socket='/s' passwd='pw'/>",
        "<graphics type='vnc' passwd='pw'><listen type='none'/></graphics>",
        "<graphics type='vnc' passwd='pw'><listen type='socket'/></graphics>",
    ],
)
def test_password_is_kept_for_every_kind_of_console(device: str) -> None:
    assert only(domain(device)).password == "pw"


def test_no_password_attribute_means_none() -> None:
    assert only(domain("<graphics type='vnc' port='5900'/>")).password is None


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        (TcpEndpoint("127.0.0.1", 5900), "vnc://127.0.0.1:5900"),
        (TcpEndpoint("::1", 5901), "vnc://[::1]:5901"),
        (UnixEndpoint("/run/vm.sock"), "vnc+unix:///run/vm.sock"),
        (FdEndpoint(3), "vnc+fd://graphics/3"),
    ],
)
def test_str_of_endpoints(endpoint: object, text: str) -> None:
    assert str(endpoint) == text


def test_parse_target_forms() -> None:
    from broker.sources.graphics import parse_target

    assert parse_target("tcp:127.0.0.1:5901") == TcpEndpoint("127.0.0.1", 5901)
    assert parse_target("tcp:[::1]:5901") == TcpEndpoint("::1", 5901)
    assert parse_target("unix:/run/vnc.sock") == UnixEndpoint("/run/vnc.sock")
