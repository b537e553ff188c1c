"""Pools sized by demand, on real Redis and EG: the target shared by replicas, bursts served
by one round of starts, scale-down after the delay and without flapping (docs/sizing.md)."""

import asyncio
import json
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import metric, wait_until

ADAPTIVE = ("--PoolManager.min_pending_kernels=1", "--PoolManager.max_pending_kernels=8")


async def _held(replica):
    """Idle plus starting kernels of the pool, all replicas."""
    counts = await replica.store.counts()
    return counts["idle"] + counts["starting"]


def _client():
    """An HTTP client of the test's own, with room for every pop at once: tornado's shared
    AsyncHTTPClient runs 10 requests at once and queues the rest."""
    return AsyncHTTPClient(force_instance=True, max_clients=50)


async def _pop(client, replica, user):
    """(status, seconds, body) of one pop."""
    started = time.monotonic()
    response = await client.fetch(
        f"{replica.url}/api/kernels/pop/",
        method="POST",
        body=json.dumps({"userId": user}),
        request_timeout=60,
        raise_error=False,
    )
    return response.code, time.monotonic() - started, json.loads(response.body)


async def _pops(replicas, count, prefix):
    """``count`` pops at once, spread over ``replicas``: (status, seconds, body) of each."""
    client = _client()
    try:
        return await asyncio.gather(
            *(_pop(client, replicas[i % len(replicas)], f"{prefix}{i}") for i in range(count))
        )
    finally:
        client.close()


def _kernels_on_eg(gateway):
    """Kernel processes the gateway runs now: each names a connection file in its runtime
    dir (a kernel still in its start delay is the shell that will exec it)."""
    needle = str(gateway.runtime_dir).encode()
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes():
                count += 1
        except OSError:
            continue  # the process ended while we looked
    return count


async def _starting_at_least(replica, count):
    return (await replica.store.counts())["starting"] >= count


def _started(replica):
    """Kernel starts this replica sent to EG."""
    return sum(1 for m in replica.logged("Kernel ") if m.endswith("started on EG"))


async def test_a_pop_on_one_replica_grows_the_pool_another_fills(
    redis_server, gateway, jkp_factory
):
    # Replica a starts one kernel at a time: the rest of what its pops ask, b must start.
    a = await jkp_factory(redis_server, gateway, *ADAPTIVE, "--PoolManager.max_concurrent_starts=1")
    b = await jkp_factory(redis_server, gateway, *ADAPTIVE)
    await a.wait_for_idle(1)
    before = _started(b)

    results = await _pops([a], 5, "grow")

    assert [code for code, _, _ in results] == [200] * 5
    _, status = await b.request("GET", "/api/pool")
    assert status["min"] == 1 and status["max"] == 8
    assert status["target"] == 6, status  # 5 arrivals within one start, and one for the next
    assert status["demand"]["peak"] == 5
    await wait_until(lambda: _started(b) - before >= 3, 15, "replica b to start kernels")
    await a.wait_for_idle(6, timeout=30)
    _, seen_by_a = await a.request("GET", "/api/pool")
    assert seen_by_a["target"] == status["target"]


async def test_a_burst_is_served_by_one_round_of_starts(redis_server, gateway_factory, jkp_factory):
    gateway = gateway_factory(start_delay=2)
    pool = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.min_pending_kernels=1",
        "--PoolManager.max_pending_kernels=10",
        "--PoolManager.max_concurrent_starts=10",
    )
    await pool.wait_for_idle(1, timeout=30)
    _, status = await pool.request("GET", "/api/pool")
    latency = status["demand"]["start_latency"]
    assert latency >= 2

    burst = asyncio.ensure_future(_pops([pool], 8, "burst"))
    # Seven find the pool empty: a start for each is under way at once (before any start of
    # 2 s could end), not one round of the pool's size after another.
    await wait_until(lambda: _starting_at_least(pool, 7), 1.5, "a start for each waiting pop")
    results = await burst

    assert [code for code, _, _ in results] == [200] * 8
    assert (
        await metric(
            pool, 'jkp_time_to_kernel_seconds_count{pool="python_kubernetes",served="waited"}'
        )
        == 7
    )
    assert (
        await metric(
            pool, 'jkp_time_to_kernel_seconds_count{pool="python_kubernetes",served="warm"}'
        )
        == 1
    )


async def test_scale_down_waits_for_the_delay_then_retires_oldest_without_flapping(
    redis_server, gateway, jkp_factory
):
    # The delay leaves the pool time to fill to its target even on a loaded machine: with a
    # delay shorter than a start or two (6 s here once), the burst's demand left the look-back
    # before its replacements had started, and the pool never reached the target at all.
    delay = 15
    argv = (*ADAPTIVE, f"--PoolManager.scale_down_delay={delay}")
    a = await jkp_factory(redis_server, gateway, *argv)
    b = await jkp_factory(redis_server, gateway, *argv)
    await a.wait_for_idle(1)

    burst_start = time.monotonic()
    results = await _pops([a, b], 5, "down")
    assert [code for code, _, _ in results] == [200] * 5
    await a.wait_for_idle(6, timeout=delay)
    started = _started(a) + _started(b)
    oldest = list(reversed(await a.idle_ids()))

    # Held while the burst is within the delay: nothing retired.
    await asyncio.sleep(max(0.0, burst_start + delay - 3 - time.monotonic()))
    assert len(await a.idle_ids()) == 6
    await a.wait_for_idle(1, timeout=40)
    down_after = time.monotonic() - burst_start

    assert down_after >= delay
    # The newest kernel stayed; no replica started one again for what the other retired.
    assert await a.idle_ids() == oldest[-1:]
    await asyncio.sleep(3)
    assert await _held(a) == 1
    assert _started(a) + _started(b) == started
    retired = [m for r in (a, b) for m in r.logged("Kernel ") if m.endswith("(above its target)")]
    assert len(retired) == 5


async def test_recurring_bursts_are_expected_the_pool_keeps_its_minimum_between_them(
    redis_server, gateway, jkp_factory
):
    # Four pops every 10 s through two replicas: after the third burst both expect the fourth,
    # keep only the minimum between bursts (the peak would hold 5 for the whole look-back), and
    # have its four kernels ready when it comes.
    every, size = 10.0, 4
    argv = (*ADAPTIVE, "--PoolManager.max_concurrent_starts=8")
    a = await jkp_factory(redis_server, gateway, *argv)
    b = await jkp_factory(redis_server, gateway, *argv)
    await a.wait_for_idle(1)
    warm = 'jkp_time_to_kernel_seconds_count{pool="python_kubernetes",served="warm"}'

    first = time.monotonic()
    for k in range(3):
        await asyncio.sleep(max(0.0, first + k * every - time.monotonic()))
        results = await _pops([a, b], size, f"every{k}-")
        assert [code for code, _, _ in results] == [200] * size

    _, status = await b.request("GET", "/api/pool")
    assert status["target"] == 1, status  # the third burst's kernels are not replaced now
    assert (await a.store.counts())["starting"] == 0
    expected = status["demand"]["next_burst"]
    assert expected["size"] == size and abs(expected["every"] - every) <= 2

    # Asked for before the fourth is due: its kernels are ready when it comes.
    await wait_until(
        lambda: a._idle_count_is(size), first + 3 * every - time.monotonic(), "kernels ready"
    )
    warm_before = await metric(a, warm) + await metric(b, warm)
    await asyncio.sleep(max(0.0, first + 3 * every - time.monotonic()))
    results = await _pops([a, b], size, "every3-")
    assert [code for code, _, _ in results] == [200] * size
    assert await metric(a, warm) + await metric(b, warm) - warm_before == size


async def test_an_empty_pools_503_says_when_to_retry(
    redis_server, redis_client, gateway, jkp_factory
):
    pool = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.max_pending_kernels=0",
        "--PoolManager.pop_timeout=0.5",
    )
    # The pool's recent starts took 6 s (as docs/redis.md names the key).
    await redis_client.lpush("test:kernels:idle:start-latencies", "6.0")

    response = await pool.fetch("POST", "/api/kernels/pop/", json.dumps({"userId": "late"}))

    assert response.code == 503
    assert json.loads(response.body)["reason"] == "Pool empty"
    assert response.headers["Retry-After"] == "6"


@pytest.mark.scenario  # its figures are speed targets: run on demand, not in every CI run
async def test_pool_of_2_to_16_follows_a_trickle_and_a_burst_then_returns_to_its_minimum(
    redis_server, gateway_factory, jkp_factory
):
    """The issue's scenario: kernels that start in ~3.5 s (a pod waiting to be scheduled),
    two replicas, a pool of min 2 / max 16 with a scale-down delay of 15 s."""
    gateway = gateway_factory(start_delay=3)
    argv = (
        "--PoolManager.min_pending_kernels=2",
        "--PoolManager.max_pending_kernels=16",
        "--PoolManager.scale_down_delay=15",
        # The burst's first round of starts covers it (4 per replica, the default, leaves a
        # few pops to a second round), and a pop waits up to the 12 s the issue allows.
        "--PoolManager.max_concurrent_starts=8",
        "--PoolManager.pop_timeout=12",
    )
    replicas = [await jkp_factory(redis_server, gateway, *argv) for _ in range(2)]
    a = replicas[0]
    client = _client()
    out = 0  # kernels handed out (or being) that the users have not deleted yet
    most_on_eg = []  # kernels on EG beyond those handed out or being shut down, as sampled

    async def delete(kernel_id, after):
        nonlocal out
        await asyncio.sleep(after)
        await client.fetch(f"{gateway.url}/api/kernels/{kernel_id}", method="DELETE")
        out -= 1

    async def pop(i):
        nonlocal out
        out += 1
        code, seconds, model = await _pop(client, replicas[i % 2], f"user{i}")
        if code != 200:
            out -= 1
        return code, seconds, model

    async def watch_eg():
        while True:
            # Kernels jkp is shutting down (a failed start, a surplus) are not the pool's.
            retiring = len(await a.store.retiring_ids())
            on_eg = _kernels_on_eg(gateway)
            most_on_eg.append((on_eg - out - retiring, time.monotonic(), on_eg, out, retiring))
            await asyncio.sleep(0.2)

    watcher = asyncio.ensure_future(watch_eg())
    try:
        # No demand: the pool holds its minimum.
        await a.wait_for_idle(2, timeout=60)
        for _ in range(10):
            assert await _held(a) == 2
            await asyncio.sleep(0.3)

        # One pop every 1.5 s, each kernel deleted by its user a second later.
        trickle_start = time.monotonic()
        trickle, held, deletes = [], [], []
        for i in range(24):
            result = asyncio.ensure_future(pop(i))
            await asyncio.sleep(1.5)
            code, seconds, model = await result
            # A pop that failed (on a loaded machine a set-up can time out) was not warm.
            trickle.append((time.monotonic() - 1.5 - trickle_start, seconds if code == 200 else 99))
            if code == 200:
                deletes.append(asyncio.ensure_future(delete(model["id"], 1.0)))
            held.append(await _held(a))
        after_15s = [seconds for at, seconds in trickle if at >= 15]
        warm = sum(seconds < 0.5 for seconds in after_15s) / len(after_15s)
        assert warm >= 0.9, trickle
        assert max(held[10:]) <= 8, held

        # Twelve at once.
        burst = await asyncio.gather(*(pop(100 + i) for i in range(12)))
        burst_end = time.monotonic()
        assert [code for code, _, _ in burst] == [200] * 12
        assert max(seconds for _, seconds, _ in burst) < 12

        # Right after it, and until the delay has passed, the pool keeps what it asked for.
        await asyncio.sleep(3)
        kept = await _held(a)
        assert kept > 2
        deletes += [asyncio.ensure_future(delete(m["id"], 0)) for _, _, m in burst]
        await asyncio.gather(*deletes)
        await asyncio.sleep(max(0.0, burst_end + 12 - time.monotonic()))
        assert await _held(a) > 2

        await wait_until(lambda: _at_minimum(a), 75, "the pool back at its minimum")
        back_after = time.monotonic() - burst_end
        assert 15 <= back_after <= 75
        worst = [(n, round(t - burst_end, 1), *rest) for n, t, *rest in sorted(most_on_eg)[-3:]]
        assert max(most_on_eg)[0] <= 16, worst
    finally:
        watcher.cancel()
        client.close()
    print(
        f"warm {warm:.0%}; held in trickle {held}; burst slowest "
        f"{max(seconds for _, seconds, _ in burst):.1f}s; after it {kept}; minimum again after "
        f"{back_after:.1f}s; most on EG beyond handed out {worst[-1]}"
    )


async def _at_minimum(replica):
    counts = await replica.store.counts()
    return counts["idle"] == 2 and counts["starting"] == 0


async def test_metrics_say_how_kernels_were_served_and_what_idle_kernels_cost(
    redis_server, gateway, jkp_factory
):
    pool = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.max_pending_kernels=1",
        "--PoolManager.refill_delay=30",
        "--KernelService.gateway_pool_wait=0.2",
    )
    await pool.wait_for_idle(1)
    await asyncio.sleep(1)
    served = 'jkp_time_to_kernel_seconds_count{pool="python_kubernetes",served="%s"}'

    assert (await pool.pop("idler"))[0] == 200
    # The pool's one kernel is taken and its replacement 30 s away: the create goes cold.
    body = json.dumps({"env": {"KERNEL_USERNAME": "jovyan"}})
    assert (await pool.request("POST", "/api/kernels", body))[0] == 201

    assert await metric(pool, served % "warm") == 1
    assert await metric(pool, served % "cold") == 1
    assert await metric(pool, 'jkp_idle_kernel_seconds_total{pool="python_kubernetes"}') >= 1
    assert await metric(pool, 'jkp_pool_target{pool="python_kubernetes"}') == 1
