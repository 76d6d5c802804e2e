"""Partner API rules: dialect by host, what a status means, how long to wait."""

from __future__ import annotations

import pytest

from outbox.domain.models import Dialect
from outbox.domain.partner import (
    MAX_RETRY_AFTER,
    Failure,
    dialect_for,
    failure_of,
    retry_delay,
    webhook_url,
)


@pytest.mark.parametrize(
    ("address", "dialect"),
    [
        ("https://waba.360dialog.io", Dialect.ONPREM),
        ("https://WABA.360dialog.io/", Dialect.ONPREM),
        ("https://waba-v2.360dialog.io", Dialect.CLOUD),
        ("http://127.0.0.1:8081", Dialect.CLOUD),
        ("", Dialect.CLOUD),
    ],
)
def test_dialect_by_host(address: str, dialect: Dialect) -> None:
    assert dialect_for(address) is dialect


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (None, Failure.SERVER),
        (500, Failure.SERVER),
        (503, Failure.SERVER),
        (401, Failure.UNAUTHORIZED),
        (403, Failure.FORBIDDEN),
        (404, Failure.NOT_FOUND),
        (429, Failure.RATE_LIMITED),
        (400, Failure.REFUSED),
        (422, Failure.REFUSED),
        (302, Failure.BAD_ANSWER),
        (200, Failure.BAD_ANSWER),
    ],
)
def test_failure_by_status(status: int | None, failure: Failure) -> None:
    assert failure_of(status) is failure


@pytest.mark.parametrize(
    ("failure", "tries", "retry_after", "delay"),
    [
        (Failure.RATE_LIMITED, 1, 3.5, 3.5),
        (Failure.RATE_LIMITED, 1, None, 1.0),
        (Failure.RATE_LIMITED, 2, 3600.0, MAX_RETRY_AFTER),
        (Failure.RATE_LIMITED, 5, 1.0, None),
        (Failure.SERVER, 1, None, 1.0),
        (Failure.SERVER, 2, 9.0, 2.0),
        (Failure.SERVER, 3, None, None),
        (Failure.UNAUTHORIZED, 1, None, None),
        (Failure.FORBIDDEN, 1, None, None),
        (Failure.NOT_FOUND, 1, None, None),
        (Failure.REFUSED, 1, None, None),
    ],
)
def test_retry_delay(
    failure: Failure, tries: int, retry_after: float | None, delay: float | None
) -> None:
    assert retry_delay(failure, tries, retry_after) == delay


def test_webhook_url_template() -> None:
    assert webhook_url("https://x/webhooks/{channel}", "shop") == "https://x/webhooks/shop"
