"""A status as JSON and back: how a status waits, parked, until its row is known
(outbox.parked_statuses)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from outbox.domain import pricing
from outbox.domain.notifications import StatusUpdate


def status_to_json(update: StatusUpdate) -> dict[str, Any]:
    """A status as JSON, to be parked until its row is known; `status_from_json` reads it back."""
    return {
        "wamid": update.wamid,
        "status": update.status,
        "at": update.at.isoformat() if update.at else None,
        "recipient": update.recipient,
        "outbox_id": update.outbox_id,
        "error_code": update.error_code,
        "error_title": update.error_title,
        "error_detail": update.error_detail,
        "pricing": pricing.to_json(update.pricing),
    }


def status_from_json(data: dict[str, Any]) -> StatusUpdate:
    at = data.get("at")
    return StatusUpdate(
        wamid=data["wamid"],
        status=data["status"],
        at=datetime.fromisoformat(at) if at else None,
        recipient=data.get("recipient"),
        outbox_id=data.get("outbox_id"),
        error_code=data.get("error_code"),
        error_title=data.get("error_title"),
        error_detail=data.get("error_detail"),
        pricing=pricing.parse(data.get("pricing")),
    )
