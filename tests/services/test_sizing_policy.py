"""The sizing policy as pure functions: arrivals per second and start latencies in, target out."""

from jkp.services.pool.sizing import (
    DEFAULT_START_LATENCY,
    HEADROOM,
    demand,
    peak_arrivals,
    retry_after,
    start_latency,
)
from jkp.services.store import DemandData

NOW = 1_000_000.5


def test_no_arrivals_keep_the_minimum():
    assert demand(DemandData(NOW, {}, [3.0]), 2, 16, 600).target == 2


def test_target_is_the_peak_within_one_replacement_time_plus_headroom():
    # A pop a second for 10 s: a replacement takes refill_delay 1 + start 3.5 -> 5 s window.
    buckets = {int(NOW) - i: 1 for i in range(10)}
    result = demand(DemandData(NOW, buckets, [3.5]), 0, 16, 600, refill_delay=1)
    assert (result.window, result.peak, result.arrivals) == (5, 5, 10)
    assert result.target == 5 + HEADROOM


def test_a_burst_raises_the_target_at_once_and_within_the_maximum():
    buckets = {int(NOW): 12}
    assert demand(DemandData(NOW, buckets, [3.5]), 2, 16, 600).target == 12 + HEADROOM
    assert demand(DemandData(NOW, buckets, [3.5]), 2, 8, 600).target == 8


def test_a_burst_holds_the_target_until_the_lookback_has_passed():
    burst = int(NOW) - 100
    buckets = {burst: 12}
    assert demand(DemandData(NOW, buckets, [3.0]), 2, 16, 101).target == 13
    # Once the burst's last window ends before the look-back: the minimum again.
    assert demand(DemandData(NOW, buckets, [3.0]), 2, 16, 95).target == 2


def test_a_longer_lookback_never_gives_a_lower_target():
    buckets = {int(NOW) - s: (s % 7) for s in range(0, 700, 3)}
    data = DemandData(NOW, buckets, [4.0])
    targets = [demand(data, 1, 50, lookback).target for lookback in range(0, 700, 10)]
    assert targets == sorted(targets)


def test_peak_counts_arrivals_in_consecutive_seconds_only():
    buckets = {100: 3, 101: 1, 104: 4, 105: 2}
    assert peak_arrivals(buckets, 106, window=2, lookback=10) == 6
    assert peak_arrivals(buckets, 106, window=5, lookback=10) == 8
    assert peak_arrivals(buckets, 106, window=1, lookback=10) == 4


def test_start_latency_is_the_median_of_recent_starts():
    assert start_latency([3.0, 9.0, 4.0]) == 4.0
    assert start_latency([]) == DEFAULT_START_LATENCY


def test_retry_after_is_the_start_latency_less_the_oldest_start_age():
    lease = 300.0
    started_2s_ago = NOW - 2 + lease
    assert retry_after(DemandData(NOW, {}, [5.0], started_2s_ago), lease) == 3
    assert retry_after(DemandData(NOW, {}, [5.0]), lease) == 5
    assert retry_after(DemandData(NOW, {}, [5.0], NOW - 60 + lease), lease) == 1


def test_finer_buckets_size_the_window_to_the_replacement_time_not_whole_seconds():
    # Starts of 0.2 s (e.g. a replay compressed 150x): 6 pops spread over one second, one
    # every 0.2 s, in buckets of 0.05 s. A window of whole seconds would hold all 6.
    width = 0.05
    now_bucket = int(NOW / width)
    buckets = {now_bucket - 4 * i: 1 for i in range(6)}
    data = DemandData(NOW, buckets, [0.2], bucket_seconds=width)
    result = demand(data, 1, 16, 10, refill_delay=0.05)
    assert result.window == 0.25
    assert result.peak == 2
    assert result.target == 2 + HEADROOM


def batches(first: int, every: int, count: int, size: int = 10) -> dict[int, int]:
    """``count`` bursts of ``size`` pops in one second, ``every`` seconds from ``first``."""
    return {first + k * every: size for k in range(count)}


def test_recurring_bursts_keep_only_the_rest_of_the_demand_between_them():
    # Batches of 10 every 120 s, the last 20 s ago; starts of 30 s: the next is due in 100 s.
    now = int(NOW)
    buckets = batches(now - 20 - 240, 120, 3)
    buckets[now - 70] = 1  # a trickle pop between batches
    result = demand(DemandData(NOW, buckets, [30.0]), 1, 32, 600, refill_delay=1)
    assert result.next_burst == {"in": 99.5, "size": 10, "every": 120}
    # The peak policy would hold 11; the trickle pop's peak (1) + headroom instead.
    assert result.peak == 10
    assert result.target == 1 + HEADROOM


def test_a_recurring_burst_is_asked_for_one_replacement_time_before_it_is_due():
    now = int(NOW)
    window = 31  # refill_delay 1 + start 30
    lead = window + max(2, 0.2 * window)
    # Due in just over the lead: not yet; within it: the burst's 10 on top.
    for due_in, extra in ((lead + 2, 0), (lead - 1, 10), (1, 10)):
        buckets = batches(now + int(due_in) - 360, 120, 3)
        target = demand(DemandData(now, buckets, [30.0]), 1, 32, 600, refill_delay=1).target
        assert target == max(1, extra), due_in
    # With 4 starts at once per replica, 10 starts take three rounds: asked for three
    # replacement times ahead.
    buckets = batches(now + 3 * window - 360, 120, 3)
    assert demand(DemandData(now, buckets, [30.0]), 1, 32, 600, 1, start_slots=4).target == 10
    assert demand(DemandData(now, buckets, [30.0]), 1, 32, 600, 1, start_slots=10).target == 1


def test_an_overdue_burst_ends_the_forecast_and_the_peak_holds_the_burst():
    now = int(NOW)
    buckets = batches(now - 20 - 360, 120, 3)  # the fourth was due 20 s ago
    result = demand(DemandData(NOW, buckets, [30.0]), 1, 32, 600, refill_delay=1)
    assert result.next_burst is None
    assert result.target == 10 + HEADROOM


def test_irregular_bursts_are_not_forecast():
    now = int(NOW)
    buckets = {now - 300: 10, now - 200: 10, now - 20: 10}  # gaps of 100 s and 180 s
    result = demand(DemandData(NOW, buckets, [30.0]), 1, 32, 600, refill_delay=1)
    assert result.next_burst is None
    assert result.target == 10 + HEADROOM


def test_trims_keep_a_burst_being_served_and_never_undercut_the_start_target():
    now = int(NOW)
    buckets = batches(now - 240, 120, 3)  # the third burst is arriving now
    starts = demand(DemandData(NOW, buckets, [30.0]), 1, 32, 600, refill_delay=1)
    trims = demand(DemandData(NOW, buckets, [30.0]), 1, 32, 660, 1, for_trims=True)
    assert starts.target == 1  # its replacements wait for the next burst
    assert trims.target == 10  # its pops may still claim the kernels asked for it


def test_pops_waiting_in_line_keep_starts_under_way_for_them():
    now = int(NOW)
    buckets = batches(now - 240, 120, 3, size=10)
    data = DemandData(NOW, buckets, [30.0], waiting=6)
    assert demand(data, 1, 32, 600, refill_delay=1).target == 6


def test_a_burst_spread_over_seconds_and_opened_by_a_trickle_pop_is_one_burst():
    now = int(NOW)
    buckets: dict[int, int] = {}
    for k in range(3):  # 10 pops over 6 s every 120 s, the first after a lone pop
        start = now - 300 + 120 * k
        buckets[start - 3] = 1
        for i in range(10):
            buckets[start + i * 6 // 10] = buckets.get(start + i * 6 // 10, 0) + 1
    result = demand(DemandData(NOW, buckets, [30.0]), 1, 32, 600, refill_delay=1)
    assert result.next_burst is not None
    assert result.next_burst["size"] == 11 and result.next_burst["every"] == 120
    # The bursts' pops are not the base demand: only the minimum is kept between them.
    assert result.target == 1


def test_bursts_that_do_not_stand_out_of_the_other_demand_are_not_forecast():
    # A busy hour: 4 pops within a second every 60 s, but 3 other pops within each 31 s too.
    now = int(NOW)
    buckets = batches(now - 200, 60, 4, size=4)
    for start in (now - 230, now - 170, now - 110, now - 50):
        buckets.update({start: 1, start + 5: 1, start + 10: 1})
    result = demand(DemandData(NOW, buckets, [30.0]), 1, 32, 600, refill_delay=1)
    assert result.next_burst is None
    assert result.target == result.peak + HEADROOM
