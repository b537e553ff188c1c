"""Prometheus metrics of one jkp process, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Pops are milliseconds when served from the pool, seconds when they wait for a kernel.
_POP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Local kernels start in ~0.4 s, Kubernetes pods in 10-60 s.
_START_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """What jkp counts: pops, kernel starts, activations, the pool's size, Redis and EG errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pop_duration = Histogram(
            "jkp_pop_duration_seconds",
            "Time to answer a pop, by outcome",
            ["outcome"],
            buckets=_POP_BUCKETS,
            registry=self.registry,
        )
        self.pops = Counter(
            "jkp_pops",
            "Pops by outcome: served, repeated (same Idempotency-Key), pool_empty, abandoned "
            "(the caller hung up), error",
            ["outcome"],
            registry=self.registry,
        )
        self.idle_kernels = Gauge(
            "jkp_idle_kernels", "Idle kernels in the pool (all replicas)", registry=self.registry
        )
        self.starting_kernels = Gauge(
            "jkp_starting_kernels",
            "Kernels being started (all replicas, unexpired leases)",
            registry=self.registry,
        )
        self.target_kernels = Gauge(
            "jkp_target_kernels", "max_pending_kernels", registry=self.registry
        )
        self.kernel_starts = Counter(
            "jkp_kernel_starts",
            "Kernel starts by this replica, by outcome (ready, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.start_duration = Histogram(
            "jkp_kernel_start_duration_seconds",
            "Time from the start request until the kernel answered",
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.activations = Counter(
            "jkp_activations",
            "Keep-alive pings of idle kernels, by outcome (ok, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.kernels_removed = Counter(
            "jkp_kernels_removed",
            "Kernels shut down by jkp, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.takeovers = Counter(
            "jkp_takeovers",
            "Starts and claims of dead replicas taken over by this one, by kind (start, claim) "
            "and outcome (adopted, released, removed)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "jkp_dependency_errors",
            "Failed calls to a dependency (redis, gateway)",
            ["dependency"],
            registry=self.registry,
        )
        for outcome in ("served", "repeated", "pool_empty", "abandoned", "error"):
            self.pops.labels(outcome)
        for outcome in ("ready", "failed"):
            self.kernel_starts.labels(outcome)
        for outcome in ("ok", "failed"):
            self.activations.labels(outcome)
        for kind, outcome in (
            ("start", "adopted"),
            ("start", "removed"),
            ("claim", "released"),
            ("claim", "removed"),
        ):
            self.takeovers.labels(kind, outcome)
        for dependency in ("redis", "gateway"):
            self.errors.labels(dependency)

    def set_pool_counts(self, target: int, counts: dict[str, int]) -> None:
        """Record the pool's size as last read from Redis."""
        self.target_kernels.set(target)
        self.idle_kernels.set(counts["idle"])
        self.starting_kernels.set(counts["starting"])

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
