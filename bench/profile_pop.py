"""Where a pop's time goes: per-step timings and a pyinstrument profile of jkp during pops.

    .venv/bin/python bench/profile_pop.py [--pops 20] [--gap 0.05] [--html PATH]

Starts a real Redis and a real Enterprise Gateway (dev/localstack.py) and jkp in this process,
fills a pool of 2 x pops kernels, then pops one kernel at a time, ``--gap`` seconds apart, with
refills held off (so this measures the pop itself, not kernel starts loading a small machine).
Prints the median and p95 of each step over the first half, timed without a profiler, and
pyinstrument's view of jkp's own Python time during the second half. Then, with jkp stopped,
the same set-up sent straight to EG on a kernel of its own, beside EG's floor (a
kernel_info round trip on another): what the set-up costs EG and the kernel, without jkp.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "dev"))
sys.path.insert(0, str(REPO / "bench"))

import localstack  # noqa: E402
from kernel_channels import (  # noqa: E402
    answers,
    arm_set_up,
    delete_kernels,
    floor_channel,
    send_shell,
    straight_set_up,
)
from pyinstrument import Profiler  # noqa: E402

from jkp.app import JKPManagerApp  # noqa: E402

# The steps of a pop, in order: (object attribute, method, label).
STEPS = [
    ("store", "claim", "claim (Redis script: RPOP + record)"),
    ("gateway", "comm_request", "set-up comm message, until the kernel is idle"),
    ("store", "hand_over", "hand over (Redis script, beside the set-up's end)"),
    ("pool", "pop", "whole pop, inside jkp"),
]


def _time_calls(obj, name, samples):
    """Wrap ``obj.name`` so every call's duration (ms) lands in ``samples``."""
    method = getattr(obj, name)

    @functools.wraps(method)
    async def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            samples.append((time.perf_counter() - started) * 1000)

    setattr(obj, name, timed)


def _summary(values):
    values = sorted(values)
    p95 = values[max(0, round(0.95 * len(values)) - 1)]
    return f"{statistics.median(values):7.2f} {p95:7.2f}"


async def main(pops: int, gap: float, html: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="jkp-profile-"))
    redis_server = localstack.RedisServer(work / "redis").start()
    gateway = localstack.EnterpriseGateway(work / "eg").start()
    (work / "shared").mkdir()
    app = JKPManagerApp()
    app.initialize(
        [
            f"--port={localstack.free_port()}",
            f"--RedisStore.redis_url={redis_server.url}",
            f"--GatewayClient.url={gateway.url}",
            f"--PoolManager.working_dir={work / 'shared'}",
            "--PoolManager.nfs_volume_server=",
            f"--max-pending-kernels={2 * pops}",
            "--PoolManager.activation_interval=0",
            "--PoolManager.refill_delay=3600",  # no kernel start during the pops
            "--log-level=WARN",
        ]
    )
    await app.start_services()
    targets = {"store": app.pool_manager.store, "gateway": app.gateway, "pool": app.pool_manager}
    samples = {label: [] for _, _, label in STEPS}
    profiler = Profiler(async_mode="enabled")
    try:
        while (await app.pool_manager.store.counts())["idle"] < 2 * pops:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        for attr, name, label in STEPS:
            _time_calls(targets[attr], name, samples[label])
        # Timed first without the profiler, whose overhead would inflate them.
        for i in range(pops):
            await app.pool_manager.pop(f"timed{i}")
            await asyncio.sleep(gap)
        for i in range(pops):
            profiler.start()
            await app.pool_manager.pop(f"profiled{i}")
            profiler.stop()
            await asyncio.sleep(gap)
    finally:
        await app.stop_services()
    try:
        straight = await straight_on_eg(gateway, work / "shared", pops)
    finally:
        gateway.stop()
        redis_server.stop()
    print(f"{'step (first ' + str(pops) + ' pops, no profiler)':48} {'p50 ms':>7} {'p95 ms':>7}")
    for label, values in samples.items():
        print(f"{label:48} {_summary(values[:pops])}")
    print(f"\njkp's Python time during the next {pops} pops (pyinstrument):")
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    if html:
        Path(html).write_text(profiler.output_html())
    print(f"\nStraight on EG, no jkp ({pops} of each, interleaved)            p50 ms  p95 ms")
    for label, values in straight.items():
        print(f"{label:62} {_summary(values)}")


async def straight_on_eg(gateway, shared: Path, n: int) -> dict[str, list[float]]:
    """``n`` set-ups sent straight to EG, each to a kernel of its own armed as jkp arms its
    kernels, beside EG's floor on another kernel, interleaved: milliseconds by label."""
    floor_id, floor = await floor_channel(gateway)
    times: dict[str, list[float]] = {
        "EG floor: kernel_info, to its reply": [],
        "EG floor: kernel_info, to the kernel's idle status": [],
        "the set-up comm message, to its answer (comm_close)": [],
        "the set-up comm message, to the kernel's idle status": [],
    }
    ids = [floor_id]
    try:
        for i in range(n):
            kernel_id, conn = await floor_channel(gateway)
            ids.append(kernel_id)
            await arm_set_up(conn, f"set-up-{i}")
            await asyncio.sleep(0.1)
            sent = await send_shell(floor, "kernel_info_request", {})
            got = await answers(floor, sent, {"kernel_info_reply", "idle"})
            times["EG floor: kernel_info, to its reply"].append(1000 * got["kernel_info_reply"])
            times["EG floor: kernel_info, to the kernel's idle status"].append(1000 * got["idle"])
            await asyncio.sleep(0.05)
            got = await straight_set_up(conn, f"set-up-{i}", shared, f"straight-{i}")
            times["the set-up comm message, to its answer (comm_close)"].append(
                1000 * got["comm_close"]
            )
            times["the set-up comm message, to the kernel's idle status"].append(1000 * got["idle"])
            conn.close()
    finally:
        floor.close()
        await delete_kernels(gateway, ids)
    return times


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pops", type=int, default=20, help="pops timed, then as many profiled")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between pops")
    parser.add_argument("--html", help="also write pyinstrument's HTML report here")
    args = parser.parse_args()
    asyncio.run(main(args.pops, args.gap, args.html))
