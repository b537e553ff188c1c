"""Arrivals counted in time buckets: the most within a window, which sizing.py's peak and
recurring.py's base demand both read."""

from __future__ import annotations

import math
from collections.abc import Mapping


def peak_arrivals(buckets: Mapping[int, int], now: float, window: int, lookback: float) -> int:
    """Most arrivals within ``window`` consecutive buckets ending in the last ``lookback``
    buckets before ``now``; ``buckets`` maps a time bucket (e.g. a Unix second) to its
    arrivals, and ``now`` and ``lookback`` are counted in buckets."""
    start = math.floor(now - lookback) - window + 1
    seconds = sorted(s for s in buckets if start <= s <= now)
    peak = inside = 0
    first = 0
    for second in seconds:
        inside += buckets[second]
        while seconds[first] <= second - window:
            inside -= buckets[seconds[first]]
            first += 1
        peak = max(peak, inside)
    return peak
