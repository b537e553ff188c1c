"""The line of waiting pops in the claim script, on fakeredis: first come first served, and a
waiter that is gone holds nobody up (jkp.services.waiting_pops)."""

import asyncio

import fakeredis
import pytest

from jkp.services.store import PoolKeys, PoolStore


@pytest.fixture
def store():
    return PoolStore(fakeredis.FakeAsyncRedis(), PoolKeys("test:kernels:idle"))


async def _pool(store, kernel_id):
    assert await store.reserve_start(kernel_id, 100, 60)
    assert await store.finish_start(kernel_id, {"id": kernel_id})


async def test_a_kernel_pooled_while_pops_wait_goes_to_the_first_in_line(store):
    assert await store.claim("early", waiter="w-early", wait_seconds=10) is None
    assert await store.claim("late", waiter="w-late", wait_seconds=10) is None
    await _pool(store, "k1")

    assert await store.claim("late", waiter="w-late", wait_seconds=10) is None
    claim = await store.claim("early", waiter="w-early", wait_seconds=10)

    assert claim is not None and claim.kernel_id == "k1"
    assert await store.waiting() == 1
    await _pool(store, "k2")
    assert (await store.claim("late", waiter="w-late", wait_seconds=10)).kernel_id == "k2"
    assert await store.waiting() == 0


async def test_a_new_arrival_takes_only_the_kernels_no_waiter_is_owed(store):
    assert await store.claim("early", waiter="w-early", wait_seconds=10) is None
    await _pool(store, "k1")
    await _pool(store, "k2")

    # One idle kernel is the waiter's; the other is free for a newcomer.
    assert (await store.claim("new", waiter="w-new", wait_seconds=10)).kernel_id == "k1"
    assert await store.claim("newer", waiter="w-newer", wait_seconds=10) is None
    assert (await store.claim("early", waiter="w-early", wait_seconds=10)).kernel_id == "k2"


async def test_a_waiter_past_its_deadline_or_gone_holds_nobody_up(store):
    assert await store.claim("expired", waiter="w-expired", wait_seconds=0.2) is None
    assert await store.claim("left", waiter="w-left", wait_seconds=10) is None
    await store.leave_line("w-left")
    await _pool(store, "k1")
    assert await store.claim("new", waiter="w-new", wait_seconds=10) is None  # w-expired is owed

    await asyncio.sleep(0.3)  # w-expired's pop deadline passes

    assert (await store.claim("new", waiter="w-new", wait_seconds=10)).kernel_id == "k1"
    assert await store.waiting() == 0
