"""jkp benchmark: pop latency on the real local stack, the cold path, and scale on the simulator.

    .venv/bin/python bench/run.py [--quick] [--json PATH] [--skip-scale] [--steady-only]
    .venv/bin/python bench/run.py --traces [--quick] [--time-scale F] [--adaptive MIN:MAX]
    .venv/bin/python bench/run.py --trace day|batches|classroom [...]
    (or scripts/bench)

1. Real stack (redis-server + Enterprise Gateway from dev/localstack.py, jkp as a process):
   pop latency and throughput at concurrency 1, 8 and 32 from a full pool, then the cold path a
   user takes without jkp (start a kernel on EG, wait until it answers, enter the user dir);
   the steady state (pops, then warm creates, one every 0.5 s on average, refills running,
   on a new connection each and on one kept open) beside EG's floor (a kernel_info round trip
   on an open websocket); ``--steady-only`` runs just that, jkp's CPU per pop and the cold
   path (what issue #13 asks); jkp as a drop-in gateway: warm creates through EG's
   kernels API on jkp vs cold creates on EG, and kernel_info round trips through jkp's
   websocket bridge vs straight to EG on the same kernel.
2. Scale (bench/gateway_simulator.py instead of EG, since 2 cores cannot hold 1000 real
   kernels): one activation sweep over 1000 pooled kernels, jkp's RSS, pop p50 with 1000 vs 10
   pooled, pops/s of 1 vs 3 replicas.
3. ``--traces`` runs only the trace replay of bench/traces.py: fixed and adaptive pools under a
   day curve, agents' batches and a classroom, on simulators with a kernel start latency.

Prints a markdown table (figure, target, PASS/FAIL) and writes every figure to JSON
(default .stack/bench-results.json). Everything binds to 127.0.0.1; every process started here
is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

import traces
from gateway_rounds import gateway_round, websocket_round
from harness import (
    REPO,
    Jkp,
    RedisServer,
    Stack,
    begin_run,
    log,
    machine_busy,
    run_and_report,
    summary,
)
from kernel_channels import delete_kernels
from localstack import EnterpriseGateway
from pop_rounds import cold_path, pop_round, served_round
from report import report
from scale_rounds import scale
from steady_rounds import steady_rounds


async def real_stack(args, work: Path, stack: Stack, out: dict) -> None:
    redis = stack.add(RedisServer(work / "redis"))
    eg = stack.add(EnterpriseGateway(work / "eg"))
    await asyncio.to_thread(redis.start)
    await asyncio.to_thread(eg.start)
    out["machine"]["enterprise_gateway"] = eg.request("GET", "/api")[1]
    log(f"Redis {redis.url}, EG {eg.url} (logs in {work})")

    # (name, concurrency, pops, pool, refill_delay). Pool = the round's pops, so no pop waits for
    # a start, and live kernels (~52 MB each) stay below ~110: handed-out ones are deleted after
    # each round. jkp's default refill_delay (1 s) outlasts each round's burst; the last round
    # runs with refill at once, to show what kernel starts beside the pops cost here.
    rounds = [("c1", 1, 10, 32, 1), ("c8", 8, 16, 32, 1), ("c32", 32, 32, 32, 1),
              ("c1_refill_at_once", 1, 10, 32, 0)] if args.quick else [
        ("c1", 1, 40, 40, 1), ("c8", 8, 64, 64, 1), ("c32", 32, 96, 96, 1),
        ("c1_refill_at_once", 1, 40, 40, 0)]  # fmt: skip
    # With ~100 local kernels EG now and then starts one whose ZMQ port is already taken; it dies,
    # and jkp notices only at kernel_ready_timeout (300 s by default): bound that stall.
    options = ("--PoolManager.activation_interval=0", "--PoolManager.max_concurrent_starts=4",
               "--PoolManager.kernel_ready_timeout=60")  # fmt: skip
    if args.steady_only:
        # What issue #13 asks, alone: jkp's CPU per pop from a full pool (no refill during it),
        # the cold path, and the steady state of pops and of warm creates beside EG's floor.
        jkp = stack.add(Jkp(work, "jkp-steady", redis, eg.url, "bench:real", 40, options))
        await jkp.wait_full(900)
        await delete_kernels(eg, (await pop_round([jkp.url], 2, 1, "warm-steady"))["_ids"])
        await jkp.wait_full(600)
        n = 10 if args.quick else 30
        log(f"round c1: {n} pops from a full pool, for jkp's CPU per pop")
        r = await served_round(jkp, eg, work, n, 1, "c1", {"jkp": jkp.proc.pid})
        r["refill_delay_s"] = 1
        out["rounds"] = {"c1": r}
        await jkp.wait_full(600)
        times = [await cold_path(eg, work / "shared" / f"cold-{i}")
                 for i in range(3 if args.quick else 10)]  # fmt: skip
        out["cold_path"] = summary(times)
        await steady_rounds(jkp, eg, redis, stack, work, 10 if args.quick else 60, out)
        return
    jkp, out["rounds"] = None, {}
    for key, c, n, target, refill_delay in rounds:
        r = {"refill_delay_s": refill_delay}
        extra = (*options, f"--PoolManager.refill_delay={refill_delay}")
        if jkp is None or (jkp.target, jkp.extra) != (target, extra):
            if jkp is not None:
                stack.remove(jkp)  # full and quiet: the pool stays in Redis for the next one
            jkp = stack.add(Jkp(work, f"jkp-{key}", redis, eg.url, "bench:real", target, extra))
            r["fill_s"] = await jkp.wait_full(900)
            log(f"jkp with a pool of {target}: full after {r['fill_s']:.1f}s; 2 warm-up pops")
            warm = await pop_round([jkp.url], 2, 1, f"warm-{target}")
            await delete_kernels(eg, warm["_ids"])
            await jkp.wait_full(600)
        busy_before = await machine_busy(1.0)
        log(f"round {key}: {n} pops from a full pool of {target} (CPU {busy_before:.0%} busy)")
        watch = {"jkp": jkp.proc.pid, "eg": eg.pid, "redis": redis.pid}
        r.update(await served_round(jkp, eg, work, n, c, key, watch))
        after = await jkp.status()
        r["pool_after_round"] = {k: after[k] for k in ("idle", "starting")}
        r["cpu"]["machine_busy_1s_before"] = busy_before  # the full pool at rest: ~0 expected
        log(f"  p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['pops_per_s']:.1f} pops/s, "
            f"{r['failed']} failed; refilling")  # fmt: skip
        # Refilled before anything else runs, so no kernel start is cut short or competes.
        r["refill_s"] = await jkp.wait_full(600)
        out["rounds"][key] = r
        if key == "c1":
            # The cold path on the same stack, with the pool full and quiet.
            times = [await cold_path(eg, work / "shared" / f"cold-{i}")
                     for i in range(3 if args.quick else 10)]  # fmt: skip
            out["cold_path"] = summary(times)
            log(f"cold path: p50 {out['cold_path']['p50_ms']:.0f} ms")
            await steady_rounds(jkp, eg, redis, stack, work, 10 if args.quick else 60, out)
            # The gateway: creates as EG's clients make them, warm through jkp vs cold on EG.
            n_warm, n_cold = (10, 3) if args.quick else (40, 10)
            log(f"gateway: {n_warm} warm creates through jkp, each 0.5 s after the pool "
                f"refilled; {n_cold} cold creates on EG")  # fmt: skip
            g = out["gateway"] = await gateway_round(jkp, eg, work, n_warm, n_cold, 0.5)
            log(f"  warm create p50 {g['warm_answered']['p50_ms']:.1f} ms (+ first kernel_info "
                f"{g['warm_first_kernel_info']['p50_ms']:.1f} ms), cold "
                f"{g['cold']['p50_ms']:.0f} ms")  # fmt: skip
            # A kernel's websocket through jkp's bridge vs straight to EG.
            n = 50 if args.quick else 200
            log(f"websocket: {n} kernel_info round trips each way, via jkp and straight to EG")
            w = out["websocket"] = await websocket_round(
                jkp,
                eg,
                redis,
                "bench:real",
                work,
                n,
                10 if args.quick else 20,
                10 if args.quick else 20,
            )
            log(f"  p50 via jkp {w['via_jkp']['p50_ms']:.2f} ms, direct "
                f"{w['direct']['p50_ms']:.2f} ms ({w['p50_vs_direct']:.2f}×)")  # fmt: skip
            await jkp.wait_full(600)
    for server in (jkp, eg, redis):  # nothing of it may take CPU from the scale runs
        stack.remove(server)
    jkp_logs = "".join(f.read_text(errors="replace") for f in work.glob("jkp-*.log"))
    out["real_stack_events"] = {
        "kernel_starts_failed": len(re.findall(r"Starting kernel \S+ failed", jkp_logs)),
        "eg_port_in_use": eg.log_path.read_text(errors="replace").count("Address already in use"),
    }


async def main_async(args, work: Path, stack: Stack, out: dict) -> None:
    # Anything else running (a test suite, a build) skews every figure: say so in the report.
    out["machine"]["busy_before_start"] = await machine_busy(2.0)
    await real_stack(args, work, stack, out)
    if not (args.skip_scale or args.steady_only):
        await scale(args, work, stack, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run of ~1 min")
    parser.add_argument(
        "--json",
        help="where to write all figures (default .stack/bench-results.json; with --traces "
        ".stack/bench-traces.json)",
    )
    parser.add_argument("--skip-scale", action="store_true", help="only the real stack")
    parser.add_argument(
        "--steady-only", action="store_true", help="only the steady-state round beside EG's floor"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the logs (work dir) after success"
    )
    traces.add_arguments(parser)
    args = parser.parse_args()
    if args.traces or args.trace:
        return traces.main(args)
    args.json = args.json or str(REPO / ".stack" / "bench-results.json")

    work, stack, out, started = begin_run("jkp-bench-", args.quick)
    return run_and_report(
        main_async(args, work, stack, out),
        work,
        stack,
        out,
        started,
        report,
        Path(args.json),
        args.keep,
    )


if __name__ == "__main__":
    sys.exit(main())
