"""Replicas: this replica's heartbeat in Redis, and the takeover of dead replicas' work."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayError
from jkp.services.pool.common import (
    CHECKS_AT_ONCE,
    PoolPart,
    Shared,
    gather_bounded,
)
from jkp.services.pool.filling import Filler
from jkp.services.store import Claim
from jkp.user import set_up_not_begun_expression


class Replicas(PoolPart):
    """Keeps this replica registered, and takes over the starts and claims of replicas whose
    heartbeat ran out (each by one Redis script, so exactly one live replica takes each)."""

    def __init__(self, shared: Shared, filler: Filler):
        super().__init__(shared)
        self.filler = filler
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._late_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Register now (a pop or start may come at once), then keep the heartbeat going."""
        try:
            await self._beat()
        except RedisError:
            pass  # the heartbeat loop tries again at once, and reports it
        self._task = asyncio.create_task(self._heartbeat_loop(), name="jkp-heartbeat")

    def tasks(self) -> list[asyncio.Task]:
        """Its heartbeat loop and its check of late kernels, for the pool's stop() to cancel."""
        return [t for t in (self._task, self._late_task) if t is not None]

    def stop(self) -> None:
        """Let its heartbeat loop end at its next turn."""
        self._stopping = True

    async def leave(self) -> None:
        """Withdraw the heartbeat at once: nothing of this replica's is left to take over."""
        try:
            await self.store.leave(self.options.replica_id)
        except RedisError as e:
            self.log.warning("Could not withdraw this replica's heartbeat (it expires): %s", e)

    async def _heartbeat_loop(self) -> None:
        """Refresh this replica's heartbeat; take over the work of replicas whose ran out."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            sent = loop.time()
            try:
                await self._beat()
                await self.take_over_orphans()
                self._check_late_soon()
            except RedisError as e:
                self.health.failed("redis", e)
            except GatewayError as e:
                self.health.failed("gateway", e)
            await asyncio.sleep(
                max(self.options.replica_heartbeat_interval - (loop.time() - sent), 0)
            )

    def _check_late_soon(self) -> None:
        """Run check_late in a task of its own, one at a time: EG may be slow to answer, and
        the heartbeat must not wait for it."""
        if self._late_task is None or self._late_task.done():
            self._late_task = asyncio.create_task(self._check_late_once(), name="jkp-late")

    async def _check_late_once(self) -> None:
        try:
            await self.check_late()
        except (GatewayError, RedisError) as e:
            self.health.count_error(e)  # the next heartbeat looks again

    async def _beat(self) -> None:
        sent = asyncio.get_running_loop().time()
        await self.store.beat(
            self.options.replica_id, self.registration.ttl, self.options.spec_fingerprint
        )
        if not self.registration.registered:
            self.log.info("Replica %s registered in Redis", self.options.replica_id)
            self.filler.wake()
        # Counted from before the request: Redis set the expiry later than that.
        self.registration.until = sent + self.registration.ttl

    async def take_over_orphans(self) -> None:
        """Take over the starts and claims of replicas whose heartbeat ran out.

        Each is taken by one script, so of several live replicas exactly one takes it.
        """
        starts, claims = await self.store.orphans()
        for kernel_id in starts:
            if await self.store.take_over_start(
                kernel_id, self.options.replica_id, self.options.start_lease
            ):
                self.log.warning("Took over the start of kernel %s from a dead replica", kernel_id)
                self.filler.track_start(kernel_id, self._adopt_start(kernel_id))
        for kernel_id in claims:
            claim = await self.store.take_over_claim(kernel_id, self.options.replica_id)
            if claim is not None:
                self.log.warning("Took over the claim on kernel %s from a dead replica", kernel_id)
                self.retirer.track(self._settle_orphaned_claim(claim))

    async def _adopt_start(self, kernel_id: str, kind: str = "start") -> None:
        """Finish a start a dead replica began (``kind`` "start") or a late kernel's (``kind``
        "late", EG has it): pool the kernel once it answers (a pod start is too much work to
        throw away); shut it down if it fails.

        A dead replica's start that EG does not have (or cannot tell of) is not waited for: its
        request may never have reached EG, and waiting as long as one may still run would hold
        the pool's place that long. It goes to the late set, a replacement starts at once, and
        check_late adopts or retires the kernel should it appear.
        """
        outcome = "removed"
        try:
            spec = await self.store.start_spec(kernel_id)
            if spec not in (None, self.options.spec_fingerprint):
                # Started as another spec (a roll-over): not a kernel this replica would pool.
                await self.retirer.abandon_start_soon(kernel_id, "taken over; another spec")
            elif kind == "start" and not await self._eg_has(kernel_id):
                # Watched as long as its lease would have held the place: a kernel that
                # appears even later is no worse off than before the late set.
                if not await self.store.defer_start(
                    kernel_id, self.options.replica_id, self.options.start_lease
                ):
                    return  # no longer this replica's: its heartbeat lapsed and it was taken
                outcome = "deferred"
                self.log.info(
                    "Kernel %s of a dead replica's start is not on EG: its place goes to a new "
                    "start; it is adopted or shut down if it appears within %.0fs",
                    kernel_id,
                    self.options.start_lease,
                )
            elif await self.filler.pool_when_ready(kernel_id):
                outcome = "adopted"
                self.log.info("Kernel %s adopted and pooled", kernel_id)
            else:
                return
        except asyncio.CancelledError:
            self.retirer.abandon_start_soon(kernel_id, "jkp is stopping")
            raise
        except (GatewayError, RedisError) as e:
            self.health.count_error(e)
            self.log.warning("Adopted kernel %s did not become ready: %s", kernel_id, e)
            await asyncio.shield(self.retirer.abandon_start_soon(kernel_id, "taken over; failed"))
        finally:
            self.filler.wake()  # a place, or a start slot, is free
        self.metrics.takeovers.labels(kind, outcome).inc()

    async def _eg_has(self, kernel_id: str) -> bool:
        """Whether EG has the kernel; False also when EG cannot tell now: shutting down a
        kernel EG may yet create would come too early, and check_late asks again."""
        try:
            return (
                await self.gateway.get_kernel(kernel_id, self.options.kernel_request_timeout)
                is not None
            )
        except GatewayError as e:
            self.health.count_error(e)
            return False

    async def check_late(self) -> None:
        """Adopt the late kernels EG now has (into the pool if it has room, else shut them
        down); forget those whose time to appear ran out.

        Every replica looks, so a late kernel is watched while any replica lives; one script
        per kernel decides, so exactly one replica acts on each.
        """

        async def check(kernel_id: str) -> None:
            model = await self.gateway.get_kernel(kernel_id, self.options.kernel_request_timeout)
            if model is not None:
                taken = await self.store.adopt_late(
                    kernel_id,
                    self.filler.target + self.filler.recycling,
                    self.options.start_lease,
                    self.options.replica_id,
                    self.options.spec_fingerprint,
                )
                if taken > 0:
                    self.log.warning("Kernel %s appeared late on EG; adopting it", kernel_id)
                    self.filler.track_start(kernel_id, self._adopt_start(kernel_id, "late"))
                elif taken < 0:
                    self.metrics.takeovers.labels("late", "removed").inc()
                    await self.retirer.retire(kernel_id, "appeared late; the pool is full")
            elif await self.store.forget_late(kernel_id):
                self.log.info("Kernel %s of a given-up start never appeared on EG", kernel_id)

        await gather_bounded(check, await self.store.late_ids(), CHECKS_AT_ONCE)

    async def _settle_orphaned_claim(self, claim: Claim) -> None:
        """End a dead replica's claim: back to the pool if its set-up had not begun (the kernel
        is not in a user's directory), else shut the kernel down."""
        try:
            expression = set_up_not_begun_expression(self.options.working_dir)
            untouched = (
                await self.gateway.evaluate(
                    claim.kernel_id, expression, self.options.kernel_request_timeout
                )
                == "True"
            )
        except GatewayError as e:
            self.log.warning(
                "Kernel %s of a dead replica's pop did not answer: %s", claim.kernel_id, e
            )
            untouched = False
        try:
            if untouched and await self.store.release(claim):
                self.metrics.takeovers.labels("claim", "released").inc()
                self.log.info(
                    "Kernel %s of a dead replica's pop is back in the pool", claim.kernel_id
                )
                self.filler.kernel_was_pooled()
            elif await self.store.retire_claim(claim):
                self.metrics.takeovers.labels("claim", "removed").inc()
                await self.retirer.retire(claim.kernel_id, "taken over mid-pop")
        except RedisError as e:
            self.health.count_error(e)  # the claim lease is the safety net
