"""What `rotate-key` and `import` report: the steps, where a channel was left, each outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Step(StrEnum):
    LOOK_UP = "look up the channel"
    PAUSE = "pause the channel's traffic"
    CREATE_KEY = "create a new API key (Partner API)"
    STORE_KEY = "store the new key in the registry"
    WEBHOOK = "register the webhook with the new key"
    HEALTH = "check the number (GET /health_status)"
    SWITCH = "switch traffic to the new key"
    ADD = "add the channel to the registry"


class After(StrEnum):
    """Where a rotation left the channel."""

    SWITCHED = "switched"  # enabled, sending with the new key
    UNCHANGED = "unchanged"  # its key and state as before: nothing was revoked
    PAUSED = "paused"  # disabled by this run: its rows wait until it is enabled again
    DISABLED = "disabled"  # was disabled before the run and still is


@dataclass(frozen=True)
class Rotation:
    channel: str
    after: After
    failed_step: Step | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.failed_step is None


class Outcome(StrEnum):
    IMPORTED = "imported"
    KNOWN = "known"  # in the registry already (by partner_channel_id): left alone
    SKIPPED = "skipped"  # not ours to manage (no partner permission)
    FAILED = "failed"


@dataclass(frozen=True)
class ImportResult:
    partner_channel_id: str
    channel: str | None
    outcome: Outcome
    failed_step: Step | None = None
    message: str = ""


@dataclass(frozen=True)
class ImportOptions:
    webhook_template: str  # `{channel}` is replaced by our channel id
    filters: Mapping[str, str] = field(default_factory=dict)
    enable: bool = False
    id_prefix: str = ""  # our channel id: prefix + 360dialog's channel id
    page_size: int = 100
    concurrency: int = 4
    rate_per_second: float = 20.0


@dataclass(frozen=True)
class ImportReport:
    listed: int
    results: tuple[ImportResult, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)
