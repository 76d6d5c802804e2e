"""What the services need from the world, and the values it hands back.

Services import these Protocols, never `outbox.db`, `outbox.http`, SQLAlchemy or aiohttp; the
composition root (`outbox.app`) passes in the adapters that satisfy them, and tests pass fakes.
Adapters raise only `outbox.errors` kinds: `DatabaseUnavailable` (wait, try again) or
`StatementRejected` (this input will fail again).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

# The wall clock, injected so that decisions can be tested at any time of day.
Clock = Callable[[], datetime]
