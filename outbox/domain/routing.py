"""Which channel each part of a partner- or WABA-level webhook belongs to (`POST /webhooks`).

One body from 360dialog's partner webhook, or from a WABA webhook, can carry changes for several
numbers and accounts. A change about one number names it in `value.metadata.phone_number_id`
(channel key `phone_number_id`); an account-level change (template, account, quality, capability
events) names only its WhatsApp Business Account, as `entry[].id` (channel key `waba_id`), and
belongs to every channel of that account. A part no channel claims is kept, under `UNROUTED`,
so that nothing 360dialog delivered is lost and an operator can see what was missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The channel a part no configured channel claims is stored under: no channel id in a
# configuration can hold parentheses and a space by accident, and the reconciler skips it.
UNROUTED = "(unrouted)"


@dataclass(frozen=True, slots=True)
class Routed:
    """The body (in the Cloud envelope) of what goes to one channel.

    `missed` says, for a part stored under UNROUTED, which key found no channel:
    `phone_number_id`, `waba_id`, or `shape` (no Cloud envelope to route by).
    """

    channel: str
    body: dict[str, Any]
    missed: str | None = None


@dataclass(frozen=True, slots=True)
class Directory:
    """The configured channels by their keys at Meta."""

    by_number: Mapping[str, str]  # phone_number_id -> channel id
    by_account: Mapping[str, Sequence[str]]  # waba_id -> channel ids, in a stable order


def directory(channels: Sequence[tuple[str, str | None, str | None]]) -> Directory:
    """From (channel id, phone_number_id, waba_id) triples."""
    by_number: dict[str, str] = {}
    by_account: dict[str, list[str]] = {}
    for channel, number, account in channels:
        if number is not None:
            by_number.setdefault(number, channel)
        if account is not None:
            by_account.setdefault(account, []).append(channel)
    return Directory(by_number, {k: tuple(v) for k, v in by_account.items()})


def route(body: dict[str, Any], known: Directory) -> list[Routed]:
    """Split `body` by channel; every change lands in exactly one part per channel it reaches
    (never an empty list). A body that is not a Cloud envelope is one UNROUTED part."""
    entries = body.get("entry")
    if not isinstance(entries, list) or not entries:
        return [Routed(UNROUTED, body, "shape")]
    # channel (or missed key) -> entries in body order, each with only its changes
    parts: dict[tuple[str, str | None], list[Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            parts.setdefault((UNROUTED, "shape"), []).append(entry)
            continue
        # Changes of one entry stay together, under one copy of the entry's other keys.
        copies: dict[tuple[str, str | None], dict[str, Any]] = {}
        for change in entry["changes"]:
            for target in _targets(entry, change, known):
                if target not in copies:
                    copies[target] = {k: v for k, v in entry.items() if k != "changes"}
                    copies[target]["changes"] = []
                    parts.setdefault(target, []).append(copies[target])
                copies[target]["changes"].append(change)
    head = {k: v for k, v in body.items() if k != "entry"}
    return [
        Routed(channel, {**head, "entry": routed}, missed)
        for (channel, missed), routed in parts.items()
    ] or [Routed(UNROUTED, body, "shape")]


def _targets(
    entry: dict[str, Any], change: object, known: Directory
) -> list[tuple[str, str | None]]:
    value = change.get("value") if isinstance(change, dict) else None
    metadata = value.get("metadata") if isinstance(value, dict) else None
    number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if isinstance(number, str | int) and not isinstance(number, bool):
        channel = known.by_number.get(str(number))
        return [(UNROUTED, "phone_number_id")] if channel is None else [(channel, None)]
    account = entry.get("id")
    channels = known.by_account.get(str(account)) if isinstance(account, str | int) else None
    if not channels:
        return [(UNROUTED, "waba_id")]
    if isinstance(change, dict) and change.get("field") == "messages" and len(channels) > 1:
        # Messages and statuses belong to one number: without its id, any guess is wrong.
        return [(UNROUTED, "phone_number_id")]
    return [(channel, None) for channel in channels]
