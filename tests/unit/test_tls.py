"""TLS on the broker (broker/server/tls.py): settings and files checked at start with errors a
person can act on, and a real `broker serve` on HTTPS that wants the fleet CA's client
certificate, relays large updates byte for byte (never by splice, which would bypass TLS),
and swaps its certificate on SIGHUP."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from broker.config import ConfigError, load_settings
from broker.server.tls import ReloadableContext, TlsError, TlsFiles, build_context, check_files
from support.certs import Pair, client_context, issue, make_ca
from support.processes import BrokerProcess, start_broker
from support.stream_server import GREETING, StreamServer, command, pattern

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Pair]:
    directory = tmp_path_factory.mktemp("fleet-ca")
    ca = make_ca(directory)
    other = tmp_path_factory.mktemp("other-ca")
    make_ca(other)
    return {
        "ca": ca,
        "host": issue(directory, "host", "localhost", "127.0.0.1"),
        "front": issue(directory, "client", "front"),
        "hv2": issue(directory, "host", "hv2"),
        "stranger": issue(other, "client", "front"),
    }


def files(fleet: dict, **changes: Path | None) -> TlsFiles:
    host = fleet["host"]
    base = {"cert": host.cert, "key": host.key, "client_ca": fleet["ca"]}
    return TlsFiles(**{**base, **changes})


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_TLS_CERT": "/x.crt"}, "tls_cert is set but tls_key is not"),
        ({"BROKER_TLS_KEY": "/x.key"}, "tls_key is set but tls_cert is not"),
        ({"BROKER_TLS_CLIENT_CA": "/ca.crt"}, "tls_client_ca needs tls_cert and tls_key"),
        (
            {"BROKER_TLS_CERT": "/x.crt", "BROKER_TLS_KEY": "/x.key", "BROKER_UDS": "/run/b.sock"},
            "tls_cert applies to the TCP listener",
        ),
    ],
)
def test_settings_that_do_not_fit_together_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_tls_settings_from_a_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('tls_cert = "/etc/b/hv1.crt"\ntls_key = "/etc/b/hv1.key"\ntls_client_ca = "/etc/b/ca.crt"\n')
    settings = load_settings(config, environ={})
    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (
        Path("/etc/b/hv1.crt"),
        Path("/etc/b/hv1.key"),
        Path("/etc/b/ca.crt"),
    )
    assert load_settings(environ={}).tls_cert is None


# -- files --------------------------------------------------------------------------------


def test_good_files_make_a_context_of_tls_1_2_or_newer_that_wants_a_client_certificate(fleet) -> None:
    context = build_context(files(fleet))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert build_context(files(fleet, client_ca=None)).verify_mode == ssl.CERT_NONE


def test_a_missing_key_is_named(fleet, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=f"tls_key {tmp_path}/none.key does not exist"):
        build_context(files(fleet, key=tmp_path / "none.key"))


def test_a_ca_that_is_a_directory_or_holds_no_certificate_is_named(fleet, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="tls_client_ca .* is not a regular file"):
        build_context(files(fleet, client_ca=tmp_path))
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="tls_client_ca .* holds no PEM certificate"):
        build_context(files(fleet, client_ca=garbage))


def test_an_unreadable_ca_is_named(fleet, tmp_path: Path) -> None:
    """As the broker's user would meet it: a file that user may not read."""
    private = tmp_path / "private"
    private.mkdir()
    ca = private / "ca.crt"
    ca.write_bytes(fleet["ca"].read_bytes())
    if os.geteuid() == 0:  # root reads anything: check as nobody, who cannot enter the directory
        private.chmod(0o700)
        shared = Path(tempfile.mkdtemp(prefix="broker-tls-"))  # what nobody may read: the pair
        shared.chmod(0o755)
        cert, key = shared / "host.crt", shared / "host.key"
        cert.write_bytes(fleet["host"].cert.read_bytes())
        key.write_bytes(fleet["host"].key.read_bytes())
        cert.chmod(0o644)
        key.chmod(0o600)
        os.chown(key, 65534, 65534)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no pytest from here on, only the check and its message
            message = b"no error"
            try:
                os.setgid(65534)
                os.setuid(65534)
                check_files(TlsFiles(cert, key, ca))
            except TlsError as exc:
                message = str(exc).encode()
            finally:
                os.write(write, message)
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read, "rb") as pipe:
            message = pipe.read().decode()
        shutil.rmtree(shared)
        assert f"tls_client_ca {ca} cannot be read" in message
    else:
        ca.chmod(0)
        with pytest.raises(TlsError, match="tls_client_ca .* cannot be read by the broker's user"):
            build_context(files(fleet, client_ca=ca))


@pytest.mark.parametrize(
    ("mode", "refused"), [(0o600, False), (0o640, False), (0o644, True), (0o604, True), (0o660, True)]
)
def test_a_key_open_to_others_stops_the_broker(fleet, tmp_path: Path, mode: int, refused: bool) -> None:
    key = tmp_path / "host.key"
    key.write_bytes(fleet["host"].key.read_bytes())
    key.chmod(mode)
    if refused:
        with pytest.raises(TlsError, match=f"tls_key {key} has mode {mode:04o}: .*`chmod 600"):
            build_context(files(fleet, key=key))
    else:
        build_context(files(fleet, key=key))


def test_a_key_of_another_certificate_is_named(fleet) -> None:
    with pytest.raises(TlsError, match="cannot be used together"):
        build_context(files(fleet, key=fleet["front"].key))


def test_an_expired_or_future_certificate_is_named(fleet) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3000)
    with pytest.raises(TlsError, match=r"expired on .*\(contrib/fleet-cert.sh\)"):
        build_context(files(fleet), now=later)
    earlier = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(TlsError, match="is not valid before .* clock"):
        build_context(files(fleet), now=earlier)


def test_a_reload_with_a_broken_file_keeps_the_old_certificate(fleet, tmp_path: Path, caplog) -> None:
    cert = tmp_path / "host.crt"
    cert.write_bytes(fleet["host"].cert.read_bytes())
    live = ReloadableContext(files(fleet, cert=cert))
    cert.write_text("truncated")
    assert not live.reload()
    assert "TLS files not reloaded, still serving the previous certificate" in caplog.text
    assert "PRIVATE KEY" not in caplog.text


# -- a real broker on TLS -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stream() -> Iterator[StreamServer]:
    server = StreamServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory, fleet, stream: StreamServer) -> Iterator[BrokerProcess]:
    directory = tmp_path_factory.mktemp("tls-broker")
    cert = directory / "host.crt"  # a copy: the SIGHUP test replaces it
    cert.write_bytes(fleet["host"].cert.read_bytes())
    broker = start_broker(
        directory / "state",
        extra_env={
            "BROKER_CONNECT": "test:///default",
            "BROKER_STATIC_CONSOLES": f"desk={stream.target}",
            "BROKER_TLS_CERT": str(cert),
            "BROKER_TLS_KEY": str(fleet["host"].key),
            "BROKER_TLS_CLIENT_CA": str(fleet["ca"]),
        },
    )
    yield broker
    assert broker.stop() == 0, "SIGTERM should end a TLS broker cleanly too"
    assert "Traceback" not in broker.log()


def front_client(fleet) -> httpx.Client:
    return httpx.Client(verify=client_context(fleet["ca"], fleet["front"]), timeout=10)


def test_links_are_https_and_the_console_is_relayed_byte_for_byte_over_tls(tls_broker, fleet) -> None:
    assert tls_broker.url.startswith("https://127.0.0.1:")
    with front_client(fleet) as client:
        assert client.get(tls_broker.url + "/healthz").status_code == 200
        response = client.post(
            tls_broker.url + "/api/v1/domains/desk/console", headers={"Authorization": f"Bearer {tls_broker.api_key}"}
        )
    assert response.status_code == 201, response.text
    link = response.json()
    assert link["console_url"].startswith(f"{tls_broker.url}/console?token=")
    assert link["websocket_url"].startswith("wss://127.0.0.1:")
    with connect(link["websocket_url"], ssl=client_context(fleet["ca"], fleet["front"]), open_timeout=10) as ws:
        assert ws.recv(timeout=10) == GREETING
        ws.send(command(b"X", 4 * MiB))
        received = b""
        while len(received) < 4 * MiB:
            received += ws.recv(timeout=10)
    assert received == pattern(4 * MiB)
    ended = tls_broker.ended_session(0)
    assert "zero-copy" not in ended, "splice(2) would have written around TLS"


def handshake(port: int, context: ssl.SSLContext) -> bytes:
    """A TLS handshake and one request; what came back (b'' if the broker hung up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return tls.recv(4096)


@pytest.mark.parametrize("who", ["no certificate", "another CA's", "a host's (server-only)"])
def test_clients_without_a_fleet_client_certificate_are_refused(tls_broker, fleet, who: str) -> None:
    pair = {"no certificate": None, "another CA's": fleet["stranger"], "a host's (server-only)": fleet["hv2"]}[who]
    port = int(tls_broker.url.rsplit(":", 1)[1])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer = handshake(port, client_context(fleet["ca"], pair))
        assert answer == b"", answer  # TLS 1.3: the refusal may come as the connection closing
        raise ConnectionError("closed without an answer")
    assert handshake(port, client_context(fleet["ca"], fleet["front"])).startswith(b"HTTP/1.1 200")


def test_plain_http_on_the_tls_port_gets_nothing(tls_broker) -> None:
    port = int(tls_broker.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert b"HTTP/" not in answer and b"status" not in answer


def test_tls_1_1_is_refused(tls_broker, fleet) -> None:
    port = int(tls_broker.url.rsplit(":", 1)[1])
    context = client_context(fleet["ca"], fleet["front"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(port, context)


def peer_serial(port: int, fleet) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context(fleet["ca"], fleet["front"]).wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_swaps_the_certificate_and_a_broken_one_is_not_taken(tls_broker, fleet, tmp_path: Path) -> None:
    port = int(tls_broker.url.rsplit(":", 1)[1])
    cert_path = Path(tls_broker.env["BROKER_TLS_CERT"])
    before = peer_serial(port, fleet)
    # A renewed certificate for the same key, from the same CA.
    csr, ext = tmp_path / "host.csr", tmp_path / "ext"
    ext.write_text("extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ca = fleet["ca"]
    renewed = subprocess.run(
        f"openssl req -new -key {fleet['host'].key} -subj /CN=localhost -out {csr} && "
        f"openssl x509 -req -in {csr} -CA {ca} -CAkey {ca.parent / 'ca.key'} -set_serial 4242 -days 30 "
        f"-extfile {ext} -out {tmp_path / 'new.crt'}",
        shell=True, capture_output=True, text=True,
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
    cert_path.write_bytes((tmp_path / "new.crt").read_bytes())
    tls_broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while peer_serial(port, fleet) != 4242:
        assert time.monotonic() < deadline, "the broker still shows its old certificate after SIGHUP"
        time.sleep(0.05)
    assert before != 4242
    cert_path.write_text("half-written")
    tls_broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "TLS files not reloaded" not in tls_broker.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert peer_serial(port, fleet) == 4242
    assert tls_broker.process.poll() is None
    assert "PRIVATE KEY" not in tls_broker.log()


def test_the_broker_does_not_start_with_a_key_others_can_read(fleet, tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    key.write_bytes(fleet["host"].key.read_bytes())
    key.chmod(0o644)
    env = {
        "BROKER_CONNECT": "test:///default",
        "BROKER_TLS_CERT": str(fleet["host"].cert),
        "BROKER_TLS_KEY": str(key),
    }
    with pytest.raises(RuntimeError) as failed:
        start_broker(tmp_path / "state", extra_env=env)
    assert f"broker: tls_key {key} has mode 0644" in str(failed.value)
    assert "Traceback" not in str(failed.value)


def test_without_the_uvicorn_internals_it_needs_tls_stops_rather_than_serving_plain(fleet, monkeypatch) -> None:
    from broker.server import compat
    from broker.server.run import load_tls

    renamed = compat.Requirement("uvicorn", "uvicorn:Renamed.servers", lambda: False, "tls")
    monkeypatch.setattr(compat, "REQUIREMENTS", [*compat.REQUIREMENTS, renamed])
    settings = load_settings(
        environ={"BROKER_TLS_CERT": str(fleet["host"].cert), "BROKER_TLS_KEY": str(fleet["host"].key)}
    )
    with pytest.raises(SystemExit, match="cannot serve TLS with uvicorn .*: missing uvicorn:Renamed.servers"):
        load_tls(settings)
    assert load_tls(load_settings(environ={})) is None


def test_a_reload_adds_a_new_ca_and_says_a_removed_one_counts_until_restart(fleet, tmp_path: Path, caplog) -> None:
    bundle = tmp_path / "clients.crt"
    bundle.write_bytes(fleet["ca"].read_bytes())
    live = ReloadableContext(files(fleet, client_ca=bundle))
    assert len(live.context.get_ca_certs()) == 1
    new_ca = make_ca(tmp_path / "new-ca")
    bundle.write_bytes(fleet["ca"].read_bytes() + new_ca.read_bytes())  # rotation: both for a while
    assert live.reload()
    assert len(live.context.get_ca_certs()) == 2
    bundle.write_bytes(new_ca.read_bytes())  # the old CA retired
    assert live.reload()
    assert (
        "1 CA certificate(s) no longer in tls_client_ca" in caplog.text and "until the broker restarts" in caplog.text
    )
