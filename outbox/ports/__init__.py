"""What the services need from the world, and the values it hands back.

Services import these Protocols, never `outbox.db`, `outbox.http`, SQLAlchemy or aiohttp; the
composition root (`outbox.app`) passes in the adapters that satisfy them, and tests pass fakes.
Adapters raise only `outbox.errors` kinds: `DatabaseUnavailable` (wait, try again) or
`StatementRejected` (this input will fail again). One module per part of the daemon; this
package re-exports them all, so `from outbox.ports import X` names any of them.
"""

from __future__ import annotations

from outbox.ports.clock import Clock, Monotonic, utc_now
from outbox.ports.gauges import GaugeReader, Sample, SampleObserver
from outbox.ports.operations import Applied, OperatorRows, RetentionRows, Selector
from outbox.ports.partner import (
    ChannelPage,
    IssuedKey,
    NumberApi,
    PartnerApi,
    PartnerApiError,
    PartnerChannel,
)
from outbox.ports.policy import MarketingHolds, TemplatePauses
from outbox.ports.reconciling import (
    ParkedBatch,
    ReconcileObserver,
    ReconcileStore,
    StatusWrites,
    WebhookBatch,
)
from outbox.ports.registry import (
    ChannelRegistry,
    ChannelSource,
    RegisteredChannel,
    RegistrySnapshot,
)
from outbox.ports.sending import (
    LINES_START,
    Api,
    Attempt,
    ChannelStates,
    ClaimRequest,
    Due,
    Housekeeping,
    LeaseRenewals,
    LineCursor,
    MessageLeases,
    NullSendObserver,
    Renewed,
    ResultSink,
    SendObserver,
    Settled,
    SettledObserver,
)

__all__ = [
    "LINES_START",
    "Api",
    "Applied",
    "Attempt",
    "ChannelPage",
    "ChannelRegistry",
    "ChannelSource",
    "ChannelStates",
    "ClaimRequest",
    "Clock",
    "Due",
    "GaugeReader",
    "Housekeeping",
    "IssuedKey",
    "LeaseRenewals",
    "LineCursor",
    "MarketingHolds",
    "MessageLeases",
    "Monotonic",
    "NullSendObserver",
    "NumberApi",
    "OperatorRows",
    "ParkedBatch",
    "PartnerApi",
    "PartnerApiError",
    "PartnerChannel",
    "ReconcileObserver",
    "ReconcileStore",
    "RegisteredChannel",
    "RegistrySnapshot",
    "Renewed",
    "ResultSink",
    "RetentionRows",
    "Sample",
    "SampleObserver",
    "Selector",
    "SendObserver",
    "Settled",
    "SettledObserver",
    "StatusWrites",
    "TemplatePauses",
    "WebhookBatch",
    "utc_now",
]
