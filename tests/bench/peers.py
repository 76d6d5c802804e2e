"""The peers the send path is measured against, each in its own process (not a test).

    python -m tests.bench.peers {pgqueuer,batched,bare,bare-wire} [--dsn DSN] --api URL --messages N
        [--in-flight 200] [--setup] [--outbox-gc]

Each drains N jobs, each one POST to the API imitation (`tests/bench/fake_api.py`), at the same
concurrency as the sender, and exits when none is left:
- `pgqueuer`: pgqueuer (a dev extra, never a runtime dependency) with `batch_size=100` and
  `max_concurrent_tasks=200`, its documented maximum batch for that concurrency; `--setup`
  installs its schema and enqueues the jobs, then exits (so the timing excludes it).
- `batched`: a hand-written claimer with none of outbox's rules: claim up to 100 queued rows of
  `outbox.messages` with `FOR UPDATE SKIP LOCKED`, POST each, write the answers back in batches.
- `bare`: the N POSTs alone, no database: what one aiohttp client gets from the imitation on
  this machine, the ceiling an aiohttp sender's rate meets before the latency bound does;
  `bare-wire`: the same through outbox's own send pool (`outbox.http.wire`), its ceiling.
`--outbox-gc` gives the peer the garbage collector's settings `outbox run` uses (the scale
benchmark's `pgqueuer+gc`), so that what they gain is not counted as outbox's own.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import asyncpg
import orjson
import uvloop
from yarl import URL

from outbox.cli import runtime
from outbox.domain.response import ANSWER_LIMIT
from outbox.http.wire import Wire

_BODY = {"messaging_product": "whatsapp", "type": "text", "text": {"body": "Your order shipped"}}


async def _post(session: aiohttp.ClientSession, api: str, key: str) -> str:
    body = {**_BODY, "to": key, "biz_opaque_callback_data": key}
    async with session.post(f"{api}/messages", data=orjson.dumps(body)) as response:
        answer = orjson.loads(await response.read())
    return str(answer["messages"][0]["id"])


async def pgqueuer_setup(dsn: str, messages: int) -> None:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    connection = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(connection))
    if not await queries.schema_is_installed():
        await queries.install()
    await connection.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
    for start in range(0, messages, 5000):
        count = min(5000, messages - start)
        await queries.enqueue(
            ["send"] * count, [str(start + n).encode() for n in range(count)], [0] * count
        )
    await connection.execute("VACUUM ANALYZE pgqueuer")
    await connection.close()


async def pgqueuer_run(dsn: str, api: str, in_flight: int) -> None:
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    connection = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(connection)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

        @manager.entrypoint("send")
        async def send(job: Job) -> None:
            assert job.payload is not None
            await _post(session, api, f"pgq:{job.payload.decode()}")

        await manager.run(
            batch_size=100,
            max_concurrent_tasks=in_flight,
            mode=QueueExecutionMode.drain,
        )
    await connection.close()


_CLAIM = """
UPDATE outbox.messages SET state = 'sending', attempts = attempts + 1, updated_at = now()
WHERE id IN (SELECT id FROM outbox.messages WHERE state = 'queued' ORDER BY id
             LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""
_DONE = """
UPDATE outbox.messages AS m SET state = 'accepted', wamid = r.wamid, accepted_at = now(),
    updated_at = now()
FROM unnest($1::bigint[], $2::text[]) AS r(id, wamid) WHERE m.id = r.id
"""


async def bare_run(api: str, in_flight: int, messages: int) -> None:
    free = asyncio.Semaphore(in_flight)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        async with free:
            await _post(session, api, f"bare:{n}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:
        await asyncio.gather(*(one(session, n) for n in range(messages)))


async def bare_wire_run(api: str, in_flight: int, messages: int) -> None:
    free = asyncio.Semaphore(in_flight)
    wire = Wire(in_flight, 30.0, 10.0, ANSWER_LIMIT)
    url = URL(f"{api}/messages")
    headers = {"D360-API-KEY": "bench", "Content-Type": "application/json"}

    async def one(n: int) -> None:
        async with free:
            key = f"bare:{n}"
            body = orjson.dumps({**_BODY, "to": key, "biz_opaque_callback_data": key})
            answer = await wire.post(url, headers, body)
            str(orjson.loads(answer.body)["messages"][0]["id"])

    try:
        await asyncio.gather(*(one(n) for n in range(messages)))
    finally:
        await wire.close()


async def batched_run(dsn: str, api: str, in_flight: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    free = asyncio.Semaphore(in_flight)
    answers: list[tuple[int, str]] = []
    tasks: set[asyncio.Task[None]] = set()

    async def flush() -> None:
        batch = answers[:]
        answers.clear()
        if batch:
            await pool.execute(_DONE, [i for i, _ in batch], [w for _, w in batch])

    async def one(session: aiohttp.ClientSession, message_id: int) -> None:
        try:
            answers.append((message_id, await _post(session, api, f"outbox:{message_id}")))
        finally:
            free.release()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.02)
            await flush()

    writer = asyncio.create_task(flusher())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:
        while True:
            await free.acquire()  # at least one slot, then as many as are free, up to 100
            wanted = 1
            while wanted < 100 and not free.locked():
                await free.acquire()
                wanted += 1
            ids = [r["id"] for r in await pool.fetch(_CLAIM, wanted)]
            for _ in range(wanted - len(ids)):
                free.release()
            for message_id in ids:
                task = asyncio.create_task(one(session, message_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if not ids:
                if not tasks:
                    break
                await asyncio.sleep(0.01)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await flush()
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["pgqueuer", "batched", "bare", "bare-wire"])
    parser.add_argument("--dsn", default="")
    parser.add_argument("--api", default="")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--setup", action="store_true")
    parser.add_argument(
        "--outbox-gc", action="store_true", help="the collector settings `outbox run` uses"
    )
    args = parser.parse_args()
    uvloop.install()
    if args.outbox_gc:
        runtime.collect_for_a_daemon()
        runtime.freeze_startup()
    if args.kind == "pgqueuer" and args.setup:
        asyncio.run(pgqueuer_setup(args.dsn, args.messages))
    elif args.kind == "pgqueuer":
        asyncio.run(pgqueuer_run(args.dsn, args.api, args.in_flight))
    elif args.kind == "bare":
        asyncio.run(bare_run(args.api, args.in_flight, args.messages))
    elif args.kind == "bare-wire":
        asyncio.run(bare_wire_run(args.api, args.in_flight, args.messages))
    else:
        asyncio.run(batched_run(args.dsn, args.api, args.in_flight))
