"""load_settings: defaults, flag > environment > file, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import DEFAULT_STATE_DIR, ConfigError, Settings, load_settings

KEY_A = "a" * 20
KEY_B = "b" * 24


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def config_error(**kwargs: object) -> str:
    environ = kwargs.pop("environ", {})
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# -- defaults -------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:6080"
    assert settings.host_port == ("127.0.0.1", 6080)
    assert settings.uds is None
    assert settings.connect == "qemu:///system"
    assert settings.state_dir == DEFAULT_STATE_DIR
    assert settings.public_url is None
    assert settings.api_keys == ()
    assert settings.token_ttl == 60.0
    assert settings.token_max_ttl == 600.0
    assert settings.trusted_proxies == ("unix",)
    assert settings.log_level == "info"


def test_state_files_live_in_the_state_dir(tmp_path: Path) -> None:
    settings = load_settings(environ={}, state_dir=tmp_path)
    assert settings.api_key_file == tmp_path / "api-key"
    assert settings.server_file == tmp_path / "server.json"


def test_ipv6_listen_address() -> None:
    assert load_settings(environ={}, listen="[::1]:7000").host_port == ("::1", 7000)


def test_empty_environment_values_are_ignored() -> None:
    assert load_settings(environ={"BROKER_LISTEN": "", "BROKER_LOG_LEVEL": ""}) == Settings()


def test_flags_given_as_none_are_ignored() -> None:
    assert load_settings(environ={}, listen=None, uds=None, connect=None) == Settings()


# -- precedence -----------------------------------------------------------------------


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'connect = "test:///file"\ntoken_ttl = 30\nlog_level = "DEBUG"\n')
    settings = load_settings(path, environ={})
    assert (settings.connect, settings.token_ttl, settings.log_level) == ("test:///file", 30.0, "debug")


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'connect = "test:///file"\ntoken_ttl = 30\n')
    settings = load_settings(path, environ={"BROKER_CONNECT": "test:///env"})
    assert settings.connect == "test:///env"
    assert settings.token_ttl == 30.0


def test_flag_overrides_environment_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'connect = "test:///file"\nlisten = "127.0.0.1:1111"\n')
    settings = load_settings(
        path,
        environ={"BROKER_CONNECT": "test:///env", "BROKER_LISTEN": "127.0.0.1:2222"},
        connect="test:///flag",
    )
    assert settings.connect == "test:///flag"
    assert settings.listen == "127.0.0.1:2222"


def test_config_file_from_broker_config_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'connect = "test:///file"\n')
    assert load_settings(environ={"BROKER_CONFIG": str(path)}).connect == "test:///file"


def test_explicit_config_file_wins_over_broker_config(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path, 'connect = "test:///chosen"\n')
    other = tmp_path / "other.toml"
    other.write_text('connect = "test:///other"\n')
    assert load_settings(chosen, environ={"BROKER_CONFIG": str(other)}).connect == "test:///chosen"


def test_numbers_from_the_environment_are_parsed() -> None:
    settings = load_settings(
        environ={"BROKER_TOKEN_TTL": "15", "BROKER_TOKEN_MAX_TTL": "120.5", "BROKER_UDS_MODE": "0640"}
    )
    assert settings.token_ttl == 15.0
    assert settings.token_max_ttl == 120.5
    assert settings.uds_mode == 0o640


def test_uds_mode_from_a_toml_octal(tmp_path: Path) -> None:
    assert load_settings(write_toml(tmp_path, "uds_mode = 0o600\n"), environ={}).uds_mode == 0o600


def test_state_dir_from_the_environment(tmp_path: Path) -> None:
    assert load_settings(environ={"BROKER_STATE_DIR": str(tmp_path)}).state_dir == tmp_path


def test_public_url_loses_its_trailing_slash() -> None:
    assert (
        load_settings(environ={"BROKER_PUBLIC_URL": "https://vm.example.com/c/"}).public_url
        == "https://vm.example.com/c"
    )


# -- lists ----------------------------------------------------------------------------


def test_api_keys_from_comma_separated_environment() -> None:
    settings = load_settings(environ={"BROKER_API_KEYS": f" {KEY_A} ,{KEY_B},, "})
    assert [(k.label, k.secret) for k in settings.api_keys] == [("key1", KEY_A), ("key2", KEY_B)]


def test_api_keys_from_a_toml_list(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'api_keys = ["{KEY_A}", "{KEY_B}"]\n')
    assert [k.secret for k in load_settings(path, environ={}).api_keys] == [KEY_A, KEY_B]


def test_trusted_proxies_and_origins_from_the_environment() -> None:
    settings = load_settings(
        environ={
            "BROKER_TRUSTED_PROXIES": "unix, 10.0.0.0/8, ::1",
            "BROKER_ALLOWED_ORIGINS": "https://panel.example.com,http://localhost:3000",
        }
    )
    assert settings.trusted_proxies == ("unix", "10.0.0.0/8", "::1")
    assert settings.allowed_origins == ("https://panel.example.com", "http://localhost:3000")


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:http", "localhost:", "[::1]"])
def test_bad_listen_is_named(listen: str) -> None:
    assert "listen" in config_error(listen=listen)


def test_bad_listen_is_fine_when_a_unix_socket_is_used() -> None:
    assert load_settings(environ={}, listen="nonsense", uds="/run/broker.sock").uds == "/run/broker.sock"


def test_ttl_above_max_ttl_names_both() -> None:
    message = config_error(environ={"BROKER_TOKEN_TTL": "700"})
    assert "token_ttl" in message and "token_max_ttl" in message


@pytest.mark.parametrize("name", ["token_ttl", "token_max_ttl", "session_window", "ping_timeout", "max_message_size"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_non_positive_durations_are_named(name: str, value: str) -> None:
    assert name in config_error(environ={f"BROKER_{name.upper()}": value})


def test_negative_ping_interval_is_named() -> None:
    assert "ping_interval" in config_error(environ={"BROKER_PING_INTERVAL": "-1"})


def test_ping_interval_zero_turns_pings_off() -> None:
    assert load_settings(environ={"BROKER_PING_INTERVAL": "0"}).ping_interval == 0


def test_short_api_key_is_refused() -> None:
    message = config_error(environ={"BROKER_API_KEYS": f"{KEY_A},short"})
    assert "api key" in message.lower()
    assert "short" not in message  # the key itself is not echoed


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'listen = "127.0.0.1:1"\ntoken_tll = 30\n')
    message = config_error(config_file=path)
    assert "token_tll" in message and str(path) in message


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "listen = \n")
    message = config_error(config_file=path)
    assert str(path) in message and "TOML" in message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = config_error(config_file=path)
    assert str(path) in message and "does not exist" in message


def test_missing_file_from_broker_config_is_an_error(tmp_path: Path) -> None:
    assert "absent.toml" in config_error(environ={"BROKER_CONFIG": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize("url", ["vm.example.com", "ftp://vm.example.com", "ws://vm.example.com"])
def test_bad_public_url_is_named(url: str) -> None:
    assert "public_url" in config_error(public_url=url)


@pytest.mark.parametrize("level", ["verbose", "warn", "trace"])
def test_bad_log_level_is_named(level: str) -> None:
    assert "log_level" in config_error(log_level=level)


def test_bad_trusted_proxy_is_named() -> None:
    assert "trusted_proxies" in config_error(environ={"BROKER_TRUSTED_PROXIES": "unix,proxy.example.com"})


@pytest.mark.parametrize("origin", ["panel.example.com", "https://panel.example.com/app"])
def test_bad_allowed_origin_is_named(origin: str) -> None:
    assert "allowed_origins" in config_error(environ={"BROKER_ALLOWED_ORIGINS": origin})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_non_numeric_ttl_is_named() -> None:
    assert "token_ttl" in config_error(environ={"BROKER_TOKEN_TTL": "soon"})


def test_non_octal_uds_mode_is_named() -> None:
    assert "uds_mode" in config_error(environ={"BROKER_UDS_MODE": "rw"})


def test_static_consoles_from_environment_and_file(tmp_path) -> None:
    from broker.config import load_settings

    settings = load_settings(environ={"BROKER_STATIC_CONSOLES": "a=tcp:127.0.0.1:5901, b=unix:/run/b.sock"})
    assert settings.static_consoles == {"a": "tcp:127.0.0.1:5901", "b": "unix:/run/b.sock"}
    config = tmp_path / "broker.toml"
    config.write_text('[static_consoles]\ndesk = "tcp:[::1]:5902"\n')
    assert load_settings(config, environ={}).static_consoles == {"desk": "tcp:[::1]:5902"}


@pytest.mark.parametrize("value", ["a=tcp:host", "a=udp:h:1", "a=unix:relative.sock", "noequals", "a=tcp:h:70000"])
def test_bad_static_console_is_named(value: str) -> None:
    assert "static_consoles" in config_error(environ={"BROKER_STATIC_CONSOLES": value})
