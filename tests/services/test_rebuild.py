"""Rebuild from EG: when Redis loses jkp's records, a replica rebuilds them from EG and from
what each kernel says of itself. Real Redis, EG and kernels, default intervals."""

import json
import uuid

from tests.conftest import run_in_kernel, wait_until


async def _records(jkp, redis_client):
    """Every kernel id some key of the pool names."""
    keys = jkp.store.keys
    ids = set(await jkp.idle_ids())
    for key in (keys.starting, keys.late):
        ids |= set(await redis_client.zrange(key, 0, -1))
    for key in (keys.claimed, keys.handed, keys.retiring):
        ids |= set(await redis_client.hkeys(key))
    return ids


async def test_after_flushall_the_records_are_rebuilt_from_eg_and_the_kernels(
    redis_server, gateway, jkp_factory, redis_client, shared_dir
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    await jkp.wait_for_idle(3)
    status, popped = await jkp.pop("first")
    assert status == 200
    client_id = str(uuid.uuid4())
    env = {"KERNEL_USERNAME": "alice", "KERNEL_ID": client_id, "KERNEL_FOO": "bar"}
    status, created = await jkp.request("POST", "/api/kernels", json.dumps({"env": env}))
    assert status == 201, created
    bound = (await jkp.store.handed_out()).keys() - {popped["id"]}
    [bound] = bound
    idle = set(await jkp.wait_for_idle(3))
    handed_out = {popped["id"], bound}

    await redis_client.flushall()  # a Redis restarted without persistence

    async def rebuilt():
        counts = await jkp.store.counts()
        handed = await jkp.store.handed_out()
        return counts["idle"] == 3 and counts["starting"] == 0 and handed_out <= set(handed)

    await wait_until(rebuilt, 15, "the pool whole and the hand-outs recorded again")
    # The idle kernels are those that were idle: live, and none of them handed out.
    assert set(await jkp.idle_ids()) == idle
    handed = await jkp.store.handed_out()
    assert handed[popped["id"]]["user_id"] == "first"
    assert handed[bound]["user_id"] == "alice" and handed[bound]["alias"] == client_id
    # The warm create's gateway id answers through jkp again, and its kernel is the one bound.
    status, model = await jkp.request("GET", f"/api/kernels/{client_id}")
    assert status == 200 and model["id"] == client_id
    out = await run_in_kernel(jkp, client_id, "import os; print(os.environ['KERNEL_FOO'])")
    assert out.strip() == "bar"
    # No handed-out kernel was shut down; every kernel on EG is in one of jkp's records.
    on_eg = set(gateway.list_kernel_ids())
    assert handed_out <= on_eg
    assert on_eg <= await _records(jkp, redis_client)
    assert on_eg == idle | handed_out


async def test_a_rebuild_leaves_kernels_jkp_did_not_start_alone(
    redis_server, gateway, jkp_factory, redis_client
):
    status, other = gateway.request(
        "POST", "/api/kernels", {"name": "python_kubernetes", "env": {"KERNEL_USERNAME": "bob"}}
    )
    assert status == 201
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    await jkp.wait_for_idle(1)
    marked = lambda: redis_client.exists(jkp.store.keys.records)  # noqa: E731
    await wait_until(marked, 15, "the records marked whole")
    await redis_client.flushall()
    await wait_until(marked, 15, "the records rebuilt")
    await jkp.wait_for_idle(1)
    assert other["id"] in gateway.list_kernel_ids()
    assert other["id"] not in await _records(jkp, redis_client)


async def test_one_replica_rebuilds_while_another_serves_a_pop(
    redis_server, gateway, jkp_factory, redis_client
):
    one = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    two = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    await one.wait_for_idle(3)
    status, popped = await one.pop("first")
    assert status == 200
    await one.wait_for_idle(3)

    await redis_client.flushall()
    status, second = await two.pop("second")  # waits on the empty pool, if it must

    assert status == 200, second

    async def first_recorded():
        return popped["id"] in await one.store.handed_out()

    await wait_until(first_recorded, 15, "the first hand-out recorded again")
    await one.wait_for_idle(3)
    rebuilt = [j for j in (one, two) if j.logged("Records of pool python_kubernetes rebuilt")]
    assert len(rebuilt) == 1
    idle = await one.idle_ids()
    assert len(set(idle)) == len(idle) == 3
    handed = await one.store.handed_out()
    assert handed[popped["id"]]["user_id"] == "first"
    assert handed[second["id"]]["user_id"] == "second"
    assert not set(idle) & set(handed)

    async def all_accounted():
        handed = set(await one.store.handed_out())
        return set(gateway.list_kernel_ids()) == set(await one.idle_ids()) | handed

    # A start either replica began meanwhile is surplus: retired, and gone from EG.
    await wait_until(all_accounted, 30, "every kernel on EG idle or handed out")
