"""Crashes: jkp replicas SIGKILLed at any instant, Redis restarted, many clients at once.

Afterwards nothing was handed out twice, EG runs exactly the pooled plus the handed-out
kernels, and the pool is back at its target.
"""

import asyncio
import json
import os
import signal
import time

import pytest
import redis.asyncio as redis
import tornado.httpserver
import tornado.testing
import tornado.web
from tornado.httpclient import HTTPClientError

from tests.conftest import kernel_pid, localstack, metric, wait_until

KEY = "test:kernels:idle"
# Short leases so a dead replica's work expires within the test: a start may take
# kernel_ready_timeout + 2 * request_timeout = 20 s, a pop 3 * kernel_request_timeout + 5 = 11 s.
LEASES = ("--GatewayClient.request_timeout=5", "--PoolManager.kernel_ready_timeout=10")
FAST_CHECKS = ("--PoolManager.check_task_interval=1", "--PoolManager.max_start_backoff=2")


async def settled(client, target):
    """The pool is at target with no start, pop or removal pending."""
    try:
        return (
            await client.llen(KEY),
            await client.zcard(f"{KEY}:starting"),
            await client.hlen(f"{KEY}:claimed"),
            await client.hlen(f"{KEY}:retiring"),
        ) == (target, 0, 0, 0)
    except redis.ConnectionError:
        return False


async def accounted(client):
    """Ids of the kernels Redis accounts for: idle and handed out."""
    idle = [json.loads(m)["id"] for m in await client.lrange(KEY, 0, -1)]
    handed = list(await client.hgetall(f"{KEY}:handed"))
    assert not set(idle) & set(handed)
    return sorted([*idle, *handed])


async def test_replica_killed_mid_start_leaves_no_kernel_unaccounted(
    redis_server, redis_client, gateway, jkp_process_factory
):
    doomed = jkp_process_factory(redis_server, gateway, "--max-pending-kernels=2", *LEASES)
    await wait_until(lambda: _count(redis_client.zcard(f"{KEY}:starting"), 2), 30, "starts")
    doomed.kill()
    survivor = jkp_process_factory(
        redis_server, gateway, "--max-pending-kernels=2", *LEASES, *FAST_CHECKS
    )
    # The dead replica's leases still hold the places: the survivor does not start 2 more.
    await asyncio.sleep(3)
    assert len(gateway.list_kernel_ids()) <= 2
    await wait_until(lambda: settled(redis_client, 2), 60, "leases expired and pool refilled")
    await wait_until(
        lambda: _eg_runs(gateway, redis_client), 30, "EG to run only accounted kernels"
    )
    assert survivor.proc.poll() is None


async def test_replica_killed_mid_start_is_taken_over_within_seconds(
    redis_server, redis_client, gateway_factory, jkp_process_factory
):
    # Every kernel takes 3 s to come up, like a (fast) pod: the kill lands mid-start.
    python = str(localstack.DEFAULT_EG_VENV / "bin" / "python")
    gateway = gateway_factory(
        kernel_argv=[
            "/bin/sh",
            "-c",
            'sleep 3; exec "$1" -m ipykernel_launcher -f "$0"',
            "{connection_file}",
            python,
        ]
    )
    pool = ("--max-pending-kernels=3", "--PoolManager.check_task_interval=1")
    doomed = jkp_process_factory(redis_server, gateway, *pool)
    await wait_until(lambda: _eg_has(gateway, 3), 30, "3 starts under way on EG")
    started = sorted(await redis_client.zrange(f"{KEY}:starting", 0, -1))
    assert len(started) == 3 and await redis_client.llen(KEY) == 0
    doomed.kill()
    killed_at = time.monotonic()
    # Two survivors: they race for each takeover, and exactly one wins it.
    survivors = [jkp_process_factory(redis_server, gateway, *pool) for _ in range(2)]
    await wait_until(lambda: settled(redis_client, 3), 60, "the pool full again")
    full_after = time.monotonic() - killed_at
    # The dead replica's kernels were adopted, not restarted: their ids are the pool.
    idle = sorted(json.loads(m)["id"] for m in await redis_client.lrange(KEY, 0, -1))
    assert idle == started
    assert sorted(gateway.list_kernel_ids()) == started
    adopted = [
        await metric(
            s, 'jkp_takeovers_total{kind="start",outcome="adopted",pool="python_kubernetes"}'
        )
        for s in survivors
    ]
    print(f"takeover: pool full {full_after:.1f}s after SIGKILL; adopted per survivor {adopted}")
    assert sum(adopted) == 3
    # Heartbeat TTL (6 s) + a start (~4 s) + the survivors' own start-up: not the 420 s lease.
    assert full_after < 20


async def test_replica_killed_while_its_start_requests_hang_is_replaced_within_seconds(
    redis_server, redis_client, gateway, jkp_process_factory
):
    # The doomed replica's EG answers no start request: they hang, and never reach the real EG.
    hang = asyncio.Event()
    nowhere = _StartsHang(hang)
    try:
        doomed = jkp_process_factory(redis_server, nowhere, "--max-pending-kernels=2")
        await wait_until(lambda: _count(redis_client.zcard(f"{KEY}:starting"), 2), 30, "starts")
        hung = sorted(await redis_client.zrange(f"{KEY}:starting", 0, -1))
        doomed.kill()
    finally:
        hang.set()
        nowhere.server.stop()
    killed_at = time.monotonic()
    # GatewayClient.request_timeout stays at 60 s, as long as a start request may run.
    jkp_process_factory(redis_server, gateway, "--max-pending-kernels=2")
    await wait_until(lambda: _count(redis_client.llen(KEY), 2), 30, "the pool full again")
    full_after = time.monotonic() - killed_at
    print(f"hung starts: pool full {full_after:.1f}s after SIGKILL")
    # Heartbeat TTL (6 s) + a start (~1 s) + the survivor's own start-up.
    assert full_after < 20
    idle = [json.loads(m)["id"] for m in await redis_client.lrange(KEY, 0, -1)]
    assert not set(idle) & set(hung)
    # Still watched, in case the requests reach an EG after all.
    assert sorted(await redis_client.zrange(f"{KEY}:late", 0, -1)) == hung
    assert sorted(gateway.list_kernel_ids()) == sorted(idle)


class _StartsHang:
    """A stand-in for EG that refuses every request (503) but starts, which it never answers."""

    def __init__(self, hang: asyncio.Event):
        class Handler(tornado.web.RequestHandler):
            async def get(self, _):
                raise tornado.web.HTTPError(503)

            async def post(self, _):
                await hang.wait()
                raise tornado.web.HTTPError(503)

        sock, port = tornado.testing.bind_unused_port()
        self.server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"(.*)", Handler)]))
        self.server.add_sockets([sock])
        self.url = f"http://127.0.0.1:{port}"


def _eg_has(gateway, count):
    try:
        return len(gateway.list_kernel_ids()) == count
    except RuntimeError:  # EG 3.3 cannot list a kernel still starting (no last_activity yet)
        return False


async def test_replica_killed_mid_pop_loses_no_kernel(
    redis_server, redis_client, gateway, jkp_process_factory
):
    doomed = jkp_process_factory(redis_server, gateway, "--max-pending-kernels=1", *LEASES)
    await wait_until(lambda: _count(redis_client.llen(KEY), 1), 30, "the pool to fill")
    [model_json] = await redis_client.lrange(KEY, 0, -1)
    kernel_id = json.loads(model_json)["id"]
    # Freeze the kernel so the pop is caught between taking it and handing it over.
    frozen = kernel_pid(kernel_id)
    os.kill(frozen, signal.SIGSTOP)
    pop = asyncio.ensure_future(doomed.pop("zt"))
    await wait_until(lambda: _count(redis_client.hlen(f"{KEY}:claimed"), 1), 10, "the claim")
    doomed.kill()
    os.kill(frozen, signal.SIGCONT)
    with pytest.raises(HTTPClientError):
        await pop  # the caller saw the replica die: the kernel must never reach anyone
    jkp_process_factory(redis_server, gateway, "--max-pending-kernels=1", *LEASES, *FAST_CHECKS)
    await wait_until(lambda: settled(redis_client, 1), 60, "claim expired and pool refilled")
    assert await redis_client.hgetall(f"{KEY}:handed") == {}
    assert kernel_id not in [json.loads(m)["id"] for m in await redis_client.lrange(KEY, 0, -1)]
    await wait_until(
        lambda: _eg_runs(gateway, redis_client), 30, "the claimed kernel shut down on EG"
    )


@pytest.mark.timeout(240)
async def test_replicas_crash_and_redis_restart_lose_nothing(
    redis_factory, gateway, jkp_process_factory
):
    target, pops, concurrency = 4, 40, 6
    redis_server = redis_factory(appendonly=True)
    replicas = [
        jkp_process_factory(
            redis_server,
            gateway,
            f"--max-pending-kernels={target}",
            *LEASES,
            *FAST_CHECKS,
            "--PoolManager.activation_interval=2",
            "--PoolManager.pop_timeout=20",
        )
        for _ in range(3)
    ]
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    hung_pid = None
    try:
        await wait_until(lambda: _count(client.llen(KEY), target), 60, "the pool to fill")
        # Exact size: three replicas with target 4 started 4 kernels, not 12.
        assert len(gateway.list_kernel_ids()) == target
        # A kernel that hangs, at the pop end: whichever pop takes it shuts it down and fails.
        hung = json.loads(await client.lindex(KEY, -1))["id"]
        hung_pid = kernel_pid(hung)
        os.kill(hung_pid, signal.SIGSTOP)

        results = []
        queue = asyncio.Queue()
        for n in range(pops):
            queue.put_nowait(n)

        async def client_loop():
            while not queue.empty():
                n = queue.get_nowait()
                try:
                    results.append(await replicas[n % 3].pop(f"user{n}"))
                except (OSError, HTTPClientError):  # the killed replica drops or refuses
                    results.append((599, None))

        async def chaos():
            # Strike once the pool is drained and every replica is busy starting kernels.
            await wait_until(lambda: len(results) >= target + 2, 60, "the pool to drain")
            replicas[1].kill()
            await asyncio.sleep(0.5)
            redis_server.restart()

        async def vanishing_client(n):
            # Sends a pop and hangs up 5 ms later, mid-pop: it must cost no kernel.
            await asyncio.sleep(0.3 * n)
            port = int(replicas[n].url.rsplit(":", 1)[1])
            body = json.dumps({"userId": f"gone{n}"}).encode()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/kernels/pop/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await asyncio.sleep(0.005)
            writer.close()

        await asyncio.gather(
            chaos(),
            *(client_loop() for _ in range(concurrency)),
            *(vanishing_client(n) for n in (0, 2)),  # replica 1 is the one killed
        )

        served = [body["id"] for status, body in results if status == 200]
        print(f"chaos: {len(served)} of {pops} served; statuses {sorted(s for s, _ in results)}")
        assert served
        # Once: no kernel was handed to two callers.
        assert len(served) == len(set(served))
        # Every failure is a clear error: 503 from a live replica, or the dead one's refusal.
        assert {status for status, _ in results} <= {200, 503, 599}

        await wait_until(lambda: settled(client, target), 90, "leases reconciled, pool refilled")
        assert set(served) <= set(await client.hgetall(f"{KEY}:handed"))
        # Nothing unaccounted: EG runs exactly the pooled plus the handed-out kernels.
        await wait_until(lambda: _eg_runs(gateway, client), 30, "EG to run only accounted kernels")
        # The hung kernel went to nobody, and is gone from EG.
        assert hung not in served and hung not in gateway.list_kernel_ids()
    finally:
        await client.aclose()
        try:
            os.kill(hung_pid, signal.SIGCONT)
        except (ProcessLookupError, TypeError):  # gone, or never stopped (None)
            pass


async def _count(awaitable, expected):
    try:
        return await awaitable == expected
    except redis.ConnectionError:
        return False


async def _eg_runs(gateway, client):
    return sorted(gateway.list_kernel_ids()) == await accounted(client)
