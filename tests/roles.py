"""The README's "Database roles" snippets, run verbatim under unique role names.

Roles belong to the whole PostgreSQL cluster, so each test renames the README's roles (every
whole-word occurrence, string literals included: the producers' mapping holds role names) to
names of its own, and drops them at the end.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from tests.paths import README

NAMES = (
    "outbox_migrator",
    "outbox_daemon",
    "outbox_web",
    "outbox_operator",
    "outbox_producer",
    "shop_producer",
)
_NAME = re.compile(r"\b(" + "|".join(NAMES) + r")\b")

# Where each snippet starts in the README: its first ```sql block after the marker.
MIGRATOR = "**1. Migrator"
DAEMON = "**2. Daemon"
WEB = "**2b. Receiver"
OPERATOR = "**3. Operator"
PRODUCERS = "**4. Producers"
PRODUCER = "Then per producer service"
# The producer examples of "Producing messages: the SQL contract".
TEMPLATE_EXAMPLE = "Start a conversation with a template"
TEXT_EXAMPLE = "Send a text, at most once per business key"
CONTACTS_EXAMPLE = "Record an inbound message the daemon did not see"


def readme_sql(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index(marker) :].split("```sql\n", 1)[1].split("```", 1)[0]


def login_url(db_url: str, role: str) -> str:
    """The test database's URL for `role` (trust authentication on the embedded server)."""
    return re.sub(r"^postgresql://[^@]*@", f"postgresql://{role}@", db_url)


async def execute(url: str, sql: str) -> None:
    """Several statements in one go, as psql -c would (one implicit transaction)."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@dataclass(frozen=True)
class Roles:
    db_url: str
    suffix: str

    def name(self, readme_name: str) -> str:
        return f"{readme_name}_{self.suffix}"

    def sql(self, marker: str) -> str:
        """A README snippet with this test's role names."""
        return _NAME.sub(lambda m: self.name(m.group(1)), readme_sql(marker))

    def url(self, readme_name: str) -> str:
        return login_url(self.db_url, self.name(readme_name))

    async def run(self, *markers: str, as_role: str | None = None) -> None:
        """Each snippet in one go (a multi-statement string runs as one transaction)."""
        for marker in markers:
            await execute(self.url(as_role) if as_role else self.db_url, self.sql(marker))

    async def connect(self, readme_name: str) -> asyncpg.Connection:
        return await asyncpg.connect(self.url(readme_name))


@asynccontextmanager
async def scoped_roles(db_url: str, *extra: str) -> AsyncIterator[Roles]:
    """Roles under names of this test's own; every one that exists is dropped at the end, with
    what it owns and was granted in the test database. `extra`: more README-style names."""
    roles = Roles(db_url, uuid.uuid4().hex[:8])
    try:
        yield roles
    finally:
        connection = await asyncpg.connect(db_url)
        try:
            names = [roles.name(n) for n in (*NAMES, *extra)]
            existing = await connection.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", names
            )
            for record in existing:
                await connection.execute(f'DROP OWNED BY "{record[0]}" CASCADE')
                await connection.execute(f'DROP ROLE "{record[0]}"')
        finally:
            await connection.close()
