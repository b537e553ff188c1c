"""Rebuilder: notices that Redis lost a pool's records, and rebuilds them from EG and from what
each kernel says of itself."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayError
from jkp.services.pool.common import (
    CHECKS_AT_ONCE,
    POOLED_AT_FIELD,
    SPEC_FIELD,
    PoolPart,
    Shared,
    gather_bounded,
)
from jkp.services.pool.filling import Filler
from jkp.services.pool.kernel_word import ask_kernel
from jkp.user import KERNEL_HANDED, KERNEL_IDLE

# How long a replica's turn to rebuild lasts: longer than a rebuild takes, so that no other
# replica starts one beside it, short enough that one that died is replaced soon.
_REBUILD_TURN = 60.0


class Rebuilder(PoolPart):
    """Every heartbeat interval, looks for the mark that the pool's records are whole (written
    once they are, so a Redis that loses its data loses it too). Without it, the replica whose
    turn it is asks every kernel of the pool's spec that EG runs and no key names what it is:
    idle ones go back into the pool (its surplus is retired), handed-out ones into the
    handed-out records with their aliases and users; kernels that do not answer as jkp's are
    left alone. Then the mark is written again and the pool topped up."""

    def __init__(self, shared: Shared, filler: Filler):
        super().__init__(shared)
        self.filler = filler
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._list_refused = False

    def start(self) -> None:
        """Start the loop that looks for the mark."""
        self._task = asyncio.create_task(self._loop(), name="jkp-rebuild")

    def tasks(self) -> list[asyncio.Task]:
        """Its loop, for the pool's stop() to cancel."""
        return [self._task] if self._task is not None else []

    def stop(self) -> None:
        """Let its loop end at its next turn."""
        self._stopping = True

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.check()
            except (GatewayError, RedisError) as e:
                self.health.count_error(e)  # the next turn looks again
            await asyncio.sleep(self.options.replica_heartbeat_interval)

    async def check(self) -> bool:
        """Rebuild the pool's records when their mark is gone and it is this replica's turn;
        True when it did."""
        if await self.records.whole():
            return False
        replica = self.options.replica_id
        if not await self.store.take_turn(self.store.keys.rebuild, replica, _REBUILD_TURN):
            return False  # another replica rebuilds them
        if await self.rebuild():
            await self.records.mark_whole(replica)
        return True

    async def rebuild(self) -> bool:
        """Write back the records of the pool's kernels that EG runs and no key names, from
        what each says of itself (CHECKS_AT_ONCE asked at a time). False when a kernel did not
        answer in time (busy with a user's code, or slow): the next turn (after _REBUILD_TURN)
        asks again the kernels still unrecorded."""
        try:
            models = await self.gateway.list_kernels()
        except GatewayError as e:
            if e.status != 403:
                raise
            if not self._list_refused:
                self.log.warning(
                    "EG refuses to list its kernels (start it with "
                    "--EnterpriseGatewayApp.list_kernels=True): jkp cannot rebuild lost records"
                )
            self._list_refused = True
            return True
        outcomes: collections.Counter[str] = collections.Counter()

        async def settle(model: dict[str, Any]) -> None:
            outcomes[await self._settle(model)] += 1

        ours = [m for m in models if m.get("name") == self.options.kernel_name]
        await gather_bounded(settle, ours, CHECKS_AT_ONCE)
        target, spec = self.filler.target, self.options.spec_fingerprint
        for kernel_id in await self.store.trim_surplus(target, spec):
            self.retirer.retire_soon(kernel_id, "above max_pending_kernels")
        self.filler.kernel_was_pooled()  # pops waiting on an empty pool look again
        self.filler.refill()  # and the pool is topped up now, not at the next check
        if outcomes["idle"] or outcomes["handed"] or outcomes["spoiled"]:
            what = dict(outcomes)
            self.log.warning(
                "Records of pool %s rebuilt from EG: %s", self.options.kernel_name, what
            )
        return not outcomes["unanswered"]

    async def _settle(self, model: dict[str, Any]) -> str:
        """Ask one kernel what it is, and write its record back unless a key names it; what
        became of it."""
        kernel_id = model["id"]
        try:
            word = await ask_kernel(self.gateway, kernel_id, self.options.kernel_request_timeout)
        except GatewayError as e:
            self.log.info("Kernel %s did not say what it is (%s); left alone", kernel_id, e)
            return "unanswered"
        if word is None:
            return "not jkp's"
        if word.status == KERNEL_IDLE:
            pooled = {**model, SPEC_FIELD: word.spec, POOLED_AT_FIELD: word.pooled_at}
            if await self.records.restore_idle(kernel_id, pooled):
                self.log.info("Idle kernel %s back in the pool", kernel_id)
                return "idle"
        elif word.status == KERNEL_HANDED:
            record = word.handed_record()
            if await self.records.restore_handed(kernel_id, record, word.binding(kernel_id)):
                self.log.info("Kernel %s recorded as handed to %s", kernel_id, record["user_id"])
                return "handed"
        elif await self.records.restore_retiring(kernel_id):
            self.retirer.retire_soon(kernel_id, "spoiled by a failed set-up")
            return "spoiled"
        return "known"
