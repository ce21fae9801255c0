"""broker.rfb: both handshake machines driven with literal RFB bytes, in every chunking.

Every transcript is run twice, all at once and one byte at a time, and both runs must
agree: that is how the machines prove that TCP/WebSocket chunking never matters.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.kinds.rfb import REASON_LIMIT, ClientSide, RFBError, ServerSide, vnc_auth_response

V33, V37, V38 = b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"
OK = b"\0\0\0\0"

# Recorded from QEMU 7.2 (Debian 12) with libvirt <graphics passwd='s3cret'>: it accepted
# this response to this challenge, and its rejection of a wrong password is QEMU_FAILED.
PASSWORD = "s3cret"
CHALLENGE = bytes.fromhex("c92460229e42b3ce38951bd3b512263f")
RESPONSE = bytes.fromhex("fd50369d88f642078b0a4bfc4d3528f8")
QEMU_FAILED = b"\x00\x00\x00\x01\x00\x00\x00\x16Authentication failed\x00"
AUTH_FAILED = "VNC authentication failed"  # our words when the server gives no reason


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def reason(text: bytes) -> bytes:
    return u32(len(text)) + text


def reference_response(password: bytes, challenge: bytes) -> bytes:
    """VNC auth computed independently of broker.rfb: bit reversal by shifts, not strings."""
    key = bytes(sum(((byte >> bit) & 1) << (7 - bit) for bit in range(8)) for byte in password[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key + key + key), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


@dataclass
class Outcome:
    sent: bytes
    done: bool
    leftover: bytes
    error: tuple[str, str] | None


Factory = Callable[[], ServerSide | ClientSide]


def drive(factory: Factory, chunks: list[bytes]) -> Outcome:
    """Feed chunks, collecting what the machine wants sent after each; stop at an RFBError."""
    machine = factory()
    sent = machine.data_to_send()
    error = None
    try:
        for chunk in chunks:
            machine.receive_data(chunk)
            sent += machine.data_to_send()
    except RFBError as exc:
        error = (exc.kind, exc.message)
        sent += machine.data_to_send()  # what was queued before the error
    return Outcome(sent, machine.done, machine.leftover, error)


def run(factory: Factory, data: bytes) -> Outcome:
    """All at once and byte by byte must give the same outcome."""
    whole = drive(factory, [data])
    assert drive(factory, [data[i : i + 1] for i in range(len(data))]) == whole
    return whole


def server(password: str | None = PASSWORD) -> Factory:
    return lambda: ServerSide(password)


# -- VNC Authentication's DES ---------------------------------------------------------


def test_published_vnc_des_vectors() -> None:
    # TightVNC/RealVNC store passwords with the same VNC DES (bit-reversed key) and the
    # fixed key 17 52 6b 06 23 4e 58 07: "Secure!" is stored as d7a514d8c556aade, the
    # vector every vncpwd tool and Metasploit's Rex::Proto::RFB::Cipher document.
    fixed_key = "\x17\x52\x6b\x06\x23\x4e\x58\x07"
    assert vnc_auth_response(fixed_key, b"Secure!\0").hex() == "d7a514d8c556aade"
    assert vnc_auth_response(fixed_key, b"password").hex() == "dbd83cfd727a1458"


def test_response_accepted_by_qemu() -> None:
    assert vnc_auth_response(PASSWORD, CHALLENGE) == RESPONSE
    assert reference_response(PASSWORD.encode(), CHALLENGE) == RESPONSE


@pytest.mark.parametrize("password", ["", "a", "s3cret", "exactly8", "longer than eight", "pässwörd"])
def test_key_is_first_8_bytes_nul_padded(password: str) -> None:
    assert vnc_auth_response(password, CHALLENGE) == reference_response(password.encode(), CHALLENGE)


def test_only_first_8_bytes_count() -> None:
    assert vnc_auth_response("exactly8", CHALLENGE) == vnc_auth_response("exactly8 and more", CHALLENGE)
    assert vnc_auth_response("abc", CHALLENGE) != vnc_auth_response("abd", CHALLENGE)


# -- ServerSide: the broker logging in to QEMU ----------------------------------------


def test_server_vnc_auth_success() -> None:
    out = run(server(), V38 + b"\x01\x02" + CHALLENGE + OK)
    assert out == Outcome(V38 + b"\x02" + RESPONSE, True, b"", None)
    machine = ServerSide(PASSWORD)
    machine.receive_data(V38 + b"\x01\x02" + CHALLENGE + OK)
    assert (machine.server_version, machine.security_type) == ((3, 8), 2)


def test_server_real_qemu_wrong_password() -> None:
    out = run(server("wrong"), V38 + b"\x01\x02" + CHALLENGE + QEMU_FAILED)
    assert out.sent == V38 + b"\x02" + reference_response(b"wrong", CHALLENGE)
    assert out.error == ("auth_failed", "Authentication failed")  # QEMU's trailing NUL dropped
    assert not out.done


@pytest.mark.parametrize("version", [V33, V37])
def test_server_auth_failed_without_reason_before_38(version: bytes) -> None:
    offer = u32(2) if version == V33 else b"\x01\x02"
    out = run(server(), version + offer + CHALLENGE + u32(1))
    assert out.error == ("auth_failed", AUTH_FAILED)


def test_server_none_only_38() -> None:
    out = run(server(), V38 + b"\x01\x01" + OK)
    assert out == Outcome(V38 + b"\x01", True, b"", None)


def test_server_none_37_has_no_security_result() -> None:
    assert run(server(), V37 + b"\x01\x01") == Outcome(V37 + b"\x01", True, b"", None)


def test_server_none_refused_after_all() -> None:
    out = run(server(), V38 + b"\x01\x01" + u32(1) + reason(b"go away"))
    assert out.error == ("refused", "go away")


@pytest.mark.parametrize(
    ("password", "offered", "chosen"),
    [("pw", [1, 2], 2), ("pw", [2, 1], 2), (None, [1, 2], 1), ("", [2, 1], 1), ("pw", [16, 1, 19], 1)],
)
def test_server_choice(password: str | None, offered: list[int], chosen: int) -> None:
    out = run(server(password), V38 + bytes([len(offered), *offered]))
    assert out.sent == V38 + bytes([chosen]) and out.error is None and not out.done


def test_server_refusal_with_reason() -> None:
    out = run(server(), V38 + b"\x00" + reason(b"Too many security failures"))
    assert out.error == ("refused", "Too many security failures")
    assert out.sent == V38


def test_server_refusal_with_empty_reason() -> None:
    assert run(server(), V38 + b"\x00" + u32(0)).error == ("refused", "the VNC server refused the connection")


def test_server_unsupported_types() -> None:
    out = run(server(), V38 + b"\x02\x10\x13")
    assert out.error == ("unsupported_security", "unsupported security types [16, 19]")
    assert out.sent == V38  # no choice sent


@pytest.mark.parametrize("password", [None, ""])
def test_server_needs_password_it_lacks(password: str | None) -> None:
    kind, message = run(server(password), V38 + b"\x01\x02").error or ("", "")
    assert kind == "unsupported_security" and message.startswith("unsupported security types [2] (")


def test_server_reason_is_capped() -> None:
    head = V38 + b"\x00" + u32(0xFFFFFFFF)
    machine = ServerSide(PASSWORD)
    machine.receive_data(head + b"x" * (REASON_LIMIT - 1))  # waits, buffers no more than the cap
    with pytest.raises(RFBError) as caught:
        machine.receive_data(b"x")
    assert caught.value.kind == "refused" and caught.value.message == "x" * REASON_LIMIT + "..."


def test_server_reason_garbage_is_replaced() -> None:
    assert run(server(), V38 + b"\x00" + reason(b"\xff\xfebad")).error == ("refused", "\ufffd\ufffdbad")


# RFB 3.3 (RFC 6143 Appendix A.1): the server chooses the type, as a u32.
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (V33 + u32(1), Outcome(V33, True, b"", None)),  # None: no SecurityResult
        (V33 + u32(1) + b"\x07", Outcome(V33, True, b"\x07", None)),
        (V33 + u32(2) + CHALLENGE + OK, Outcome(V33 + RESPONSE, True, b"", None)),
        (V33 + u32(2) + CHALLENGE + u32(2), Outcome(V33 + RESPONSE, False, b"", ("auth_failed", AUTH_FAILED))),
        (V33 + u32(0) + reason(b"no thanks"), Outcome(V33, False, b"", ("refused", "no thanks"))),
        (V33 + u32(16), Outcome(V33, False, b"", ("unsupported_security", "unsupported security types [16]"))),
    ],
)
def test_server_33(data: bytes, expected: Outcome) -> None:
    assert run(server(), data) == expected


def test_server_33_vnc_auth_without_password() -> None:
    kind, _message = run(server(None), V33 + u32(2)).error or ("", "")
    assert kind == "unsupported_security"


@pytest.mark.parametrize(
    "version", [b"RFB 004.001\n", b"RFB 003.889\n", b"RFB 003.005\n", b"RFB 003.008\r", b"HTTP/1.1 400", b"\0" * 12]
)
def test_server_bad_version(version: bytes) -> None:
    out = run(server(), version)
    assert out.error is not None and out.error[0] == "protocol" and out.sent == b""


def test_server_leftover_after_done() -> None:
    machine = ServerSide(PASSWORD)
    machine.receive_data(V38 + b"\x01\x02" + CHALLENGE + OK + b"\x00\x01")
    assert machine.done and machine.leftover == b"\x00\x01"
    machine.receive_data(b"\x02")  # a caller that keeps feeding after done just accumulates
    assert machine.leftover == b"\x00\x01\x02"


# -- ClientSide: the broker as the browser's server, offering only None -----------------


def test_client_sends_version_first() -> None:
    assert ClientSide().data_to_send() == V38


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (V38 + b"\x01", Outcome(V38 + b"\x01\x01" + OK, True, b"", None)),
        (V38 + b"\x01\x01", Outcome(V38 + b"\x01\x01" + OK, True, b"\x01", None)),  # ClientInit rides along
        (V37 + b"\x01", Outcome(V38 + b"\x01\x01", True, b"", None)),  # 3.7: no SecurityResult for None
        (V37 + b"\x01\x00", Outcome(V38 + b"\x01\x01", True, b"\x00", None)),
        (V33, Outcome(V38 + u32(1), True, b"", None)),  # 3.3: the server picks None as a u32
        (V33 + b"\x01", Outcome(V38 + u32(1), True, b"\x01", None)),
    ],
)
def test_client(data: bytes, expected: Outcome) -> None:
    assert run(ClientSide, data) == expected


@pytest.mark.parametrize("choice", [0, 2, 16, 255])
@pytest.mark.parametrize("version", [V37, V38])
def test_client_chooses_other_type(version: bytes, choice: int) -> None:
    out = run(ClientSide, version + bytes([choice]))
    assert out.error is not None and out.error[0] == "protocol" and not out.done
    assert out.sent == V38 + b"\x01\x01"  # no SecurityResult for a type never offered


@pytest.mark.parametrize("version", [b"RFB 003.009\n", b"RFB 003.889\n", b"GET / HTTP/1", b"RFB 003.08\n\n"])
def test_client_bad_version(version: bytes) -> None:
    out = run(ClientSide, version)
    assert out.error is not None and out.error[0] == "protocol" and out.sent == V38


def test_client_records_version() -> None:
    machine = ClientSide()
    machine.receive_data(V37)
    assert machine.client_version == (3, 7) and not machine.done


# -- truncation, eof, garbage, at every step -------------------------------------------

# (factory, transcript that completes the handshake exactly at its last byte)
COMPLETE: list[tuple[Factory, bytes]] = [
    (server(), V38 + b"\x01\x02" + CHALLENGE + OK),
    (server(), V38 + b"\x01\x01" + OK),
    (server(), V37 + b"\x02\x01\x02" + CHALLENGE + OK),
    (server(), V37 + b"\x01\x01"),
    (server(), V33 + u32(2) + CHALLENGE + OK),
    (server(), V33 + u32(1)),
    (ClientSide, V38 + b"\x01"),
    (ClientSide, V37 + b"\x01"),
    (ClientSide, V33),
]
# (factory, transcript that ends in an error at its last byte)
FAILING: list[tuple[Factory, bytes]] = [
    (server(), V38 + b"\x01\x02" + CHALLENGE + QEMU_FAILED),
    (server(), V38 + b"\x00" + reason(b"refused")),
    (server(), V33 + u32(0) + reason(b"refused")),
    (server(), V38 + b"\x02\x10\x13"),
]


@pytest.mark.parametrize(("factory", "data"), COMPLETE + FAILING)
def test_truncated_at_every_step_waits_and_eof_raises(factory: Factory, data: bytes) -> None:
    for cut in range(len(data)):
        out = run(factory, data[:cut])
        assert out.error is None and not out.done and out.leftover == b"", cut
        machine = factory()
        machine.receive_data(data[:cut])
        with pytest.raises(RFBError) as caught:
            machine.eof()
        assert (caught.value.kind, caught.value.message) == ("protocol", "connection closed during the handshake")


@pytest.mark.parametrize(("factory", "data"), COMPLETE)
def test_complete_then_eof_is_fine(factory: Factory, data: bytes) -> None:
    machine = factory()
    machine.receive_data(data)
    assert machine.done
    machine.eof()


@pytest.mark.parametrize(("factory", "data"), COMPLETE + FAILING)
def test_garbage_at_every_byte_raises_only_rfberror(factory: Factory, data: bytes) -> None:
    for position in range(len(data)):
        for bad in (0x00, 0xFF, data[position] ^ 0x01):
            corrupt = data[:position] + bytes([bad]) + data[position + 1 :]
            run(factory, corrupt)  # drive() lets only RFBError through


@pytest.mark.parametrize(
    ("factory", "data", "kind"),
    [
        (server(), b"RFB 003.008\0", "protocol"),  # version
        (server(), V38 + b"\x01\x00", "unsupported_security"),  # offered list
        (server(), V38 + b"\x01\x02" + CHALLENGE + u32(7) + reason(b""), "auth_failed"),  # SecurityResult
        (server(), V33 + u32(0xDEADBEEF), "unsupported_security"),  # 3.3 chosen type
        (ClientSide, b"\xff" * 12, "protocol"),
        (ClientSide, V38 + b"\x00", "protocol"),
    ],
)
def test_garbage_per_step(factory: Factory, data: bytes, kind: str) -> None:
    out = run(factory, data)
    assert out.error is not None and out.error[0] == kind


def test_error_is_sticky() -> None:
    machine = ServerSide(PASSWORD)
    with pytest.raises(RFBError) as first:
        machine.receive_data(b"SSH-2.0-OpenSSH_9.2\r\n")
    with pytest.raises(RFBError) as again:
        machine.receive_data(b"more")
    with pytest.raises(RFBError) as at_eof:
        machine.eof()
    assert again.value is first.value is at_eof.value


def test_broker_flow_forwards_leftovers() -> None:
    """The order the broker uses: log in to QEMU, then greet the browser, then relay."""
    qemu = ServerSide(PASSWORD)
    qemu.receive_data(V38 + b"\x01\x02")
    assert qemu.data_to_send() == V38 + b"\x02"
    qemu.receive_data(CHALLENGE)
    assert qemu.data_to_send() == RESPONSE
    qemu.receive_data(OK)
    assert qemu.done and qemu.leftover == b""
    browser = ClientSide()
    assert browser.data_to_send() == V38
    browser.receive_data(V38)
    assert browser.data_to_send() == b"\x01\x01"
    browser.receive_data(b"\x01\x01")  # noVNC's choice and ClientInit(shared) in one message
    assert browser.data_to_send() == OK
    assert browser.done and browser.leftover == b"\x01"  # to be written to QEMU first


# -- properties -------------------------------------------------------------------------

FACTORIES: list[Factory] = [server(), server(None), ClientSide]
TRANSCRIPTS = [(factory, data + extra) for factory, data in COMPLETE + FAILING for extra in (b"", b"\x01\x02\x03")]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    factory=st.sampled_from(FACTORIES),
    prefix=st.sampled_from([b""] + [data for _factory, data in COMPLETE]),
    noise=st.binary(max_size=64),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_arbitrary_bytes_only_raise_rfberror(factory: Factory, prefix: bytes, noise: bytes, cuts: list[int]) -> None:
    """A valid prefix (so the noise reaches every state), then anything, in any chunks."""
    machine = factory()
    try:
        for chunk in split(prefix + noise, cuts):
            machine.receive_data(chunk)
            machine.data_to_send()
        machine.eof()
    except RFBError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    password=st.one_of(st.none(), st.text(max_size=12)),
    data=st.binary(max_size=80),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_server_any_password_any_bytes(password: str | None, data: bytes, cuts: list[int]) -> None:
    machine = ServerSide(password)
    try:
        for chunk in split(V38 + b"\x01\x02" + data, cuts):
            machine.receive_data(chunk)
    except RFBError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(TRANSCRIPTS) - 1),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_any_split_of_a_transcript_gives_the_same_result(index: int, cuts: list[int]) -> None:
    factory, data = TRANSCRIPTS[index]
    assert drive(factory, split(data, cuts)) == drive(factory, [data])
