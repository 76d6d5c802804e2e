"""The request gate: at most `size` holders; waiters in by priority, then in the order they came;
a waiter cancelled before or after its turn never takes or loses a slot."""

from __future__ import annotations

import asyncio

from outbox.services.gate import RequestGate


async def _holder(gate: RequestGate, name: str, priority: int, log: list[str]) -> None:
    async with gate.slot(priority):
        log.append(name)
        await asyncio.Event().wait()  # held until cancelled


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_size_hold_a_slot_and_the_rest_go_in_by_priority_then_arrival() -> None:
    gate, entered = RequestGate(2), list[str]()
    tasks = {
        name: asyncio.create_task(_holder(gate, name, priority, entered))
        for name, priority in [("a", 0), ("b", 0), ("c", 0), ("d", 5), ("e", 0), ("f", 5)]
    }
    await _settle()
    assert entered == ["a", "b"]
    assert (gate.in_use, gate.waiting) == (2, 4)
    for done, expected in [("a", "d"), ("b", "f"), ("d", "c"), ("f", "e")]:
        tasks[done].cancel()
        await _settle()
        assert entered[-1] == expected
    assert entered == ["a", "b", "d", "f", "c", "e"]
    assert (gate.in_use, gate.waiting) == (2, 0)
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_a_waiter_cancelled_before_its_turn_takes_no_slot() -> None:
    gate, entered = RequestGate(1), list[str]()
    first = asyncio.create_task(_holder(gate, "first", 0, entered))
    gone = asyncio.create_task(_holder(gate, "gone", 9, entered))
    last = asyncio.create_task(_holder(gate, "last", 0, entered))
    await _settle()
    gone.cancel()
    await _settle()
    assert gate.waiting == 1  # `last`; `gone` left
    first.cancel()
    await _settle()
    assert entered == ["first", "last"]
    last.cancel()
    await _settle()
    # Every slot came back: two new holders at size 1 means one enters, one waits.
    again: list[str] = []
    tasks = [asyncio.create_task(_holder(gate, n, 0, again)) for n in ("x", "y")]
    await _settle()
    assert again == ["x"]
    for task in [first, gone, last, *tasks]:
        task.cancel()
    await asyncio.gather(first, gone, last, *tasks, return_exceptions=True)


async def test_a_waiter_cancelled_as_its_turn_came_passes_the_slot_on() -> None:
    gate = RequestGate(1)
    await gate.enter(0)
    turn = asyncio.create_task(gate.enter(0))
    behind = asyncio.create_task(gate.enter(0))
    await _settle()
    gate.leave()  # the slot passes to `turn`, which is cancelled before it runs again
    turn.cancel()
    await _settle()
    assert turn.cancelled()
    assert behind.done()  # the slot went on to the next in line
    gate.leave()
    await gate.enter(0)  # and the gate is whole: one slot, free again, then none
    next_one = asyncio.create_task(gate.enter(0))
    await _settle()
    assert not next_one.done()
    gate.leave()
    await next_one


async def test_a_new_flow_goes_before_earlier_rows_of_its_priority_not_before_higher_ones() -> None:
    gate, entered = RequestGate(1), list[str]()
    holder = asyncio.create_task(_holder(gate, "holder", 0, entered))
    await _settle()
    waiters = [
        asyncio.create_task(_flow(gate, name, priority, new_flow, entered))
        for name, priority, new_flow in [("busy", 0, False), ("new", 0, True), ("urgent", 5, False)]
    ]
    await _settle()
    holder.cancel()
    for _ in waiters:
        await _settle()
    assert entered == ["holder", "urgent", "new", "busy"]
    await asyncio.gather(holder, *waiters, return_exceptions=True)


async def _flow(
    gate: RequestGate, name: str, priority: int, new_flow: bool, log: list[str]
) -> None:
    async with gate.slot(priority, new_flow=new_flow):
        log.append(name)
