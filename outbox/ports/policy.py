"""What the 2026 error policy needs (issue 18): the template registry and the marketing hold."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from outbox.domain.templates import TemplateKey


class TemplatePauses(Protocol):
    """The registry as the sender writes it: a 132015 answer says the template is paused."""

    async def paused(self, key: TemplateKey) -> int:
        """Record the template as paused (unless a newer event says otherwise); its id."""
        ...


class MarketingHolds(Protocol):
    async def hold_marketing(self, channel: str, seconds: float) -> datetime:
        """Hold the channel's marketing for `seconds` in every replica; when the hold ends."""
        ...
