"""A SIGHUP while `outbox run` is still starting does not kill it (issue 15, item 9).

`systemctl reload` may come while the database is slow to answer the start-up check: the
handler used to be installed only after that check, so the default action ended the process.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.support import config_toml, spawn_daemon, stop_daemon


async def test_a_sighup_during_start_up_is_not_fatal(tmp_path: Path) -> None:
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # a database that takes the connection and never answers
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = tmp_path / "outbox.toml"
    config.write_text(
        config_toml(f"postgresql://outbox@127.0.0.1:{port}/outbox", "http://127.0.0.1:9")
    )
    log = tmp_path / "daemon.log"
    process = await spawn_daemon(config, log)
    try:
        # The start-up check waits for the database; the interpreter's own start-up can take
        # tens of seconds on a starved machine.
        await asyncio.wait_for(accepted.wait(), 100)
        process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert process.returncode is None, log.read_text()[-3000:]
    finally:
        for writer in held:
            writer.close()
        server.close()
        code = await stop_daemon(process, log)
    assert code != -signal.SIGHUP
