"""The kernel is the last word: a pooled kernel keeps what it was handed out as, refuses a
second set-up, and answers a query; jkp believes it over Redis. Real Redis, EG, kernels."""

import json
import time
import uuid

import pytest

from jkp.services.pool.kernel_word import ask_kernel
from tests.conftest import run_in_kernel


async def test_a_hand_over_redis_lost_is_not_handed_out_again_nor_shut_down(
    redis_server, gateway, jkp_factory, redis_client, shared_dir
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await jkp.wait_for_idle(2)
    pooled = {json.loads(m)["id"]: m for m in await jkp.store.idle_models()}
    status, first = await jkp.pop("first")
    assert status == 200
    await jkp.wait_for_idle(2)
    # A failover lost the hand-over: the kernel's record is back at the pop end of the pool.
    keys = jkp.store.keys
    await redis_client.hdel(keys.handed, first["id"])
    await redis_client.rpush(keys.idle, pooled[first["id"]])

    status, second = await jkp.pop("second")

    assert status == 200, second
    assert second["id"] != first["id"]
    # The first user's kernel still runs, where its set-up put it, and is recorded as theirs.
    assert first["id"] in gateway.list_kernel_ids()
    cwd = await run_in_kernel(gateway, first["id"], "import os; print(os.getcwd())")
    assert cwd.strip() == str(shared_dir / "first")
    handed = await jkp.store.handed_out()
    assert handed[first["id"]]["user_id"] == "first"
    assert handed[second["id"]]["user_id"] == "second"
    assert first["id"] not in await jkp.idle_ids()
    assert jkp.logged(f"Kernel {first['id']} says it was handed to user first already")


async def test_a_kernel_tells_whether_it_is_idle_or_whose_it_is(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    await jkp.wait_for_idle(1)
    status, popped = await jkp.pop("zt")
    assert status == 200
    [idle] = await jkp.wait_for_idle(1)
    status, other = gateway.request("POST", "/api/kernels", {"env": {"KERNEL_USERNAME": "bob"}})
    assert status == 201
    gw = jkp.pool.gateway

    word = await ask_kernel(gw, idle, 5)
    assert word.status == "idle" and word.handed is None
    assert word.spec == jkp.pool.spec_fingerprint and word.pooled_at > 0
    word = await ask_kernel(gw, popped["id"], 5)
    assert word.status == "handed" and word.spec == jkp.pool.spec_fingerprint
    assert word.handed_record()["user_id"] == "zt" and word.binding(popped["id"]) is None
    # Asking changed nothing: the idle kernel is still set up by the next pop.
    status, next_pop = await jkp.pop("zt2")
    assert status == 200 and next_pop["id"] == idle
    # A kernel jkp did not pool has no set-up comm: it says nothing, and is left running.
    assert await ask_kernel(gw, other["id"], 5) is None
    assert other["id"] in gateway.list_kernel_ids()


async def test_a_warm_create_redis_lost_is_bound_again_from_its_kernels_word(
    redis_server, gateway, jkp_factory, redis_client, shared_dir
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await jkp.wait_for_idle(2)
    pooled = {json.loads(m)["id"]: m for m in await jkp.store.idle_models()}
    client_id = str(uuid.uuid4())
    env = {"KERNEL_USERNAME": "alice", "KERNEL_ID": client_id, "KERNEL_FOO": "bar"}
    env["KERNEL_WORKING_DIR"] = str(shared_dir / "alice")
    status, model = await jkp.request("POST", "/api/kernels", json.dumps({"env": env}))
    assert status == 201, model
    [bound] = set(pooled) - set(await jkp.idle_ids())
    await jkp.wait_for_idle(2)
    # The hand-over and its binding were lost; the kernel is back at the pop end of the pool.
    keys = jkp.store.keys
    await redis_client.hdel(keys.handed, bound)
    await redis_client.hdel(keys.aliases, client_id)
    await redis_client.rpush(keys.idle, pooled[bound])
    assert (await jkp.request("GET", f"/api/kernels/{client_id}"))[0] == 404

    status, popped = await jkp.pop("second")

    assert status == 200 and popped["id"] != bound
    status, model = await jkp.request("GET", f"/api/kernels/{client_id}")
    assert status == 200 and model["id"] == client_id
    out = await run_in_kernel(
        jkp, client_id, "import os; print(os.getcwd(), os.environ['KERNEL_FOO'])"
    )
    assert out.split() == [str(shared_dir / "alice"), "bar"]
    assert (await jkp.store.handed_out())[bound] == {
        "user_id": "alice",
        "handed_at": pytest.approx(time.time(), abs=60),
        "alias": client_id,
    }
