"""A local imitation of 360dialog's WhatsApp API, On-Premise and Cloud dialects.

The test double for the whole suite and the embedded API of `outbox demo`: it validates send
requests as the real API would, answers in each dialect's shapes, can be scripted to misbehave,
and posts status notifications back to the configured webhook.
"""

from __future__ import annotations

from outbox.sandbox.faults import Fault, FaultKind, FaultScript
from outbox.sandbox.notifications import NotificationPost
from outbox.sandbox.responses import Dialect
from outbox.sandbox.server import RecordedRequest, Sandbox
from outbox.sandbox.serving import PartnerHub, serve

__all__ = [
    "Dialect",
    "Fault",
    "FaultKind",
    "FaultScript",
    "NotificationPost",
    "PartnerHub",
    "RecordedRequest",
    "Sandbox",
    "serve",
]
