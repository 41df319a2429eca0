"""``LifoSlots`` on its own, in virtual time: newest waiter first, a waiter gives up at
exactly its deadline, a cancelled waiter takes no slot, ``close`` wakes every waiter."""

from __future__ import annotations

import trio
import trio.testing

from dtesn_trio.server.intake import LifoSlots


async def test_a_freed_slot_goes_to_the_newest_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = LifoSlots(1)
    got: list[tuple[str, float]] = []
    t0 = trio.current_time()
    assert await slots.acquire()

    async def waiter(name: str) -> None:
        assert await slots.acquire()
        got.append((name, trio.current_time()))
        await trio.sleep(1)
        slots.release()

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(waiter, name)
            await trio.testing.wait_all_tasks_blocked()
        assert slots.waiting == 3
        await trio.sleep(1)
        slots.release()
    assert got == [("c", t0 + 1), ("b", t0 + 2), ("a", t0 + 3)]
    assert slots.used == 0


async def test_a_waiter_gives_up_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    slots = LifoSlots(1)
    t0 = trio.current_time()
    assert await slots.acquire()
    assert not await slots.acquire(t0 + 2.5)
    assert trio.current_time() == t0 + 2.5
    assert slots.waiting == 0
    slots.release()
    assert slots.used == 0


async def test_a_cancelled_waiter_takes_no_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = LifoSlots(1)
    assert await slots.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.acquire)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # cancelled while waiting
    assert slots.waiting == 0
    slots.release()
    assert slots.used == 0
    assert await slots.acquire()
    assert slots.used == 1


async def test_close_wakes_every_waiter_without_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = LifoSlots(1)
    assert await slots.acquire()
    results: list[bool] = []

    async def waiter() -> None:
        results.append(await slots.acquire())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        slots.close()
    assert results == [False, False, False]
    assert not await slots.acquire()
    slots.release()
    assert slots.used == 0


async def test_a_more_urgent_waiter_goes_first_then_the_newest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = LifoSlots(1, levels=3)
    got: list[str] = []
    assert await slots.acquire()

    async def waiter(name: str, priority: int) -> None:
        assert await slots.acquire(priority=priority)
        got.append(name)
        await trio.sleep(1)
        slots.release()

    async with trio.open_nursery() as nursery:
        for name, priority in (("p2-old", 2), ("p0-old", 0), ("p2-new", 2), ("p0-new", 0)):
            nursery.start_soon(waiter, name, priority)
            await trio.testing.wait_all_tasks_blocked()
        assert slots.waiting == 4
        slots.release()
    assert got == ["p0-new", "p0-old", "p2-new", "p2-old"]
    assert slots.used == 0


async def test_try_acquire_takes_only_a_free_slot_and_none_after_close() -> None:
    slots = LifoSlots(2, newest_first=False)
    assert slots.try_acquire()
    assert slots.try_acquire()
    assert not slots.try_acquire()
    assert slots.used == 2
    slots.release()
    slots.close()
    assert not slots.try_acquire()
    assert slots.used == 1
