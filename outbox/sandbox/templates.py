"""The sandbox's own template book (issue 18): categories, paused templates, held answers and
the per-message pricing its statuses carry (waba-2026.md §1.2, §1.3).

A template the book does not know is an approved MARKETING one (the sandbox sends it); a paused
one is refused with 132015; a held one is accepted with `message_status`
`held_for_quality_assessment`. Statuses of Cloud messages carry `pricing` as Meta sends it since
July 2025: the template's category, or `service` for free-form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from outbox.sandbox.responses import ApiError

PAUSED_CODE = 132015
_PAUSED_TITLE = "Template is Paused"
_STATUSES = frozenset({"APPROVED", "PAUSED", "DISABLED"})
_CATEGORIES = frozenset({"MARKETING", "UTILITY", "AUTHENTICATION"})


@dataclass
class SandboxTemplate:
    category: str = "MARKETING"
    status: str = "APPROVED"
    held: bool = False  # accepted sends answer `held_for_quality_assessment`

    def __post_init__(self) -> None:
        if self.category not in _CATEGORIES:
            raise ValueError(f"category is one of {sorted(_CATEGORIES)}")
        if self.status not in _STATUSES:
            raise ValueError(f"status is one of {sorted(_STATUSES)}")


def template_name(body: Any) -> str | None:
    """The template a send request names, or None for anything else."""
    template = body.get("template") if isinstance(body, dict) else None
    name = template.get("name") if isinstance(template, dict) else None
    return name if isinstance(name, str) else None


class TemplateBook:
    def __init__(self) -> None:
        self.templates: dict[str, SandboxTemplate] = {}

    def set(self, name: str, data: Any) -> SandboxTemplate:
        """Create or change a template from a control request's JSON object."""
        if not isinstance(data, dict):
            raise ValueError("a template is a JSON object")
        current = self.templates.get(name, SandboxTemplate())
        fields = {
            "category": data.get("category", current.category),
            "status": data.get("status", current.status),
            "held": bool(data.get("held", current.held)),
        }
        self.templates[name] = SandboxTemplate(**fields)
        return self.templates[name]

    def _of(self, body: Any) -> SandboxTemplate | None:
        name = template_name(body)
        return None if name is None else self.templates.get(name, SandboxTemplate())

    def refusal(self, body: Any) -> ApiError | None:
        """132015 for a paused (or disabled) template; None when the send may go."""
        template = self._of(body)
        if template is None or template.status == "APPROVED":
            return None
        return ApiError(PAUSED_CODE, _PAUSED_TITLE, f"template {template_name(body)} is paused")

    def message_status(self, body: Any) -> str:
        template = self._of(body)
        return "held_for_quality_assessment" if template and template.held else "accepted"

    def pricing(self, body: Any) -> dict[str, Any]:
        template = self._of(body)
        if template is None:
            return {
                "billable": True,
                "pricing_model": "PMP",
                "category": "service",
                "type": "free_customer_service",
            }
        return {
            "billable": True,
            "pricing_model": "PMP",
            "category": template.category.lower(),
            "type": "regular",
        }
