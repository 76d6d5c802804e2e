"""One claimed row's attempt: dispatch it, post the request, judge the answer, log the result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import structlog

from outbox.config import ChannelConfig, SenderConfig
from outbox.domain import dispatch, outcome, policy, retry, templates
from outbox.domain.models import ClaimedMessage, SendResult, State
from outbox.domain.request import ApiRequest
from outbox.errors import DatabaseError
from outbox.ports import Api, Attempt, Clock, Monotonic, TemplatePauses

log = structlog.get_logger("outbox.sender")


@dataclass(frozen=True, slots=True)
class Rules:
    """The sender-wide rules an attempt applies."""

    policy: retry.RetryPolicy
    window_margin: timedelta
    rand: Callable[[], float]

    @classmethod
    def of(cls, config: SenderConfig, rand: Callable[[], float]) -> Rules:
        return cls(retry_policy(config), config.window_margin, rand)


@dataclass(frozen=True, slots=True)
class Means:
    """What every attempt of one sender uses: the API, the rules, the clocks, and the template
    registry (None: a 132015 row only looks again after template_recheck)."""

    api: Api
    rules: Rules
    now: Clock
    monotonic: Monotonic
    pauses: TemplatePauses | None = None


def retry_policy(config: SenderConfig) -> retry.RetryPolicy:
    return retry.RetryPolicy(
        max_attempts=config.max_attempts,
        backoff_base=config.backoff_base,
        backoff_cap=config.backoff_cap,
        marketing_cap_delay=config.marketing_cap_delay,
        spam_hold=config.spam_hold,
        template_recheck=config.template_recheck,
    )


def template_scope(channel: ChannelConfig) -> str:
    """Where the channel's templates live in the registry (issue 18)."""
    return templates.scope(channel.waba_id, channel.id)


def template_scopes(channels: Sequence[ChannelConfig]) -> dict[str, str]:
    return {c.id: template_scope(c) for c in channels}


async def attempt(
    message: ClaimedMessage,
    channel: ChannelConfig,
    means: Means,
    *,
    claimed: float,
    sending: Callable[[], None],
    learn: Callable[[outcome.Judged], None],
) -> Attempt:
    """`claimed` is when the row was claimed (monotonic); `sending` is called just before the
    request leaves, `learn` with the judged answer before the result is logged."""
    rules, now, monotonic = means.rules, means.now, means.monotonic
    prepared = dispatch.prepare(
        message,
        dispatch.ChannelRules(channel.dialect, channel.namespace),
        now(),
        rules.window_margin,
    )
    if isinstance(prepared, dispatch.Unsent):
        return logged(Attempt(channel.id, message, prepared.result, prepared.error))
    held = policy.hold(message, prepared.sent_as, now(), rules.policy)
    if held is not None:
        return logged(Attempt(channel.id, message, held, outcome.SendError.HELD))
    sending()
    started = monotonic()
    answer = await means.api.send(channel, prepared)
    elapsed = monotonic() - started
    judged = outcome.judge(
        message,
        prepared.sent_as,
        answer,
        now=now(),
        policy=rules.policy,
        rand=rules.rand,
        recipient_gap=channel.recipient_gap,
    )
    learn(judged)
    result = judged.result
    if judged.error is retry.ErrorClass.TEMPLATE_PAUSED:
        result = await _paused(result, channel, prepared, means.pauses)
    waited = started - claimed
    return logged(Attempt(channel.id, message, result, judged.metric, waited, elapsed))


async def _paused(
    result: SendResult,
    channel: ChannelConfig,
    request: ApiRequest,
    pauses: TemplatePauses | None,
) -> SendResult:
    """132015: the registry records the pause, and the row waits for that template. Without
    a registry (or a template it can name) the row only looks again after template_recheck."""
    named = templates.template_of(request.body)
    if pauses is None or named is None:
        return result
    key = templates.TemplateKey(template_scope(channel), *named)
    try:
        return replace(result, held_template=await pauses.paused(key))
    except DatabaseError as exc:
        log.warning("outbox.template.pause_not_recorded", channel=channel.id, error=str(exc))
        return result


def logged(attempt: Attempt) -> Attempt:
    message, result = attempt.message, attempt.result
    fields = {
        "channel": attempt.channel,
        "message_id": message.id,
        "attempt": message.attempts,
        "state": result.state.value,
    }
    if result.state is State.ACCEPTED:
        log.debug("outbox.send.accepted", wamid=result.wamid, **fields)
    elif result.state is State.QUEUED:
        log.info(
            "outbox.send.retry_scheduled",
            error_code=result.error_code,
            error_title=result.error_title,
            next_attempt_at=result.next_attempt_at,
            **fields,
        )
    else:
        # ERROR only for the final word on a message; `unknown` and `expired` are warnings.
        level = log.error if result.state is State.FAILED else log.warning
        level(
            f"outbox.send.{result.state.value}",
            error_code=result.error_code,
            error_title=result.error_title,
            error_detail=result.error_detail,
            **fields,
        )
    return attempt
