"""What the parts of a pool share: counting a dependency's errors, shutting kernels down, this
replica's registration, the start slots of the replica, and a few constants."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable
from logging import Logger, LoggerAdapter
from typing import Any, TypeVar

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayClient, GatewayError
from jkp.services.metrics import PoolMetrics
from jkp.services.pool.options import PoolOptions
from jkp.services.store import PoolStore
from jkp.services.store.kernel_records import RecordStore

# A replica's activation and upkeep turns last this share of their interval.
TURN_SHARE = 0.8
# Requests to EG a background sweep (websocket opens, activation, checks) has in flight at once.
CHECKS_AT_ONCE = 8
# jkp's fields in a pooled kernel's stored model: its spec fingerprint, when it was pooled.
SPEC_FIELD = "jkp_spec"
POOLED_AT_FIELD = "jkp_pooled_at"
# How long each try of a new kernel's first kernel_info_request lasts.
READY_RETRY_INTERVAL = 3.0
_LAST_ERRORS_KEPT = 10

T = TypeVar("T")


def count_idle_time(metrics: PoolMetrics, model: dict[str, Any]) -> None:
    """Add the time a kernel leaving the idle list spent there to jkp_idle_kernel_seconds."""
    pooled_at = model.get(POOLED_AT_FIELD)
    if isinstance(pooled_at, int | float):
        metrics.idle_kernel_seconds.inc(max(0.0, time.time() - pooled_at))


class InitCodeError(GatewayError):
    """A new kernel failed its pool's init_code."""


class Health:
    """What a pool sees failing: each dependency's state, logged once per change, its errors
    counted, and the last few kept for /api/pool."""

    def __init__(self, log: Logger, metrics: PoolMetrics):
        self.log = log
        self.metrics = metrics
        self.failing: dict[str, str] = {}
        self.last_errors: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=_LAST_ERRORS_KEPT
        )

    def failed(self, component: str, error: Exception) -> None:
        """Log a component's failure once per change of state, not once per attempt."""
        if self.failing.get(component) is None:
            self.log.error("%s is failing: %s", component, error)
        self.failing[component] = str(error)
        self.count_error(error)

    def count_error(self, error: Exception) -> None:
        """Count a failed call to Redis or EG, and keep it among the last errors shown."""
        dependency = "redis" if isinstance(error, RedisError) else "gateway"
        self.metrics.errors.labels(dependency).inc()
        self.last_errors.append(
            {"time": time.time(), "dependency": dependency, "message": str(error)}
        )

    def recovered(self, component: str) -> None:
        """Log once that a component that was failing works again."""
        if self.failing.pop(component, None) is not None:
            self.log.info("%s is back", component)


class Retirer:
    """Shuts down on EG the kernels taken out of the pool, and forgets them in Redis.

    Shutdowns run in tasks of their own that ``wait()`` lets finish, never cancelled half way:
    a half-done one would leave a kernel in the retiring set, running on EG.
    """

    def __init__(
        self,
        log: Logger,
        gateway: GatewayClient,
        store: PoolStore,
        metrics: PoolMetrics,
        health: Health,
    ):
        self.log = log
        self.gateway = gateway
        self.store = store
        self.metrics = metrics
        self.health = health
        self.tasks: set[asyncio.Task] = set()

    def retire_soon(self, kernel_id: str, reason: str, detail: str = "") -> asyncio.Task:
        """Shut a retired kernel down in the background (pops do not wait for EG's DELETE)."""
        return self.track(self.retire(kernel_id, reason, detail))

    def abandon_start_soon(self, kernel_id: str, reason: str) -> asyncio.Task:
        """Retire a kernel being started, and shut it down, in a task of its own."""
        return self.track(self._abandon_start(kernel_id, reason))

    def track(self, work: Awaitable[None]) -> asyncio.Task:
        """Run ``work`` (an end of a kernel's way) in a task that wait() lets finish."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def wait(self) -> None:
        """Let the shutdowns under way finish."""
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def retire(self, kernel_id: str, reason: str, detail: str = "") -> None:
        """Shut a kernel in the retiring set down on EG, then forget it.

        ``reason`` is one of a fixed few (it labels jkp_kernels_removed_total); ``detail``,
        such as an error's text, is only logged. When EG cannot be reached the kernel stays in
        the retiring set and the next reconcile retries.
        """
        reason_logged = f"{reason}: {detail}" if detail else reason
        try:
            self.gateway.close_channel(kernel_id)
            await self.gateway.shutdown_kernel(kernel_id)
            await self.store.forget_retired(kernel_id)
            self.metrics.kernels_removed.labels(reason).inc()
            self.log.info("Kernel %s removed (%s)", kernel_id, reason_logged)
        except (GatewayError, RedisError) as e:
            self.health.count_error(e)
            self.log.warning("Kernel %s not removed yet (%s): %s", kernel_id, reason_logged, e)

    async def _abandon_start(self, kernel_id: str, reason: str) -> None:
        try:
            moved = await self.store.retire_starting(kernel_id)
        except RedisError:
            self.log.warning("Cannot retire kernel %s now; its lease will expire", kernel_id)
            return
        if moved:
            await self.retire(kernel_id, reason)


class Registration:
    """Until when this replica's heartbeat in Redis surely lasts: only then may it start and
    hand out kernels, as no other replica can have taken its work over."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.until = 0.0  # event loop time

    @property
    def registered(self) -> bool:
        """Whether the heartbeat surely still lasts."""
        return asyncio.get_running_loop().time() < self.until


class PoolPart:
    """A part of a pool: it reads the pool's options and uses what all parts share."""

    def __init__(self, shared: Shared):
        self._read_options = shared.read_options
        self.log = shared.log
        self.store = shared.store
        self.gateway = shared.gateway
        self.metrics = shared.metrics
        self.health = shared.health
        self.retirer = shared.retirer
        self.registration = shared.registration
        self.records = shared.records

    @property
    def options(self) -> PoolOptions:
        """The pool's options."""
        return self._read_options()


@dataclasses.dataclass(frozen=True)
class Shared:
    """What every part of a pool uses."""

    log: Logger | LoggerAdapter
    # The pool's options, read on first use: after the start-up check has named a bad one.
    read_options: Callable[[], PoolOptions]
    store: PoolStore
    gateway: GatewayClient
    metrics: PoolMetrics
    health: Health
    retirer: Retirer
    registration: Registration
    records: RecordStore


class StartSlots:
    """The kernel starts this replica runs at once, across all its pools.

    ``max_concurrent_starts`` bounds a replica, not a pool: EG and the machine carry the starts
    of every pool. A pool whose start ends frees a slot for all, so all their fillers wake.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._wakers: list[Callable[[], None]] = []

    def register(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever a slot comes free."""
        self._wakers.append(wake)

    @property
    def free(self) -> bool:
        """Whether another start may begin."""
        return self.used < self.limit

    def take(self) -> None:
        """A start begins."""
        self.used += 1

    def give_back(self) -> None:
        """A start ended: wake every pool's filler."""
        self.used -= 1
        for wake in self._wakers:
            wake()


async def gather_bounded(
    work: Callable[[T], Awaitable[None]], items: Iterable[T], at_once: int
) -> None:
    """Run ``work`` on every item, at most ``at_once`` at a time."""
    semaphore = asyncio.Semaphore(at_once)

    async def bounded(item: T) -> None:
        async with semaphore:
            await work(item)

    await asyncio.gather(*(bounded(item) for item in items))
