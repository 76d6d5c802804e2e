"""A real PgBouncer in transaction pooling mode in front of the tests' embedded PostgreSQL.

The embedded server listens on a Unix socket only; PgBouncer reaches it there and listens on a
free loopback TCP port itself. Its server pool is kept smaller than the clients' connections,
so that consecutive transactions of one client land on different server sessions, as they do in
production: whatever a client leaves in a session (a named prepared statement, a LISTEN) is seen
by, or lost to, another one.
"""

from __future__ import annotations

import asyncio
import configparser
import io
import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.paths import ROOT

# CI (.ci/run) sets this: there the tests must run, a missing binary is a failure, not a skip.
REQUIRED = os.environ.get("OUTBOX_REQUIRE_PGBOUNCER") == "1"
EXAMPLE = ROOT / "deploy" / "pgbouncer.ini"
SERVER_POOL_SIZE = 3  # server sessions per database and user
_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


def find_binary() -> str | None:
    found = shutil.which("pgbouncer")
    return found or next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


def require(binary: str | None) -> str:
    """The binary, or a skip with the reason; a failure where CI requires PgBouncer."""
    if binary is None:
        reason = "the pgbouncer binary is not installed (Debian package pgbouncer)"
        if REQUIRED:
            pytest.fail(f"OUTBOX_REQUIRE_PGBOUNCER=1 but {reason}")
        pytest.skip(reason)
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unix_socket(postgres_url: str) -> tuple[str, int]:
    """The directory and port of the embedded server's socket (`?host=/dir` in its URL)."""
    directory = parse_qs(urlsplit(postgres_url).query)["host"][0]
    [lock] = Path(directory).glob(".s.PGSQL.*.lock")
    return directory, int(lock.name.split(".")[3])


def _run_as(postgres_url: str) -> str | None:
    """PgBouncer refuses to run as root, and started as root it switches to its `user`: the
    embedded server's own, the one user that may open its socket directory."""
    if os.geteuid() != 0:
        return None
    directory, _ = _unix_socket(postgres_url)
    return pwd.getpwuid(Path(directory).stat().st_uid).pw_name


def _ini(root: Path, postgres_url: str, port: int) -> str:
    """deploy/pgbouncer.ini, pointed at the embedded server and made local: so the example is
    what the tests run. Its pool size is cut down (see the module's docstring)."""
    directory, server_port = _unix_socket(postgres_url)
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(EXAMPLE.read_text())
    ini.remove_section("databases")
    ini["databases"] = {"*": f"host={directory} port={server_port} user=postgres"}
    ini["pgbouncer"].update(
        listen_addr="127.0.0.1",
        listen_port=str(port),
        unix_socket_dir="",
        default_pool_size=str(SERVER_POOL_SIZE),
        auth_type="trust",
        auth_file=str(root / "users.txt"),
        admin_users="postgres",
        logfile=str(root / "pgbouncer.log"),
        pidfile="",
        user=_run_as(postgres_url) or "",
    )
    text = io.StringIO()
    ini.write(text)
    return text.getvalue()


async def _accepting(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(200):
        assert process.returncode is None, f"pgbouncer exited: {_tail(log)}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.025)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"pgbouncer did not listen on {port}: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


class PgBouncer:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    def url(self, direct_url: str) -> str:
        """The URL of `direct_url`'s database through PgBouncer."""
        database = urlsplit(direct_url).path.lstrip("/")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@asynccontextmanager
async def running(postgres_url: str, binary: str) -> AsyncIterator[PgBouncer]:
    """PgBouncer in front of the server `postgres_url` names, until the block ends."""
    root = Path(tempfile.mkdtemp(prefix="outbox-test-pgbouncer-"))
    port = _free_port()
    log = root / "pgbouncer.log"
    ini = root / "pgbouncer.ini"
    (root / "users.txt").write_text('"postgres" ""\n')
    ini.write_text(_ini(root, postgres_url, port))
    user = _run_as(postgres_url)
    if user is not None:
        # The files are read, and the log opened, after the switch to that user.
        root.chmod(0o755)
        log.touch()
        shutil.chown(log, user)
    process = await asyncio.create_subprocess_exec(
        binary, str(ini), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await _accepting(port, process, log)
        yield PgBouncer(port, log)
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="pgbouncer")
async def pgbouncer_fixture(pg_server: object, template_url: str) -> AsyncIterator[PgBouncer]:
    async with running(template_url, require(find_binary())) as bouncer:
        yield bouncer
