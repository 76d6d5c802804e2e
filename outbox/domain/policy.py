"""The 2026 error policy for one row (issue 18, waba-2026.md §1.2 §1.4): what holds a row
before any request, and the answers whose decision needs more than the attempt count.

Holds give the claim's attempt back: a held row was never tried. A row held for a paused
template names it (`held_template`), so the template's return releases it at once; it also looks
again every `template_recheck`, in case that release never comes. Nothing here holds a row past
its `expires_at`: it is then due, and expires.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from outbox.domain import templates
from outbox.domain.codes import Code, Title
from outbox.domain.models import ClaimedMessage, SendResult, SentAs, State
from outbox.domain.retry import ErrorClass, Retry, RetryPolicy, decide

# The classes `after_answer` decides.
DECIDED_HERE = frozenset(
    {
        ErrorClass.MARKETING_CAP,
        ErrorClass.OPTED_OUT,
        ErrorClass.SPAM_LIMIT,
        ErrorClass.TEMPLATE_PAUSED,
    }
)
# Meta has paused marketing templates to US numbers since 1 Apr 2025 (waba-2026.md §1.4): the
# answer is 131049 and a retry never helps. A BSUID names the user's country as its prefix.
_PAUSED_MARKETING_PREFIXES = ("1", "+1", "US.")


def is_marketing(message: ClaimedMessage, sent_as: SentAs | None) -> bool:
    """Whether a send counts as marketing: a template the registry does not know to be utility
    or authentication (unknown counts, the cautious reading); free-form never does."""
    if sent_as is SentAs.FREEFORM:
        return False
    return templates.is_marketing(message.template.category if message.template else None)


def hold(
    message: ClaimedMessage, sent_as: SentAs | None, now: datetime, policy: RetryPolicy
) -> SendResult | None:
    """The held result of a row that must not be sent now, or None to send it. Only templates
    are held (free-form, and a row with nothing to send, never are)."""
    if sent_as not in (SentAs.TEMPLATE, SentAs.FALLBACK_TEMPLATE) or message.unreadable:
        return None
    info = message.template
    if info is not None and info.held:
        return _held(
            message,
            now,
            now + policy.template_recheck,
            Code.TEMPLATE_HELD,
            Title.TEMPLATE_HELD,
            f"template status {info.status}",
            held_template=info.id,
        )
    until = message.marketing_hold_until
    if until is not None and until > now and is_marketing(message, sent_as):
        return _held(message, now, until, Code.MARKETING_HELD, Title.MARKETING_HELD, None)
    return None


def pair_pause(strikes: int, policy: RetryPolicy) -> timedelta:
    """The recipient's pause after `strikes` 131056 answers in a row (1 for the first):
    recipient_delay, times pair_pause_factor per repeat, at most pair_pause_cap."""
    base = policy.recipient_delay.total_seconds()
    exponent = min(max(strikes - 1, 0), 32)  # capped long before a float could overflow
    seconds = base * policy.pair_pause_factor**exponent
    return timedelta(seconds=min(seconds, policy.pair_pause_cap.total_seconds()))


def after_answer(
    message: ClaimedMessage,
    sent_as: SentAs,
    error: ErrorClass,
    *,
    now: datetime,
    policy: RetryPolicy,
    rand: float,
) -> SendResult:
    """The row's next state after an answer of a class in DECIDED_HERE; the caller fills in
    the API's error code, title and detail."""
    if error is ErrorClass.OPTED_OUT:
        return SendResult(message.id, State.FAILED, now, sent_as=sent_as, opt_out=True)
    if error is ErrorClass.TEMPLATE_PAUSED:
        # The template's id is added by the sender once the registry has recorded the pause.
        return _held(message, now, now + policy.template_recheck, sent_as=sent_as)
    if error is ErrorClass.SPAM_LIMIT:
        if is_marketing(message, sent_as):
            return _held(message, now, now + policy.spam_hold, sent_as=sent_as)
        # The number is restricted, yet its other traffic goes on: this row backs off like a
        # server error, and fails like one.
        decision = decide(ErrorClass.SERVER, message.attempts, policy, lambda: rand)
        if isinstance(decision, Retry):
            return _queued(message, now, now + decision.delay, sent_as)
        return _failed(message, now, sent_as, decision.exhausted)
    return _marketing_cap(message, sent_as, now, policy)


def _marketing_cap(
    message: ClaimedMessage, sent_as: SentAs, now: datetime, policy: RetryPolicy
) -> SendResult:
    if is_marketing(message, sent_as) and message.recipient.startswith(_PAUSED_MARKETING_PREFIXES):
        return _failed(message, now, sent_as, "marketing to +1 numbers is paused: not retried")
    if message.last_error == "131049":
        return _failed(message, now, sent_as, "retried once a day later already")
    retry_at = now + policy.marketing_cap_delay
    if message.expires_at is not None and retry_at >= message.expires_at:
        return _failed(message, now, sent_as, "expires_at comes before a retry may go")
    return _queued(message, now, retry_at, sent_as)


def _queued(
    message: ClaimedMessage, now: datetime, at: datetime, sent_as: SentAs | None
) -> SendResult:
    return SendResult(message.id, State.QUEUED, now, sent_as=sent_as, next_attempt_at=at)


def _failed(message: ClaimedMessage, now: datetime, sent_as: SentAs, why: str | None) -> SendResult:
    return SendResult(message.id, State.FAILED, now, sent_as=sent_as, error_detail=why)


def _held(
    message: ClaimedMessage,
    now: datetime,
    until: datetime,
    code: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    *,
    held_template: int | None = None,
    sent_as: SentAs | None = None,
) -> SendResult:
    if message.expires_at is not None:
        until = min(until, message.expires_at)
    return SendResult(
        message.id,
        State.QUEUED,
        now,
        sent_as=sent_as,
        error_code=code,
        error_title=title,
        error_detail=detail,
        next_attempt_at=until,
        attempts_delta=-1,
        held_template=held_template,
    )
