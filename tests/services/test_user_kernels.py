"""max_kernels_per_user, enforced by jkp across replicas: real Redis, real EG, real kernels."""

import asyncio
import json

from tests.conftest import wait_until


def eg_text(limit, user, count):
    """EG's own 403 text for its max_kernels_per_user."""
    kernels = "kernel" if count == 1 else "kernels"
    return (
        f"A max kernels per user limit has been set to {limit} and user '{user}' currently "
        f"has {count} active and pending {kernels}."
    )


async def create(jkp, user, **env):
    body = {"env": {"KERNEL_USERNAME": user, **env}}
    return await jkp.request("POST", "/api/kernels", json.dumps(body))


async def test_a_user_at_the_limit_is_refused_pops_and_creates_on_every_replica(
    redis_server, gateway, jkp_factory
):
    options = ["--max-pending-kernels=3", "--KernelService.max_kernels_per_user=2"]
    a = await jkp_factory(redis_server, gateway, *options)
    b = await jkp_factory(redis_server, gateway, *options)
    pooled = await a.wait_for_idle(3)
    status, popped = await a.pop("ann")
    assert status == 200
    status, created = await create(b, "ann")
    assert status == 201 and created["id"] in pooled  # served warm
    await a.wait_for_idle(3)

    refused = {"message": eg_text(2, "ann", 2), "reason": "Forbidden"}
    assert await b.pop("ann") == (403, refused)
    assert await a.pop("ann") == (403, refused)
    assert await create(a, "ann") == (403, refused)
    # KERNEL_CPUS is not what the pool's kernels were started with: EG would start it cold.
    assert await create(b, "ann", KERNEL_CPUS="2") == (403, refused)
    assert len(await a.idle_ids()) == 3  # the refusals took no kernel
    assert (await b.pop("bob"))[0] == 200  # the limit is per user

    # Deleting one of ann's kernels through jkp frees a slot, on any replica.
    assert (await b.request("DELETE", f"/api/kernels/{created['id']}"))[0] == 204
    status, again = await b.pop("ann")
    assert status == 200 and again["id"] != popped["id"]
    assert (await a.pop("ann"))[0] == 403


async def test_pops_at_once_on_two_replicas_never_let_a_user_past_the_limit(
    redis_server, gateway, jkp_factory
):
    options = ["--max-pending-kernels=4", "--KernelService.max_kernels_per_user=1"]
    a = await jkp_factory(redis_server, gateway, *options)
    b = await jkp_factory(redis_server, gateway, *options)
    await a.wait_for_idle(4)
    answers = await asyncio.gather(*(replica.pop("ann") for replica in (a, b, a, b)))
    assert sorted(status for status, _ in answers) == [200, 403, 403, 403]
    assert len(await a.store.handed_out()) == 1


async def test_cold_kernels_count_until_deleted_through_jkp_or_gone_from_eg(
    redis_server, gateway, jkp_factory
):
    options = [
        "--max-pending-kernels=0",
        "--KernelService.max_kernels_per_user=1",
        "--PoolManager.check_task_interval=0.5",
    ]
    a = await jkp_factory(redis_server, gateway, *options)
    b = await jkp_factory(redis_server, gateway, *options)
    status, cold = await create(a, "ann", KERNEL_CPUS="2")
    assert status == 201 and cold["id"] in gateway.list_kernel_ids()
    refused = (403, {"message": eg_text(1, "ann", 1), "reason": "Forbidden"})
    assert await create(b, "ann", KERNEL_CPUS="2") == refused
    assert await b.pop("ann") == refused  # warm and cold kernels count together

    assert (await b.request("DELETE", f"/api/kernels/{cold['id']}"))[0] == 204
    status, cold = await create(b, "ann", KERNEL_CPUS="2")
    assert status == 201

    # Gone from EG without jkp seeing it (a DELETE straight to EG, as EG's culler does):
    # the check of handed-out kernels frees the slot.
    deleted = await asyncio.to_thread(gateway.request, "DELETE", f"/api/kernels/{cold['id']}")
    assert deleted[0] == 204
    await wait_until(
        lambda: _created(create(a, "ann", KERNEL_CPUS="2")), 15, "ann's slot to come free"
    )


async def _created(answer):
    return (await answer)[0] == 201
