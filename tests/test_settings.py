"""Settings: INI parsing into typed values, defaults, lookup order and every error path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from farine import settings
from farine.exceptions import SettingsError
from farine.settings import KEYS, Config, ServiceSettings

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def test_defaults_are_the_seeds_when_no_file_exists() -> None:
    s = settings.get("anything")
    assert s.type == "direct"
    assert s.durable is True
    assert s.auto_declare is True
    assert s.delivery_mode == 2
    assert s.retry is True
    assert s.retry_policy == {"max_retries": 5}
    assert s.serializer == "json"
    assert s.enabled is True
    assert s.shutdown_timeout == 30.0
    assert s.max_workers == 10
    assert s.amqp_uri == "memory://"
    assert settings.current().path is None


def test_values_are_parsed_into_types(write_config: Callable[[str], Path]) -> None:
    write_config(
        """
[DEFAULT]
amqp_uri = amqp://guest:guest@127.0.0.1:5672/
durable = no

[consume]
enabled = true
max_workers = 4
shutdown_timeout = 2.5
delivery_mode = 1
retry_policy = {'max_retries': 3, 'interval_start': 0}
headers = {"Authorization": "Bearer x"}
Type = Topic
my_own_key = 42
rpc_legacy_servers = billing,  stock
"""
    )
    s = settings.get("consume")
    assert s.max_workers == 4
    assert s.shutdown_timeout == 2.5
    assert s.delivery_mode == 1
    assert s.durable is False  # inherited from [DEFAULT]
    assert s.amqp_uri == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.retry_policy == {"max_retries": 3, "interval_start": 0}
    assert s.headers == {"Authorization": "Bearer x"}
    assert s.type == "topic"  # keys and choices are case-insensitive
    assert s.rpc_legacy_servers == ("billing", "stock")
    assert settings.get("other").rpc_legacy_servers == ()
    assert s.extra == {"my_own_key": "42"}
    assert s["my_own_key"] == "42"
    assert s["durable"] is False


def test_service_without_section_gets_default(write_config: Callable[[str], Path]) -> None:
    write_config("[DEFAULT]\nmax_workers = 3\n\n[other]\nmax_workers = 7\n")
    assert settings.get("unlisted").max_workers == 3
    assert settings.get("other").max_workers == 7


def test_seed_style_module_attribute_gives_the_section_as_a_dict(
    write_config: Callable[[str], Path],
) -> None:
    write_config("[consume]\nenabled = false\n")
    section = settings.consume  # pyright: ignore[reportAttributeAccessIssue]
    assert isinstance(section, dict)
    assert section["enabled"] is False
    assert section["type"] == "direct"


def test_lookup_order_config_option_beats_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "env.ini"
    env_file.write_text("[DEFAULT]\nmax_workers = 2\n")
    cli_file = tmp_path / "cli.ini"
    cli_file.write_text("[DEFAULT]\nmax_workers = 5\n")
    monkeypatch.setenv("FARINE_INI", str(env_file))
    settings.configure(None)
    assert settings.get("svc").max_workers == 2
    settings.configure(cli_file)
    assert settings.get("svc").max_workers == 5


def test_loading_is_lazy_and_load_is_kept(write_config: Callable[[str], Path]) -> None:
    path = write_config("[DEFAULT]\nmax_workers = 2\n")
    assert settings.get("svc").max_workers == 2
    path.write_text("[DEFAULT]\nmax_workers = 9\n")
    assert settings.get("svc").max_workers == 2  # cached until reloaded
    settings.load()
    assert settings.get("svc").max_workers == 9


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("durable", "perhaps", "expected a boolean"),
        ("max_workers", "ten", "expected an integer"),
        ("max_workers", "0", "expected an integer >= 1"),
        ("body_max_depth", "0", "expected an integer from 1 to 512"),
        ("body_max_depth", "513", "expected an integer from 1 to 512"),
        ("shutdown_timeout", "-1", ">= 0"),
        ("shutdown_timeout", "soon", "expected a number of seconds"),
        ("retry_policy", "[1, 2]", "expected a JSON object"),
        ("retry_policy", "{not valid", "expected a JSON object"),
        ("delivery_mode", "3", "expected 1 (transient) or 2 (persistent)"),
        ("type", "roundrobin", "expected one of direct, topic, fanout, headers"),
        ("amqp_uri", "http://x", "expected an amqp://"),
        ("log_level", "loud", "expected DEBUG"),
        ("http", "localhost", "expected HOST:PORT"),
        ("db_port", "x", "expected an integer"),
        ("rpc_legacy_servers", "billing; stock", "expected service names separated by commas"),
        ("serializer", "pickle", "expected one of json, msgpack"),
    ],
)
def test_bad_value_names_file_section_key_and_value(
    write_config: Callable[[str], Path], key: str, value: str, reason: str
) -> None:
    path = write_config(f"[svc]\n{key} = {value}\n")
    with pytest.raises(SettingsError) as info:
        settings.get("svc")
    message = str(info.value)
    assert str(path) in message
    assert "[svc]" in message
    assert key in message
    assert repr(value) in message
    assert reason in message


def test_bad_value_in_default_section_is_reported_as_default(
    write_config: Callable[[str], Path],
) -> None:
    write_config("[DEFAULT]\nmax_workers = many\n")
    with pytest.raises(SettingsError, match=r"\[DEFAULT\] max_workers = 'many'"):
        settings.get("svc")


def test_secret_value_is_masked_in_errors(write_config: Callable[[str], Path]) -> None:
    write_config("[svc]\namqp_uri = http://user:hunter22@host/\n")
    with pytest.raises(SettingsError) as info:
        settings.get("svc")
    assert "hunter22" not in str(info.value)
    assert "amqp_uri = 'http://user:***@host/'" in str(info.value)


def test_named_file_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nope.ini"
    monkeypatch.setenv("FARINE_INI", str(missing))
    settings.configure(None)
    with pytest.raises(SettingsError, match="configuration file not found"):
        settings.get("svc")
    settings.configure(missing)
    with pytest.raises(SettingsError, match=str(missing)):
        settings.current()


def test_malformed_file_is_a_clear_error(write_config: Callable[[str], Path]) -> None:
    path = write_config("max_workers = 3\n")  # no section header
    with pytest.raises(SettingsError, match=f"{path}: cannot parse the file"):
        settings.current()


def test_every_key_is_documented_and_has_a_matching_field() -> None:
    defaults = ServiceSettings(name="x")
    for key in KEYS:
        assert key.doc
        assert getattr(defaults, key.name) == key.default, key.name


def test_repr_masks_secrets() -> None:
    config = Config.from_string(
        '[svc]\namqp_uri = amqp://u:s3cr3tpw@h/\ndb_password = pa55word\nheaders = {"a": 1}\n'
    )
    text = repr(config.service("svc"))
    assert "s3cr3tpw" not in text
    assert "pa55word" not in text
    assert "amqp_uri='amqp://u:***@h/'" in text
    assert "db_password=***" in text
