"""Graceful shutdown of a jkp process on SIGTERM/SIGINT, against real Redis and EG."""

import asyncio
import json
import os
import signal
import time

import pytest

from tests.conftest import kernel_pid, wait_until
from tests.test_chaos import KEY, _count


async def _exit_code(proc, timeout):
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "jkp did not exit in time"
        await asyncio.sleep(0.05)
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_exits_0_and_leaves_the_pool_in_redis(
    redis_server, redis_client, gateway, jkp_process_factory, sig
):
    jkp = jkp_process_factory(redis_server, gateway, "--max-pending-kernels=2")
    await wait_until(lambda: _count(redis_client.llen(KEY), 2), 30, "the pool to fill")
    pooled = [json.loads(m)["id"] for m in await redis_client.lrange(KEY, 0, -1)]
    started = time.monotonic()
    jkp.proc.send_signal(sig)
    assert await _exit_code(jkp.proc, 10) == 0
    assert time.monotonic() - started < 10
    assert [json.loads(m)["id"] for m in await redis_client.lrange(KEY, 0, -1)] == pooled
    assert sorted(gateway.list_kernel_ids()) == sorted(pooled)


async def test_pop_in_flight_finishes_before_exit(
    redis_server, redis_client, gateway, jkp_process_factory, shared_dir
):
    # A set-up may wait 5 s here, so the held kernel is not judged hung before it resumes.
    jkp = jkp_process_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--PoolManager.kernel_request_timeout=5"
    )
    await wait_until(lambda: _count(redis_client.llen(KEY), 1), 30, "the pool to fill")
    [model_json] = await redis_client.lrange(KEY, 0, -1)
    held = kernel_pid(json.loads(model_json)["id"])
    os.kill(held, signal.SIGSTOP)  # hold the pop in its set-up
    pop = asyncio.ensure_future(jkp.pop("zt"))
    await wait_until(lambda: _count(redis_client.hlen(f"{KEY}:claimed"), 1), 10, "the claim")
    jkp.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(1)
    assert jkp.proc.poll() is None  # still finishing the pop
    os.kill(held, signal.SIGCONT)
    status, model = await pop
    assert status == 200
    assert await _exit_code(jkp.proc, 10) == 0
    assert (shared_dir / "zt").is_dir()
    assert json.loads(await redis_client.hget(f"{KEY}:handed", model["id"]))["user_id"] == "zt"


async def test_kernels_being_started_at_sigterm_are_recorded_or_shut_down(
    redis_server, redis_client, gateway, jkp_process_factory
):
    leases = ("--GatewayClient.request_timeout=2", "--PoolManager.kernel_ready_timeout=5")
    jkp = jkp_process_factory(redis_server, gateway, "--max-pending-kernels=3", *leases)
    await wait_until(lambda: _count(redis_client.zcard(f"{KEY}:starting"), 3), 30, "starts")
    jkp.proc.send_signal(signal.SIGTERM)
    assert await _exit_code(jkp.proc, 10) == 0
    # Every kernel on EG is pooled, or still recorded under its start lease when jkp stopped
    # while EG had not yet answered its start request.
    recorded = set(await _idle(redis_client)) | set(
        await redis_client.zrange(f"{KEY}:starting", 0, -1)
    )
    await asyncio.sleep(1)  # let start requests EG was still working on complete
    assert set(gateway.list_kernel_ids()) <= recorded
    # Once those leases expire, another replica removes what was not pooled.
    jkp_process_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=3",
        *leases,
        "--PoolManager.check_task_interval=1",
    )
    await wait_until(lambda: _settled(redis_client, 3), 40, "leases reconciled")
    await wait_until(
        lambda: _eg_runs_idle(gateway, redis_client), 20, "EG to run only pooled kernels"
    )


async def _idle(client):
    return [json.loads(m)["id"] for m in await client.lrange(KEY, 0, -1)]


async def _settled(client, target):
    return (
        await client.llen(KEY),
        await client.zcard(f"{KEY}:starting"),
        await client.hlen(f"{KEY}:retiring"),
    ) == (target, 0, 0)


async def _eg_runs_idle(gateway, client):
    return sorted(gateway.list_kernel_ids()) == sorted(await _idle(client))
