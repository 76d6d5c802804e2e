"""Rolling updates and rollbacks: a release keeps running on a newer schema that declares itself
compatible with it, and refuses an older schema or a newer one declared incompatible, with one
clear line. The newer schemas come from real revision files the code does not know."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.domain.schema import Declaration, judge_schema
from outbox.errors import SchemaOutdated
from tests.releases import upgrade_with, write_revision
from tests.support import fetch, running, settings_for

ADD_COLUMN = "ALTER TABLE outbox.messages ADD COLUMN future_note text"
ADD_TABLE = "CREATE TABLE outbox.future_things (id bigint PRIMARY KEY)"


async def _check(db_url: str) -> str:
    engine = create_engine(db_url, pool_size=1)
    try:
        return await migrate.check_schema(engine)
    finally:
        await engine.dispose()


async def _refusal(db_url: str) -> str:
    with pytest.raises(SchemaOutdated) as refused:
        await _check(db_url)
    message = str(refused.value)
    assert "\n" not in message
    return message


async def _readyz(port: int) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.json()


async def test_a_newer_schema_declared_compatible_starts_and_is_ready(
    db_url: str, tmp_path: Path
) -> None:
    head = migrate.head_revision()
    write_revision(tmp_path, "9001", head, head, ADD_COLUMN)
    await upgrade_with(db_url, tmp_path, "9001")

    assert "9001" in await _check(db_url)
    async with running(settings_for(db_url, "http://127.0.0.1:9"), roles={"web"}) as started:
        assert started.http_port is not None
        assert await _readyz(started.http_port) == (200, {"status": "ready"})


async def test_a_running_release_turns_unready_when_a_migration_declares_it_incompatible(
    db_url: str, tmp_path: Path
) -> None:
    head = migrate.head_revision()
    write_revision(tmp_path, "9001", head, head, ADD_COLUMN)
    # 9002 breaks every release before it: it declares itself as the oldest that runs on it.
    write_revision(tmp_path, "9002", "9001", "9002", ADD_TABLE)
    settings = settings_for(db_url, "http://127.0.0.1:9")
    # /readyz answers from a check at most readiness_interval old (issue 19): a short one here.
    every = timedelta(seconds=0.3)
    settings = replace(settings, http=replace(settings.http, readiness_interval=every))
    async with running(settings, roles={"web"}) as started:
        assert started.http_port is not None
        await upgrade_with(db_url, tmp_path, "9001")
        await asyncio.sleep(every.total_seconds())
        assert (await _readyz(started.http_port))[0] == 200
        await upgrade_with(db_url, tmp_path, "9002")
        await asyncio.sleep(every.total_seconds())
        status, body = await _readyz(started.http_port)
    assert status == 503
    assert body["reason"] == (
        f"schema at revision 9002 needs a release at revision 9002 or newer; "
        f"this release is at {head}: deploy a newer release"
    )
    assert body["reason"] == await _refusal(db_url)
    with pytest.raises(SchemaOutdated, match="needs a release at revision 9002"):
        async with running(settings_for(db_url, "http://127.0.0.1:9"), roles={"web"}):
            pass


async def test_an_incompatible_step_anywhere_after_this_release_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    head = migrate.head_revision()
    write_revision(tmp_path, "9001", head, "9001", ADD_TABLE)
    write_revision(tmp_path, "9002", "9001", "9001", ADD_COLUMN)
    await upgrade_with(db_url, tmp_path, "9002")
    assert "needs a release at revision 9001 or newer" in await _refusal(db_url)


async def test_a_newer_schema_that_declares_nothing_is_refused(db_url: str, tmp_path: Path) -> None:
    head = migrate.head_revision()
    write_revision(tmp_path, "9001", head, None, ADD_COLUMN)
    await upgrade_with(db_url, tmp_path, "9001")
    assert await _refusal(db_url) == (
        f"schema at revision 9001 is unknown to this release ({head}) and declares no "
        "compatibility with it: deploy the release that migrated it"
    )


async def test_an_older_schema_is_refused(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url, pool_size=1)
    try:
        assert await _refusal(empty_db_url) == (
            f"schema empty; this release needs revision {migrate.head_revision()}: "
            "run `outbox migrate`"
        )
        await migrate.upgrade(engine, "0005")
    finally:
        await engine.dispose()
    assert await _refusal(empty_db_url) == (
        f"schema at revision 0005 is older than this release ({migrate.head_revision()}): "
        "run `outbox migrate`"
    )


async def test_readyz_does_not_read_the_migration_files(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings_for(db_url, "http://127.0.0.1:9"), roles={"web"}) as started:
        assert started.http_port is not None
        reads: list[object] = []
        real = ScriptDirectory.from_config

        def counted(config: Config) -> ScriptDirectory:
            reads.append(config)
            return real(config)

        monkeypatch.setattr(ScriptDirectory, "from_config", counted)
        for _ in range(5):
            assert (await _readyz(started.http_port))[0] == 200
    assert reads == []


# The newest revision of the release before this one (13f42c7): its replicas keep running while
# this release's migrations (0024 to 0028: all additive) are applied in a rolling update.
PREVIOUS_RELEASE = "0023"


async def test_the_previous_release_runs_on_this_release_s_schema(db_url: str) -> None:
    rows = await fetch(
        db_url, "SELECT revision, down_revision, compatible_with FROM outbox.schema_compat"
    )
    declared = {r["revision"]: Declaration(r["down_revision"], r["compatible_with"]) for r in rows}
    code = migrate.code_revisions()
    previous = code[: code.index(PREVIOUS_RELEASE) + 1]
    verdict = judge_schema(migrate.head_revision(), previous, declared)
    assert verdict.usable, verdict.message
