"""Claiming: a pop's claim of an idle kernel, waiting in the pool's line (first come, first
served across replicas: jkp.services.waiting_pops) while none is its to take."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from jkp.services.pool.common import PoolPart, Shared
from jkp.services.pool.filling import Filler
from jkp.services.pool.pop import Handout, PoolEmptyError
from jkp.services.pool.sizing import Sizer
from jkp.services.store import Claim, IdempotencyPending, Replay

# How often a waiting pop claims again without a notice of a kernel pooled (one lost while
# Redis' subscription reconnects, or a waiter ahead whose replica died).
_EMPTY_POOL_POLL = 0.5


class Claiming(PoolPart):
    """Claims kernels for pops: the pool's idle kernels go to its waiting pops in the order
    they came, then to new ones."""

    def __init__(self, shared: Shared, filler: Filler, sizer: Sizer):
        super().__init__(shared)
        self.filler = filler
        self.sizer = sizer

    async def claim(self, handout: Handout) -> Claim | Replay:
        """The next idle kernel for this pop (or an earlier pop's answer to replay); waits for
        one in the pool's line, first come first served, up to the pop's deadline, while no
        idle kernel is its to take."""
        try:
            while True:
                handout.check_client()
                try:
                    claim = await self.store.claim(
                        handout.user_id,
                        handout.idempotency,
                        self.options.claim_lease,
                        self.options.replica_id,
                        self.options.spec_fingerprint,
                        handout.alias,
                        handout.create_id,
                        handout.user_limit,
                        0 if handout.arrived else self.sizer.arrivals_ttl,
                        handout.waiter,
                        handout.claim_remaining(),
                        self.options.sizing_interval,
                    )
                    handout.arrived = True
                except IdempotencyPending:
                    claim = None  # the pop holding the key answers soon, or gives it up
                else:
                    if claim is not None:
                        if isinstance(claim, Claim):
                            handout.in_line = False  # the claim took it out of the line
                        return claim
                    handout.waited = handout.in_line = True
                    self.filler.refill()  # a user is waiting: start a kernel now
                remaining = handout.claim_remaining()
                if remaining <= 0:
                    if handout.claim_deadline is None:
                        raise PoolEmptyError(f"no idle kernel within {self.options.pop_timeout:g}s")
                    raise PoolEmptyError("no idle kernel within the gateway's pool wait")
                await self.filler.wait_for_kernel(min(remaining, _EMPTY_POOL_POLL))
        finally:
            if handout.in_line:
                # Ends without a kernel (or with a replay): the pops behind it move up.
                handout.in_line = False
                await asyncio.shield(self._leave_line(handout.waiter))

    async def _leave_line(self, waiter: str) -> None:
        try:
            await self.store.leave_line(waiter)
        except RedisError as e:
            # Its entry expires with the pop's deadline: it holds nobody up longer.
            self.log.warning("Could not take a pop out of the waiting line: %s", e)
