"""Phone-BSUID pairs and BSUID changes, as webhook bodies name them (waba-2026.md §1.9).

`contacts[]` pairs `wa_id` with `user_id`; messages pair `from` with `from_user_id`; statuses
pair `recipient_id` with `recipient_user_id`; `user_id_update[]` and the system message
`user_changed_user_id` replace a user's BSUID. The body is untrusted: what is not understood is
no pair.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from outbox.domain import identity, parsing

_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class NumberChanged:
    """WhatsApp says a user moved to a new number (a system message, not user activity)."""

    old_wa_id: str
    new_wa_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Paired:
    """A phone number and a BSUID named together: the same user (`source` says where)."""

    wa_id: str
    bsuid: str
    source: str


@dataclass(frozen=True, slots=True)
class UserIdChanged:
    """A user's BSUID was replaced (`user_id_update`, or the system `user_changed_user_id`).

    `wa_id` is their phone number when the notice names it."""

    old_bsuid: str
    new_bsuid: str
    wa_id: str | None


@dataclass(frozen=True, slots=True)
class Addressed:
    """A status names the BSUID of the user its message went to, but no phone number: the
    row found by `wamid` pairs it with the number the row was written to, if it was one."""

    wamid: str
    bsuid: str


def phone_digits(value: object) -> str | None:
    """A phone number or wa_id as digits only: spaces anywhere and a leading '+' dropped."""
    return parsing.phone_number(value, _DIGITS) if isinstance(value, str) else None


def contact_pairs(contacts: object) -> list[Paired]:
    """The pairs `contacts[]` names (`wa_id` with `user_id`); nothing else is read from it."""
    if not isinstance(contacts, list):
        return []
    return [
        Paired(wa_id, bsuid, "contacts")
        for contact in contacts
        if isinstance(contact, dict)
        and (wa_id := phone_digits(contact.get("wa_id"))) is not None
        and (bsuid := identity.bsuid(contact.get("user_id"))) is not None
    ]


def user(phone: object, user_id: object) -> tuple[str | None, str | None]:
    """A user as a webhook names them: (phone digits, BSUID). A BSUID where a phone number
    should be (seen in `from` and `wa_id`) is taken as the BSUID, never read as digits."""
    bsuid = identity.bsuid(user_id)
    if isinstance(phone, str) and identity.looks_like_bsuid(phone):
        return None, bsuid or identity.bsuid(phone)
    return phone_digits(phone), bsuid


def paired(wa_id: str | None, bsuid: str | None, source: str) -> list[Paired]:
    return [Paired(wa_id, bsuid, source)] if wa_id is not None and bsuid is not None else []


def user_id_update(item: object) -> Sequence[Paired | UserIdChanged] | str:
    """The events of one `user_id_update[]` item (`{wa_id, user_id: {previous, current}}`, as
    in weni's body), or why it has none."""
    if not isinstance(item, dict) or not isinstance(ids := item.get("user_id"), dict):
        return "user id update not understood"
    wa_id, _ = user(item.get("wa_id"), None)
    before, after = identity.bsuid(ids.get("previous")), identity.bsuid(ids.get("current"))
    if after is None:
        return "user id update without a new user id"
    if before is not None and before != after:
        # The change pairs the new BSUID with the phone itself (reconcile.digest).
        return [UserIdChanged(before, after, wa_id)]
    return paired(wa_id, after, "user_id_update")


def system_change(
    item: dict[Any, Any], at: datetime | None
) -> NumberChanged | UserIdChanged | None:
    """What a `type: system` message (written by WhatsApp, not the user) changes, if anything."""
    system = item.get("system")
    if not isinstance(system, dict):
        return None
    old = phone_digits(item.get("from"))
    if system.get("type") == "user_changed_number":
        new = phone_digits(system.get("new_wa_id") or system.get("wa_id"))
        if old is not None and new is not None and at is not None and old != new:
            return NumberChanged(old, new, at)
    if system.get("type") == "user_changed_user_id":
        # No public body shows this notice (waba-2026 fixtures INDEX): the spellings test
        # fixtures use are all read, the message's own ids as a last resort.
        before = identity.bsuid(
            system.get("previous_user_id") or system.get("old_user_id") or item.get("from_user_id")
        )
        after = identity.bsuid(
            system.get("new_user_id") or system.get("user_id") or system.get("current_user_id")
        )
        if before is not None and after is not None and before != after:
            return UserIdChanged(before, after, old)
    return None


@dataclass(frozen=True, slots=True)
class PairSeen:
    """A phone number and a BSUID of one user on a channel."""

    channel: str
    wa_id: str
    bsuid: str
    source: str


@dataclass
class Identities:
    """What a batch of webhook bodies says about who is who, for the store to learn first."""

    pairs: list[PairSeen] = field(default_factory=list)
    # A user's new BSUID (channel, old, new): it takes the old one's window and phone number.
    moves: list[tuple[str, str, str]] = field(default_factory=list)
    # BSUIDs statuses name for the rows they are about: (channel, wamid, BSUID).
    addressed: list[tuple[str, str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.pairs or self.moves or self.addressed)

    def add(self, channel: str, event: Paired | UserIdChanged | Addressed) -> str | None:
        """Take one event; returns the note its webhook row keeps, if any."""
        if isinstance(event, Paired):
            self.pairs.append(PairSeen(channel, event.wa_id, event.bsuid, event.source))
            return None
        if isinstance(event, Addressed):
            self.addressed.append((channel, event.wamid, event.bsuid))
            return None
        self.moves.append((channel, event.old_bsuid, event.new_bsuid))
        if event.wa_id is not None:
            self.pairs.append(PairSeen(channel, event.wa_id, event.new_bsuid, "user_id_changed"))
        return f"user id changed to {event.new_bsuid}"
