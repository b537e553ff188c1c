"""Prometheus metrics of one jkp process, in a registry of its own (no global state).

Every pool metric has a ``pool`` label (the kernel spec's name); a pool counts through its
``PoolMetrics``, a view of the process's ``Metrics`` with that label already set.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Pops are milliseconds when served from the pool, seconds when they wait for a kernel.
_POP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A pop's steps (claim, set-up, hand-over, response) take from well under a millisecond to seconds.
_STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
# Time to kernel: a warm hand-out takes milliseconds, a wait about one start, a cold create
# EG's answer to its start request.
_TIME_TO_KERNEL_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
# Local kernels start in ~0.4 s, Kubernetes pods in 10-60 s.
_START_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

# Label values shown at 0 from the start, so a dashboard sees every series.
_KNOWN_LABELS = {
    "pops": [(o,) for o in ("served", "repeated", "pool_empty", "abandoned", "error")],
    "kernel_starts": [("ready",), ("failed",)],
    "activations": [("ok",), ("failed",)],
    "errors": [("redis",), ("gateway",)],
    "pop_waits": [()],
    "time_to_kernel": [("warm",), ("waited",), ("cold",)],
    "idle_kernel_seconds": [()],
    "takeovers": [("start", "adopted"), ("start", "removed"), ("start", "deferred"),
                  ("late", "adopted"), ("late", "removed"), ("claim", "released"),
                  ("claim", "removed")],
}  # fmt: skip


class Metrics:
    """What jkp counts, per pool: pops, kernel starts, activations, takeovers, the pool's size,
    Redis and EG errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        def family(kind: Any, name: str, what: str, labels: tuple[str, ...] = (), **kw: Any):
            return kind(name, what, ["pool", *labels], registry=self.registry, **kw)

        self.pop_duration = family(
            Histogram,
            "jkp_pop_duration_seconds",
            "Time to answer a pop, by outcome",
            ("outcome",),
            buckets=_POP_BUCKETS,
        )
        self.pop_steps = family(
            Histogram,
            "jkp_pop_step_seconds",
            "Time of each step of a pop: claim (waits on an empty pool included), set_up, "
            "hand_over, response (writing the answer)",
            ("step",),
            buckets=_STEP_BUCKETS,
        )
        self.pops = family(
            Counter,
            "jkp_pops",
            "Pops by outcome: served, repeated (same Idempotency-Key), pool_empty, abandoned "
            "(the caller hung up), conflict (an Idempotency-Key or kernel id in use), refused "
            "(the user holds max_kernels_per_user kernels), error",
            ("outcome",),
        )
        self.pop_waits = family(
            Counter,
            "jkp_pop_waits",
            "Pops that found no idle kernel and waited for one (misses; the other pops are hits)",
        )
        self.idle_kernels = family(
            Gauge, "jkp_idle_kernels", "Idle kernels in the pool (all replicas)"
        )
        self.starting_kernels = family(
            Gauge, "jkp_starting_kernels", "Kernels being started (all replicas, unexpired leases)"
        )
        self.target_kernels = family(Gauge, "jkp_target_kernels", "The pool's size")
        self.pool_target = family(
            Gauge,
            "jkp_pool_target",
            "Kernels the pool keeps idle or starting now: max_pending_kernels for a fixed "
            "pool, else what its demand asks, between min_pending_kernels and it",
        )
        self.time_to_kernel = family(
            Histogram,
            "jkp_time_to_kernel_seconds",
            "Time until a pop or create had its kernel, as its user sees it: served warm "
            "(an idle kernel was there), waited (for a start), cold (a create EG started; "
            "EG answers before the kernel is ready)",
            ("served",),
            buckets=_TIME_TO_KERNEL_BUCKETS,
        )
        self.idle_kernel_seconds = family(
            Counter,
            "jkp_idle_kernel_seconds",
            "Seconds kernels spent idle in the pool, counted when one leaves it (handed out "
            "or retired) through this replica: what the pool's warmth costs",
        )
        self.kernel_starts = family(
            Counter,
            "jkp_kernel_starts",
            "Kernel starts by this replica, by outcome (ready, failed)",
            ("outcome",),
        )
        self.start_duration = family(
            Histogram,
            "jkp_kernel_start_duration_seconds",
            "Time from the start request until the kernel answered",
            buckets=_START_BUCKETS,
        )
        self.activations = family(
            Counter,
            "jkp_activations",
            "Keep-alive pings of idle kernels, by outcome (ok, failed)",
            ("outcome",),
        )
        self.kernels_removed = family(
            Counter, "jkp_kernels_removed", "Kernels shut down by jkp, by reason", ("reason",)
        )
        self.takeovers = family(
            Counter,
            "jkp_takeovers",
            "Starts and claims of dead replicas taken over by this one, and kernels of starts "
            "given up on that appeared late on EG, by kind (start, claim, late) and outcome "
            "(adopted, released, removed; deferred: a start EG did not have, replaced at once)",
            ("kind", "outcome"),
        )
        self.errors = family(
            Counter,
            "jkp_dependency_errors",
            "Failed calls to a dependency (redis, gateway)",
            ("dependency",),
        )

    def pool(self, name: str) -> PoolMetrics:
        """The metrics of the pool ``name``."""
        return PoolMetrics(self, name)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class PoolMetrics:
    """The metrics of one pool: each family of ``Metrics`` with its ``pool`` label set, so
    ``pool_metrics.pops.labels("served")`` counts that pool's served pops."""

    def __init__(self, metrics: Metrics, pool: str):
        self.name = pool
        self._metrics = metrics
        for family, label_sets in _KNOWN_LABELS.items():
            for labels in label_sets:
                getattr(self, family).labels(*labels)

    def __getattr__(self, family: str) -> _PoolFamily:
        return _PoolFamily(getattr(self._metrics, family), self.name)

    def set_pool_counts(self, target: int, counts: dict[str, int]) -> None:
        """Record the pool's size as last read from Redis."""
        self.target_kernels.set(target)
        self.idle_kernels.set(counts["idle"])
        self.starting_kernels.set(counts["starting"])


class _PoolFamily:
    """A metric family with the pool label bound: ``labels`` takes the other labels; a family
    with no other label is used as is (``observe``, ``set``, ``inc``)."""

    def __init__(self, family: Any, pool: str):
        self._family = family
        self._pool = pool

    def labels(self, *values: str) -> Any:
        return self._family.labels(self._pool, *values)

    def __getattr__(self, method: str) -> Any:
        return getattr(self._family.labels(self._pool), method)
