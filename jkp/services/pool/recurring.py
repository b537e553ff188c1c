"""Bursts that recur: agents that fan out on a schedule (a batch of pops every few minutes).

The peak policy (sizing.py) holds a burst's size for its whole look-back, though between
bursts nobody needs those kernels: a batch of 10 every 2 minutes keeps 10 idle kernels for the
~90 s after their replacements are up. When the last RECURRING_BURSTS bursts came at regular
gaps, the next is expected one gap after the last: until one replacement time (start rounds
included) before it, the pool keeps only what the demand outside bursts needs, then starts
the burst's kernels. A burst that is not there when due ends the forecast: the pool is back
on the peak policy, which holds the burst's size (nothing retired early on a guess).

Everything is counted in the demand's time buckets (``sizing_interval`` wide), as the peak.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Mapping

from jkp.services.pool.arrivals import peak_arrivals

# A burst: at least this many arrivals within a quarter of a replacement time (at least two
# buckets). Agents fan out within a second or two, but a replica records each arrival only
# once it has the CPU for the pop; a day's Poisson arrivals, one per start, never make one.
BURST_ARRIVALS = 4
BURST_SHARE = 0.25
BURST_MIN_BUCKETS = 2
# Bursts recur when the last this many came at regular gaps (two gaps agreeing, not one).
RECURRING_BURSTS = 3
# A gap is regular within 10% of the median gap (at least two buckets).
GAP_TOLERANCE = 0.1
# A burst stands out: at least twice the most other arrivals within one replacement time
# (a busy hour's Poisson clusters are not bursts).
STAND_OUT = 2
# The burst's kernels are asked this share of a replacement time earlier than needed
# (at least two buckets): a start slower than the recent ones is still ready in time.
LEAD_MARGIN = 0.2


@dataclasses.dataclass(frozen=True)
class Burst:
    start: int  # its first bucket with arrivals
    end: int  # its last
    size: int  # its arrivals


@dataclasses.dataclass(frozen=True)
class Forecast:
    """The next burst of a recurring pattern; times in buckets."""

    due: float  # bucket the next burst is expected in
    size: int  # the largest of the recurring bursts
    period: float
    base: int  # the most arrivals outside bursts within one replacement time
    last_end: int  # the last bucket of the latest burst


def burst_width(window: int) -> int:
    """Buckets a burst's arrivals may spread over, for a replacement time of ``window``."""
    return max(BURST_MIN_BUCKETS, math.ceil(BURST_SHARE * window))


def find_bursts(buckets: Mapping[int, int], first: int, last: int, width: int) -> list[Burst]:
    """Bursts in buckets [first, last]: a run of windows of ``width`` buckets, each holding at
    least BURST_ARRIVALS and overlapping the one before, from the first bucket with arrivals
    of the run to the last (a pop of the trickle just before a burst may open it).

    One pass (read every sizing_interval, over up to ~1000 buckets): the window's end and the
    run's arrivals move forward with it."""
    arrived = sorted(b for b, n in buckets.items() if first <= b <= last and n > 0)
    counts = [buckets[b] for b in arrived]
    prefix = list(itertools.accumulate(counts, initial=0))  # arrivals before index i
    bursts: list[Burst] = []
    run_start = ends = 0  # index of the run's first bucket; of the first bucket past the window
    for i, bucket in enumerate(arrived):
        while ends < len(arrived) and arrived[ends] < bucket + width:
            ends += 1
        if prefix[ends] - prefix[i] < BURST_ARRIVALS:
            continue
        if bursts and bucket <= bursts[-1].end:  # overlaps the run: extend it
            bursts.pop()
        else:
            run_start = i
        bursts.append(
            Burst(arrived[run_start], arrived[ends - 1], prefix[ends] - prefix[run_start])
        )
    return bursts


def regular_period(bursts: list[Burst], slack: float) -> float | None:
    """The median gap of the last RECURRING_BURSTS bursts when every gap is within
    GAP_TOLERANCE of it (or ``slack`` buckets), else None."""
    if len(bursts) < RECURRING_BURSTS:
        return None
    starts = [b.start for b in bursts[-RECURRING_BURSTS:]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    period = statistics.median(gaps)
    if max(abs(g - period) for g in gaps) > max(slack, GAP_TOLERANCE * period):
        return None
    return period


def forecast(
    buckets: Mapping[int, int], now: float, lookback: float, window: int
) -> Forecast | None:
    """The next burst when the bursts of the look-back recur and it is not overdue.

    ``now`` and ``lookback`` in buckets; ``window`` is the replacement time in buckets."""
    width = burst_width(window)
    first = math.floor(now - lookback)
    # From one window earlier: a burst at the look-back's edge is not base demand.
    bursts = find_bursts(buckets, first - window - width, math.floor(now), width)
    period = regular_period([b for b in bursts if b.start >= first], BURST_MIN_BUCKETS)
    if period is None or period <= window:
        return None  # bursts closer than one replacement: the peak holds them anyway
    due = bursts[-1].start + period
    if now > due + max(BURST_MIN_BUCKETS, GAP_TOLERANCE * period) + width:
        return None  # overdue: the pattern broke
    in_bursts = frozenset(b for burst in bursts for b in range(burst.start, burst.end + 1))
    outside = {b: n for b, n in buckets.items() if b not in in_bursts}
    base = peak_arrivals(outside, now, window, lookback)
    recurring = bursts[-RECURRING_BURSTS:]
    if min(b.size for b in recurring) < STAND_OUT * base:
        return None
    size = max(b.size for b in recurring)
    return Forecast(due, size, period, base, bursts[-1].end)


def lead(window: int, rounds: int) -> float:
    """Buckets before a burst is due that its kernels are asked for: ``rounds`` replacement
    times (starts beyond one replica's slots wait a round) plus LEAD_MARGIN of one."""
    return window * rounds + max(2.0, LEAD_MARGIN * window)
