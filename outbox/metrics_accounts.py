"""The metrics of the partner endpoint and of WABA-level events (issue 18 §4 §5)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

# (kind, effect) of WABA-level events (outbox.domain.account_plan): the series that can exist.
_ACTED = {
    "template": ("template",),
    "number_quality": ("recorded",),
    "capability": ("recorded",),
    "account": ("pause", "lift", "expired", "recorded"),
    "preference": ("opted_out", "opted_in", "recorded"),
}
ACCOUNT_EFFECTS = tuple(
    (kind, effect)
    for kind, acted in _ACTED.items()
    for effect in (*acted, "ignored_unauthenticated", "ignored_other_waba")
)


class AccountMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.signature_failures = Counter(
            "outbox_webhook_signature_failures",
            "Bodies on POST /webhooks refused for their x-360dialog-signature "
            "(missing, malformed, wrong).",
            ["reason"],
            registry=registry,
        )
        self.unrouted_parts = Counter(
            "outbox_webhooks_unrouted",
            "Parts of POST /webhooks bodies no configured channel claims (stored under "
            "'(unrouted)'), by the key that found no channel (phone_number_id, waba_id, shape).",
            ["missed"],
            registry=registry,
        )
        self.events = Counter(
            "outbox_account_events",
            "WABA-level webhook events (template, number quality, account, capability, "
            "preference) by kind and what they did (template, pause, lift, recorded, opted_out, "
            "opted_in, expired, ignored_unauthenticated, ignored_other_waba).",
            ["kind", "effect"],
            registry=registry,
        )
        # Every label value these take, at 0, so that alerts see a rate from the start.
        for reason in ("missing", "malformed", "wrong"):
            self.signature_failures.labels(reason)
        for missed in ("phone_number_id", "waba_id", "shape"):
            self.unrouted_parts.labels(missed)
        for kind, effect in ACCOUNT_EFFECTS:
            self.events.labels(kind, effect)
