"""HandingOut: a pool's pops: claim a kernel, set it up in the user's directory, hand it over."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayError, KernelReplyError, ShellReply
from jkp.services.pool.claiming import Claiming
from jkp.services.pool.common import (
    PoolPart,
    Shared,
    count_idle_time,
)
from jkp.services.pool.filling import Filler
from jkp.services.pool.kernel_word import KernelWord, handout_record
from jkp.services.pool.pop import (
    Handout,
    KernelFailedError,
    PoolEmptyError,
    PopAbandonedError,
    ReplicaUnregisteredError,
    SetUpError,
    SetUpGuard,
    ShuttingDownError,
    UserDirectoryError,
    handed_model,
)
from jkp.services.pool.sizing import Sizer, retry_after
from jkp.services.store import (
    AliasTaken,
    Claim,
    Idempotency,
    IdempotencyConflict,
    Replay,
    UserLimitReached,
)
from jkp.user import (
    KERNEL_HANDED,
    USER_DIR_REFUSED,
    enter_user_dir_request,
    set_up_comm_id,
    set_up_request,
)

# Of a set-up's time, the share (up to a cap) kept back to ask EG whose fault a timeout was.
_VERDICT_TIME_SHARE = 0.25
_VERDICT_TIME_MAX = 0.5
# A pop with less time left claims nothing: its set-up could not be answered in time.
_LEAST_SET_UP_TIME = 0.05


class HandingOut(PoolPart):
    """Hands kernels out, one pop at a time each, under one deadline per pop."""

    def __init__(self, shared: Shared, filler: Filler, sizer: Sizer):
        super().__init__(shared)
        self.filler = filler
        self.sizer = sizer
        self.claiming = Claiming(shared, filler, sizer)
        self.set_up_guard = SetUpGuard()
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
        self.set_up_guard.check()
        while True:
            if handout.remaining() < _LEAST_SET_UP_TIME:
                raise self._out_of_time()
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
                raise self._out_of_time()
            self.filler.refill_later()
            if handout.claimed is not None:
                handout.claimed.set()
            if handout.client_gone.is_set():
                await self.store.release(claim)  # its set-up had not begun: the pool keeps it
                handout.check_client()
            set_up = await self._set_up(claim, handout)
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
                handed = await self._hand_over(claim, handout, model)
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

    def _out_of_time(self) -> PoolEmptyError:
        return PoolEmptyError(f"no kernel could be set up within {self.options.pop_timeout:g}s")

    async def _hand_over(self, claim: Claim, handout: Handout, model: dict[str, Any]) -> bool:
        """Record the claimed kernel as handed to the pop's user (and a gateway create's
        binding); False when the claim was taken back meanwhile."""
        alias, binding = handout.alias_for(claim.kernel_id), None
        if handout.binding is not None:
            binding = {**handout.binding, "kernel_id": claim.kernel_id}
        ttl = self.options.idempotency_ttl
        return await self.store.hand_over(claim, handout.user_id, model, ttl, alias, binding)

    async def _set_up(
        self, claim: Claim, handout: Handout
    ) -> tuple[dict[str, Any], asyncio.Future[bool] | None] | None:
        """Move a claimed kernel into the user's dir: its model, and its hand-over when that
        began already; None to take the next kernel.

        The kernel answers the set-up (in the user's directory now), then reports itself idle
        1-2 ms later, once ipykernel has flushed its output streams. The hand-over (a Redis
        script) needs only the answer: it runs beside that wait (but for a pop with an
        Idempotency-Key), and the pop answers after both, so no caller sees the kernel busy
        with its set-up.

        The model is the one EG reported when the kernel was pooled, with ``execution_state``
        idle and ``last_activity`` the kernel's answer's time, and ``connections`` not
        counting jkp's own websockets: asking EG again would add a round trip to every pop.

        Who is at fault decides what becomes of the kernel. A kernel that EG no longer has is
        forgotten and None returned. One that EG still has but that failed the set-up (no
        answer in time, its websocket dropped) is retired and KernelFailedError raised: a
        request costs the pool one such kernel at most, whatever it carries. When EG itself
        fails, the kernel goes back to the pool if its set-up was not sent (it is retired
        otherwise) and GatewayError is raised. A refused user directory leaves the kernel
        untouched: it goes back and UserDirectoryError is raised. Any other error of the
        set-up is the share's: the kernel is shut down and SetUpError raised at once, rather
        than spending the pool on a broken share.
        """
        kernel_id = claim.kernel_id
        # Part of the time is kept back for asking EG whose fault a timeout was.
        budget = handout.timeout(self.options.kernel_request_timeout)
        verdict_time = min(_VERDICT_TIME_MAX, budget * _VERDICT_TIME_SHARE)
        answered: asyncio.Future[ShellReply] = asyncio.get_running_loop().create_future()
        sent = asyncio.Event()
        # The kernel keeps what it is handed out as: the last word, whatever Redis loses.
        kept = handout_record(
            handout.user_id, handout.alias_for(claim.kernel_id), self.options.kernel_name
        )
        request = asyncio.ensure_future(
            self.gateway.comm_request(
                kernel_id,
                set_up_comm_id(kernel_id),
                {**handout.set_up, "handout": kept},
                budget - verdict_time,
                keep_open=True,  # closed after the answer (see _pop), or when retired
                answered=answered,
                sent=sent,
            )
        )
        model: dict[str, Any] | None = None
        handing: asyncio.Future[bool] | None = None
        try:
            await asyncio.wait({request, answered}, return_when=asyncio.FIRST_COMPLETED)
            if answered.done() and answered.result().content.get("status") == "ok":
                model = handed_model(claim.model, answered.result())
                # A pop with an Idempotency-Key is handed over after the idle status: a retry
                # with the key is answered from the hand-over, and must never get a kernel that
                # may still fail to get idle.
                early = handout.idempotency is None and not handout.client_gone.is_set()
                if early and not request.done():
                    handing = asyncio.ensure_future(self._hand_over(claim, handout, model))
            await request
        except KernelReplyError as e:
            word = KernelWord.from_answer(e.content)
            if word is not None:
                await self._not_the_pools(claim, word)
                return None  # not the pool's to give, yet nothing is wrong with it: the next
            if e.content.get("ename") == USER_DIR_REFUSED:
                await self.store.release(claim)
                raise UserDirectoryError(str(e.content.get("evalue", e))) from e
            self.log.error("Kernel %s failed set-up for user %s: %s", kernel_id, handout.user_id, e)
            if await self.store.retire_claim(claim):
                self.retirer.retire_soon(kernel_id, "failed set-up")
            self.set_up_guard.failed(e)
            raise SetUpError(str(e)) from e
        except GatewayError as e:
            if handing is None:
                return await self._set_up_failed(claim, e, handout, sent.is_set(), verdict_time)
            # Set up, but never reported idle again (it died, or EG or its websocket failed):
            # nobody got it, so it is shut down, and the request fails.
            self.gateway.close_channel(kernel_id)
            if await handing and await self.store.retire_handed(kernel_id):
                self.retirer.retire_soon(kernel_id, "not idle after its set-up", str(e))
            raise KernelFailedError(f"kernel {kernel_id} was not idle after its set-up") from e
        finally:
            request.cancel()  # only when this pop itself was cancelled: it is done otherwise
        self.set_up_guard.succeeded()
        assert model is not None  # the request succeeded: its answer came, with status ok
        return model, handing

    async def _not_the_pools(self, claim: Claim, word: KernelWord) -> None:
        """A claimed kernel refused its set-up, as it was handed out before (a hand-over whose
        record Redis lost) or spoiled by a failed one: recorded as handed out (never shut
        down, never pooled again) or retired."""
        self.gateway.close_channel(claim.kernel_id)
        if word.status == KERNEL_HANDED:
            self.log.warning(
                "Kernel %s says it was handed to user %s already; recorded so, taking the next",
                claim.kernel_id,
                (word.handed or {}).get("user_id"),
            )
            binding = word.binding(claim.kernel_id)
            await self.records.hand_over_elsewhere(claim, word.handed_record(), binding)
        elif await self.store.retire_claim(claim):
            self.retirer.retire_soon(claim.kernel_id, "spoiled by a failed set-up")

    async def _set_up_failed(
        self,
        claim: Claim,
        error: GatewayError,
        handout: Handout,
        sent: bool,
        verdict_time: float,
    ) -> None:
        """Ask EG whether the kernel or EG failed the set-up, and deal with the kernel: None
        when it is gone from EG (the pop takes the next), else raise.

        No liveness check comes before a set-up, as it would cost EG and jkp a request per pop:
        only a failed one asks, in the time kept back for it.
        """
        kernel_id = claim.kernel_id
        self.gateway.close_channel(kernel_id)
        gone = error.status == 404
        if not gone:
            try:
                timeout = handout.timeout(verdict_time)
                gone = await self.gateway.get_kernel(kernel_id, timeout) is None
            except GatewayError as e:
                if not sent:
                    # EG failed before the set-up left: the kernel is untouched, keep it.
                    await self.store.release(claim)
                    raise error from None
                # The kernel may have run the set-up: it never goes back to the pool.
                if await self.store.retire_claim(claim):
                    self.retirer.retire_soon(kernel_id, "set-up unconfirmed", str(e))
                if e.outcome_unknown and handout.remaining() <= 0:
                    raise self._out_of_time() from error  # EG was given no time to answer
                raise error from None
        if gone:
            self.log.info("Kernel %s is gone from EG; taking the next", kernel_id)
            if await self.store.retire_claim(claim):
                await self.store.forget_retired(kernel_id)
            return
        self.log.warning(
            "Kernel %s did not answer its set-up (%s); shutting it down", kernel_id, error
        )
        if await self.store.retire_claim(claim):
            self.retirer.retire_soon(kernel_id, "did not answer its set-up", str(error))
        raise KernelFailedError(f"kernel {kernel_id} did not answer its set-up: {error}")
