"""How a round's free slots are shared: tenants first, then each tenant's channels; and where the
next look for due channels starts."""

from __future__ import annotations

import pytest

from outbox.domain.shares import Portions, cursor_after

# Channels are named "<tenant>:<n>"; a name without ":" is a channel with no tenant (its own).


def _tenant(channel: str) -> str:
    return channel.split(":")[0] if ":" in channel else channel


def _round(channels: list[str], free: int, wants: dict[str, int]) -> dict[str, int]:
    """Every channel offered in order; each takes its share, or what it wants if less."""
    portions = Portions(channels, _tenant, free)
    taken: dict[str, int] = {}
    for channel in portions.order:
        if portions.free <= 0:
            break
        share = portions.offer(channel)
        if share <= 0:
            continue
        taken[channel] = min(share, wants.get(channel, share))
        portions.took(channel, taken[channel])
    return taken


def _by_tenant(taken: dict[str, int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for channel, rows in taken.items():
        totals[_tenant(channel)] = totals.get(_tenant(channel), 0) + rows
    return totals


A199 = [f"A:{n:03d}" for n in range(199)]


@pytest.mark.parametrize(
    ("channels", "free", "wants", "expected"),
    [
        # Without tenants every channel is its own: equal shares, as the sender always did.
        (["a", "b", "c", "d"], 200, {}, {"a": 50, "b": 50, "c": 50, "d": 50}),
        # What one leaves goes to the channels after it.
        (["a", "b", "c", "d"], 200, {"a": 2}, {"a": 2, "b": 66, "c": 66, "d": 66}),
        # Rounded up: the first ones are never offered nothing.
        (["a", "b", "c"], 2, {}, {"a": 1, "b": 1}),
        # A client with 199 numbers and one with 1: half each, whatever the order given.
        ([*A199, "B:0"], 200, {}, {"A": 100, "B": 100}),
        (["B:0", *A199], 200, {}, {"A": 100, "B": 100}),
        # The small client takes 8 (its tokens): the big one gets the rest.
        ([*A199, "B:0"], 200, {"B:0": 8}, {"A": 192, "B": 8}),
        # Three clients and a channel without one: four equal parts.
        (
            ["A:1", "A:2", "A:3", "B:1", "B:2", "C:1", "solo"],
            120,
            {},
            {"A": 30, "B": 30, "C": 30, "solo": 30},
        ),
    ],
)
def test_portions_per_tenant(
    channels: list[str], free: int, wants: dict[str, int], expected: dict[str, int]
) -> None:
    assert _by_tenant(_round(channels, free, wants)) == expected


def test_smaller_tenants_go_first_and_a_tenant_keeps_its_channels_order() -> None:
    portions = Portions(["A:1", "A:2", "B:1", "A:3", "C:1", "C:2"], _tenant, 60)
    assert portions.order == ["B:1", "C:1", "C:2", "A:1", "A:2", "A:3"]


def test_a_tenant_with_a_channel_an_insert_named_goes_first_whatever_its_size() -> None:
    """More tenants than free slots: the big client's channel named by an insert still gets a
    slot (unnamed, it ranks last and the round runs out before it)."""
    solos = [f"s{n:02d}" for n in range(30)]
    channels = ["A:named", *[f"A:{n}" for n in range(50)], *solos]
    portions = Portions(channels, _tenant, 10, named={"A:named"})
    assert portions.order[0] == "A:named"
    assert portions.offer("A:named") >= 1
    assert Portions(channels, _tenant, 10).order[:30] == solos


def test_a_tenant_s_channels_split_its_portion_and_the_last_ones_may_get_none() -> None:
    taken = _round([*A199, "B:0"], 200, {})
    assert taken["B:0"] == 100
    assert sum(1 for c in A199 if taken.get(c)) == 100  # 100 slots: 100 of A's 199 numbers
    assert all(taken[c] == 1 for c in A199[:100])


def test_a_channel_listed_twice_is_offered_once() -> None:
    assert Portions(["a", "b", "a"], _tenant, 10).order == ["a", "b"]


@pytest.mark.parametrize(
    ("in_turn", "visited", "cursor", "expected"),
    [
        (["c", "d", "e"], {"c", "d", "e"}, "b", "e"),  # all visited: after the last
        (["c", "d", "e"], {"c", "e"}, "b", "c"),  # d was not reached: the next look starts at d
        (["c", "d", "e"], {"d", "e"}, "b", "b"),  # the first not reached: the cursor stays
        ([], set(), "b", "b"),  # a round of hot channels: the cursor stays
        (["x", "a"], {"x", "a"}, "w", "a"),  # wrapped around: the database's order counts
    ],
)
def test_cursor_after(in_turn: list[str], visited: set[str], cursor: str, expected: str) -> None:
    assert cursor_after(in_turn, visited, cursor) == expected
