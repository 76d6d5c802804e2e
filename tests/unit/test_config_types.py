"""A file's values must have their setting's type (issue 19 §4): every key of every section and
every channel setting, table-driven from the dataclasses, so a new key is covered when added."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from outbox import cli
from outbox.config import (
    ChannelConfig,
    DatabaseConfig,
    HttpConfig,
    MetricsConfig,
    ReconcilerConfig,
    RegistryConfig,
    SenderConfig,
)
from outbox.config_loader import LOG_FORMATS, LOG_LEVELS, load_settings
from outbox.errors import ConfigError

DB = 'database_url = "postgresql://outbox@db.internal/outbox"\n'
CHANNEL = (
    '[[channels]]\nid = "shop"\ndialect = "cloud"\nbase_url = "https://waba-v2.360dialog.io"\n'
    'api_key_env = "KEY"\n'
)
ENV = {"KEY": "k"}
SECTIONS = {
    "http": HttpConfig,
    "sender": SenderConfig,
    "reconciler": ReconcilerConfig,
    "metrics": MetricsConfig,
    "registry": RegistryConfig,
    "database": DatabaseConfig,
}


def _wrong_values(default: Any) -> list[Any]:
    """Values of the wrong TOML type for a setting whose default is `default`."""
    if isinstance(default, bool):
        return ["true", 1, [True]]
    if isinstance(default, StrEnum | str):
        return [1, ["x"], True]
    if isinstance(default, int | float | timedelta):
        number = default.total_seconds() if isinstance(default, timedelta) else default
        return [json.dumps(number or 1), True, [number or 1], {"n": 1}]
    return []


def _cases() -> list[Any]:
    cases = []
    for section, kind in SECTIONS.items():
        for f in fields(kind):
            if f.default is MISSING:
                continue
            for value in _wrong_values(f.default):
                cases.append(
                    pytest.param(f"[{section}]\n", f.name, value, f"{section}.{f.name}",
                                 id=f"{section}.{f.name}={value!r}")
                )  # fmt: skip
    for f in fields(ChannelConfig):
        if f.default is MISSING or f.metadata.get("secret") or f.default is None:
            continue
        for value in _wrong_values(f.default):
            cases.append(
                pytest.param(CHANNEL, f.name, value, f"channels[0] (id 'shop').{f.name}",
                             id=f"channel.{f.name}={value!r}")
            )  # fmt: skip
    return cases


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


@pytest.mark.parametrize(("table", "key", "value", "named"), _cases())
def test_a_value_of_the_wrong_type_is_refused_with_its_key_path(
    tmp_path: Path, table: str, key: str, value: Any, named: str
) -> None:
    path = tmp_path / "outbox.toml"
    body = CHANNEL if table == CHANNEL else CHANNEL + table
    path.write_text(DB + body + f"{key} = {_toml(value)}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, ENV)
    assert named in str(caught.value)


def test_the_table_covers_the_reported_slips() -> None:
    ids = {p.id for p in _cases()}
    assert "channel.rate_per_second='20.0'" in ids  # rate_per_second = "80", reported
    assert any(i.startswith("sender.batch_size=[") for i in ids)  # a list for a number


def test_the_partner_timeout_is_typed_too(tmp_path: Path) -> None:
    path = tmp_path / "outbox.toml"
    path.write_text(
        DB + '[partner]\npartner_id = "abcPA"\napi_key_env = "KEY"\nrequest_timeout = "30"\n'
    )
    with pytest.raises(ConfigError, match=r"partner\.request_timeout must be a number of seconds"):
        load_settings(path, ENV, need_channels=False)


def test_rate_as_a_string_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.toml"
    path.write_text(DB + CHANNEL + 'rate_per_second = "80"\n')
    with pytest.raises(ConfigError, match=r"rate_per_second must be a number, got str \"80\""):
        load_settings(path, ENV)


def test_the_environment_still_gives_numbers_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "outbox.toml"
    path.write_text(DB + CHANNEL)
    settings = load_settings(path, {**ENV, "OUTBOX_SENDER_BATCH_SIZE": "50"})
    assert settings.sender.batch_size == 50


@pytest.mark.parametrize(
    ("env", "text", "expected"),
    [
        ({"OUTBOX_LOG_LEVEL": "DEBUG"}, "", "debug"),
        ({"OUTBOX_LOG_LEVEL": "Warning"}, "", "warning"),
        ({}, 'log_level = "ERROR"\n', "error"),
    ],
)
def test_log_levels_are_case_insensitive(
    tmp_path: Path, env: dict[str, str], text: str, expected: str
) -> None:
    path = tmp_path / "outbox.toml"
    path.write_text(DB + text + CHANNEL)
    assert load_settings(path, {**ENV, **env}).log_level == expected


def test_a_bad_log_level_names_the_variable_and_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "outbox.toml"
    path.write_text(DB + CHANNEL)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {**ENV, "OUTBOX_LOG_LEVEL": "loud"})
    assert "OUTBOX_LOG_LEVEL" in str(caught.value)
    assert "debug, info, warning, error" in str(caught.value)


def test_the_command_line_knows_the_loaders_choices() -> None:
    assert (cli.LOG_LEVELS, cli.LOG_FORMATS) == (LOG_LEVELS, LOG_FORMATS)
