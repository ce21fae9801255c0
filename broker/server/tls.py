"""TLS on the broker's TCP listener: the files checked at start, one server context, reloaded on SIGHUP.

`tls_cert` and `tls_key` make the TCP listener speak HTTPS/WSS only (TLS 1.2 or newer);
`tls_client_ca` also makes it ask every client for a certificate and refuse the handshake of
any client without one issued by that CA (in a fleet: only the front nginx gets in). The UNIX
listener and the CLI's socket stay plain HTTP.

Every problem a person can fix is found before the broker listens, and named with the file
and what to do: a missing or unreadable file, a private key that others may read, a
certificate and key that do not belong together, a certificate that has expired.

Reloading (SIGHUP) builds a scratch context from the files first and only then loads them into
the live one, so a bad file on disk never takes down a broker that serves: it keeps its old
certificate and logs why. New handshakes get the new certificate; established connections
keep theirs. CA certificates added to `tls_client_ca` count at once; one removed from it
still counts until a restart (OpenSSL's store can only grow), which the reload says.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

log = logging.getLogger("broker.server")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
EXPIRY_WARNING = datetime.timedelta(days=14)


class TlsError(Exception):
    """A TLS setting cannot be used; the message names the setting, the file and the fix."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


def check_files(files: TlsFiles) -> None:
    """Each file exists and is readable; the private key is open to nobody else."""
    _readable("tls_cert", files.cert)
    _readable("tls_key", files.key)
    if files.client_ca is not None:
        _readable("tls_client_ca", files.client_ca)
    mode = stat.S_IMODE(os.stat(files.key).st_mode)
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise TlsError(
            f"tls_key {files.key} has mode {mode:04o}: a private key must not be readable by others "
            f"nor writable by its group; run `chmod 600 {files.key}` (0640 is fine for a trusted group)"
        )


def _readable(name: str, path: Path) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TlsError(f"{name} {path} does not exist") from None
    except OSError as exc:
        raise TlsError(f"{name} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TlsError(f"{name} {path} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsError(
            f"{name} {path} cannot be read by the broker's user (uid {os.geteuid()}): {exc.strerror}"
        ) from None


def _certificates(name: str, path: Path) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        found = []
    if not found:
        raise TlsError(f"{name} {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return found


def build_context(files: TlsFiles, *, now: datetime.datetime | None = None) -> ssl.SSLContext:
    """A server context from the files, or TlsError saying what is wrong with them."""
    check_files(files)
    leaf = _certificates("tls_cert", files.cert)[0]
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        raise TlsError(
            f"tls_cert {files.cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue a new one (contrib/fleet-cert.sh)"
        )
    if leaf.not_valid_before_utc > now:
        raise TlsError(
            f"tls_cert {files.cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(is this host's clock right?)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise TlsError(
            f"tls_cert {files.cert} and tls_key {files.key} cannot be used together ({exc.reason or exc}): "
            "is the key the certificate's own, in PEM and not encrypted?"
        ) from None
    if files.client_ca is not None:
        _certificates("tls_client_ca", files.client_ca)
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as exc:
            raise TlsError(f"tls_client_ca {files.client_ca} cannot be loaded ({exc.reason or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe(files: TlsFiles) -> str:
    """For the start-up log line: whose certificate, until when, who may connect. No secrets."""
    leaf = _certificates("tls_cert", files.cert)[0]
    subject = leaf.subject.rfc4514_string() or "(no subject)"
    clients = f"client certificates from {files.client_ca} required" if files.client_ca else "any client"
    text = f"TLS ({subject}, valid until {leaf.not_valid_after_utc:%Y-%m-%d}; {clients})"
    left = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left < EXPIRY_WARNING:
        log.warning("tls_cert %s expires in %d day(s): issue a new one and send SIGHUP", files.cert, left.days)
    return text


class ReloadableContext:
    """The live server context, and SIGHUP's reload of its files."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = build_context(files)

    def reload(self) -> bool:
        """Load the files again into the live context; on any problem keep the old ones."""
        try:
            scratch = build_context(self.files)
            self.context.load_cert_chain(self.files.cert, self.files.key)
            if self.files.client_ca is not None:
                before = set(self.context.get_ca_certs(binary_form=True))
                self.context.load_verify_locations(cafile=self.files.client_ca)
                now = set(scratch.get_ca_certs(binary_form=True))
                if before - now:
                    log.warning(
                        "SIGHUP: %d CA certificate(s) no longer in tls_client_ca %s are still trusted "
                        "until the broker restarts",
                        len(before - now),
                        self.files.client_ca,
                    )
        except (TlsError, ssl.SSLError, OSError) as exc:
            log.error("SIGHUP: TLS files not reloaded, still serving the previous certificate: %s", exc)
            return False
        log.info("SIGHUP: reloaded %s", describe(self.files))
        return True
