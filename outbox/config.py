"""Settings: frozen values, loaded and validated by outbox.config_loader.

Secrets are given by reference (an environment variable or a file) and held in `Secret`, whose
repr never shows the value, so a settings object can be logged or printed safely.

Numbers and durations must be greater than 0 unless their field's metadata says otherwise:
`min: 0` allows zero, `max` caps them (`bounds` words the cap for the error message), and
`secret` marks a credential given as `<name>_env` or `<name>_file`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from outbox.domain.models import Dialect
from outbox.domain.ratelimit import Limits
from outbox.domain.window import DEFAULT_MARGIN
from outbox.secret import WITHHELD_KEY as WITHHELD_KEY
from outbox.secret import Secret as Secret
from outbox.secret import WithheldKey as WithheldKey

SEND_SLACK = 0.05  # seconds from a claim to its requests' arrival that the limit allows for


class UnknownPolicy(StrEnum):
    """What happens to an `unknown` row once its quiet period passes with no evidence."""

    RESEND = "resend"  # send it once more (a duplicate is possible; the README says when)
    HOLD = "hold"  # leave it for an operator (`outbox replay`)


class WebhookAuth(StrEnum):
    """How the channel's webhook receiver knows a body came from 360dialog."""

    BASIC = "basic"  # Basic auth with webhook_username_* / webhook_password_* (the default)
    # Anyone may post, chosen on purpose: such bodies are stored as unauthenticated, and their
    # statuses find rows by wamid only, never by the guessable outbox id.
    NONE = "none"


class WebhookOrigin(StrEnum):
    """What the receiver does with a channel's webhooks, from its settings."""

    CHECKED = "checked"  # credentials are checked; stored bodies are authenticated
    ANYONE = "anyone"  # webhook_auth = "none": taken unchecked, stored as unauthenticated
    REFUSED = "refused"  # no credentials and no explicit choice: every body gets 401


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    id: str
    dialect: Dialect
    base_url: str
    api_key: Secret = field(metadata={"secret": True})
    rate_per_second: float = 20.0
    namespace: str | None = None
    webhook_username: Secret | None = field(default=None, metadata={"secret": True})
    webhook_password: Secret | None = field(default=None, metadata={"secret": True})
    unknown_policy: UnknownPolicy = UnknownPolicy.RESEND
    webhook_auth: WebhookAuth = WebhookAuth.BASIC
    # Least time between two messages to one recipient (pair pacing); zero: no pacing.
    recipient_gap: timedelta = field(default=timedelta(0), metadata={"min": 0})
    burst: float | None = None  # tokens the shared bucket holds; default a tenth of the rate
    max_in_flight: int | None = None  # requests in flight per process; default: sender's
    replay_share: float = field(
        default=0.2, metadata={"max": 1}
    )  # share of the rate replayed rows get while live rows wait
    # Where the number lives at Meta and 360dialog: partner- and WABA-level webhooks
    # (POST /webhooks) are routed by these, and the Partner API manages the channel's keys by
    # 360dialog's channel id. All optional: a single company's file channels need none.
    phone_number_id: str | None = None
    waba_id: str | None = None
    partner_channel_id: str | None = None
    client_id: str | None = None  # the partner's client (tenant) the number belongs to

    def webhook_origin(self) -> WebhookOrigin:
        if self.webhook_username is not None and self.webhook_password is not None:
            return WebhookOrigin.CHECKED
        if self.webhook_auth is WebhookAuth.NONE:
            return WebhookOrigin.ANYONE
        return WebhookOrigin.REFUSED

    def limits(self) -> Limits:
        """The bucket behind `rate_per_second` and `burst`.

        Tokens are taken at claim time; the requests reach the API a few milliseconds later and
        can bunch up on the way. The bucket holds back SEND_SLACK worth of tokens from the
        burst, so that any one second at the API stays within rate + burst.
        """
        paced = self.recipient_gap > timedelta(0)
        return _limits(self.rate_per_second, self.burst, self.replay_share, paced)


@dataclass(frozen=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = field(
        default=8080,
        metadata={"min": 0, "max": 65535, "bounds": "between 0 (any free port) and 65535"},
    )
    # --- the hardened edge (issue 19 section 2) ---
    # A connection that has not sent a whole request head this long after it opened is closed.
    header_timeout: timedelta = timedelta(seconds=10)
    # An idle kept-alive connection is closed after this long (aiohttp's default is an hour).
    keepalive_timeout: timedelta = timedelta(seconds=15)
    body_timeout: timedelta = timedelta(seconds=10)  # the whole body, or 408 and closed
    max_connections: int = 512  # at most half the process's descriptor limit is used
    # Per client address (trusted proxies excepted), and at most half of max_connections.
    max_connections_per_source: int = 256
    max_webhook_handlers: int = 256  # webhooks handled at once; beyond, 503 with Retry-After
    # /readyz answers from a database check at most this old; 0 checks on every request.
    readiness_interval: timedelta = field(default=timedelta(seconds=5), metadata={"min": 0})
    # Failed webhook authentications per source address per minute before it gets 429s.
    auth_failures_per_minute: int = 20
    auth_block: timedelta = timedelta(seconds=60)  # how long a throttled source gets 429s
    # Peers whose X-Forwarded-For names the source (comma-separated addresses or CIDR networks):
    # the ingress; they are also exempt from max_connections_per_source.
    trusted_proxies: str = ""
    # "host:port" for /healthz, /readyz and /metrics; then the main listener serves webhooks only.
    admin_listen: str = ""


@dataclass(frozen=True)
class SenderConfig:
    batch_size: int = 200
    max_in_flight: int = 200
    # Rows claimed ahead of the request slots, waiting for one (issue 16); at most max_in_flight.
    prefetch: int = field(default=200, metadata={"min": 0})
    poll_interval: timedelta = timedelta(seconds=5)
    lease: timedelta = timedelta(minutes=2)
    request_timeout: timedelta = timedelta(seconds=30)
    shutdown_grace: timedelta = timedelta(seconds=20)
    flush_interval: timedelta = timedelta(milliseconds=20)
    # Issue 19: at most 100, far inside the table's CHECK (attempts 0..1000, migration 0020), so
    # a claim can never be refused for the count it writes.
    max_attempts: int = field(default=8, metadata={"max": 100})
    backoff_base: timedelta = timedelta(seconds=2)
    backoff_cap: timedelta = timedelta(minutes=5)
    # Free-form is sent only while now < last inbound + 24 h - window_margin.
    window_margin: timedelta = field(default=DEFAULT_MARGIN, metadata={"min": 0})
    # An `unknown` row waits this long for a status webhook before its channel's policy applies.
    unknown_quiet: timedelta = timedelta(minutes=5)
    # Server errors in a row that pause a channel; a paused channel waits breaker_cooldown
    # (doubling per failed probe, up to breaker_cooldown_max) before one probe request.
    breaker_threshold: int = 20
    breaker_cooldown: timedelta = timedelta(seconds=30)
    breaker_cooldown_max: timedelta = timedelta(minutes=10)
    # Rows naming a channel no replica is configured for fail after this long.
    unknown_channel_grace: timedelta = timedelta(seconds=5)
    maintenance_interval: timedelta = timedelta(seconds=1)
    # Issue 18 (the 2026 error policy): a 131049 (per-user marketing cap) is retried once,
    # this much later; a 131048 (spam-rate limit) holds the channel's marketing this long; a
    # row held for a paused template checks the registry again this often.
    marketing_cap_delay: timedelta = timedelta(hours=24)
    spam_hold: timedelta = timedelta(hours=24)
    template_recheck: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class ReconcilerConfig:
    batch_size: int = 500  # webhook rows per transaction ...
    # ... while the bodies before a row hold fewer than this many bytes (as received): memory
    # grows with statuses, some 36 MB per 1 MiB body of small ones; a larger body goes alone.
    batch_bytes: int = 2 * 1024 * 1024
    poll_interval: timedelta = timedelta(seconds=1)  # NOTIFY wakes it sooner
    # A status naming no known message is tried again for this long, then counted an orphan.
    orphan_horizon: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class MetricsConfig:
    # Gauges read from the database (backlog, lag, missing delivery reports) are refreshed this
    # often by every process serving /metrics, never per scrape.
    sample_interval: timedelta = timedelta(seconds=15)
    # An accepted row with no delivery report after this long counts as "DLR missing" ...
    dlr_missing_after: timedelta = timedelta(hours=24)
    # ... if it was accepted within this period (older ones have stopped being news).
    dlr_lookback: timedelta = timedelta(days=7)
    # Latency histograms by channel up to this many channels, then one (outbox.metrics_latency).
    channel_histograms: int = field(default=100, metadata={"min": 0})


# --- Behind PgBouncer (issue 16) ---
class Pooler(StrEnum):
    """What sits between the daemon and PostgreSQL on `database_url`."""

    # PostgreSQL itself, or a pooler that keeps a client's session (PgBouncer in session mode).
    NONE = "none"
    # PgBouncer in transaction mode: each transaction may run on another server session, so no
    # prepared statement, LISTEN or session setting may outlive its transaction.
    PGBOUNCER = "pgbouncer"


@dataclass(frozen=True)
class DatabaseConfig:
    pooler: Pooler = Pooler.NONE


# --- [partner]: 360dialog's Partner API (outbox channels rotate-key / import) ---
PARTNER_API_URL = "https://hub.360dialog.io/api/v2"


@dataclass(frozen=True)
class PartnerConfig:
    partner_id: str
    api_key: Secret = field(metadata={"secret": True})  # the Partner API key (X-API-Key)
    base_url: str = PARTNER_API_URL
    # Where 360dialog posts a channel's webhooks, `{channel}` standing for our channel id,
    # e.g. https://outbox.example.com/webhooks/{channel}; a new key needs it registered again.
    webhook_url: str | None = None
    request_timeout: timedelta = timedelta(seconds=30)


# --- channel registry (issue 17) ---
@dataclass(frozen=True)
class RegistryConfig:
    # Every replica checks the registry's version this often and re-reads it when it changed:
    # the backstop for a NOTIFY it missed (changes reach it at once otherwise).
    refresh_interval: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)  # may hold a password
    channels: tuple[ChannelConfig, ...]
    http: HttpConfig = field(default_factory=HttpConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    reconciler: ReconcilerConfig = field(default_factory=ReconcilerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    log_level: str = "info"
    log_format: str = "auto"  # auto: JSON unless stderr is a terminal
    # Behind PgBouncer: a direct URL to PostgreSQL for what needs a session of its own.
    listen_database_url: str | None = field(default=None, repr=False)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    partner: PartnerConfig | None = None  # [partner], for the Partner API verbs only
    # --- [partner] webhook signature (issue 18 §4) ---
    # The platform secret 360dialog signs partner webhooks with (`x-360dialog-signature`): when
    # set, every body on POST /webhooks must carry a valid signature.
    partner_webhook_secret: Secret | None = field(default=None, repr=False)

    def listen_url(self) -> str | None:
        """Where the NOTIFY listener connects; None: nowhere, the daemon polls. A transaction
        pooler hands the session that ran LISTEN to other clients after the statement, so the
        notifications would go to them (or nowhere) while the listener looked healthy."""
        if self.listen_database_url is not None:
            return self.listen_database_url
        return None if self.database.pooler is Pooler.PGBOUNCER else self.database_url

    def direct_database(self) -> tuple[str, Pooler]:
        """The URL `outbox migrate` uses, and what is in front of it: migrations hold a session
        for minutes (CREATE INDEX CONCURRENTLY), which belongs on a direct connection."""
        if self.listen_database_url is not None:
            return self.listen_database_url, Pooler.NONE
        return self.database_url, self.database.pooler

    def channel(self, channel_id: str) -> ChannelConfig | None:
        return next((c for c in self.channels if c.id == channel_id), None)


@functools.lru_cache(maxsize=1024)
def _limits(rate: float, burst: float | None, replay_share: float, paced: bool) -> Limits:
    """One `Limits` for all the channels that have the same (a partner's thousands of numbers
    mostly do: 10,000 copies held 2 MB)."""
    burst = burst or max(1.0, rate / 10)
    return Limits(rate, max(1.0, burst - rate * SEND_SLACK), replay_share=replay_share, paced=paced)
