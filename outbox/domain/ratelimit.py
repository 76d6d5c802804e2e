"""Token-bucket arithmetic for a channel's rate limit, shared by every replica through one row.

The caller reads the bucket under a row lock with the database's clock, asks this module how
many rows it may claim, and writes the bucket back in the same transaction; so the limit holds
across any number of processes. The effective rate drops on throttling answers (multiplicative
decrease) and climbs back linearly (additive increase), never above the configured rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

# Readings this far behind the bucket's last refill are the ordinary disorder of statements
# (one started before the previous lock holder committed) and count as no time. Further back,
# the database clock itself stepped back (an NTP step, a restored VM, a failover to a standby
# whose clock differs): the bucket is re-anchored there rather than left waiting for the clock
# to catch up, which stopped the channel for the size of the step.
CLOCK_STEP_BACK = timedelta(seconds=1)
# A throttling answer within this long of the last cut, or before that cut's hold ended, belongs
# to the same throttling event: answers to requests sent before the hold keep coming back, from
# every replica, and must not cut the shared rate again.
SAME_THROTTLE = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Limits:
    rate: float  # the configured rate, per second
    burst: float  # tokens the bucket holds at most
    decrease: float = 0.5  # a throttle multiplies the effective rate by this ...
    floor: float = 0.05  # ... but not below this share of the configured rate
    recovery: float = 0.05  # share of the configured rate regained per second
    replay_share: float = 0.2  # share of each claim kept for replayed rows, when both wait
    # Pair pacing (a recipient_gap): one message to a recipient at a time, whatever its lines.
    paced: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a positive number")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError("burst must be at least 1")
        if not (0 < self.decrease < 1 and 0 < self.floor <= 1 and self.recovery > 0):
            raise ValueError("decrease must be in (0, 1), floor in (0, 1], recovery above 0")
        if not 0 < self.replay_share <= 1:
            raise ValueError("replay_share must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    refilled_at: datetime
    rate: float | None = None  # the effective rate; None: the configured one

    def effective_rate(self, limits: Limits) -> float:
        return limits.rate if self.rate is None else min(self.rate, limits.rate)


def refill(
    bucket: Bucket, now: datetime, limits: Limits, held_until: datetime | None = None
) -> Bucket:
    """Tokens earned since the last refill, and the rate regained meanwhile.

    `held_until` is the channel's throttle hold: nothing is earned and no rate regained before
    it ends, so the cut is still there when claims resume (counting from the slow-down, any hold
    of 10 s or more undid a halving before the first claim after it).
    """
    if now < bucket.refilled_at - CLOCK_STEP_BACK:
        return Bucket(bucket.tokens, now, bucket.rate)
    start = bucket.refilled_at if held_until is None else max(bucket.refilled_at, held_until)
    # max(): a reading slightly behind must neither drain the bucket nor slow it down.
    elapsed = max(0.0, (now - start).total_seconds())
    rate = bucket.effective_rate(limits)
    tokens = min(limits.burst, bucket.tokens + elapsed * rate)
    recovered = rate + elapsed * limits.recovery * limits.rate
    new_rate = None if recovered >= limits.rate else recovered
    return Bucket(tokens, max(now, bucket.refilled_at), new_rate)


# The constructor, not dataclasses.replace, on the claim's path: replace() costs some 4 us a
# call, and a claim over 10,000 channels makes three per channel (issue 16).
def take(bucket: Bucket, wanted: int) -> tuple[int, Bucket]:
    """Whole tokens for up to `wanted` rows, and the bucket without them."""
    granted = max(0, min(wanted, math.floor(bucket.tokens)))
    return granted, Bucket(bucket.tokens - granted, bucket.refilled_at, bucket.rate)


def give_back(bucket: Bucket, unused: int, limits: Limits) -> Bucket:
    tokens = min(limits.burst, bucket.tokens + max(0, unused))
    return Bucket(tokens, bucket.refilled_at, bucket.rate)


def wait_time(bucket: Bucket, limits: Limits) -> float:
    """Seconds until one whole token is there."""
    missing = 1.0 - bucket.tokens
    return 0.0 if missing <= 0 else missing / bucket.effective_rate(limits)


def slow_down(bucket: Bucket, limits: Limits) -> Bucket:
    """A throttling answer: cut the effective rate, and spend what the bucket held."""
    rate = max(limits.floor * limits.rate, bucket.effective_rate(limits) * limits.decrease)
    return Bucket(min(bucket.tokens, 0.0), bucket.refilled_at, rate)


def same_throttle(now: datetime, slowed_at: datetime | None, held_until: datetime | None) -> bool:
    """Whether a throttling answer at `now` belongs to the event whose cut was made at
    `slowed_at` (by any replica): one cut per event, not one per replica."""
    if slowed_at is None:
        return False
    return now < max(slowed_at + SAME_THROTTLE, held_until or slowed_at)


def replay_quota(granted: int, limits: Limits, rand: float) -> int:
    """How many of `granted` tokens go to replayed rows first; live rows get the rest.

    Either lane takes what the other leaves unused, so a replay runs at full rate on a quiet
    channel and at `replay_share` of it beside live traffic. The fraction is rounded up with
    probability equal to itself (`rand` in [0, 1)), so the share holds on average even for
    claims of one token and across replicas, without shared state.
    """
    exact = granted * limits.replay_share
    whole = math.floor(exact)
    return whole + (1 if rand < exact - whole else 0)
