"""Scale, on bench/gateway_simulator.py instead of EG (2 cores cannot hold 1000 real kernels):
one activation sweep over a big pool, jkp's RSS, pop p50 with a big vs a small pool, pops/s of
1 vs 3 replicas."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import Jkp, RedisServer, Simulator, Stack, get_json, log
from pop_rounds import pop_round


def public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


# Reply latency of the simulator the activation sweep is measured on: without one every request
# is answered before the next is read, and how many jkp keeps in flight cannot be seen.
SWEEP_LATENCY_MS = 20


async def scale(args, work: Path, stack: Stack, out: dict) -> None:
    pool = 200 if args.quick else 1000
    n_seq, n_rate = (50, 200) if args.quick else (200, 600)
    redis = stack.add(RedisServer(work / "redis-scale"))
    await asyncio.to_thread(redis.start)
    res = out["scale"] = {"pool": pool, "sweep_latency_ms": SWEEP_LATENCY_MS}

    def replica(sim: Simulator, name: str, key: str, target: int, activation: int = 0) -> Jkp:
        options = ("--PoolManager.max_concurrent_starts=50",
                   "--PoolManager.kernel_ready_timeout=30",
                   f"--PoolManager.activation_interval={activation}")  # fmt: skip
        return stack.add(Jkp(work, name, redis, sim.url, key, target, options))

    # (i)+(ii) activation every 5 s, on a simulator that answers after SWEEP_LATENCY_MS. jkp has
    # no endpoint to trigger a sweep: it is the first burst of kernel_info requests the
    # simulator sees once the pool is full.
    sim = stack.add(Simulator(work, "simulator-sweep", SWEEP_LATENCY_MS))
    await sim.wait_listening()
    jkp = replica(sim, "scale-activation", "bench:sweep", pool, activation=5)
    res["fill_s"] = await jkp.wait_full(600)
    full_at = time.time()
    log(f"sim: {pool} pooled after {res['fill_s']:.1f}s; waiting for an activation sweep")
    deadline = time.monotonic() + 120
    while True:
        jkp.check_alive()
        stats = await get_json(sim.url + "/bench/stats")
        sweeps = [b for b in stats["bursts"] if b["first"] > full_at]
        if sweeps:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no activation sweep seen in 120s: {stats}")
        await asyncio.sleep(0.5)
    b = sweeps[0]
    res["sweep"] = {"duration_s": b["last"] - b["first"], "requests": b["count"],
                    "kernels": b["kernels"], "max_in_flight": b["max_in_flight"],
                    "max_open_websockets": b["max_open"]}  # fmt: skip
    res.update(jkp.rss_mb())
    log(f"  sweep {res['sweep']}, jkp RSS {res['rss_mb']:.0f} MB")
    stack.remove(jkp)
    stack.remove(sim)

    # The rest on a simulator that answers at once, without activation sweeps in the way.
    sim = stack.add(Simulator(work, "simulator"))
    await sim.wait_listening()
    replicas = [replica(sim, "scale-r0", "bench:scale", pool)]
    res["fill_no_latency_s"] = await replicas[0].wait_full(600)

    # (iii) pop p50 at c=1 with the big pool.
    watch = {"jkp": replicas[0].proc.pid, "simulator": sim.proc.pid, "redis": redis.pid}
    await pop_round([replicas[0].url], 2, 1, "warm-big")
    await replicas[0].wait_full(600)
    res["pop_c1_big"] = public(await pop_round([replicas[0].url], n_seq, 1, "big", watch))
    log(f"  pop p50 with {pool} pooled: {res['pop_c1_big']['p50_ms']:.1f} ms")

    # (iv) pops/s at c=32 from 1, then 3 replicas sharing Redis and the simulator. Handed-out
    # simulator kernels are plain objects without timers: left alone, they cost nothing.
    for count in (1, 3):
        while len(replicas) < count:
            replicas.append(replica(sim, f"scale-r{len(replicas)}", "bench:scale", pool))
            watch[f"jkp{len(replicas) - 1}"] = replicas[-1].proc.pid
        for r in replicas:
            await r.wait_full(600)
        r = await pop_round([r.url for r in replicas], n_rate, 32, f"rate{count}", watch)
        res[f"replicas_{count}"] = public(r)
        log(f"  {count} replica(s): {r['pops_per_s']:.0f} pops/s, {r['failed']} failed")
    for r in replicas:
        stack.remove(r)

    # (iii) again with 10 pooled, on a key of its own.
    small = replica(sim, "scale-small", "bench:small", 10)
    await small.wait_full(120)
    watch = {"jkp": small.proc.pid, "simulator": sim.proc.pid, "redis": redis.pid}
    await pop_round([small.url], 2, 1, "warm-small")
    await small.wait_full(120)
    res["pop_c1_small"] = public(await pop_round([small.url], n_seq, 1, "small", watch))
    log(f"  pop p50 with 10 pooled: {res['pop_c1_small']['p50_ms']:.1f} ms")
    stack.remove(small)
