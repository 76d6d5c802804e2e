"""Rules for working with 360dialog's Partner API: what its answers mean and what to say.

Pure: the onboarding service and the CLI read these, the HTTP adapter never decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from outbox.domain.models import Dialect

# The one host that still speaks On-Premise (`/v1/messages`); every other address is Cloud.
ONPREM_HOSTS = frozenset({"waba.360dialog.io"})
# A Retry-After beyond this is taken as this: a CLI run should not sleep for an hour.
MAX_RETRY_AFTER = 60.0  # seconds
RATE_LIMIT_TRIES = 5  # answers of 429 in a row before giving up
SERVER_ERROR_TRIES = 3  # answers of 5xx (or no answer) in a row before giving up


def dialect_for(address: str) -> Dialect:
    """The dialect of the API host a new key came with (`address` in the key's answer)."""
    host = (urlsplit(address).hostname or "").lower()
    return Dialect.ONPREM if host in ONPREM_HOSTS else Dialect.CLOUD


class Failure(StrEnum):
    """What kind of refusal a Partner API answer is."""

    UNAUTHORIZED = "unauthorized"  # 401: the partner key is wrong or revoked
    FORBIDDEN = "forbidden"  # 403: no partner permission for this channel (or partner)
    NOT_FOUND = "not_found"  # 404
    RATE_LIMITED = "rate_limited"  # 429
    SERVER = "server"  # 5xx, or no answer at all
    REFUSED = "refused"  # another 4xx: the request itself was wrong
    BAD_ANSWER = "bad_answer"  # 2xx we cannot read, or a redirect we will not follow


def failure_of(status: int | None) -> Failure:
    """`status` None: no answer (timeout, connection refused)."""
    if status is None or status >= 500:
        return Failure.SERVER
    return {
        401: Failure.UNAUTHORIZED,
        403: Failure.FORBIDDEN,
        404: Failure.NOT_FOUND,
        429: Failure.RATE_LIMITED,
    }.get(status, Failure.REFUSED if 400 <= status < 500 else Failure.BAD_ANSWER)


_ADVICE = {
    Failure.UNAUTHORIZED: "the Partner API refused the partner API key: check [partner] "
    "api_key_env / api_key_file (a key deleted in the Partner Hub stops working at once)",
    Failure.FORBIDDEN: "no partner permission: the client must share API key permission with "
    "the partner (Client Hub), or the partner must pay for the number",
    Failure.NOT_FOUND: "not found: check [partner] partner_id and the channel's partner_channel_id",
    Failure.RATE_LIMITED: "the Partner API kept answering 429 (rate limited) although its "
    "Retry-After was honoured: try again later",
    Failure.SERVER: "360dialog did not answer properly (server error or no answer): try "
    "again later",
    Failure.REFUSED: "the Partner API refused the request",
    Failure.BAD_ANSWER: "the Partner API's answer could not be used",
}


def advice(failure: Failure) -> str:
    return _ADVICE[failure]


def retry_delay(failure: Failure, tries: int, retry_after: float | None) -> float | None:
    """Seconds to wait before trying a Partner API call again after its `tries`-th failure,
    or None to give up. A 429 waits as told (capped); a server error backs off 1 s, 2 s, ..."""
    if failure is Failure.RATE_LIMITED and tries < RATE_LIMIT_TRIES:
        return min(MAX_RETRY_AFTER, retry_after if retry_after is not None else 1.0)
    if failure is Failure.SERVER and tries < SERVER_ERROR_TRIES:
        return float(2 ** (tries - 1))
    return None


class CanSend(StrEnum):
    """`health_status.can_send_message` of a number (and of each entity behind it)."""

    AVAILABLE = "AVAILABLE"
    LIMITED = "LIMITED"  # sends, with limits: traffic may go, with a warning
    BLOCKED = "BLOCKED"


@dataclass(frozen=True)
class Health:
    can_send: CanSend
    reasons: tuple[str, ...] = ()  # error descriptions the answer gave, if any

    @property
    def sendable(self) -> bool:
        return self.can_send is not CanSend.BLOCKED


def webhook_url(template: str, channel_id: str) -> str:
    """A channel's webhook URL from a template with `{channel}` in it (our channel id)."""
    return template.replace("{channel}", channel_id)
