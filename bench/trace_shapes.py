"""The traces the trace replay (bench/traces.py) replays: pop arrival times in real seconds,
and the constants of the replay they are drawn with."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

START_LATENCY_S = 30.0  # a kernel pod's start on Kubernetes (10-60 s), in real seconds


DAY_TIME_SCALE = 180  # 30 s -> 167 ms: ~10x jkp's own pop time; a day -> 8 min


BATCHES_TIME_SCALE = 60  # 30 s -> 500 ms; an hour of batches -> 60 s


CLASS_TIME_SCALE = 20  # 30 s -> 1.5 s; the class's 30 pops and 30 starts over 3 s, not 1


# Real seconds between the starts of the classroom's configurations: each one's class (60 s,
# its starts and their pooling ~40 s more) comes while the others are quiet, instead of
# all four bursts (12 processes, 120 starts) at once on 2 cores.
CLASS_STAGGER_S = 200.0


POP_TIMEOUT_S = 120.0  # real seconds: a pop may wait for several starts, not fail after one


REFILL_DELAY_S = 1.0  # jkp's default, compressed like the rest


SCALE_DOWN_DELAY_S = 600.0  # the default


MAX_CONCURRENT_STARTS = 32  # per replica: a cluster starts pods side by side


REPLICAS = 2


BATCH_SIZE = 10


CLASS_SIZE = 30


DAY = 24 * 3600.0


SEED = 23


@dataclass
class Trace:
    """Arrival times (real seconds from the trace's start) and the pools it is replayed on."""

    name: str
    title: str
    duration: float
    arrivals: list[float]
    fixed_sizes: tuple[int, ...]
    scale: float  # real seconds per compressed second
    # Arrivals that end a phase the checks look at, by name (e.g. the first batch's last).
    marks: dict[str, int] = field(default_factory=dict)
    # Real seconds between the starts of its configurations' replays (0: all at once).
    stagger: float = 0.0


def poisson(rng: random.Random, rate, start: float, end: float, peak: float) -> list[float]:
    """Arrivals of a Poisson process of ``rate(t)`` (per second, at most ``peak``) in
    [start, end), by thinning."""
    times, t = [], start
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return times
        if rng.random() * peak < rate(t):
            times.append(t)


DAY_PEAK_RATE = 1 / START_LATENCY_S  # one pop per start latency at 16:00


def day_rate(t: float) -> float:
    """The day's pops per second at ``t`` seconds after midnight: lowest at 04:00, highest at
    16:00 (40x), log-cosine in between."""
    s = (1 - math.cos(2 * math.pi * (t - 4 * 3600) / DAY)) / 2
    return DAY_PEAK_RATE * 40 ** (s - 1)


def day_trace(quick: bool) -> Trace:
    """Poisson arrivals at day_rate."""
    # Quick: the morning ramp only (09:00-12:00), where a pool must grow.
    start, end = (9 * 3600.0, 12 * 3600.0) if quick else (0.0, DAY)
    times = poisson(random.Random(SEED), day_rate, start, end, DAY_PEAK_RATE)
    # The yardstick is the smallest fixed pool at 99% (6 in these runs): every size up to it
    # runs, none above (each configuration is 3 more processes on the same cores).
    sizes = (2, 8) if quick else (2, 4, 5, 6)
    return Trace("day", "day curve (Poisson, 40x night to peak)", end - start,
                 [t - start for t in times], sizes, DAY_TIME_SCALE)  # fmt: skip


def batches_trace(quick: bool) -> Trace:
    """A batch of BATCH_SIZE pops at once every 2 min from minute 1, over a trickle of one a
    minute (Poisson)."""
    duration = 900.0 if quick else 3600.0
    rng = random.Random(SEED + 1)
    trickle = poisson(rng, lambda t: 1 / 60, 0, duration, 1 / 60)
    batch_times = [60.0 + 120 * k for k in range(int((duration - 60) // 120))]
    times = sorted(trickle + [t for t in batch_times for _ in range(BATCH_SIZE)])
    first_batch_end = max(i for i, t in enumerate(times) if t == batch_times[0])
    sizes = (2, 10) if quick else (2, 5, 10, 15)
    return Trace("batches", f"agents: {BATCH_SIZE} at once every 2 min over a trickle",
                 duration, times, sizes, BATCHES_TIME_SCALE,
                 {"first_batch_end": first_batch_end})  # fmt: skip


def classroom_trace(quick: bool) -> Trace:
    """A trickle of one pop per 5 min; after 20 quiet minutes (quick: 5), CLASS_SIZE pops
    within 60 s; then 9 more minutes (quick: 3)."""
    quiet, after = (300.0, 180.0) if quick else (1200.0, 540.0)
    duration = quiet + 60 + after
    rng = random.Random(SEED + 2)
    trickle = poisson(rng, lambda t: 1 / 300, 0, duration, 1 / 300)
    times = sorted(trickle + [quiet + rng.uniform(0, 60) for _ in range(CLASS_SIZE)])
    sizes = (2, 30) if quick else (2, 10, 30)
    return Trace("classroom", f"classroom: {CLASS_SIZE} within 60 s, unannounced", duration,
                 times, sizes, CLASS_TIME_SCALE, stagger=CLASS_STAGGER_S)  # fmt: skip
