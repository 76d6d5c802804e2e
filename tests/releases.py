"""A newer release's migrations, made up by a test: revision files written into a temporary
folder that Alembic reads beside the real ones (an extra version location), applied with the
same Alembic environment `outbox migrate` uses. The code under test does not know these files,
exactly like a release that is older than the schema."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from sqlalchemy import Connection

from outbox.db import migrate
from outbox.db.engine import create_engine

_REVISION = '''"""A newer release's migration, written by a test."""

from alembic import op

from outbox.db.migrate import declare_compatibility

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None
compatible_with = {compatible_with!r}


def upgrade() -> None:
    op.execute({sql!r})
    if compatible_with is not None:
        declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    pass
'''


def write_revision(
    folder: Path, revision: str, down_revision: str, compatible_with: str | None, sql: str
) -> None:
    """One revision file; `compatible_with=None` writes one that declares nothing."""
    folder.mkdir(exist_ok=True)
    (folder / f"{revision}_future.py").write_text(
        _REVISION.format(
            revision=revision,
            down_revision=down_revision,
            compatible_with=compatible_with,
            sql=sql,
        )
    )


async def upgrade_with(db_url: str, folder: Path, revision: str) -> None:
    """`outbox migrate` of the newer release: the real revisions plus those in `folder`."""
    config = migrate.alembic_config()
    versions = Path(str(config.get_main_option("script_location"))) / "versions"
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join((str(versions), str(folder))))

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = create_engine(db_url, pool_size=1, role="migrate")
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()
