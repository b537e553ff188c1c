"""PoolManager against a real Redis and a real Enterprise Gateway: lifecycle of pooled kernels."""

import asyncio
import json
import uuid

import pytest

from tests.conftest import localstack, run_in_kernel, wait_until


@pytest.mark.parametrize("activation", ["on", "off"])
async def test_activation_keeps_pooled_kernels_alive_through_eg_culling(
    redis_server, gateway_factory, jkp_factory, activation
):
    gateway = gateway_factory(cull_idle_timeout=4, cull_interval=1)
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=2",
        f"--PoolManager.activation_interval={1 if activation == 'on' else 0}",
        # An open websocket alone keeps EG's culler off a kernel: keep none, so only the
        # activation pings can.
        "--GatewayClient.max_open_channels=0",
    )
    pooled = await jkp.wait_for_idle(2)
    if activation == "off":
        # The control: without pings, EG culls the pooled kernels too.
        await wait_until(
            lambda: not set(pooled) & set(gateway.list_kernel_ids()), 30, "EG to cull them"
        )
        return
    # A kernel nobody pings, started beside the pool: EG's culler must take it.
    status, unpinged = localstack.http_request(
        "POST",
        gateway.url + "/api/kernels",
        {"name": "python_kubernetes", "env": {"KERNEL_USERNAME": "jovyan"}},
    )
    assert status == 201
    await wait_until(
        lambda: unpinged["id"] not in gateway.list_kernel_ids(),
        30,
        "EG to cull the unpinged kernel",
    )
    await asyncio.sleep(3)  # well past the 4 s cull timeout for the pooled ones too
    assert sorted(gateway.list_kernel_ids()) == sorted(pooled)
    assert sorted(await jkp.idle_ids()) == sorted(pooled)


async def test_restart_reuses_the_pool(redis_server, gateway, jkp_factory):
    first = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    pooled = await first.wait_for_idle(2)
    await first.stop()
    second = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await asyncio.sleep(2)  # let its reconcile and fill run
    assert sorted(await second.wait_for_idle(2)) == sorted(pooled)
    assert sorted(gateway.list_kernel_ids()) == sorted(pooled)
    # It opened a websocket to each kernel it took over, so no pop has to set one up.
    await wait_until(lambda: _connections(gateway, pooled) == [1, 1], 10, "websockets opened")
    status, model = await second.pop("zt")
    assert status == 200 and model["id"] in pooled
    # The handed-out kernel keeps no websocket from jkp.
    await wait_until(lambda: _connections(gateway, [model["id"]]) == [0], 10, "websocket closed")


async def test_replicas_keep_websockets_to_idle_kernels_only(redis_server, gateway, jkp_factory):
    fast = (
        "--max-pending-kernels=2",
        "--PoolManager.check_task_interval=600",  # not the check: the websocket sync does it
        "--PoolManager.channel_sync_interval=0.5",
    )
    first = await jkp_factory(redis_server, gateway, *fast)
    pooled = await first.wait_for_idle(2)
    await jkp_factory(redis_server, gateway, *fast)  # a second replica
    # The second replica opens its own websockets to the kernels the first one pooled.
    await wait_until(lambda: _connections(gateway, pooled) == [2, 2], 15, "both replicas' sockets")
    status, model = await first.pop("zt")
    assert status == 200
    # Once handed out, no replica keeps one open: it would keep EG's culler off the kernel.
    await wait_until(lambda: _connections(gateway, [model["id"]]) == [0], 15, "sockets closed")
    # Its replacement, pooled by one replica, gets a websocket from the other too.
    refilled = await first.wait_for_idle(2)
    assert len(set(refilled) - set(pooled)) == 1
    await wait_until(lambda: _connections(gateway, refilled) == [2, 2], 15, "replacement's sockets")


def _connections(gateway, kernel_ids):
    """EG's count of open websockets to each kernel."""
    models = [
        localstack.http_request("GET", f"{gateway.url}/api/kernels/{k}")[1] for k in kernel_ids
    ]
    return [m["connections"] for m in models]


async def test_restart_with_smaller_target_shuts_surplus_down(redis_server, gateway, jkp_factory):
    first = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    pooled = await first.wait_for_idle(3)
    await first.stop()
    second = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [kept] = await second.wait_for_idle(1)
    assert kept in pooled
    await wait_until(lambda: gateway.list_kernel_ids() == [kept], 30, "surplus shut down on EG")
    assert await second.store.retiring_ids() == []


async def test_restart_drops_kernels_eg_no_longer_has(redis_server, gateway, jkp_factory):
    first = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    pooled = await first.wait_for_idle(2)
    await first.stop()
    localstack.http_request("DELETE", f"{gateway.url}/api/kernels/{pooled[0]}")
    second = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await wait_until(lambda: _idle_without(second, pooled[0], 2), 60, "dead kernel replaced")
    assert pooled[1] in await second.idle_ids()


async def test_kernel_killed_on_eg_is_dropped_and_replaced(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.check_task_interval=1"
    )
    pooled = await jkp.wait_for_idle(2)
    localstack.http_request("DELETE", f"{gateway.url}/api/kernels/{pooled[0]}")
    await wait_until(lambda: _idle_without(jkp, pooled[0], 2), 30, "dead kernel replaced")
    assert sorted(gateway.list_kernel_ids()) == sorted(await jkp.idle_ids())


async def test_pop_skips_a_kernel_that_died_in_the_pool(redis_server, gateway, jkp_factory):
    # No periodic check in this test's time span: only the pop can notice the dead kernel.
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    pooled = await jkp.wait_for_idle(2)
    next_out = json.loads((await jkp.store.idle_models())[-1])["id"]
    localstack.http_request("DELETE", f"{gateway.url}/api/kernels/{next_out}")
    status, model = await jkp.pop("zt")
    assert status == 200
    assert model["id"] != next_out and model["id"] in pooled
    assert next_out not in (await jkp.store.handed_out())


async def test_activation_replaces_a_kernel_that_died(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.activation_interval=1"
    )
    pooled = await jkp.wait_for_idle(2)
    localstack.http_request("DELETE", f"{gateway.url}/api/kernels/{pooled[1]}")
    await wait_until(lambda: _idle_without(jkp, pooled[1], 2), 30, "dead kernel replaced")


async def test_eg_down_at_pop_keeps_the_kernel_in_the_pool(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)
    # An EG outage is not the kernel's fault (a Kubernetes pod outlives EG): the pop fails
    # and the kernel it took goes back to the pool rather than away.
    gateway.kill()
    status, error = await jkp.pop("zt")
    assert status in (502, 503)
    assert error["reason"] == "Gateway error"
    assert await jkp.idle_ids() == [pooled]
    assert await jkp.store.handed_out() == {}


async def _idle_without(jkp, kernel_id, count):
    idle = await jkp.idle_ids()
    return kernel_id not in idle and len(idle) == count


async def test_stop_mid_start_leaves_no_kernel_unaccounted(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await wait_until(lambda: _starting(jkp, 2), 10, "two kernels starting")
    await jkp.stop()
    # Kernels EG had started are shut down; whatever reached the pool stays there; one whose
    # start request EG had not answered yet stays recorded under its lease.
    idle = await jkp.idle_ids()
    leased = await jkp.store.client.zrange(jkp.store.keys.starting, 0, -1)
    recorded = {*idle, *(k.decode() for k in leased)}
    await asyncio.sleep(1)
    assert set(gateway.list_kernel_ids()) <= recorded
    assert set(idle) <= set(gateway.list_kernel_ids())
    assert await jkp.store.retiring_ids() == []


async def test_stop_is_prompt_while_redis_is_down(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--PoolManager.check_task_interval=0.2"
    )
    await jkp.wait_for_idle(1)
    redis_server.kill()
    await asyncio.sleep(2)  # the loops are now failing against the dead Redis
    started = asyncio.get_running_loop().time()
    await jkp.stop()
    assert asyncio.get_running_loop().time() - started < 5
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("jkp-")] == []


async def _starting(jkp, count):
    return (await jkp.store.counts())["starting"] == count


async def test_kernel_dying_while_it_starts_is_given_up_early(
    redis_server, gateway_factory, jkp_factory
):
    # A kernel that exits at once: EG restarts it a few times, then drops it.
    gateway = gateway_factory(kernel_argv=["/bin/sh", "-c", "exit 1", "{connection_file}"])
    # With kernel_ready_timeout at 60 s, the start must be given up well before.
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--PoolManager.kernel_ready_timeout=60"
    )
    await wait_until(lambda: jkp.logged("Starting kernel"), 40, "the failed start to be noticed")
    assert "died while starting" in jkp.logged("Starting kernel")[0]
    assert (await jkp.store.counts())["idle"] == 0


async def test_claims_of_a_dead_replica_are_released_or_shut_down_by_what_the_kernel_says(
    redis_server, gateway, jkp_factory, shared_dir
):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.refill_delay=600"
    )
    pooled = await jkp.wait_for_idle(2)
    # A replica that claimed both kernels and died: its heartbeat is already out. One kernel it
    # had moved into a user's directory; the other's set-up had not begun.
    await jkp.store.beat("dead-replica", 0.001)
    untouched = await jkp.store.claim("u1", replica="dead-replica")
    set_up = await jkp.store.claim("u2", replica="dead-replica")
    user_dir = shared_dir / "u2"
    user_dir.mkdir()
    await run_in_kernel(gateway, set_up.kernel_id, f"import os; os.chdir({str(user_dir)!r})")
    # Within a heartbeat interval or two, not the claim lease.
    await wait_until(lambda: _no_orphans(jkp), 10, "the claims taken over")
    await wait_until(lambda: _idle_is(jkp, [untouched.kernel_id]), 10, "the untouched one back")
    await wait_until(
        lambda: set_up.kernel_id not in gateway.list_kernel_ids(), 30, "the set-up one shut down"
    )
    assert sorted(pooled) == sorted([untouched.kernel_id, set_up.kernel_id])
    assert await jkp.store.handed_out() == {}


async def _no_orphans(jkp):
    return await jkp.store.orphans() == ([], [])


async def _idle_is(jkp, kernel_ids):
    return await jkp.idle_ids() == kernel_ids


async def test_start_of_a_dead_replica_that_eg_never_got_frees_its_place(
    redis_server, gateway, jkp_factory, redis_client
):
    from jkp.services.store import PoolKeys, PoolStore

    # A replica reserved a place and died before its start request reached EG.
    ghost = str(uuid.uuid4())
    store = PoolStore(redis_client, PoolKeys("test:kernels:idle"))
    assert await store.reserve_start(ghost, 2, 420, "dead-replica")
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--GatewayClient.request_timeout=3"
    )
    # Not the 420 s lease: the place is free once a start request would have given up.
    idle = await jkp.wait_for_idle(2, timeout=20)
    assert ghost not in idle
    assert sorted(gateway.list_kernel_ids()) == sorted(idle)
    assert await jkp.store.orphans() == ([], [])


async def _dead_replica_start_eg_never_got(redis_client, target):
    """A place reserved by a replica that died before its start request reached EG."""
    from jkp.services.store import PoolKeys, PoolStore

    ghost = str(uuid.uuid4())
    store = PoolStore(redis_client, PoolKeys("test:kernels:idle"))
    assert await store.reserve_start(ghost, target, 420, "dead-replica")
    return ghost


def _on_eg(gateway, kernel_id):
    return gateway.request("GET", f"/api/kernels/{kernel_id}")[0] == 200


async def test_start_of_a_dead_replica_is_replaced_at_once_and_its_late_kernel_shut_down(
    redis_server, gateway, jkp_factory, redis_client
):
    ghost = await _dead_replica_start_eg_never_got(redis_client, 2)
    # GatewayClient.request_timeout stays at its 60 s: a start request may run that long.
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    idle = await jkp.wait_for_idle(2, timeout=15)
    assert ghost not in idle
    assert await jkp.store.late_ids() == [ghost]
    # The dead replica's request reaches EG after all, the pool full meanwhile.
    await jkp.pool.gateway.start_kernel(jkp.pool.kernel_name, jkp.pool.kernel_start_env(ghost))
    await wait_until(lambda: not _on_eg(gateway, ghost), 15, "the late kernel shut down")
    assert sorted(await jkp.idle_ids()) == sorted(idle)
    assert sorted(gateway.list_kernel_ids()) == sorted(idle)
    assert await jkp.store.late_ids() == []
    assert await jkp.store.retiring_ids() == []


async def test_late_kernel_of_a_dead_replica_is_pooled_when_the_pool_has_room_and_handed_once(
    redis_server, gateway, jkp_factory, redis_client
):
    ghost = await _dead_replica_start_eg_never_got(redis_client, 2)
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.refill_delay=600"
    )
    await jkp.wait_for_idle(2, timeout=15)
    status, first = await jkp.pop("u1")
    assert status == 200
    # A place is free (the refill waits): the late kernel takes it.
    await jkp.pool.gateway.start_kernel(jkp.pool.kernel_name, jkp.pool.kernel_start_env(ghost))
    await wait_until(lambda: _idle_has(jkp, ghost), 15, "the late kernel pooled")
    assert len(await jkp.idle_ids()) == 2 and await jkp.store.late_ids() == []
    handed = [first["id"]]
    for user in ("u2", "u3"):
        status, model = await jkp.pop(user)
        assert status == 200
        handed.append(model["id"])
    assert ghost in handed and len(set(handed)) == 3
    assert sorted(await jkp.store.handed_out()) == sorted(handed)
    assert sorted(gateway.list_kernel_ids()) == sorted(handed)


async def _idle_has(jkp, kernel_id):
    return kernel_id in await jkp.idle_ids()


async def test_eg_restart_replaces_the_kernels_it_lost_within_15s(
    redis_server, gateway, jkp_factory
):
    # Default intervals: the 120 s check must not be what notices a restarted EG.
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    lost = await jkp.wait_for_idle(2)
    gateway.restart()  # same port; its kernels died with it
    loop = asyncio.get_running_loop()
    restarted_at = loop.time()

    def on_eg(kernel_id):
        # Not EG's list: it fails (500) while one of its kernels is starting.
        return localstack.http_request("GET", f"{gateway.url}/api/kernels/{kernel_id}")[0] == 200

    async def pool_is_on_new_eg():
        idle = await jkp.idle_ids()
        return len(idle) == 2 and not set(idle) & set(lost) and all(map(on_eg, idle))

    await wait_until(pool_is_on_new_eg, 15, "the pool refilled on the restarted EG")
    assert loop.time() - restarted_at < 15
    status, model = await jkp.pop("zt")
    assert status == 200
    assert on_eg(model["id"])


async def test_eg_down_for_a_while_retires_no_idle_kernel(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.channel_sync_interval=0.5"
    )
    pooled = await jkp.wait_for_idle(2)
    # Connection refused says nothing about a kernel (a Kubernetes pod outlives EG): the syncs
    # that meet it keep the pool as it is.
    gateway.stop()
    await asyncio.sleep(3)  # six syncs against the stopped EG
    assert sorted(await jkp.idle_ids()) == sorted(pooled)
    assert await jkp.store.retiring_ids() == []
