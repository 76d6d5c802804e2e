"""Database errors people can act on (issue 19 §4): PostgreSQL's own message, no secret, no
traceback, and "unreachable" only when the server could not be reached; in the CLI and `/readyz`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from tests.support import config_toml, fetch, running, settings_for, wait_until
from tests.support import outbox_command as _outbox

pytestmark = pytest.mark.slow


def _with(db_url: str, **parts: str) -> str:
    """`db_url` with another user, password or database (the socket directory kept)."""
    url = make_url(db_url)
    return url.set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


async def _run(verb: str, url: str, tmp_path: Path) -> tuple[int, str, str]:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(url, "http://127.0.0.1:9"))
    return await _outbox(verb, "--config", str(config))


async def _sql(db_url: str, statements: str) -> None:
    for statement in statements.split("; "):
        await fetch(db_url, statement)


@pytest.fixture
async def role(db_url: str) -> AsyncIterator[str]:
    """A login role with no privileges at all in the test's database."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    await fetch(db_url, f"CREATE ROLE {name} LOGIN")
    yield name
    await _sql(db_url, f"DROP OWNED BY {name}; DROP ROLE {name}")


def _one_clean_line(code: int, err: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("outbox:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("verb", ["check", "stats"])
async def test_a_wrong_database_is_named_not_unreachable(
    db_url: str, tmp_path: Path, verb: str
) -> None:
    code, _, err = await _run(verb, _with(db_url, database="no_such_db"), tmp_path)
    line = _one_clean_line(code, err)
    assert 'database "no_such_db" does not exist' in line
    assert "unreachable" not in line


async def test_a_wrong_user_is_named(db_url: str, tmp_path: Path) -> None:
    code, _, err = await _run("check", _with(db_url, username="nobody_here"), tmp_path)
    line = _one_clean_line(code, err)
    assert 'role "nobody_here" does not exist' in line
    assert "unreachable" not in line


async def test_a_wrong_password_is_named_and_not_printed(
    db_url: str, role: str, tmp_path: Path
) -> None:
    # The embedded server trusts every local user: this one role must give a password.
    await fetch(db_url, f"ALTER ROLE {role} PASSWORD 'right-pass'")
    hba = Path((await fetch(db_url, "SHOW hba_file"))[0][0])
    hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
    await fetch(db_url, "SELECT pg_reload_conf()")
    code, out, err = await _run(
        "check", _with(db_url, username=role, password="wrong-pass-XYZ"), tmp_path
    )
    line = _one_clean_line(code, err)
    assert f'password authentication failed for user "{role}"' in line
    assert "wrong-pass-XYZ" not in out + err


async def test_a_missing_privilege_is_named(db_url: str, role: str, tmp_path: Path) -> None:
    code, _, err = await _run("check", _with(db_url, username=role), tmp_path)
    line = _one_clean_line(code, err)
    assert "permission denied for schema outbox" in line
    assert "unreachable" not in line
    # With what the schema check reads but not the messages: `stats` names the table.
    await _sql(
        db_url,
        f"GRANT USAGE ON SCHEMA outbox TO {role}; "
        f"GRANT SELECT ON outbox.alembic_version, outbox.schema_compat TO {role}",
    )
    code, _, err = await _run("stats", _with(db_url, username=role), tmp_path)
    line = _one_clean_line(code, err)
    assert "permission denied for table" in line


async def test_an_absent_server_is_unreachable(tmp_path: Path) -> None:
    url = f"postgresql://nobody:secret-pass@/nowhere?host={tmp_path}"
    code, out, err = await _run("check", url, tmp_path)
    line = _one_clean_line(code, err)
    assert "database unreachable" in line
    assert "secret-pass" not in out + err


async def test_readyz_gives_the_privilege_postgresql_names(db_url: str, role: str) -> None:
    await _sql(
        db_url,
        f"GRANT USAGE ON SCHEMA outbox TO {role}; "
        f"GRANT ALL ON ALL TABLES IN SCHEMA outbox TO {role}; "
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA outbox TO {role}",
    )
    settings = settings_for(_with(db_url, username=role), "http://127.0.0.1:9")
    async with running(settings, roles={"web"}) as started, aiohttp.ClientSession() as session:
        readyz = f"http://127.0.0.1:{started.http_port}/readyz"
        await fetch(db_url, f"REVOKE SELECT ON outbox.alembic_version FROM {role}")
        reason = ""

        async def not_ready() -> bool:
            nonlocal reason
            async with session.get(readyz) as response:
                reason = (await response.json()).get("reason", "")
                return response.status == 503

        await wait_until(not_ready, within=30)
        assert "permission denied for table alembic_version" in reason
        assert "unreachable" not in reason
        assert "Traceback" not in reason
        assert "\n" not in reason
