"""Trace replay: how pools of fixed sizes and the adaptive pool serve three kinds of demand.

    .venv/bin/python bench/run.py --traces [--quick] [--time-scale F] [--adaptive 1:32]
    .venv/bin/python bench/run.py --trace classroom [...]   (one trace only)
    (or scripts/bench --traces)

Each trace is a list of pop arrival times in real (uncompressed) seconds:
- ``day``: a day of Poisson arrivals whose rate follows a smooth curve, 40x higher at the
  afternoon peak (one pop per start latency) than at night;
- ``batches``: agents that fan out, a batch of 10 pops at once every 2 minutes, over a trickle;
- ``classroom``: 30 pops within 60 s, unannounced, after 20 quiet minutes.

Within a trace every duration (arrival times, the kernel start latency, scale_down_delay,
refill_delay, pop_timeout, sizing_interval) is divided by one factor, its time scale, so a day
runs in minutes. jkp's own work (a pop, ~10-20 ms of CPU; a start's warm-up) is not
compressed: the day is compressed 180x (a 30 s start takes 167 ms, ~10x a pop), the
batches 60x and the classroom 20x, so that bursts do not arrive faster than 2 cores can serve
them (at 180x a class came 90 pops a second and warm pops queued for the CPU).
``--time-scale`` sets one factor for all.

Each configuration of a trace runs at the same time as the others, each on a gateway
simulator of its own (bench/gateway_simulator.py with ``--start-latency-s``) and a Redis key
of its own on one redis-server, with two jkp replicas sharing it; pops alternate between the
replicas. The classroom's configurations start 200 s of the trace (10 s) apart instead, so
that each one's class comes while the others are quiet: side by side, four classes at once
put 12 processes and 120 starts on the 2 cores in the same 3 s, and every pool's waits grew
by what the others cost. The replay of the classroom takes ~2.5 min (~2 min side by side).

The report shows the timeline of the classroom's slowest pops (bench/trace_timeline.py):
when the start of the kernel each got was requested at the simulator, ready there, warmed up,
pooled, set up and answered.

Figures per trace and configuration: the share of pops served warm (the pops served less
jkp's own count of those that waited, jkp_pop_waits_total, over all pops sent), p50/p99/max
time to kernel as the client measured it (compressed), idle kernel-hours (exact, in real
time: from the simulator's record of when each kernel was ready and when it was handed out
or deleted), the most kernels the pool held at once on the simulator (idle + starting, not
handed out), and pops refused. The adaptive configuration runs only when jkp has
``PoolManager.min_pending_kernels``; otherwise it is skipped with a message saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (
    PYTHON,
    REPO,
    Jkp,
    RedisServer,
    Simulator,
    Stack,
    begin_run,
    log,
    machine_jiffies,
    metric_total,
    run_and_report,
)
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from trace_report import report
from trace_shapes import (
    BATCHES_TIME_SCALE,
    CLASS_TIME_SCALE,
    DAY_TIME_SCALE,
    MAX_CONCURRENT_STARTS,
    POP_TIMEOUT_S,
    REFILL_DELAY_S,
    REPLICAS,
    SCALE_DOWN_DELAY_S,
    START_LATENCY_S,
    Trace,
    batches_trace,
    classroom_trace,
    day_trace,
)
from trace_timeline import slowest_timelines

SIZING_INTERVAL_S = 1.0  # jkp's default
TRACES = {"day": day_trace, "batches": batches_trace, "classroom": classroom_trace}


@dataclass
class Config:
    """One pool configuration: fixed (``minimum`` None) or adaptive."""

    maximum: int
    minimum: int | None = None

    @property
    def name(self) -> str:
        return f"fixed {self.maximum}" if self.minimum is None else \
            f"adaptive {self.minimum}-{self.maximum}"  # fmt: skip

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")


def jkp_has_adaptive_pools() -> bool:
    """Whether this jkp knows min_pending_kernels: traitlets only warns about an unknown
    option, so ask --help-all rather than watch it start."""
    help_text = subprocess.run(
        [PYTHON, "-m", "jkp", "--help-all"], cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout
    return "--PoolManager.min_pending_kernels" in help_text


class Run:
    """One configuration replaying one trace: its simulator, its replicas, its pops."""

    def __init__(self, trace: Trace, config: Config, work: Path, stack: Stack,
                 redis: RedisServer):  # fmt: skip
        self.trace, self.config, self.scale = trace, config, trace.scale
        self.work, self.stack, self.redis = work, stack, redis
        self.replicas: list[Jkp] = []
        self.pops: list[dict] = []
        self.waits: dict[str, float] = {}  # jkp_pop_waits_total over replicas, by moment
        self.t0 = self.t_end = 0.0

    async def start(self) -> None:
        """Start the simulator and the replicas; return once the pool has settled."""
        slug = f"{self.trace.name}-{self.config.slug}"
        self.sim = self.stack.add(
            Simulator(self.work, f"sim-{slug}", start_latency_s=START_LATENCY_S / self.scale)
        )
        await self.sim.wait_listening()
        options = [
            f"--PoolManager.max_concurrent_starts={MAX_CONCURRENT_STARTS}",
            "--PoolManager.activation_interval=0",
            f"--PoolManager.refill_delay={REFILL_DELAY_S / self.scale}",
        ]
        if self.config.minimum is not None:
            options += [
                f"--PoolManager.min_pending_kernels={self.config.minimum}",
                f"--PoolManager.scale_down_delay={SCALE_DOWN_DELAY_S / self.scale}",
                # Its demand's resolution (1 s in a real deployment) compressed like the rest.
                f"--PoolManager.sizing_interval={SIZING_INTERVAL_S / self.scale}",
            ]
        for i in range(REPLICAS):
            jkp = Jkp(self.work, f"jkp-{slug}-{i}", self.redis, self.sim.url, f"bench:{slug}",
                      self.config.maximum, tuple(options), POP_TIMEOUT_S / self.scale)  # fmt: skip
            self.replicas.append(self.stack.add(jkp))
        await self.settled()

    async def settled(self, timeout: float = 120) -> None:
        """Wait until the pool is filled to what it keeps with no demand and nothing starts."""
        want = self.config.maximum if self.config.minimum is None else self.config.minimum
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for jkp in self.replicas:
                jkp.check_alive()
            try:
                statuses = [await jkp.status() for jkp in self.replicas]
                status = statuses[0]
                if all(s["starting"] == 0 and s["idle"] >= want for s in statuses):
                    return
            except OSError:
                pass  # not listening yet
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.config.name} ({self.trace.name}): not settled: {status}")

    async def pop_waits(self) -> float:
        """jkp_pop_waits_total summed over the replicas: the pops served so far that waited."""
        return sum([await metric_total(jkp, "jkp_pop_waits_total") for jkp in self.replicas])

    async def replay(self, t0: float) -> None:
        """Send each pop at its compressed arrival time from ``t0`` (epoch seconds)."""
        client = AsyncHTTPClient(force_instance=True, max_clients=256)
        self.t0 = t0
        self.waits["start"] = await self.pop_waits()
        tasks: list[asyncio.Task] = []
        mark_tasks = []
        for i, t in enumerate(self.trace.arrivals):
            delay = t0 + t / self.scale - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.pop(client, i, t0 + t / self.scale)))
            for mark, last in self.trace.marks.items():
                if i == last:
                    mark_tasks.append(asyncio.create_task(self.mark(mark, list(tasks))))
        await asyncio.gather(*tasks, *mark_tasks)
        self.t_end = max(time.time(), t0 + self.trace.duration / self.scale)
        await asyncio.sleep(max(0.0, self.t_end - time.time()))
        self.waits["end"] = await self.pop_waits()
        client.close()

    async def mark(self, name: str, tasks: list[asyncio.Task]) -> None:
        """Read jkp's wait count once the pops up to a phase's end are answered."""
        await asyncio.gather(*tasks)
        self.waits[name] = await self.pop_waits()

    async def pop(self, client: AsyncHTTPClient, i: int, due: float) -> None:
        """Pop ``i`` of the trace, due at ``due``, through replica i mod REPLICAS."""
        jkp = self.replicas[i % len(self.replicas)]
        request = HTTPRequest(
            jkp.url + "/api/kernels/pop/",
            method="POST",
            body=json.dumps({"userId": f"{self.trace.name}-{i}"}),
            request_timeout=60,
        )
        sent = time.time()
        t0 = time.perf_counter()
        response = await client.fetch(request, raise_error=False)
        try:
            body = json.loads(response.body or b"{}")
        except ValueError:
            body = {}
        outcome = "ok" if response.code == 200 else f"{response.code} {body.get('reason', '')}"
        self.pops.append({"i": i, "late_s": sent - due, "seconds": time.perf_counter() - t0,
                          "code": response.code, "outcome": outcome, "sent": sent,
                          "kernel_id": body.get("id"),
                          "server_timing": response.headers.get("Server-Timing")})  # fmt: skip

    async def kernel_lives(self) -> list[dict]:
        """Every kernel the simulator started, with the moments of its life."""
        response = await AsyncHTTPClient().fetch(self.sim.url + "/bench/kernels")
        return json.loads(response.body)["kernels"]

    async def figures(self) -> dict:
        """What this run's users and its bill saw."""
        lives = await self.kernel_lives()
        served = [p for p in self.pops if p["code"] == 200]
        refused = [p for p in self.pops if p["code"] != 200]
        waited = self.waits["end"] - self.waits["start"]
        out = {
            "pool": self.config.name,
            "pops": len(self.pops),
            "served": len(served),
            "refused": len(refused),
            "refused_by": dict(collections.Counter(p["outcome"] for p in refused)),
            "waited": waited,
            # A refused pop was not served warm either.
            "warm": (len(served) - waited) / len(self.pops) if self.pops else 0.0,
            **time_to_kernel(served),
            "client_late_max_ms": 1000 * max((p["late_s"] for p in self.pops), default=0),
            **kernel_costs(lives, served, self.t0, self.t_end, self.scale),
            "slowest": slowest_timelines(self.pops, lives, [j.log_path for j in self.replicas]),
        }
        if "first_batch_end" in self.waits:
            last = self.trace.marks["first_batch_end"]
            after = [p for p in self.pops if p["i"] > last]
            n_served = len([p for p in after if p["code"] == 200])
            waited_after = self.waits["end"] - self.waits["first_batch_end"]
            out["warm_after_first_batch"] = (n_served - waited_after) / len(after) if after else 0.0
        return out

    def stop(self) -> None:
        """Stop the replicas and the simulator."""
        for item in [*self.replicas, self.sim]:
            self.stack.remove(item)


def time_to_kernel(served: list[dict]) -> dict:
    """p50/p99/max in ms of the pops served (compressed time, as measured)."""
    if not served:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = sorted(1000 * p["seconds"] for p in served)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"p50_ms": q[49], "p99_ms": q[98], "max_ms": ms[-1]}


def kernel_costs(
    lives: list[dict], served: list[dict], t0: float, t_end: float, scale: float
) -> dict:
    """Idle kernel-hours (ready, not handed out) in [t0, t_end] in real time, and the most
    kernels the pool held at once (starting or idle: requested, not handed out or deleted).

    A kernel leaves the pool when a pop claims it: as the pop was sent, or once the kernel
    was pooled if the pop waited for it. Its set-up reaches the simulator later (more so
    while a burst queues for the CPU), when jkp may already be starting its replacement.
    """
    claimed = {p["kernel_id"]: p["sent"] for p in served}
    idle = starting = 0.0
    events = []
    for life in lives:
        handed_out = life["handed_out"]
        if life["id"] in claimed:
            handed_out = max(claimed[life["id"]], life["pooled"] or life["ready"] or 0)
        gone = min(t for t in (handed_out, life["deleted"], t_end) if t is not None)
        ready = life["ready"] if life["ready"] is not None else gone
        idle += max(0.0, min(gone, t_end) - max(ready, t0))
        starting += max(0.0, min(ready, t_end) - max(life["requested"], t0))
        events += [(life["requested"], 1), (gone, -1)]
    held = peak = 0
    for t, step in sorted(events):
        held += step
        if t >= t0:  # the fill before the trace does not count, what it left does
            peak = max(peak, held)
    return {
        "idle_kernel_hours": idle * scale / 3600,
        "starting_kernel_hours": starting * scale / 3600,
        "peak_pool_kernels": peak,
    }


async def replay(trace: Trace, configs: list[Config], work: Path, stack: Stack,
                 redis: RedisServer) -> list[dict]:  # fmt: skip
    """All configurations of one trace side by side, from one common start, or each
    ``trace.stagger`` (real seconds) after the one before."""
    runs = [Run(trace, c, work, stack, redis) for c in configs]
    busy0, total0 = machine_jiffies()
    log(f"{trace.name}: starting {len(runs)} configurations ({len(trace.arrivals)} pops, "
        f"{trace.duration / trace.scale:.0f} s each, {trace.stagger / trace.scale:.0f} s "
        "apart)")  # fmt: skip
    await asyncio.gather(*(r.start() for r in runs))
    t0 = time.time() + 1.0
    stagger = trace.stagger / trace.scale
    await asyncio.gather(*(r.replay(t0 + k * stagger) for k, r in enumerate(runs)))
    results = [await r.figures() for r in runs]
    busy1, total1 = machine_jiffies()
    for res in results:
        res["machine_busy"] = (busy1 - busy0) / max(total1 - total0, 1)
    for r in runs:
        r.stop()
    for res in results:
        log(f"  {trace.name} {res['pool']}: warm {res['warm']:.1%}, p50 {res['p50_ms']:.0f} ms, "
            f"idle {res['idle_kernel_hours']:.1f} kernel-h, peak {res['peak_pool_kernels']}, "
            f"refused {res['refused']}")  # fmt: skip
    return results


async def replay_all(args, work: Path, stack: Stack, out: dict) -> None:
    redis = stack.add(RedisServer(work / "redis-traces"))
    await asyncio.to_thread(redis.start)
    minimum, maximum = (int(v) for v in args.adaptive.split(":"))
    adaptive = Config(maximum, minimum) if out["adaptive_available"] else None
    for make in TRACES.values() if args.trace is None else [TRACES[args.trace]]:
        trace = make(args.quick)
        trace.scale = args.time_scale or trace.scale
        configs = [Config(size) for size in trace.fixed_sizes] + ([adaptive] if adaptive else [])
        out["traces"][trace.name] = {
            "title": trace.title,
            "real_duration_s": trace.duration,
            "time_scale": trace.scale,
            "pops": len(trace.arrivals),
            "results": await replay(trace, configs, work, stack, redis),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trace replay's options on bench/run.py's command line."""
    parser.add_argument("--traces", action="store_true", help="run only the trace replay")
    parser.add_argument(
        "--trace", choices=list(TRACES), help="run only the trace replay, of this trace only"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        help=f"traces: real seconds per compressed second, for every trace (default "
        f"{DAY_TIME_SCALE} for the day, {BATCHES_TIME_SCALE} for the batches, "
        f"{CLASS_TIME_SCALE} for the classroom)",
    )
    parser.add_argument(
        "--adaptive",
        default="1:32",
        metavar="MIN:MAX",
        help="traces: min_pending_kernels:max_pending_kernels of the adaptive pool",
    )


def main(args: argparse.Namespace) -> int:
    """Replay the traces; print the table and write the figures to JSON."""
    work, stack, out, started = begin_run("jkp-traces-", args.quick)
    out.update(
        start_latency_s=START_LATENCY_S,
        adaptive=args.adaptive,
        adaptive_available=jkp_has_adaptive_pools(),
        traces={},
    )
    out["jkp_git"] = out["machine"]["jkp_git"]
    if not out["adaptive_available"]:
        log("adaptive pool skipped: this jkp has no PoolManager.min_pending_kernels")
    path = Path(args.json or REPO / ".stack" / "bench-traces.json")
    return run_and_report(
        replay_all(args, work, stack, out), work, stack, out, started, report, path, args.keep
    )
