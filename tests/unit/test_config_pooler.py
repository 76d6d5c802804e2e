"""Behind PgBouncer: `[database] pooler`, `listen_database_url`, and where each part connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from outbox.config import Pooler, Settings
from outbox.config_loader import load_settings
from outbox.errors import ConfigError
from tests import pgbouncer
from tests.paths import README

POOLED = "postgresql://outbox:pool-pass-31f4@pgbouncer:6432/outbox"
DIRECT = "postgresql://outbox:direct-pass-8e2a@db:5432/outbox"
CHANNEL = """
[[channels]]
id = "shop-de"
dialect = "cloud"
base_url = "https://waba-v2.360dialog.io"
api_key_env = "KEY"
"""


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "outbox.toml"
    path.write_text(f'database_url = "{POOLED}"\n' + text + CHANNEL)
    return load_settings(path, {"KEY": "k", **(env or {})})


@pytest.mark.parametrize(
    ("text", "env", "pooler", "listen", "migrate"),
    [
        pytest.param("", {}, Pooler.NONE, POOLED, (POOLED, Pooler.NONE), id="defaults"),
        pytest.param(
            '[database]\npooler = "pgbouncer"\n',
            {},
            Pooler.PGBOUNCER,
            None,  # LISTEN through the pooler would look healthy and hear nothing: poll
            (POOLED, Pooler.PGBOUNCER),
            id="pgbouncer-without-a-direct-url",
        ),
        pytest.param(
            f'listen_database_url = "{DIRECT}"\n[database]\npooler = "pgbouncer"\n',
            {},
            Pooler.PGBOUNCER,
            DIRECT,
            (DIRECT, Pooler.NONE),
            id="pgbouncer-with-a-direct-url",
        ),
        pytest.param(
            "",
            {"OUTBOX_DATABASE_POOLER": "pgbouncer", "OUTBOX_LISTEN_DATABASE_URL": DIRECT},
            Pooler.PGBOUNCER,
            DIRECT,
            (DIRECT, Pooler.NONE),
            id="from-the-environment",
        ),
        pytest.param(
            '[database]\npooler = "pgbouncer"\n',
            {"OUTBOX_DATABASE_POOLER": "none"},
            Pooler.NONE,
            POOLED,
            (POOLED, Pooler.NONE),
            id="environment-wins",
        ),
        pytest.param(
            f'listen_database_url = "{DIRECT}"\n',
            {},
            Pooler.NONE,
            DIRECT,
            (DIRECT, Pooler.NONE),
            id="direct-url-without-a-pooler",
        ),
    ],
)
def test_where_each_part_connects(
    tmp_path: Path,
    text: str,
    env: dict[str, str],
    pooler: Pooler,
    listen: str | None,
    migrate: tuple[str, Pooler],
) -> None:
    settings = _load(tmp_path, text, env)
    assert settings.database.pooler is pooler
    assert settings.listen_url() == listen
    assert settings.direct_database() == migrate
    for password in ("pool-pass-31f4", "direct-pass-8e2a"):  # both URLs may hold one
        assert password not in repr(settings)


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        pytest.param(
            '[database]\npooler = "pgbouncr"\n',
            {},
            "database.pooler must be 'none' or 'pgbouncer'",
            id="misspelt-pooler",
        ),
        pytest.param(
            "", {"OUTBOX_DATABASE_POOLER": "odyssey"}, "OUTBOX_DATABASE_POOLER", id="env-pooler"
        ),
        pytest.param(
            "[database]\nurl = 1\n", {}, "unknown configuration key: database.url", id="unknown"
        ),
        pytest.param(
            'listen_database_url = "mysql://db/outbox"\n',
            {},
            "listen_database_url must be a libpq URL",
            id="listen-url-scheme",
        ),
        pytest.param(
            "listen_database_url = 5432\n", {}, "listen_database_url", id="listen-url-number"
        ),
    ],
)
def test_bad_values_name_their_key(
    tmp_path: Path, text: str, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text, env)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("required", "outcome"),
    [
        pytest.param(False, pytest.skip.Exception, id="skipped-by-default"),
        pytest.param(True, pytest.fail.Exception, id="failed-where-ci-requires-it"),
    ],
)
def test_a_missing_pgbouncer_binary(
    monkeypatch: pytest.MonkeyPatch, required: bool, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(pgbouncer, "REQUIRED", required)
    with pytest.raises(outcome, match="pgbouncer"):
        pgbouncer.require(None)


def _readme_toml(after: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index(after) :].split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_readme_examples_load(tmp_path: Path) -> None:
    """The configuration reference and the "Behind PgBouncer" example name real keys."""
    path = tmp_path / "outbox.toml"
    path.write_text(_readme_toml("## Configuration"))
    env = {"D360_KEY_SHOP_DE": "k", "D360_KEY_LEGACY": "k", "SHOP_DE_HOOK_USER": "u"}
    env |= {"D360_PARTNER_KEY": "k", "D360_PARTNER_SECRET": "s"}  # the [partner] section
    reference = load_settings(path, {**env, "SHOP_DE_HOOK_PASS": "p-0123456789abcdef"})
    assert reference.database.pooler is Pooler.NONE
    assert reference.listen_url() == reference.listen_database_url
    path.write_text(_readme_toml("### Behind PgBouncer"))
    example = load_settings(path, {}, need_channels=False)
    assert example.database.pooler is Pooler.PGBOUNCER
    assert example.listen_url() == "postgresql://outbox@db.internal:5432/outbox"
    assert example.direct_database() == (example.listen_url(), Pooler.NONE)
