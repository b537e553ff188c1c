"""Replicas: this replica's heartbeat in Redis, and the takeover of dead replicas' work."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayError
from jkp.services.pool.common import (
    READY_RETRY_INTERVAL,
    PoolPart,
    Shared,
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

    async def start(self) -> None:
        """Register now (a pop or start may come at once), then keep the heartbeat going."""
        try:
            await self._beat()
        except RedisError:
            pass  # the heartbeat loop tries again at once, and reports it
        self._task = asyncio.create_task(self._heartbeat_loop(), name="jkp-heartbeat")

    def tasks(self) -> list[asyncio.Task]:
        """Its heartbeat loop, for the pool's stop() to cancel."""
        return [self._task] if self._task is not None else []

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
            except RedisError as e:
                self.health.failed("redis", e)
            except GatewayError as e:
                self.health.failed("gateway", e)
            await asyncio.sleep(
                max(self.options.replica_heartbeat_interval - (loop.time() - sent), 0)
            )

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

    async def _adopt_start(self, kernel_id: str) -> None:
        """Finish a start a dead replica began: pool the kernel once it answers (a pod start is
        too much work to throw away); shut it down if EG does not have it or it fails."""
        outcome = "removed"
        try:
            spec = await self.store.start_spec(kernel_id)
            if spec not in (None, self.options.spec_fingerprint):
                # Started as another spec (a roll-over): not a kernel this replica would pool.
                await self.retirer.abandon_start_soon(kernel_id, "taken over; another spec")
            elif not await self._appears_on_eg(kernel_id):
                await self.retirer.abandon_start_soon(kernel_id, "taken over; not on EG")
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
        self.metrics.takeovers.labels("start", outcome).inc()

    async def _appears_on_eg(self, kernel_id: str) -> bool:
        """Whether EG has the kernel, or gets it while a start request to it may still run.

        EG knows a kernel only once its start request is done, and on Kubernetes that takes as
        long as the pod's launch: a dead replica's request may still be under way. Such a
        request is given up after ``GatewayClient.request_timeout``, so waiting that long tells.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gateway.request_timeout
        while await self.gateway.get_kernel(kernel_id, self.options.kernel_request_timeout) is None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(READY_RETRY_INTERVAL, max(deadline - loop.time(), 0)))
        return True

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
