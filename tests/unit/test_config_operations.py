"""The settings for operating the broker: audit_log, metrics_listen, metrics_domain_label."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import ConfigError, load_settings


def test_off_by_default() -> None:
    settings = load_settings(environ={})
    assert (settings.audit_log, settings.metrics_listen, settings.metrics_domain_label) == (None, None, False)
    assert settings.metrics_host_port is None


def test_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        'audit_log = "/var/log/vm-console-broker/audit.jsonl"\n'
        'metrics_listen = "10.0.0.5:9150"\n'
        "metrics_domain_label = true\n"
    )
    settings = load_settings(path, environ={})
    assert settings.audit_log == "/var/log/vm-console-broker/audit.jsonl"
    assert settings.metrics_host_port == ("10.0.0.5", 9150)
    assert settings.metrics_domain_label is True


@pytest.mark.parametrize(
    ("text", "expected"), [("1", True), ("true", True), ("Yes", True), ("off", False), ("0", False)]
)
def test_from_the_environment(text: str, expected: bool) -> None:
    environ = {"BROKER_AUDIT_LOG": "-", "BROKER_METRICS_LISTEN": "[::1]:9150", "BROKER_METRICS_DOMAIN_LABEL": text}
    settings = load_settings(environ=environ)
    assert settings.audit_log == "-"
    assert settings.metrics_host_port == ("::1", 9150)
    assert settings.metrics_domain_label is expected


@pytest.mark.parametrize("listen", ["9150", "host:", ":9150", "host:0", "host:70000", "host:port"])
def test_a_bad_metrics_listen_is_named(listen: str) -> None:
    with pytest.raises(ConfigError, match="metrics_listen"):
        load_settings(environ={"BROKER_METRICS_LISTEN": listen})


def test_a_bad_boolean_is_named() -> None:
    with pytest.raises(ConfigError, match="metrics_domain_label must be true or false"):
        load_settings(environ={"BROKER_METRICS_DOMAIN_LABEL": "maybe"})
