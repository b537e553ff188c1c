"""HandingOut: a pool's pops: claim a kernel, set it up in the user's directory, hand it over."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayError
from jkp.services.pool.claiming import Claiming
from jkp.services.pool.common import PoolPart, Shared, count_idle_time
from jkp.services.pool.filling import Filler
from jkp.services.pool.pop import (
    Handout,
    PoolEmptyError,
    PopAbandonedError,
    ReplicaUnregisteredError,
    ShuttingDownError,
)
from jkp.services.pool.setting_up import SettingUp
from jkp.services.pool.sizing import Sizer, retry_after
from jkp.services.store import (
    AliasTaken,
    Idempotency,
    IdempotencyConflict,
    Replay,
    UserLimitReached,
)
from jkp.user import enter_user_dir_request, set_up_request

# A pop with less time left claims nothing: its set-up could not be answered in time.
_LEAST_SET_UP_TIME = 0.05


class HandingOut(PoolPart):
    """Hands kernels out, one pop at a time each, under one deadline per pop."""

    def __init__(self, shared: Shared, filler: Filler, sizer: Sizer):
        super().__init__(shared)
        self.filler = filler
        self.sizer = sizer
        self.claiming = Claiming(shared, filler, sizer)
        self.setting_up = SettingUp(shared)
        self._closing = False
        self._active_pops = 0
        self._no_active_pops = asyncio.Event()

    async def pop(
        self,
        user_id: str,
        idempotency_key: str | None = None,
        client_gone: asyncio.Event | None = None,
        env: dict[str, str] | None = None,
        timings: dict[str, float] | None = None,
        user_limit: int = -1,
    ) -> dict[str, Any]:
        """Hand one idle kernel to ``user_id``, in ``<working_dir>/<user_id>``; its EG model.

        Everything it waits on shares one deadline, ``pop_timeout``. With ``idempotency_key``,
        a pop that repeats an earlier one of the same user gets that pop's model again. When
        ``client_gone`` is set (the caller hung up), the pop stops at its next step and the
        kernel goes back to the pool, or is shut down once its set-up has begun. ``env`` is
        set in the kernel's ``os.environ`` by the set-up. The seconds each step took are added
        to ``timings`` by step name (claim, set_up, hand_over), as jkp_pop_step_seconds has them.

        Raises PoolEmptyError when no kernel is ready in time, GatewayError when EG fails (the
        kernel taken goes back to the pool unless its set-up was sent), RedisError when Redis
        does, UserDirectoryError when the user's directory is refused, KernelFailedError when
        the kernel taken failed its set-up (it is shut down; no other is taken), SetUpError
        when the share fails, SetUpPausedError after several such failures in a row,
        IdempotencyConflict, PopAbandonedError, UserLimitReached when ``user_id`` holds
        ``user_limit`` kernels already (-1: no limit), and ShuttingDownError once ``close()``
        was called. InvalidUserId, before anything else, when ``user_id`` is not one safe path
        segment (that is not a pop: it is not counted).
        """
        set_up = enter_user_dir_request(self.options.working_dir, user_id, env)
        idempotency = None
        if idempotency_key is not None:
            # A key is one request: the same key with another body is a conflict, not a replay.
            asked = {"userId": user_id, "kernelName": self.options.kernel_name, "env": env or {}}
            fingerprint = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()
            idempotency = Idempotency(idempotency_key, uuid.uuid4().hex, fingerprint)
        return await self._serve(
            user_id,
            set_up,
            client_gone,
            idempotency=idempotency,
            timings=timings,
            user_limit=user_limit,
        )

    async def bind(
        self,
        user_name: str,
        working_dir: str | None,
        env: dict[str, str],
        alias: str,
        binding: dict[str, Any],
        claim_wait: float,
        client_gone: asyncio.Event | None = None,
        timings: dict[str, float] | None = None,
        claimed: asyncio.Event | None = None,
        create_id: str = "",
        user_limit: int = -1,
    ) -> dict[str, Any]:
        """A gateway create served warm: hand an idle kernel to ``user_name``, moved into
        ``working_dir`` (None: left where it is) with ``env`` set, and record ``binding``
        under ``alias`` with the hand-over; the kernel's EG model.

        The claim reserves ``alias`` (when not empty) for ``create_id``, or raises AliasTaken
        when it is bound or reserved. It waits at most ``claim_wait`` seconds for an idle
        kernel (PoolEmptyError then, so the create can go to EG cold); otherwise as ``pop``.
        ``claimed`` is set once a kernel is claimed, just before its set-up is sent.
        """
        set_up = set_up_request(self.options.working_dir, working_dir, env=env)
        return await self._serve(
            user_name,
            set_up,
            client_gone,
            claim_wait=claim_wait,
            alias=alias,
            binding=binding,
            timings=timings,
            claimed=claimed,
            create_id=create_id,
            user_limit=user_limit,
        )

    async def _serve(
        self,
        user_id: str,
        set_up: dict[str, Any],
        client_gone: asyncio.Event | None,
        idempotency: Idempotency | None = None,
        claim_wait: float | None = None,
        alias: str = "",
        binding: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
        claimed: asyncio.Event | None = None,
        create_id: str = "",
        user_limit: int = -1,
    ) -> dict[str, Any]:
        """One hand-out under one deadline, counted in jkp_pops_total by its outcome."""
        loop = asyncio.get_running_loop()
        started, outcome = loop.time(), "error"
        self._active_pops += 1
        try:
            if self._closing:
                raise ShuttingDownError("jkp is shutting down")
            handout = Handout(
                user_id=user_id,
                set_up=set_up,
                deadline=started + self.options.pop_timeout,
                client_gone=client_gone or asyncio.Event(),
                idempotency=idempotency,
                claim_deadline=None if claim_wait is None else started + claim_wait,
                alias=alias,
                binding=binding,
                timings=timings,
                claimed=claimed,
                create_id=create_id,
                user_limit=user_limit,
            )
            model, outcome = await self._pop(handout)
            if handout.waited:
                self.metrics.pop_waits.inc()
            if outcome == "served":
                served = "waited" if handout.waited else "warm"
                self.metrics.time_to_kernel.labels(served).observe(loop.time() - started)
            return model
        except PoolEmptyError as e:
            outcome = "pool_empty"
            if claim_wait is None:  # a pop's 503, not a create that goes cold
                e.retry_after = await self._retry_after()
            raise
        except PopAbandonedError:
            outcome = "abandoned"
            raise
        except (IdempotencyConflict, AliasTaken):
            outcome = "conflict"  # the caller's request, not jkp, is at fault
            raise
        except UserLimitReached:
            outcome = "refused"
            raise
        except (RedisError, GatewayError) as e:
            self.health.count_error(e)
            raise
        finally:
            self.metrics.pops.labels(outcome).inc()
            self.metrics.pop_duration.labels(outcome).observe(loop.time() - started)
            self._active_pops -= 1
            if not self._active_pops:
                self._no_active_pops.set()

    async def _retry_after(self) -> int | None:
        """Seconds until a kernel is expected, for an empty pool's 503; None when Redis
        cannot say."""
        try:
            data = await self.store.demand(self.sizer.keep_seconds, self.options.sizing_interval)
            return retry_after(data, self.options.start_lease)
        except RedisError:
            return None

    async def close(self, timeout: float) -> None:
        """Refuse new pops and wait up to ``timeout`` seconds for those in flight."""
        self._closing = True
        if self._active_pops:
            self._no_active_pops.clear()
            try:
                await asyncio.wait_for(self._no_active_pops.wait(), timeout)
            except TimeoutError:
                self.log.warning("%d pops still running after %gs", self._active_pops, timeout)

    async def _pop(self, handout: Handout) -> tuple[dict[str, Any], str]:
        """Claim kernels until one is set up for the user; its model and the pop's outcome."""
        if not self.registration.registered:
            raise ReplicaUnregisteredError(
                "this replica's heartbeat in Redis ran out; it hands nothing out until it has "
                "registered again"
            )
        self.setting_up.guard.check()
        while True:
            if handout.remaining() < _LEAST_SET_UP_TIME:
                raise self.setting_up.out_of_time()
            step = handout.step_timer(self.metrics.pop_steps)
            claim = await self.claiming.claim(handout)
            step("claim")
            if isinstance(claim, Replay):
                self.log.info("Pop repeated with its Idempotency-Key: kernel %s", claim.model["id"])
                return claim.model, "repeated"
            if handout.remaining() < _LEAST_SET_UP_TIME:
                # Claimed at the deadline (a slow claim, or a kernel pooled in the last
                # milliseconds): a set-up sent now would time out and cost the kernel.
                await self.store.release(claim)
                raise self.setting_up.out_of_time()
            self.filler.refill_later()
            if handout.claimed is not None:
                handout.claimed.set()
            if handout.client_gone.is_set():
                await self.store.release(claim)  # its set-up had not begun: the pool keeps it
                handout.check_client()
            set_up = await self.setting_up.set_up(claim, handout)
            step("set_up")
            if set_up is None:
                continue  # that kernel is gone from EG: the next one
            model, handing = set_up
            if handing is not None:
                # Usually done already: it ran beside the set-up's wait for the idle status.
                handed = await handing
            else:
                if handout.client_gone.is_set():
                    if await self.store.retire_claim(claim):
                        self.retirer.retire_soon(claim.kernel_id, "caller left during its set-up")
                    handout.check_client()
                handed = await self.setting_up.hand_over(claim, handout, model)
            step("hand_over")
            if handed:
                # A handed-out kernel keeps no websocket of ours (one open keeps EG's culler
                # off it): the set-up's, or another a reconcile or activation opened beside
                # the pop. Closed once the answer is written, which the caller does in this
                # same step: the close frame is nothing the caller needs to wait for.
                asyncio.get_running_loop().call_soon(self.gateway.close_channel, claim.kernel_id)
                count_idle_time(self.metrics, claim.model)
                if handout.client_gone.is_set() and await self.store.retire_handed(claim.kernel_id):
                    self.retirer.retire_soon(claim.kernel_id, "caller left during its hand-over")
                    # A retry with the key must not be answered with a kernel being shut down.
                    await self.store.forget_idempotency(claim)
                    handout.check_client()
                self.log.info("Kernel %s handed to user %s", claim.kernel_id, handout.user_id)
                return model, "served"
            # Our claim was taken back by a reconcile while we worked: never hand that out. Set
            # up for nobody: if a rebuild recorded it as handed (its own word), shut it down.
            self.log.warning("Claim on kernel %s expired during set-up", claim.kernel_id)
            if await self.store.retire_handed(claim.kernel_id):
                self.retirer.retire_soon(claim.kernel_id, "claim expired during a pop")
