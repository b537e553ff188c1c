"""What the best pool could do on the day curve, for scale: a model, not a measurement.

A pool told the day's true rate (bench/trace_shapes.day_rate), which keeps S(t) kernels idle
or starting and replaces each one handed out a replacement time R later: the kernels being
replaced are Poisson with mean rate x R, a pop is served warm while fewer than S(t) are, and
the idle kernels are S(t) less those. Choosing S(t) minute by minute at the best trade-off
(one Lagrange multiplier for the whole day: a miss where the rate is high costs more pops)
gives the least idle kernel-hours any pool can spend for a day at a given share warm; a pool
that must learn the rate from arrivals spends more. The fixed pools are computed the same
way, so the report can set the bound against the measured ones.
"""

from __future__ import annotations

import math

from trace_shapes import DAY, day_rate

STEP = 60.0  # seconds: the rate changes little within a minute
MAX_EXTRA = 16  # sizes considered above the minimum (the day's peak needs ~5)


def kernels_short(mean: float, kernels: int) -> float:
    """P(at least ``kernels`` of a Poisson(``mean``) are being replaced): a pop then waits."""
    term, below = math.exp(-mean), 0.0
    for n in range(kernels):
        below += term
        term *= mean / (n + 1)
    return max(0.0, 1.0 - below)


def idle_kernels(mean: float, kernels: int) -> float:
    """Expected idle kernels of a pool of ``kernels`` while Poisson(``mean``) are replaced."""
    term, idle = math.exp(-mean), 0.0
    for n in range(kernels):
        idle += (kernels - n) * term
        term *= mean / (n + 1)
    return idle


def _minutes(replacement_s: float) -> list[tuple[float, float]]:
    """(kernels being replaced on average, pops) of each minute of the day."""
    return [(day_rate(t) * replacement_s, day_rate(t) * STEP) for t in range(0, int(DAY), 60)]


def fixed_pool(size: int, replacement_s: float) -> tuple[float, float]:
    """(share warm, idle kernel-hours) of a fixed pool in this model."""
    minutes = _minutes(replacement_s)
    pops = sum(p for _, p in minutes)
    missed = sum(p * kernels_short(m, size) for m, p in minutes)
    idle = sum(idle_kernels(m, size) * STEP for m, _ in minutes)
    return 1 - missed / pops, idle / 3600


def best_pool(replacement_s: float, warm: float, minimum: int = 1) -> tuple[float, float]:
    """(share warm, idle kernel-hours) of the cheapest pool told the rate that is at least
    ``warm`` warm over the day, its size at least ``minimum``."""
    minutes = _minutes(replacement_s)
    pops = sum(p for _, p in minutes)
    # Per minute, per size: (idle kernel-seconds, pops that wait).
    options = [[(idle_kernels(mean, k) * STEP, p * kernels_short(mean, k))
                for k in range(minimum, minimum + MAX_EXTRA)] for mean, p in minutes]  # fmt: skip

    def plan(weight: float) -> tuple[float, float]:
        chosen = [min(sizes, key=lambda o: o[0] + weight * o[1]) for sizes in options]
        return 1 - sum(o[1] for o in chosen) / pops, sum(o[0] for o in chosen) / 3600

    low, high = 1.0, 1e7  # a miss's weight in idle kernel-seconds: bisect on its log
    for _ in range(40):
        mid = math.sqrt(low * high)
        if plan(mid)[0] >= warm:
            high = mid
        else:
            low = mid
    return plan(high)
