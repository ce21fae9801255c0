"""DomainInfo.console() and to_json(): which console a request gets, or why none."""

from __future__ import annotations

import pytest

from broker.errors import DOMAIN_NOT_RUNNING, NO_CONSOLE, BrokerError
from broker.model import DomainInfo, FdEndpoint, TcpEndpoint, UnixEndpoint, VncConsole

UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
TCP = VncConsole(1, TcpEndpoint("127.0.0.1", 5901))
UNIX = VncConsole(2, UnixEndpoint("/run/vm.sock"))
PENDING = VncConsole(3, None, "the VNC port is assigned when the domain starts")


def running(*consoles: VncConsole) -> DomainInfo:
    return DomainInfo("vm", UUID, "running", True, run_id=4, consoles=list(consoles))


def shut_off(*consoles: VncConsole) -> DomainInfo:
    return DomainInfo("vm", UUID, "shutoff", False, consoles=list(consoles))


def refusal(info: DomainInfo, index: int | None = None) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        info.console(index)
    return caught.value


def test_default_console_is_the_first_vnc_device() -> None:
    assert running(TCP, UNIX).console() is TCP


def test_console_by_graphics_index() -> None:
    assert running(TCP, UNIX).console(2) is UNIX


def test_fd_console_is_reachable() -> None:
    fd = VncConsole(0, FdEndpoint(0))
    assert running(fd).console(0) is fd


def test_shut_off_domain_is_not_running() -> None:
    error = refusal(shut_off(TCP))
    assert error.failure is DOMAIN_NOT_RUNNING
    assert "shutoff" in error.message and "'vm'" in error.message


def test_not_running_wins_over_a_missing_console() -> None:
    assert refusal(shut_off()).failure is DOMAIN_NOT_RUNNING


def test_running_domain_without_vnc_has_no_console() -> None:
    error = refusal(running())
    assert error.failure is NO_CONSOLE
    assert "no VNC graphics device" in error.message


@pytest.mark.parametrize("index", [0, 5, -1])
def test_index_that_is_not_a_vnc_device_has_no_console(index: int) -> None:
    error = refusal(running(TCP, UNIX), index)
    assert error.failure is NO_CONSOLE
    assert f"index {index}" in error.message


def test_unavailable_endpoint_has_no_console_and_says_why() -> None:
    error = refusal(running(PENDING), 3)
    assert error.failure is NO_CONSOLE
    assert "the VNC port is assigned when the domain starts" in error.message


def test_default_console_unavailable_even_when_a_later_one_is_reachable() -> None:
    # The default is the *first* VNC device, not the first reachable one.
    assert refusal(running(PENDING, TCP)).failure is NO_CONSOLE


def test_to_json_of_a_running_domain() -> None:
    assert running(TCP, PENDING).to_json() == {
        "name": "vm",
        "uuid": UUID,
        "state": "running",
        "consoles": [
            {"index": 1, "endpoint": "vnc://127.0.0.1:5901"},
            {"index": 3, "unavailable": "the VNC port is assigned when the domain starts"},
        ],
        "serial_consoles": [],
    }


def test_to_json_of_a_shut_off_domain_hides_endpoints() -> None:
    body = shut_off(TCP).to_json()
    assert body["consoles"] == [{"index": 1, "unavailable": "domain is shutoff"}]
    assert "not running" in body["console_unavailable"]


def test_to_json_without_vnc_says_so() -> None:
    body = running().to_json()
    assert body["consoles"] == []
    assert "no VNC graphics device" in body["console_unavailable"]


def test_to_json_never_contains_the_vnc_password() -> None:
    secret = VncConsole(0, TcpEndpoint("127.0.0.1", 5900), password="s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(running(secret).to_json())
    assert "s3cr3t-pw" not in repr(running(secret))
