"""Partner API calls with 360dialog's retry hints honoured: one place decides how long to wait."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from outbox.domain.partner import Failure, retry_delay
from outbox.ports.partner import PartnerApiError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

log = structlog.get_logger("outbox.partner")


async def patiently(call: Callable[[], Awaitable[T]], sleep: Sleep, what: str) -> T:
    """`call()`, again after a 429 (waiting its Retry-After) or a server error (backing off),
    until it succeeds or `retry_delay` gives up; then its last PartnerApiError is raised."""
    tries: Counter[Failure] = Counter()  # per kind: a 429 does not use up the 5xx tries
    while True:
        try:
            return await call()
        except PartnerApiError as exc:
            tries[exc.failure] += 1
            delay = retry_delay(exc.failure, tries[exc.failure], exc.retry_after)
            if delay is None:
                raise
            log.info("outbox.partner.retry", call=what, status=exc.status, tries=tries, wait=delay)
            await sleep(delay)
