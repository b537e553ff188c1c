"""How big a pool should be: the policy (pure functions) and the Sizer that reads its inputs.

Between ``min_pending_kernels`` and ``max_pending_kernels``, a pool's target is the peak
number of pops and warm creates that arrived within any window of one replacement time
(``refill_delay`` plus the 90th percentile of the pool's recent start latencies) over the last
``scale_down_delay`` seconds, plus ``HEADROOM``. A kernel handed out is replaced one
replacement time later, so that many kernels cover the worst stretch seen lately. Arrivals
are counted in Redis, in time buckets of ``sizing_interval`` seconds, by every replica's
claims, and every replica computes the same target from the same data and Redis' clock (see
docs/sizing.md). Bursts that recur at regular gaps are expected instead (recurring.py): the
pool keeps what the rest of the demand needs and asks for the burst's kernels just before it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Protocol

from traitlets import TraitError

from jkp.services.pool import recurring
from jkp.services.pool.arrivals import peak_arrivals
from jkp.services.store import DemandData, PoolStore

# Added to a non-zero peak: the arrival in the current, partly counted bucket, and a start
# slower than the 90th percentile. Measured (docs/sizing.md): a pop every 1.5 s was served
# warm 100% of the time with it and without it on a moderately loaded machine, holding 5
# kernels instead of 4; it is the margin for a machine under more load than the recent starts.
HEADROOM = 1
# The share of recent starts a replacement time covers: with the median, a pool under load
# (starts of 3.6-7.6 s) served a pop every 1.5 s warm only 79% of the time.
SLOW_START_QUANTILE = 0.9
# Start latency assumed until the pool has measured one (a local kernel ~1 s, a pod 10-60 s).
DEFAULT_START_LATENCY = 10.0
# Trims look back this much longer than starts: a replica that reads Redis' clock a little
# later never retires what another just started for the same arrivals.
TRIM_LOOKBACK_FACTOR = 1.1
TRIM_LOOKBACK_MARGIN = 2.0
# Arrivals are kept this much longer than the trims' look-back: the first window of the
# look-back begins one window (refill_delay + start latency) before it.
_WINDOW_ALLOWANCE = 300.0


class SizingOptions(Protocol):
    """The options of a pool that its size depends on (PoolManager's traits)."""

    min_pending_kernels: int | None
    max_pending_kernels: int
    scale_down_delay: float
    refill_delay: float
    sizing_interval: float
    max_concurrent_starts: int


@dataclasses.dataclass(frozen=True)
class Demand:
    """A pool's target and the demand behind it, as /api/pool shows them."""

    target: int
    peak: int  # most arrivals within one window of ``window`` seconds in the look-back
    latency: float  # median recent start latency (L)
    # refill_delay + the slow (90th percentile) start latency, in whole buckets of arrivals
    window: float
    arrivals: int  # arrivals in the look-back
    # Recurring bursts: seconds until the next is due (negative: late), its size, the gap.
    next_burst: dict[str, float] | None = None

    def as_dict(self) -> dict[str, object]:
        """The demand for /api/pool (without the target, shown beside the bounds)."""
        return {
            "peak": self.peak,
            "start_latency": round(self.latency, 3),
            "window": self.window,
            "arrivals": self.arrivals,
            "next_burst": self.next_burst,
        }


def start_latency(latencies: Sequence[float]) -> float:
    """The median of the recent start latencies; DEFAULT_START_LATENCY before any."""
    return statistics.median(latencies) if latencies else DEFAULT_START_LATENCY


def slow_start_latency(latencies: Sequence[float]) -> float:
    """The 90th percentile (nearest rank) of the recent start latencies: what a replacement
    takes when starts are slow, as they are under load; DEFAULT_START_LATENCY before any."""
    if not latencies:
        return DEFAULT_START_LATENCY
    ordered = sorted(latencies)
    return ordered[math.ceil(SLOW_START_QUANTILE * len(ordered)) - 1]


def demand(
    data: DemandData,
    minimum: int,
    maximum: int,
    lookback: float,
    refill_delay: float = 0.0,
    start_slots: int = 0,
    for_trims: bool = False,
) -> Demand:
    """The target between ``minimum`` and ``maximum`` for the arrivals and start latencies in
    ``data``, looking back ``lookback`` seconds from its ``now``.

    When bursts recur, the target is the peak of the other arrivals plus, from one
    replacement time before the next burst is due (one per round of ``start_slots`` starts,
    when given), its size; never below the pops waiting.
    ``for_trims``: the target trims retire down to, never below what starts fill up to a
    little earlier or later (the burst asked for a margin sooner, the latest burst's size kept
    for one window after it). Times are counted in the data's buckets: the window is whole
    buckets."""
    width = data.bucket_seconds
    latency = start_latency(data.latencies)
    window = max(1, math.ceil((refill_delay + slow_start_latency(data.latencies)) / width))
    now, lookback_buckets = data.now / width, lookback / width
    peak = peak_arrivals(data.buckets, now, window, lookback_buckets)
    wanted = peak + HEADROOM if peak else 0
    first = (data.now - lookback) / width
    arrivals = sum(n for b, n in data.buckets.items() if b >= first)
    expected = recurring.forecast(data.buckets, now, lookback_buckets, window)
    next_burst = None
    if expected is not None:
        wanted = expected.base + HEADROOM if expected.base else 0
        rounds = math.ceil(expected.size / start_slots) if start_slots > 0 else 1
        ahead = recurring.lead(window, rounds)
        due_soon = expected.due - now <= ahead
        if for_trims:
            # Asked for a margin sooner; and the latest burst's kernels are kept while its
            # pops may still claim them (one replacement time after it).
            due_soon = due_soon or expected.due - now <= 2 * ahead - window * rounds
            due_soon = due_soon or now <= expected.last_end + window
        if due_soon:
            wanted += expected.size
        next_burst = {
            "in": round((expected.due - now) * width, 3),
            "size": expected.size,
            "every": round(expected.period * width, 3),
        }
    wanted = max(wanted, data.waiting)
    target = min(maximum, max(minimum, wanted))
    return Demand(target, peak, latency, round(window * width, 6), arrivals, next_burst)


def check_bounds(options: SizingOptions) -> None:
    """Refuse at start-up a minimum above the maximum."""
    minimum = options.min_pending_kernels
    if minimum is not None and minimum > options.max_pending_kernels:
        raise TraitError(
            f"min_pending_kernels ({minimum}) must not exceed max_pending_kernels "
            f"({options.max_pending_kernels})"
        )


def retry_after(data: DemandData, start_lease: float) -> int:
    """Whole seconds until a kernel is expected: the start latency less the age of the oldest
    start under way (its lease began ``start_lease`` before it expires); at least 1."""
    latency = start_latency(data.latencies)
    if data.oldest_start_expiry is not None:
        latency -= data.now - (data.oldest_start_expiry - start_lease)
    return max(1, math.ceil(latency))


class Sizer:
    """Reads a pool's demand from Redis and turns it into its targets: the one starts fill up
    to, and the (never lower) one trims retire down to. A fixed pool (minimum equal to
    maximum) reads nothing: both are its maximum.

    ``options`` has the pool's min_pending_kernels, max_pending_kernels, scale_down_delay,
    refill_delay and sizing_interval, read when used (so a bad value is reported by the
    start-up check).
    """

    def __init__(self, store: PoolStore, options: SizingOptions):
        self.store = store
        self.options = options
        self.last: Demand | None = None
        # Idle plus starting kernels (any spec) when last read; None: not read.
        self.held: int | None = None

    @property
    def maximum(self) -> int:
        """max_pending_kernels."""
        return self.options.max_pending_kernels

    @property
    def minimum(self) -> int:
        """min_pending_kernels; the maximum when unset (or above it)."""
        minimum = self.options.min_pending_kernels
        return self.maximum if minimum is None else min(minimum, self.maximum)

    @property
    def adaptive(self) -> bool:
        """Whether the target follows demand (minimum below maximum)."""
        return self.minimum < self.maximum

    @property
    def trim_lookback(self) -> float:
        """The look-back of trims."""
        return self.options.scale_down_delay * TRIM_LOOKBACK_FACTOR + TRIM_LOOKBACK_MARGIN

    @property
    def keep_seconds(self) -> float:
        """How long arrivals are kept in Redis."""
        return self.trim_lookback + _WINDOW_ALLOWANCE

    @property
    def arrivals_ttl(self) -> int:
        """Seconds a claim keeps the arrivals hash alive; 0 for a fixed pool (none recorded)."""
        return math.ceil(self.keep_seconds) if self.adaptive else 0

    async def targets(self) -> tuple[int, int]:
        """The start target and the trim target, read from Redis now (one script)."""
        if not self.adaptive:
            return self.maximum, self.maximum
        data = await self.store.demand(self.keep_seconds, self.options.sizing_interval)
        lookback, refill_delay = self.options.scale_down_delay, self.options.refill_delay
        # A burst beyond one replica's start slots is started in rounds.
        slots = self.options.max_concurrent_starts
        starts = demand(data, self.minimum, self.maximum, lookback, refill_delay, slots)
        trims = demand(
            data, self.minimum, self.maximum, self.trim_lookback, refill_delay, slots, True
        )
        self.last, self.held = starts, data.held
        # A forecast read over the longer look-back may see a pattern the shorter does not.
        return starts.target, max(starts.target, trims.target)
