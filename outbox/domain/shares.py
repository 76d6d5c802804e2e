"""How a claim round shares its free slots: over tenants first, then over each tenant's channels.

A partner's client (tenant) with 500 numbers holding a campaign's backlog and another client
with one number must each get half of the slots, not 500 to 1 (issue 16: "a channel, and a
tenant when channels have one"). A channel without a tenant is a tenant of its own, so a
configuration without tenants shares per channel, as before.

Tenants with a channel named by an insert go first (new flows before old ones, as fq_codel
serves them: a round may run out of slots before the last tenants), then those with fewer due
channels: they are the ones whose rate (their buckets' tokens) is likelier to leave part of
their portion unused, and what a tenant leaves goes to the tenants after it in the same round.
Within a tenant, channels keep the order they were given (named ones first, then the cursor's).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence


class Portions:
    """Offer each channel, in `order`, its share of what is still free; `took` says how many
    rows it claimed. A tenant's portion is fixed when its first channel is offered (an equal
    part of what is free among the tenants not yet offered); its channels share that portion
    the same way, and a channel's unused share goes to the channels and tenants after it."""

    def __init__(
        self,
        channels: Sequence[str],
        tenant_of: Callable[[str], Hashable],
        free: int,
        named: Collection[str] = (),
    ) -> None:
        groups: dict[Hashable, list[str]] = {}
        for channel in dict.fromkeys(channels):
            groups.setdefault(tenant_of(channel), []).append(channel)
        # Stable: ties keep the order given.
        ranked = sorted(
            groups.items(),
            key=lambda group: (not any(c in named for c in group[1]), len(group[1])),
        )
        self.order = [channel for _, members in ranked for channel in members]
        self.free = free
        self._tenant = {channel: tenant for tenant, members in ranked for channel in members}
        self._tenants_left = len(ranked)
        self._channels_left = {tenant: len(members) for tenant, members in ranked}
        self._portion: dict[Hashable, int] = {}

    def offer(self, channel: str) -> int:
        """The channel's share now: 0 when nothing is free or its tenant's portion is spent."""
        tenant = self._tenant[channel]
        if tenant not in self._portion:
            self._portion[tenant] = _part(self.free, self._tenants_left)
            self._tenants_left -= 1
        share = _part(min(self._portion[tenant], self.free), self._channels_left[tenant])
        self._channels_left[tenant] -= 1
        return share

    def took(self, channel: str, rows: int) -> None:
        self._portion[self._tenant[channel]] -= rows
        self.free -= rows


def _part(amount: int, ways: int) -> int:
    """An equal part, rounded up: the first ones of a round are never offered nothing."""
    return max(0, -(-amount // max(1, ways)))


def cursor_after(in_turn: Sequence[str], visited: Collection[str], cursor: str) -> str:
    """Where the next look for due channels starts: after the last channel of `in_turn` (the
    channels the look returned, in its order) before the first one this round did not visit,
    so a channel the round's slots did not reach is the first of the next look."""
    for position, channel in enumerate(in_turn):
        if channel not in visited:
            return in_turn[position - 1] if position else cursor
    return in_turn[-1] if in_turn else cursor
