"""The pacer: deferrable work held back while the event loop runs late, let on as it keeps up."""

from __future__ import annotations

import asyncio
import time

import pytest

from worker.relay.pacing import Pacer


async def _hold(pacer: Pacer, entered: list[int], n: int, release: asyncio.Event) -> None:
    async with pacer.slot():
        entered.append(n)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_loop_that_keeps_up_holds_nothing_back_up_to_the_ceiling() -> None:
    pacer = Pacer(ceiling=3, lag_limit_s=0.01)
    entered: list[int] = []
    release = asyncio.Event()
    tasks = [asyncio.create_task(_hold(pacer, entered, n, release)) for n in range(5)]
    await _settle()
    assert entered == [0, 1, 2]
    release.set()
    await asyncio.gather(*tasks)
    assert entered == [0, 1, 2, 3, 4]


async def test_lag_halves_the_limit_to_its_floor_and_keeping_up_raises_it() -> None:
    pacer = Pacer(ceiling=32, lag_limit_s=0.01, floor=4)
    for expected in (16, 8, 4, 4):
        await pacer.observe_lag(0.2)
        assert pacer.limit == expected
    await pacer.observe_lag(0.001)
    assert pacer.limit == 5
    for _ in range(100):
        await pacer.observe_lag(0.0)
    assert pacer.limit == 32


async def test_work_waiting_under_a_lowered_limit_goes_on_as_the_limit_rises() -> None:
    pacer = Pacer(ceiling=8, lag_limit_s=0.01, floor=2)
    await pacer.observe_lag(1.0)
    await pacer.observe_lag(1.0)
    assert pacer.limit == 2
    entered: list[int] = []
    release = asyncio.Event()
    tasks = [asyncio.create_task(_hold(pacer, entered, n, release)) for n in range(4)]
    await _settle()
    assert entered == [0, 1]
    await pacer.observe_lag(0.0)  # keeping up: one more may start
    await _settle()
    assert entered == [0, 1, 2]
    release.set()
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    pacer = Pacer(ceiling=1, lag_limit_s=0.01, floor=1)
    entered: list[int] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(pacer, entered, 0, release))
    waiter = asyncio.create_task(_hold(pacer, entered, 1, release))
    await _settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    await asyncio.wait_for(_hold(pacer, entered, 2, release), timeout=1)
    assert entered == [0, 2]


async def test_the_watch_sees_a_blocked_loop_as_lag() -> None:
    pacer = Pacer(ceiling=16, lag_limit_s=0.01, floor=4, interval_s=0.005)
    watch = asyncio.create_task(pacer.watch_forever())
    await asyncio.sleep(0.02)
    # A CPU-bound stretch: nothing else runs, so the watch wakes late.
    time.sleep(0.1)  # noqa: ASYNC251 - blocking the loop is the point
    await asyncio.sleep(0.02)
    watch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watch
    assert pacer.limit < 16
