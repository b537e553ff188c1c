"""Keeper: keeps a pool's books and kernels right: reconcile with EG, roll-over and recycling,
the handed-out check, websockets to idle kernels, and activation against EG's culler."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayError
from jkp.services.pool.common import (
    CHECKS_AT_ONCE,
    POOLED_AT_FIELD,
    SPEC_FIELD,
    TURN_SHARE,
    PoolPart,
    Shared,
    count_idle_time,
    gather_bounded,
)
from jkp.services.pool.filling import Filler

# Kernels replaced at once for their age.
_RECYCLE_AT_ONCE = 2
# Handed-out kernels read from Redis per page of their check.
_HANDED_PAGE = 100


class Keeper(PoolPart):
    """Makes Redis and EG agree and keeps idle kernels alive; owns its loops."""

    def __init__(self, shared: Shared, filler: Filler):
        super().__init__(shared)
        self.filler = filler
        self._tasks: dict[str, asyncio.Task] = {}
        self._stopping = False

    def start(self) -> None:
        """Start the websocket sync and activation loops (the filler runs the reconcile)."""
        if self.options.channel_sync_interval > 0:
            self._tasks["channels"] = asyncio.create_task(
                self._channel_sync_loop(), name="jkp-channels"
            )
        if self.options.activation_interval > 0:
            self._tasks["activate"] = asyncio.create_task(
                self._activation_loop(), name="jkp-activate"
            )

    def tasks(self) -> list[asyncio.Task]:
        """Its loops, for the pool's stop() to cancel."""
        return list(self._tasks.values())

    def stop(self) -> None:
        """Let its loops end at their next turn."""
        self._stopping = True

    async def reconcile(self) -> None:
        """Make Redis and EG agree: drop dead idle kernels, finish pending removals, trim.

        Also syncs this replica's websockets with the idle list (see sync_channels).
        """
        # Read before the idle list: a kernel pooled meanwhile is in one or the other.
        starting = set(self.filler.starts)
        alive = []
        for model_json in await self.store.idle_models():
            kernel_id = json.loads(model_json)["id"]
            if await self.gateway.get_kernel(kernel_id) is not None:
                alive.append(kernel_id)
            elif await self.store.retire_idle(kernel_id, model_json):
                count_idle_time(self.metrics, json.loads(model_json))
                self.log.info("Idle kernel %s is gone from EG; dropped", kernel_id)
                self.gateway.close_channel(kernel_id)
                await self.store.forget_retired(kernel_id)
        self._sync_channels(alive, starting)
        for kernel_id in await self.store.expired_starting_ids():
            if await self.store.retire_starting(kernel_id):
                await self.retirer.retire(kernel_id, "start lease expired")
        for claim in await self.store.stale_claims(self.options.claim_lease):
            if await self.store.retire_claim(claim):
                await self.retirer.retire(claim.kernel_id, "claim expired during a pop")
        models = {m: json.loads(m) for m in await self.store.idle_models()}
        await self._roll_over(models)
        # One replica per interval does what needs doing once for all.
        turn = self.options.check_task_interval * TURN_SHARE
        upkeep = await self.store.take_turn(self.store.keys.upkeep, self.options.replica_id, turn)
        if self.options.max_kernel_age:
            await self._recycle_old_kernels(models, retire=upkeep)
        target = self.options.max_pending_kernels + self.filler.recycling
        for kernel_id in await self.store.trim_surplus(target, self.options.spec_fingerprint):
            await self.retirer.retire(kernel_id, "above max_pending_kernels")
        for kernel_id in await self.store.retiring_ids():
            await self.retirer.retire(kernel_id, "pending removal")
        if upkeep:
            await self.check_handed_out()

    async def _roll_over(self, models: dict[str, dict[str, Any]]) -> None:
        """Retire the idle kernels of a spec no live replica runs any more (an old image or
        init_code): their replicas are gone, and no pop will take them."""
        if not self.registration.registered:
            return  # this replica's own spec may not be among the live ones
        live = await self.store.live_specs()
        for model_json, model in models.items():
            spec = model.get(SPEC_FIELD)
            if spec is not None and spec not in live:
                if await self.store.retire_idle(model["id"], model_json):
                    count_idle_time(self.metrics, model)
                    await self.retirer.retire(model["id"], "its spec is no longer run")

    async def _recycle_old_kernels(self, models: dict[str, dict[str, Any]], retire: bool) -> None:
        """Replace idle kernels older than max_kernel_age, a few at a time, the pool never
        below its size: the target grows by as many as are being replaced (on every replica,
        read off the same idle list), and old kernels are retired, by the replica whose
        ``retire`` turn it is, only while the pool holds more than its target."""
        now = time.time()
        own = {
            j: m
            for j, m in models.items()
            if m.get(SPEC_FIELD) in (None, self.options.spec_fingerprint)
        }
        old = sorted(
            (
                j
                for j, m in own.items()
                if now - m.get(POOLED_AT_FIELD, now) > self.options.max_kernel_age
            ),
            key=lambda j: own[j][POOLED_AT_FIELD],
        )
        retired = 0
        for model_json in old[: max(len(own) - self.filler.target, 0) if retire else 0]:
            kernel_id = own[model_json]["id"]
            if await self.store.retire_idle(kernel_id, model_json):
                count_idle_time(self.metrics, own[model_json])
                await self.retirer.retire(kernel_id, "older than max_kernel_age")
                retired += 1
        self.filler.recycling = min(len(old) - retired, _RECYCLE_AT_ONCE)
        if self.filler.recycling:
            self.filler.refill()

    async def check_handed_out(self) -> None:
        """Forget handed-out kernels EG no longer has (shut down by their user, or culled),
        and the cold kernels counted against their users (max_kernels_per_user) EG no longer
        has: their users' slots come free. Each pool's check looks at all cold kernels, which
        belong to no pool: forgetting one twice does no harm.

        Pages through the hashes (HSCAN), so a large one costs Redis no spike.
        """
        cold = self.store.user_kernels
        for page, forget, what in (
            (self.store.handed_page, self.store.forget_handed, "Handed-out"),
            (cold.cold_page, cold.forget_cold, "Cold"),
        ):
            cursor = 0
            while True:
                cursor, kernel_ids = await page(cursor, _HANDED_PAGE)
                gone = await self._gone_from_eg(kernel_ids)
                await forget(gone)
                for kernel_id in gone:
                    self.log.info("%s kernel %s is gone from EG; forgotten", what, kernel_id)
                if cursor == 0:
                    break

    async def _gone_from_eg(self, kernel_ids: list[str]) -> list[str]:
        """Those of ``kernel_ids`` that EG no longer has."""
        gone: list[str] = []

        async def check(kernel_id: str) -> None:
            if (
                await self.gateway.get_kernel(kernel_id, self.options.kernel_request_timeout)
                is None
            ):
                gone.append(kernel_id)

        await gather_bounded(check, kernel_ids, CHECKS_AT_ONCE)
        return gone

    async def _channel_sync_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.options.channel_sync_interval)
            try:
                await self.sync_channels()
            except RedisError as e:
                self.health.failed("redis", e)

    async def sync_channels(self) -> None:
        """Keep a websocket open to each idle kernel, and none to any other.

        Opens one to each idle kernel this replica has none to (pooled by another replica, or
        before a restart), so that a pop of it need not set one up; closes those to kernels no
        longer idle (handed out through another replica), since an open websocket keeps EG's
        culler off a kernel.
        """
        starting = set(self.filler.starts)  # read before the idle list: see reconcile
        idle_ids = [json.loads(m)["id"] for m in await self.store.idle_models()]
        self._sync_channels(idle_ids, starting)

    def _sync_channels(self, idle_ids: list[str], starting: set[str]) -> None:
        """Close the websockets to kernels neither idle nor starting; open the missing ones in
        a task of their own, so that slow kernels hold up neither the fill loop nor the sync."""
        self.gateway.close_channels_except({*idle_ids, *starting})
        missing = [k for k in idle_ids if self.gateway.wants_channel(k)]
        opening = self._tasks.get("open-channels")
        if missing and (opening is None or opening.done()):  # else the next sync takes them
            self._tasks["open-channels"] = asyncio.create_task(
                self._open_channels(missing), name="jkp-open-channels"
            )

    async def _open_channels(self, kernel_ids: list[str]) -> None:
        """Open a websocket to each kernel (a kernel_info round on it), a few at a time."""

        async def open_channel(kernel_id: str) -> None:
            if not self.gateway.wants_channel(kernel_id):
                return  # opened meanwhile, or the limit was reached
            try:
                await self.gateway.kernel_info(kernel_id, self.options.kernel_request_timeout)
            except GatewayError as e:
                self.log.debug("No websocket to idle kernel %s: %s", kernel_id, e)
                if e.status == 404:
                    # EG does not know it (EG restarted): ask once more before dropping it.
                    await self._drop_if_gone(kernel_id)

        await gather_bounded(open_channel, kernel_ids, CHECKS_AT_ONCE)

    async def _drop_if_gone(self, kernel_id: str) -> None:
        """Drop an idle kernel EG answers 404 for, and refill; anything else (EG unreachable,
        the kernel handed out meanwhile) leaves the pool as it is."""
        try:
            if await self.gateway.get_kernel(kernel_id, self.options.kernel_request_timeout):
                return
            for model_json in await self.store.idle_models():
                if json.loads(model_json)["id"] == kernel_id:
                    if await self.store.retire_idle(kernel_id, model_json):
                        self.log.info("Idle kernel %s is gone from EG; dropped", kernel_id)
                        await self.store.forget_retired(kernel_id)
                        self.filler.refill()
                    return
        except (GatewayError, RedisError) as e:
            self.log.debug("Idle kernel %s not checked: %s", kernel_id, e)

    async def _activation_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.options.activation_interval)
            try:
                # Replicas share the idle list: one sweep per interval is enough.
                turn = self.options.activation_interval * TURN_SHARE
                if await self.store.take_activation_turn(self.options.replica_id, turn):
                    await self.activate_idle_kernels()
            except RedisError as e:
                self.health.failed("redis", e)

    async def activate_idle_kernels(self) -> None:
        """Send every idle kernel a kernel_info_request; replace those that do not answer."""
        models = await self.store.idle_models()
        await gather_bounded(
            self._activate, models, max(self.options.max_concurrent_starts, CHECKS_AT_ONCE)
        )

    async def _activate(self, model_json: str) -> None:
        kernel_id = json.loads(model_json)["id"]
        try:
            await self.gateway.kernel_info(kernel_id, self.options.kernel_request_timeout)
            self.metrics.activations.labels("ok").inc()
            self.log.debug("Kernel %s activated", kernel_id)
            return
        except GatewayError as e:
            self.metrics.activations.labels("failed").inc()
            failure = e
        try:
            alive = await self.gateway.get_kernel(kernel_id) is not None
        except GatewayError as e:
            # EG itself is failing: an outage must not drain the pool.
            self.health.failed("gateway", e)
            return
        if await self.store.retire_idle(kernel_id, model_json):
            count_idle_time(self.metrics, json.loads(model_json))
            why = "did not answer activation" if alive else "gone from EG"
            self.log.warning("Idle kernel %s %s: %s", kernel_id, why, failure)
            await self.retirer.retire(kernel_id, why)
            self.filler.refill()
