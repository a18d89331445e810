"""The tree's cap on sandboxes held at once: it holds, and a tree waiting on it cannot deadlock."""

from __future__ import annotations

import asyncio
import random

import pytest

from rlmbox.tree import SandboxSlots


async def node(slots: SandboxSlots, depth: int, rng: random.Random, live: list[int]) -> int:
    """A node holds its sandbox while its children (started together) run; returns the nodes run."""
    async with slots.hold(depth):
        live[0] += 1
        assert live[0] <= slots.limit
        await asyncio.sleep(rng.random() / 1000)
        children = rng.randint(0, 3) if depth < slots.max_depth else 0
        counts = await asyncio.gather(*(node(slots, depth + 1, rng, live) for _ in range(children)))
        live[0] -= 1
    return 1 + sum(counts)


@pytest.mark.parametrize("seed", range(40))
def test_random_trees_finish_under_the_tightest_cap(seed):
    rng = random.Random(seed)
    max_depth = rng.randint(1, 4)
    slots = SandboxSlots(limit=rng.randint(max_depth, max_depth + 2), max_depth=max_depth)

    async def main() -> int:
        return await asyncio.wait_for(node(slots, 1, rng, [0]), timeout=20)

    assert asyncio.run(main()) >= 1
    assert slots.in_use == 0 and slots.peak <= slots.limit


def test_a_level_keeps_room_for_the_levels_below_it():
    async def main() -> None:
        slots = SandboxSlots(limit=3, max_depth=3)
        async with slots.hold(1), slots.hold(2):
            second_child = asyncio.ensure_future(slots._acquire(2))  # another depth-2 node must wait...
            await asyncio.sleep(0)
            assert not second_child.done()
            async with slots.hold(3):  # ...while a depth-3 node of the first child gets the last slot
                assert slots.in_use == 3
            second_child.cancel()
        assert slots.in_use == 0

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_no_slot_taken():
    async def main() -> None:
        slots = SandboxSlots(limit=1, max_depth=1)
        async with slots.hold(1):
            waiter = asyncio.ensure_future(slots._acquire(1))
            await asyncio.sleep(0)
        waiter.cancel()  # granted on release, cancelled before it ran: the slot is passed on
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.in_use == 0
        async with slots.hold(1):
            assert slots.in_use == 1

    asyncio.run(main())


def test_fewer_slots_than_levels_is_refused():
    with pytest.raises(ValueError, match="cannot hold a tree 3 levels deep"):
        SandboxSlots(limit=2, max_depth=3)
