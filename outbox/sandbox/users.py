"""Username users in the sandbox: BSUIDs, their phone numbers when known, and what they write.

Since 2026 WhatsApp names a user by a business-scoped user id (BSUID) besides, or instead of,
their phone number (waba-2026.md §1.9). The sandbox keeps the pairs a test declares and speaks
them as the Cloud API does: a send to a BSUID comes in `recipient` (not `to`), its answer names
the user in `contacts[].user_id`, its statuses in `recipient_user_id` (with no `recipient_id`
when the phone number is not known), and a user with no known number writes inbound messages
that carry `from_user_id` and no `from`.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from outbox.sandbox.notifications import DISPLAY_PHONE_NUMBER, PHONE_NUMBER_ID, WABA_ID

BSUID = re.compile(r"[A-Za-z]{2}\.[A-Za-z0-9]{1,128}")


class Users:
    """The phone-BSUID pairs the sandbox knows (per sandbox, like Meta's contact book)."""

    def __init__(self) -> None:
        self._phones: dict[str, str] = {}  # BSUID -> phone
        self._bsuids: dict[str, str] = {}  # phone -> BSUID

    def add(self, bsuid: str, phone: str | None = None) -> None:
        if not BSUID.fullmatch(bsuid):
            raise ValueError(f"{bsuid!r} is not a BSUID")
        if phone is not None:
            self._phones[bsuid] = phone
            self._bsuids[phone] = bsuid

    def ids(self, recipient: str) -> tuple[str | None, str | None]:
        """(phone, BSUID) of whoever `recipient` (either spelling) names, as far as known."""
        if BSUID.fullmatch(recipient):
            return self._phones.get(recipient), recipient
        return recipient, self._bsuids.get(recipient)

    def contact(self, recipient: str) -> dict[str, str]:
        """The `contacts[]` item of a send answer."""
        phone, bsuid = self.ids(recipient)
        item = {"input": recipient}
        if phone is not None:
            item["wa_id"] = phone
        if bsuid is not None:
            item["user_id"] = bsuid
        return item

    def status_ids(self, recipient: str) -> dict[str, str]:
        """The recipient fields of a Cloud status: a status sent to a BSUID may lack
        `recipient_id` entirely (waba-2026 fixtures INDEX)."""
        phone, bsuid = self.ids(recipient)
        fields = {}
        if phone is not None:
            fields["recipient_id"] = phone
        if bsuid is not None:
            fields["recipient_user_id"] = bsuid
        return fields

    def inbound_body(self, sender: str, text: str, at: float) -> dict[str, Any]:
        """A Cloud notification of a text message from `sender` (either spelling): a user whose
        phone number is not known comes with `from_user_id` and no `from` nor `wa_id`."""
        phone, bsuid = self.ids(sender)
        message: dict[str, Any] = {
            "id": "wamid.IN" + secrets.token_urlsafe(24),
            "timestamp": str(int(at)),
            "type": "text",
            "text": {"body": text},
        }
        contact: dict[str, Any] = {"profile": {"name": "Sandbox User"}}
        if phone is not None:
            message["from"] = contact["wa_id"] = phone
        if bsuid is not None:
            message["from_user_id"] = contact["user_id"] = bsuid
            contact["profile"]["username"] = "@" + bsuid.split(".", 1)[1].lower()
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": DISPLAY_PHONE_NUMBER,
                "phone_number_id": PHONE_NUMBER_ID,
            },
            "contacts": [contact],
            "messages": [message],
        }
        return {
            "object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": value}]}],
        }
