"""EG's kernel list on jkp (a drop-in gateway), and the pool's starts, while EG adds kernels.

Real Redis, real EG. EG 3.3 fails its ``GET /api/kernels`` with a 500 when it lists a kernel
it is still adding (a few of its event-loop turns per start, docs/gateway.md); JupyterLab
polls that list, and a pool starts kernels all day. With ``max_kernels`` set, EG lists its
kernels to check each create too.
"""

import asyncio
import json

from tornado.httpclient import AsyncHTTPClient

# Clients listing at once, and kernels started: the pool refills 4 at a time, 5 times. On
# the old code each run here met 11 to 28 of those 500s.
LISTERS = 8
POOL = 4
ROUNDS = 5


async def refill_while_listing(jkp):
    """Pop the pool empty ROUNDS times, waiting for its refill each time, while LISTERS
    clients list EG's kernels through jkp again and again; the lists that failed."""
    await jkp.wait_for_idle(POOL)
    # The listers' own client: jkp's requests to EG keep the shared one's connections.
    client = AsyncHTTPClient(force_instance=True, max_clients=LISTERS)
    failed, listed = [], 0
    popping = True

    async def list_kernels_again_and_again():
        nonlocal listed
        while popping:
            response = await client.fetch(jkp.url + "/api/kernels", raise_error=False)
            listed += 1
            if response.code != 200:
                failed.append((response.code, json.loads(response.body or b"null")))

    listers = [asyncio.create_task(list_kernels_again_and_again()) for _ in range(LISTERS)]
    try:
        for _ in range(ROUNDS):
            # Each pop makes the pool start a kernel in its place.
            for status, model in await asyncio.gather(*(jkp.pop("zt") for _ in range(POOL))):
                assert status == 200, model
            await jkp.wait_for_idle(POOL)
    finally:
        popping = False
        await asyncio.gather(*listers)
        client.close()
    assert listed > ROUNDS * LISTERS
    return failed


async def test_the_kernel_list_answers_while_the_pool_starts_kernels(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(redis_server, gateway, f"--PoolManager.max_pending_kernels={POOL}")
    assert await refill_while_listing(jkp) == []


async def test_an_eg_with_max_kernels_starts_the_pools_kernels_while_it_adds_others(
    redis_server, gateway_factory, jkp_factory
):
    gateway = gateway_factory(extra_args=["--EnterpriseGatewayApp.max_kernels=100"])
    jkp = await jkp_factory(redis_server, gateway, f"--PoolManager.max_pending_kernels={POOL}")
    assert await refill_while_listing(jkp) == []
    assert jkp.logged("Starting kernel") == []
