"""Scripted misbehaviour: per-test faults applied to send requests before validation."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, get_args

FaultKind = Literal["latency", "hang", "status", "error_code", "disconnect"]


@dataclass
class Fault:
    """One scripted fault.

    latency: wait `delay` seconds, then answer normally.
    hang: the same server-side, with a `delay` meant to outlast the client's timeout; the message
        is still accepted (and notified), like a real request whose answer got lost.
    status: answer HTTP `status` with a realistic body, and `Retry-After: retry_after` when set
        (fractional seconds allowed, so tests stay fast).
    error_code: answer WhatsApp error `code` in the dialect's shape with HTTP `http_status`.
    disconnect: close the connection without answering; the message is not accepted.
    """

    kind: FaultKind
    recipients: frozenset[str] | None = None
    templates: frozenset[str] | None = None  # only sends of these templates (by name)
    times: int | None = None
    delay: float = 0.0
    status: int = 500
    retry_after: float | None = None
    code: int = 0
    http_status: int = 400

    def __post_init__(self) -> None:
        # Reject a bad script when it is written, not in the middle of a request.
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1, or None for forever")
        HTTPStatus(self.status)
        HTTPStatus(self.http_status)

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """A fault from its JSON form, where recipients is a list."""
        if not isinstance(data, dict):
            raise ValueError("a fault is a JSON object")
        lists = {
            key: None if data.get(key) is None else frozenset(data[key])
            for key in ("recipients", "templates")
        }
        return cls(**{**data, **lists})


@dataclass
class _Entry:
    fault: Fault
    remaining: int | None


class FaultScript:
    """Faults in insertion order; the first one matching a request applies to it."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, fault: Fault) -> None:
        self._entries.append(_Entry(fault, fault.times))

    def clear(self) -> None:
        self._entries.clear()

    def match(self, recipient: str | None, template: str | None = None) -> Fault | None:
        """The fault for a request to `recipient` (sending `template`, if any), counting it
        against the fault's `times`."""
        for entry in self._entries:
            recipients, templates = entry.fault.recipients, entry.fault.templates
            if recipients is not None and recipient not in recipients:
                continue
            if templates is not None and template not in templates:
                continue
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining == 0:
                    self._entries.remove(entry)
            return entry.fault
        return None
