"""Faults of Redis and EG, against the real servers: clear errors, no hang, nothing lost."""

import asyncio
import json
import os
import signal
import time

import pytest

from tests.conftest import localstack, wait_until


async def timed_pop(jkp, user_id="zt"):
    started = time.monotonic()
    status, body = await jkp.pop(user_id)
    return status, body, time.monotonic() - started


async def test_redis_down_pop_answers_503_and_pool_resumes(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--PoolManager.check_task_interval=1"
    )
    await jkp.wait_for_idle(1)
    redis_server.kill()
    status, body, took = await timed_pop(jkp)
    assert status == 503 and body["reason"] == "Store unavailable"
    assert took < 2
    # Back without persistence: the pool is rebuilt by itself, within seconds.
    redis_server.start()
    await jkp.wait_for_idle(1, timeout=15)
    assert (await jkp.pop("zt"))[0] == 200


async def test_redis_hung_pop_answers_503_within_2s(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        status, body, took = await timed_pop(jkp)
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    assert status == 503 and body["reason"] == "Store unavailable"
    assert took < 2.5
    await wait_until(lambda: _ready(jkp), 10, "jkp ready again")
    # The claim may or may not have reached Redis; either way the kernel is accounted for.
    counts = await jkp.store.counts()
    assert counts["idle"] + counts["claimed"] >= 1 or pooled in await jkp.idle_ids()


async def test_redis_outage_is_logged_once_per_change(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--PoolManager.check_task_interval=0.2"
    )
    await jkp.wait_for_idle(1)
    redis_server.kill()
    await asyncio.sleep(4)  # many check rounds
    redis_server.start()
    await jkp.wait_for_idle(1, timeout=15)
    assert len(jkp.logged("redis is failing")) == 1
    assert len(jkp.logged("redis is back")) == 1


async def test_eg_hung_pop_fails_fast_and_puts_no_set_up_kernel_back(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    pooled = await jkp.wait_for_idle(2)
    taken = json.loads((await jkp.store.idle_models())[-1])["id"]  # the next pop's
    os.kill(gateway.pid, signal.SIGSTOP)  # hung, not gone: its kernels live on, like pods
    try:
        status, body, took = await timed_pop(jkp)
        assert status == 503 and body["reason"] == "Gateway error"
        assert took < 2.5  # bounded by kernel_request_timeout (2 s), not a hang
        # Its set-up was sent (EG relays it once it runs again): it never goes back.
        assert await jkp.idle_ids() == [k for k in pooled if k != taken]
    finally:
        os.kill(gateway.pid, signal.SIGCONT)
    await wait_until(lambda: jkp.logged(f"Kernel {taken} removed"), 30, "its shutdown")
    # EG answers again: the other pooled kernel is served.
    status, model = await jkp.pop("zt")
    assert status == 200 and model["id"] in pooled and model["id"] != taken
    # Operators see what the failed pop met.
    status, pool = await jkp.request("GET", "/api/pool")
    assert [e["dependency"] for e in pool["last_errors"]] == ["gateway"]
    assert "kernel" in pool["last_errors"][0]["message"]


async def test_eg_refusing_starts_backs_off(redis_server, gateway, jkp_factory):
    # EG refuses kernels for root with 403, as it would when out of resources or misconfigured.
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.kernel_user_name=root"
    )
    await asyncio.sleep(6)
    failures = jkp.logged("Starting kernel")
    # Backoff 1 s, 2 s, 4 s: at most 4 attempts in 6 s instead of a tight loop.
    assert 2 <= len(failures) <= 4
    assert "403" in failures[0]
    assert gateway.list_kernel_ids() == []
    assert await jkp.store.counts() == {"idle": 0, "starting": 0, "claimed": 0, "handed": 0}
    status, body = await jkp.request("GET", "/api/pool")
    assert status == 200 and body["idle"] == 0


async def test_start_up_with_redis_and_eg_down_fills_when_they_come_up(
    redis_server, gateway, jkp_factory
):
    redis_server.stop()
    gateway.stop()
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    status, body = await jkp.request("GET", "/api/ready")
    assert status == 503 and "redis" in body["message"] and "gateway" in body["message"]
    assert (await jkp.pop("zt"))[0] == 503
    redis_server.start()
    gateway.start()
    await jkp.wait_for_idle(2, timeout=30)
    assert (await jkp.request("GET", "/api/ready"))[0] == 200


async def test_redis_restart_without_persistence_never_hands_a_kernel_out_twice(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.check_task_interval=1"
    )
    await jkp.wait_for_idle(2)
    status, first = await jkp.pop("zt")
    assert status == 200
    redis_server.kill()
    redis_server.start()  # empty: the pool's records are gone

    # Rebuilt from EG: the kernel handed out is recorded as the user's again, never idle. (The
    # pool may be refilled with new kernels before the rebuild's turn: wait for the record.)
    async def recorded():
        return first["id"] in await jkp.store.handed_out()

    await wait_until(recorded, 30, "the handed-out kernel recorded again")
    assert (await jkp.store.handed_out())[first["id"]]["user_id"] == "zt"
    rebuilt = await jkp.wait_for_idle(2, timeout=30)
    assert first["id"] not in rebuilt
    handed = set()
    for user in ("u1", "u2", "u3"):
        status, model = await jkp.pop(user)
        assert status == 200
        handed.add(model["id"])
    assert len(handed) == 3 and first["id"] not in handed


async def test_redis_restart_with_aof_keeps_the_accounting(redis_factory, gateway, jkp_factory):
    redis_server = redis_factory(appendonly=True)
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await jkp.wait_for_idle(2)
    status, first = await jkp.pop("zt")
    assert status == 200
    idle = await jkp.wait_for_idle(2)
    redis_server.restart()
    await wait_until(lambda: _ready(jkp), 10, "jkp ready again")
    assert sorted(await jkp.idle_ids()) == sorted(idle)
    assert (await jkp.store.handed_out())[first["id"]]["user_id"] == "zt"
    assert sorted(gateway.list_kernel_ids()) == sorted([*idle, first["id"]])


async def _ready(jkp):
    return (await jkp.request("GET", "/api/ready"))[0] == 200


class _FailingGateway:
    """A stand-in for an EG that answers every request with 500, as EG does on internal errors.

    Fault injection only: the kernels stay on the real EG, and the pool is in the real Redis.
    """

    def __init__(self, status):
        from tornado import web

        class Failing(web.RequestHandler):
            def prepare(self):
                self.set_status(status)
                self.finish({"message": "injected failure", "reason": "Injected"})

        self.app = web.Application([(r".*", Failing)])
        self.port = localstack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = self.app.listen(self.port, "127.0.0.1")
        self.auth_token = ""

    def stop(self):
        self.server.stop()


@pytest.mark.parametrize("eg_status, jkp_status", [(500, 502), (503, 502), (403, 502)])
async def test_eg_erroring_pop_answers_502_and_the_pool_is_kept(
    redis_server, gateway, jkp_factory, eg_status, jkp_status
):
    filler = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    pooled = await filler.wait_for_idle(2)
    await filler.stop()
    failing = _FailingGateway(eg_status)
    try:
        jkp = await jkp_factory(
            redis_server,
            failing,
            "--max-pending-kernels=2",
            "--PoolManager.check_task_interval=0.2",
        )
        await asyncio.sleep(1)  # reconciles against the failing EG: nothing may be dropped
        status, body, took = await timed_pop(jkp)
        assert status == jkp_status and body["reason"] == "Gateway error"
        assert str(eg_status) in body["message"]
        assert took < 2
        assert sorted(await jkp.idle_ids()) == sorted(pooled)
        await jkp.stop()
    finally:
        failing.stop()
    # EG healthy again: the same kernels are served.
    healthy = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    status, model = await healthy.pop("zt")
    assert status == 200 and model["id"] in pooled


async def test_replica_cut_off_from_redis_past_its_heartbeat_registers_again(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=1",
        "--PoolManager.replica_heartbeat_interval=0.3",
        "--PoolManager.check_task_interval=0.5",
    )
    await jkp.wait_for_idle(1)
    assert jkp.pool.registered and (await jkp.request("GET", "/api/ready"))[0] == 200
    redis_server.kill()
    # Past the heartbeat's 0.9 s another replica could have taken its work over: it stops.
    await wait_until(lambda: not jkp.pool.registered, 5, "the replica to stop counting itself in")
    redis_server.start()
    await wait_until(lambda: jkp.logged("Replica "), 10, "registered again")
    assert jkp.pool.registered
    await jkp.wait_for_idle(1, timeout=15)
    assert (await jkp.pop("zt"))[0] == 200
