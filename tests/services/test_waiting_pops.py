"""Pops that wait for a kernel, on real Redis and EG: first come first served across replicas,
woken by whichever replica pools the kernel (jkp.services.waiting_pops)."""

import asyncio
import json
import time

from tornado.httpclient import AsyncHTTPClient

from tests.conftest import wait_until


async def _pop(client, replica, user, served_at):
    response = await client.fetch(
        f"{replica.url}/api/kernels/pop/",
        method="POST",
        body=json.dumps({"userId": user}),
        request_timeout=60,
        raise_error=False,
    )
    served_at[user] = time.monotonic()
    return response.code, json.loads(response.body)


async def _waiting(replica):
    _, status = await replica.request("GET", "/api/pool")
    return status["waiting"]


def _pooled_by(replica):
    """Ids of the kernels this replica pooled, in order."""
    return [m.split()[1] for m in replica.logged("Kernel ") if m.endswith("is ready and pooled")]


async def test_an_earlier_waiter_gets_the_kernel_another_replica_pools_before_a_later_one(
    redis_server, gateway_factory, jkp_factory
):
    gateway = gateway_factory(start_delay=3)
    # Replica a refills only for its waiting pops; b at once after each of its pops.
    a = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.max_pending_kernels=1",
        "--PoolManager.refill_delay=60",
    )
    b = await jkp_factory(
        redis_server, gateway, "--PoolManager.max_pending_kernels=1", "--PoolManager.refill_delay=0"
    )
    await a.wait_for_idle(1, timeout=30)
    client = AsyncHTTPClient(force_instance=True)
    served_at = {}
    try:
        assert (await _pop(client, b, "first", served_at))[0] == 200
        pooled_before = len(_pooled_by(b))
        # b starts the replacement; a pop on a finds the pool empty and waits in line.
        await wait_until(lambda: _starting(b), 5, "replica b to start the replacement")
        early = asyncio.ensure_future(_pop(client, a, "early", served_at))
        await wait_until(lambda: _waiting_is(a, 1), 2, "the early pop in line")
        late = asyncio.ensure_future(_pop(client, b, "late", served_at))
        await wait_until(lambda: _waiting_is(a, 2), 2, "the late pop in line")

        (early_code, early_model), (late_code, late_model) = await asyncio.gather(early, late)

        assert (early_code, late_code) == (200, 200)
        # The kernel b pooled went to the pop that waited first, on the other replica.
        assert early_model["id"] == _pooled_by(b)[pooled_before]
        assert served_at["early"] < served_at["late"]
        assert late_model["id"] != early_model["id"]
        assert await _waiting(a) == 0
    finally:
        client.close()


async def _starting(replica):
    return (await replica.store.counts())["starting"] == 1


async def _waiting_is(replica, count):
    return await _waiting(replica) == count
